"""ResNet-18 on this machine at 64 and 128 px: training and prediction images/s against
CIFAR10-quick at 32 px (the reference ratio, measured in the same process), and the peak
memory of a streamed training run's driver and Ray Train worker at two folder sizes.

    python -m benchmarks.resnet [--sizes 64 128] [--folders 1000 8000] [--train-images 512]
        [--batch 64] [--repeats 3] [--json benchmarks/results/resnet_cpu.json]

Photo-like JPEGs of 256-500 px (benchmarks.streaming.write_photo_tree), four classes. Three parts:
  memory:     `python -m jobs.train --arch resnet18 --image-size S --data-loading stream
              --epochs 1 --num-workers 1 --batch-size B` (what cifar-train runs) at each size on
              the smaller folder, and at the first size on every larger one; with --control
              also `--data-loading memory` on the largest. A thread reads the kernel's RSS
              high-water mark (VmHWM) of the driver, the Ray Train worker and each of its
              DataLoader processes, and samples the loaders' unique memory (USS), every
              --every seconds. The runs' own images/s (summary.json) come with them.
  training:   the job's engine (cifar.train.engine.build + train_one_epoch: what a Ray Train
              worker runs per epoch) over --train-images images decoded in memory, precision
              chosen as the job chooses it; one warm-up epoch each, then --repeats epochs of
              each model in turn.
  prediction: the prediction job (cifar.predict.pipeline.predict: what `cifar-predict --model
              RUN` runs) with the runs' models and an untrained CIFAR10-quick, on the smaller
              folder; Ray started once here (not timed), the first round left out.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import threading
import time
from pathlib import Path

import psutil

from benchmarks.common import describe, machine, parser, start_module, write_json
from benchmarks.streaming import write_photo_tree

TRAIN_WORKER = "ray::RayTrainWorker"  # the proctitle Ray gives the training actor's process


# --------------------------------------------------------------------------- folders


def folders(root: Path, counts: list[int]) -> dict[int, Path]:
    """A tree of ``max(counts)`` photos, and for each smaller count a tree of hard links to its
    first files (same bytes, no second encode)."""
    big = write_photo_tree(root / f"photos{max(counts)}", max(counts))
    out = {max(counts): big}
    for n in sorted(set(counts) - {max(counts)}):
        for f in big.rglob("*.jpg"):
            if int(f.stem[1:]) < n:
                dst = root / f"photos{n}" / f.relative_to(big)
                dst.parent.mkdir(parents=True, exist_ok=True)
                os.link(f, dst)
        out[n] = root / f"photos{n}"
    return out


# --------------------------------------------------------------------------- memory of a run


def vm_hwm_kib(pid: int) -> int:
    """The kernel's RSS high-water mark of ``pid`` (0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def roles(pid: int) -> dict[int, str]:
    """``pid`` (the driver) and its descendants by role: driver, worker (the Ray Train actor),
    loader (a process the worker forked: its DataLoader workers, with the worker's proctitle)."""
    try:
        procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return {}
    titles, parents = {}, {}
    for p in procs:
        try:
            titles[p.pid] = (p.cmdline() or [""])[0]
            parents[p.pid] = p.ppid()
        except psutil.Error:
            continue
    out = {pid: "driver"}
    for q, title in titles.items():
        if title.startswith(TRAIN_WORKER):
            up = titles.get(parents[q], "")
            out[q] = "loader" if up.startswith(TRAIN_WORKER) else "worker"
    return out


def watch(pid: int, stop: threading.Event, every: float) -> dict:
    """Sample until ``stop``: the largest VmHWM per role, the largest USS of one loader process
    and of all at once, and how many processes had each role."""
    hwm: dict[int, int] = {}
    role_of: dict[int, str] = {}
    uss_one = uss_all = 0
    while not stop.wait(every):
        found = roles(pid)
        role_of.update(found)
        for q in found:
            hwm[q] = max(hwm.get(q, 0), vm_hwm_kib(q))
        now = 0
        for q in (q for q, r in found.items() if r == "loader"):
            try:
                uss = psutil.Process(q).memory_full_info().uss // 1024
            except psutil.Error:
                continue
            uss_one, now = max(uss_one, uss), now + uss
        uss_all = max(uss_all, now)
    out: dict = {"sample_every_s": every}
    for r in ("driver", "worker", "loader"):
        mine = [hwm[q] for q, rr in role_of.items() if rr == r]
        out[f"{r}_peak_rss_mib"] = max(mine, default=0) / 1024
        out[f"{r}_processes"] = len(mine)
    out["loader_peak_uss_mib"] = uss_one / 1024
    out["loaders_peak_uss_total_mib"] = uss_all / 1024
    return out


def train_run(tree: Path, size: int, loading: str, runs: Path, a) -> dict:
    """One `python -m jobs.train` run, watched: its memory figures and summary."""
    import json

    name = f"r{size}-{tree.name}-{loading}"
    args = ["--data-dir", tree, "--arch", "resnet18", "--image-size", size]
    args += ["--data-loading", loading, "--epochs", 1, "--num-workers", 1, "--no-gpu"]
    args += ["--batch-size", a.batch, "--storage-path", runs, "--name", name]
    log = runs / f"{name}.log"
    stop, found = threading.Event(), {}
    t = time.perf_counter()
    job = start_module("jobs.train", *args, log=log)
    sampler = threading.Thread(target=lambda: found.update(watch(job.pid, stop, a.every)))
    sampler.start()
    rc = job.wait(timeout=a.timeout)
    stop.set()
    sampler.join()
    if rc != 0:
        raise SystemExit(f"jobs.train failed (rc {rc}):\n{log.read_text()[-3000:]}")
    s = json.loads((runs / name / "summary.json").read_text())
    out = {
        "files": sum(1 for _ in tree.rglob("*.jpg")),
        "size": size,
        "data_loading": loading,
        "run": str(runs / name),
        "wall_s": time.perf_counter() - t,
        "train_img_s": s["train_images_per_s"],
        "train_images": s["data"]["train_images"],
        "compute": s["compute"],
        **found,
    }
    print(
        f"  cifar-train {size:3d} px {out['files']:5d} files {loading:6s}: "
        f"{out['train_img_s']:5.1f} img/s; peak RSS driver {out['driver_peak_rss_mib']:5.0f} "
        f"MiB, worker {out['worker_peak_rss_mib']:5.0f} MiB, loader "
        f"{out['loader_peak_rss_mib']:4.0f} MiB each (unique {out['loader_peak_uss_mib']:3.0f})",
        flush=True,
    )
    return out


# --------------------------------------------------------------------------- training, prediction


def spread(values: list[float]) -> dict:
    med = statistics.median(values)
    return {"median": med, "spread_pct": 100 * (max(values) - min(values)) / med, "each": values}


def engines(tree: Path, a) -> dict:
    """CIFAR10-quick at 32 px and ResNet-18 at each size, as a worker builds them."""
    import torch

    from cifar.data.dataset import TensorSplits
    from cifar.data.folders import load_folders
    from cifar.models.registry import ModelSpec
    from cifar.train.config import TrainConfig, resolve_recipe
    from cifar.train.engine import build, job_compute

    out = {}
    for arch, size in [("cifar10_quick", 32), *(("resnet18", s) for s in a.sizes)]:
        data = load_folders(str(tree), 0.1, size)
        tensors = data.tensors()
        for k in ("train_images", "train_labels"):
            tensors[k] = tensors[k][: a.train_images]
        cfg = TrainConfig(arch=arch, image_size=size, epochs=a.repeats + 1, batch_size=a.batch)
        cfg = resolve_recipe(cfg, a.train_images, 1)
        spec = ModelSpec.of(arch, data.classes, *data.channel_stats(), input_size=size)
        compute = job_compute(cfg, spec, torch.device("cpu"))
        out[f"{arch}@{size}"] = build(cfg, TensorSplits(tensors), spec, compute)
    return out


def training(tree: Path, a) -> dict:
    from cifar.train.engine import train_one_epoch

    built = engines(tree, a)
    rates: dict[str, list[float]] = {k: [] for k in built}
    for e in built.values():
        train_one_epoch(e, 0)  # warm-up: allocator, oneDNN kernels
    for r in range(a.repeats):
        order = list(built)[r % len(built) :] + list(built)[: r % len(built)]
        for k in order:
            st = train_one_epoch(built[k], r + 1)
            rates[k].append(st.samples / st.seconds)
    base = rates["cifar10_quick@32"]
    out = {}
    for k, e in built.items():
        ratios = [x / b for x, b in zip(rates[k], base, strict=True)]
        out[k] = {
            "img_s": spread(rates[k]),
            "vs_cifar10_quick": spread(ratios),
            "compute": e.compute.describe(),
        }
        print(
            f"  engine {k:18s} {out[k]['img_s']['median']:7.1f} img/s "
            f"(spread {out[k]['img_s']['spread_pct']:.0f}%)  "
            f"{out[k]['vs_cifar10_quick']['median']:.3f}x CIFAR10-quick  "
            f"[{e.compute.describe()['precision']}]",
            flush=True,
        )
    return out


def prediction(models: dict[str, str], folder: Path, work: Path, a) -> dict:
    """images/s of the prediction job per model, rounds in turn, the first round left out."""
    import ray

    from benchmarks.common import local_cluster
    from cifar.predict.config import PredictConfig
    from cifar.predict.pipeline import predict

    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, configure_logging=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    rates: dict[str, list[float]] = {k: [] for k in models}
    for r in range(a.repeats + 1):
        for k, model in models.items():
            out = work / f"pred-{k}"
            cfg = PredictConfig(model=model, input=[str(folder)], output=str(out), overwrite=True)
            s = predict(cfg, local_cluster())
            assert s["errors"] == 0, s
            if r:
                rates[k].append(s["images_per_s"])
    ray.shutdown()
    base = rates["cifar10_quick@32"]
    res = {}
    for k in models:
        ratios = [x / b for x, b in zip(rates[k], base, strict=True)]
        res[k] = {"img_s": spread(rates[k]), "vs_cifar10_quick": spread(ratios)}
        print(
            f"  predict {k:18s} {res[k]['img_s']['median']:7.1f} img/s (spread "
            f"{res[k]['img_s']['spread_pct']:.0f}%)  {res[k]['vs_cifar10_quick']['median']:.3f}x "
            "CIFAR10-quick",
            flush=True,
        )
    return res


def main() -> None:
    p = parser(__doc__, "resnet_cpu.json")
    p.add_argument("--sizes", type=int, nargs="+", default=[64, 128])
    p.add_argument("--folders", type=int, nargs="+", default=[1000, 8000], help="files")
    p.add_argument("--train-images", type=int, default=512, help="per engine epoch")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--every", type=float, default=0.2, help="memory sampling interval, s")
    p.add_argument("--control", action="store_true", help="also --data-loading memory")
    p.add_argument("--timeout", type=float, default=1800, help="per training run, s")
    a = p.parse_args()
    info = machine()
    print(f"[{describe(info)}]", flush=True)
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench-resnet-") as tmp:
        root = Path(tmp)
        trees = folders(root, a.folders)
        small = trees[min(a.folders)]
        runs_dir = root / "runs"
        runs_dir.mkdir()
        plan = [(small, s, "stream") for s in a.sizes]
        plan += [(trees[n], a.sizes[0], "stream") for n in sorted(a.folders)[1:]]
        if a.control:
            plan.append((trees[max(a.folders)], a.sizes[0], "memory"))
        runs = [train_run(tree, s, how, runs_dir, a) for tree, s, how in plan]
        res: dict = {"batch": a.batch, "repeats": a.repeats, "cifar_train_runs": runs}
        res["load_average_1min"] = [load, os.getloadavg()[0]]  # start, after the runs
        res["engine_training"] = training(small, a)
        (root / "quick").mkdir()
        from benchmarks.common import untrained_model

        models = {"cifar10_quick@32": str(untrained_model(root / "quick"))}
        models.update({f"resnet18@{r['size']}": r["run"] for r in runs[: len(a.sizes)]})
        res["prediction"] = prediction(models, small / "train", root, a)
        res["prediction_files"] = sum(1 for _ in (small / "train").rglob("*.jpg"))
        res["load_average_1min"].append(os.getloadavg()[0])  # at the end
    write_json(a.json, info, res)


if __name__ == "__main__":
    main()
