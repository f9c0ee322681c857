"""Prediction throughput: the Ray Data job vs the tutorial's one-image-at-a-time loop, same files,
same run.

    python -m benchmarks.predict [--small 21000] [--photos 550] [--repeats 2]
        [--json benchmarks/results/predict_cpu.json]

small   --small PNGs of 32-64 px (CIFAR-sized crops) through CIFAR10-quick (an untrained run's
        model), in this process: (a) the tutorial's test.py, one file at a time (open, convert,
        Resize((32, 32)), ToTensor, forward); (b) the job (cifar.predict.pipeline.predict) on a
        Ray started once, its start timed apart and left out as the job's summary leaves it out,
        run --repeats times, each right after a run of (a) (the first job is also Ray Data's
        first on this Ray), so a ratio compares runs under the same load. Also the
        decode limit: one core decoding the same files in a tight loop (read into memory first),
        the job's rate as a share of (cores x limit), and where the job's time went.
photos  --photos camera-sized JPEGs (1200x900) through resnet18 at 224 px, a torchvision
        state_dict with a 10-class head as the tutorial saves one: (a) the tutorial's loop in a
        process of its own (python -m benchmarks.predict --tutorial-loop), (b) the job as a user
        runs it (python -m jobs.predict --arch resnet18), both timed as whole processes; the
        images/s are the loop's own and the job's summary's (Ray start left out). With
        --actors-vs-threads, the job again with one actor of every core's thread.
Prints images/s, ratios (b)/(a) and the breakdown; writes them as JSON with --json.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from benchmarks.common import (
    describe,
    local_cluster,
    machine,
    parser,
    run_module,
    untrained_model,
    write_images,
    write_json,
)

PHOTO_ARCH = "resnet18"


# --------------------------------------------------------------------------- the tutorial's loop


def tutorial_rate(model, files: list[Path], size: int) -> float:
    """Images/s of the tutorial's test.py over ``files``, one at a time (model built before)."""
    import torch
    import torchvision
    from PIL import Image

    tf = torchvision.transforms.Compose(
        [torchvision.transforms.Resize((size, size)), torchvision.transforms.ToTensor()]
    )
    t = time.perf_counter()
    with torch.no_grad():
        for f in files:
            model(torch.reshape(tf(Image.open(f).convert("RGB")), (1, 3, size, size))).argmax(1)
    return len(files) / (time.perf_counter() - t)


def quick_loop(model_dir: Path, files: list[Path]) -> float:
    import torch

    from cifar.models.cifar_quick import CifarQuick

    torch.set_num_threads(os.cpu_count() or 1)
    model = CifarQuick()
    model.load_state_dict(torch.load(model_dir / "model.pt", weights_only=True))
    return tutorial_rate(model.eval(), files, 32)


def photo_loop(model_file: str, folder: str) -> None:
    """``--tutorial-loop``: the tutorial's test.py over the photos, as a process of its own."""
    import torch
    import torchvision

    model = getattr(torchvision.models, PHOTO_ARCH)(num_classes=10)
    model.load_state_dict(torch.load(model_file, weights_only=True))
    rate = tutorial_rate(model.eval(), sorted(Path(folder).glob("*.jpg")), 224)
    print(f"LOOP {rate}")


# --------------------------------------------------------------------------- the decode limit


def decode_limit(files: list[Path], size: int, n: int) -> float:
    """Images/s one core decodes ``files[:n]`` (read into memory first) to ``size``, in a tight
    loop: benchmarks.decode's measure, on the files the job classifies."""
    import torch

    from benchmarks.decode import rate

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return rate([f.read_bytes() for f in files[:n]], size, rounds=2)
    finally:
        torch.set_num_threads(threads)


def breakdown(summary: dict, ray_start: float, cores: int, decode_cpu_s: float) -> dict:
    """Where a job's time went: Ray's start and the listing (apart from the pipeline), then the
    pipeline's core-seconds: per stage what its tasks ran (Ray Data's counters), the decode
    share of them at the tight loop's rate, and what no task held (actor start-up, scheduling,
    waiting)."""
    stages = summary.get("stages") or {}
    pipeline = summary["seconds"]
    busy = sum(v["task_s"] or 0.0 for v in stages.values())
    return {
        "ray_start_s": round(ray_start, 2),
        "listing_and_model_s": round(summary.get("preflight_seconds") or 0.0, 2),
        "pipeline_s": round(pipeline, 2),
        "pipeline_core_s": round(pipeline * cores, 2),
        "stages": stages,
        "decode_cpu_s_at_limit": round(decode_cpu_s, 2),
        "core_s_outside_tasks": round(pipeline * cores - busy, 2),
    }


def print_breakdown(b: dict) -> None:
    print(
        f"    time: Ray start {b['ray_start_s']:.1f}s (apart), listing + model "
        f"{b['listing_and_model_s']:.2f}s (apart), pipeline {b['pipeline_s']:.2f}s = "
        f"{b['pipeline_core_s']:.1f} core-s:"
    )
    for name, v in b["stages"].items():
        print(f"      {name:32s} tasks ran {v['task_s']}s, computed {v['task_cpu_s']}s CPU")
    print(
        f"      of which decoding at the tight loop's rate {b['decode_cpu_s_at_limit']:.2f}s; "
        f"outside any task (actor start, scheduling, waits) {b['core_s_outside_tasks']:.1f} core-s"
    )


# --------------------------------------------------------------------------- the two workloads


def small(root: Path, args: argparse.Namespace, ray_start: float) -> dict:
    from cifar.predict.config import PredictConfig
    from cifar.predict.pipeline import predict

    files = sorted((root / "small").rglob("*.png"))
    cores = os.cpu_count() or 1
    limit = decode_limit(files, 32, 2000)
    rates, loops, summary = [], [], {}
    for _ in range(max(1, args.repeats)):  # each job run right after a loop: a busy machine's
        loops.append(quick_loop(root / "model", files[: args.loop_files or None]))  # load moves
        cfg = PredictConfig(
            model=str(root / "model"),
            input=[str(root / "small")],
            output=str(root / "out-small"),
            overwrite=True,
            batch_size=args.batch_size,
            num_actors=args.num_actors,
            cpus_per_actor=args.cpus_per_actor,
            gpus_per_actor=0.0,
        )
        summary = predict(cfg, local_cluster())
        assert summary["rows"] == len(files) and summary["errors"] == 0
        rates.append(summary["images_per_s"])
    ratios = [r / loop for r, loop in zip(rates, loops, strict=True)]
    best = max(rates)
    parts = breakdown(summary, ray_start, cores, len(files) / limit)
    each = zip(rates, loops, ratios, strict=True)
    pairs = ", ".join(f"{r:.0f} / {loop:.0f} = {x:.2f}x" for r, loop, x in each)
    print(
        f"small  {len(files)} PNGs, job / one-at-a-time img/s, each job run after its loop: "
        f"{pairs}; decode limit {limit:.0f} img/s/core: the best run is "
        f"{best / (cores * limit):.1%} of {cores} x limit",
        flush=True,
    )
    print(f"    plan: {summary['plan']}")
    print_breakdown(parts)
    return {
        "files": len(files),
        "one_at_a_time_img_s_each_run": loops,
        "job_img_s_each_run": rates,
        "ratio_each_run": ratios,
        "ratio_first_run": ratios[0],
        "ratio_best": max(ratios),
        "decode_limit_img_s_per_core": limit,
        "job_share_of_cores_x_limit": best / (cores * limit),
        "plan": summary["plan"],
        "compute": summary["compute"],
        "breakdown_last_run": parts,
    }


def photos(root: Path, args: argparse.Namespace) -> dict:
    import torch
    import torchvision

    from benchmarks.decode import encoded

    folder = root / "photos"
    folder.mkdir()
    for i, data in enumerate(encoded("jpeg1200", args.photos)):
        (folder / f"photo_{i:05d}.jpg").write_bytes(data)
    model_file = root / f"{PHOTO_ARCH}.pth"
    torch.save(getattr(torchvision.models, PHOTO_ARCH)(num_classes=10).state_dict(), model_file)
    limit = decode_limit(sorted(folder.glob("*.jpg")), 224, 100)
    out, loop_s = run_module("benchmarks.predict", "--tutorial-loop", model_file, folder)
    loop = float(out.split("LOOP ")[-1])
    job = ("--model", model_file, "--arch", PHOTO_ARCH, "--input", folder)
    _, job_s = run_module("jobs.predict", *job, "--output", root / "out-photos")
    summary = json.loads((root / "out-photos" / "_summary.json").read_text())
    assert summary["rows"] == args.photos and summary["errors"] == 0
    rate, ray_s = summary["images_per_s"], summary.get("ray_start_seconds") or 0.0
    cores = os.cpu_count() or 1
    print(
        f"photos {args.photos} JPEGs 1200x900, {PHOTO_ARCH} at 224 px: one-at-a-time "
        f"{loop:.1f} img/s; job {rate:.1f} img/s ({rate / loop:.2f}x); whole processes: loop "
        f"{loop_s:.1f}s, job {job_s:.1f}s (Ray start {ray_s:.1f}s; job - loop - Ray "
        f"{job_s - loop_s - ray_s:+.1f}s); decode limit {limit:.0f} img/s/core",
        flush=True,
    )
    print(f"    plan: {summary['plan']}; {summary['compute']['precision']}")
    parts = breakdown(summary, ray_s, cores, args.photos / limit)
    print_breakdown(parts)
    threads = {}
    if args.actors_vs_threads and cores > 1:  # the plan's rule: actors of 1 thread, measured
        one = ("--num-actors", "1", "--cpus-per-actor", cores)
        run_module("jobs.predict", *job, *one, "--output", root / "out-1-actor")
        other = json.loads((root / "out-1-actor" / "_summary.json").read_text())["images_per_s"]
        threads = {f"1_actor_x_{cores}_threads_img_s": other, "plan_over_1_actor": rate / other}
        print(
            f"    1 actor of {cores} threads instead: {other:.1f} img/s (the plan's actors "
            f"{rate / other:.2f}x)",
            flush=True,
        )
    return {
        "files": args.photos,
        "arch": PHOTO_ARCH,
        "one_at_a_time_img_s": loop,
        "job_img_s": rate,
        "ratio": rate / loop,
        "loop_process_s": loop_s,
        "job_process_s": job_s,
        "job_ray_start_s": ray_s,
        "decode_limit_img_s_per_core": limit,
        "plan": summary["plan"],
        "compute": summary["compute"],
        "breakdown": parts,
        **threads,
    }


def main() -> None:
    p = parser(__doc__, "predict_cpu.json")
    p.add_argument("--small", type=int, default=21000)
    p.add_argument("--photos", type=int, default=550)
    p.add_argument("--repeats", type=int, default=2, help="loop + job runs on the small PNGs")
    p.add_argument("--loop-files", type=int, default=0, help="the loop's files (0: all)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--num-actors", default="auto")
    p.add_argument("--cpus-per-actor", type=float, default=None)
    p.add_argument(
        "--actors-vs-threads",
        action="store_true",
        help="also the photo job with 1 actor of every core's thread (the plan's rule, measured)",
    )
    p.add_argument("--tutorial-loop", nargs=2, metavar=("MODEL", "FOLDER"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.tutorial_loop:
        return photo_loop(*args.tutorial_loop)
    info = machine()
    results: dict = {}
    with tempfile.TemporaryDirectory(prefix="bench-predict-") as tmp:
        root = Path(tmp)
        if args.small:
            import ray

            untrained_model(root)
            write_images(root / "small", args.small, sides=(32, 64))
            t = time.perf_counter()
            ray.init(num_cpus=os.cpu_count(), include_dashboard=False, configure_logging=False)
            ray.data.DataContext.get_current().enable_progress_bars = False
            results["ray_start_s"] = time.perf_counter() - t
            results["small"] = small(root, args, results["ray_start_s"])
            ray.shutdown()  # the photo job starts its own, as a user's does
        if args.photos:
            results["photos"] = photos(root, args)
    load = os.getloadavg()
    results["load_average_after"] = load
    print(f"[{describe(info)}; load average after: {load[0]:.1f}]")
    write_json(args.json, info, results)


if __name__ == "__main__":
    main()
