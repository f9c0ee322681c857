"""Prediction throughput: the Ray Data job vs a one-image-at-a-time loop, same files, same run.

    python -m benchmarks.predict [--small 20000] [--large 1000] [--repeats 2]
        [--json benchmarks/results/predict_cpu.json]

Builds a folder of small PNGs (32-64 px, like CIFAR crops) and one of larger JPEG photos
(1024x768), then for each folder times
  (a) the tutorial's test.py way, one file at a time: open, convert, resize, ToTensor, forward;
  (b) the bulk job (cifar.predict.pipeline.predict) on an already started Ray runtime: Ray
      start-up is timed apart and left out of (b), as the job's summary does. The job runs
      --repeats times: the first run is also the first Ray Data job of this Ray instance (it
      starts Ray Data's own helper actors); later runs are what a job on a cluster that is
      already up sees.
Prints images/s and the ratios (b)/(a); writes the figures as JSON with --json.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

from benchmarks.common import (
    describe,
    local_cluster,
    machine,
    parser,
    untrained_model,
    write_images,
    write_json,
    write_photos,
)
from cifar.models.cifar_quick import CifarQuick
from cifar.predict.config import PredictConfig
from cifar.predict.pipeline import predict


def one_at_a_time(model_dir: Path, files: list[Path]) -> float:
    """The tutorial's test.py per file (its preprocessing: Resize((32, 32)) + ToTensor)."""
    import torchvision

    torch.set_num_threads(os.cpu_count() or 1)
    model = CifarQuick()
    model.load_state_dict(torch.load(model_dir / "model.pt", weights_only=True))
    model.eval()
    tf = torchvision.transforms.Compose(
        [torchvision.transforms.Resize((32, 32)), torchvision.transforms.ToTensor()]
    )
    t = time.perf_counter()
    for f in files:
        image = tf(Image.open(f).convert("RGB"))
        with torch.no_grad():
            model(torch.reshape(image, (1, 3, 32, 32))).argmax(1)
    return len(files) / (time.perf_counter() - t)


def bulk(model_dir: Path, folder: Path, out: Path, args: argparse.Namespace) -> dict:
    cfg = PredictConfig(
        model=str(model_dir),
        input=[str(folder)],
        output=str(out),
        overwrite=True,
        batch_size=args.batch_size,
        files_per_block=args.files_per_block,
        num_actors=args.num_actors,
        cpus_per_actor=args.cpus_per_actor,
        gpus_per_actor=args.gpus_per_actor,
    )
    return predict(cfg, local_cluster())


def measure(root: Path, name: str, args: argparse.Namespace) -> dict | None:
    """Both ways on one folder; None when it is empty (--small 0 / --large 0 skip it)."""
    files = sorted((root / name).rglob("*.*"))
    if not files:
        return None
    model_dir = root / "model"
    loop = one_at_a_time(model_dir, files)
    rates = []
    for _ in range(max(1, args.repeats)):
        s = bulk(model_dir, root / name, root / f"out-{name}", args)
        assert s["rows"] == len(files) and s["errors"] == 0
        rates.append(s["images_per_s"])
    first, later = rates[0], max(rates[1:], default=None)
    line = (
        f"{name:5s} {len(files):6d} files  one-at-a-time {loop:6.0f} img/s  "
        f"job first run {first:6.0f} img/s ({first / loop:4.2f}x)"
    )
    if later:
        line += f"  later runs best {later:6.0f} img/s ({later / loop:4.2f}x)"
    print(line, flush=True)
    return {
        "files": len(files),
        "one_at_a_time_img_s": loop,
        "job_img_s_each_run": rates,
        "job_first_run_img_s": first,
        "ratio_first_run": first / loop,
        "job_later_runs_best_img_s": later,
        "ratio_later_runs": later / loop if later else None,
        "compute": s["compute"],  # what the job's actors computed in, and why
    }


def main() -> None:
    p = parser(__doc__, "predict_cpu.json")
    p.add_argument("--small", type=int, default=20000)
    p.add_argument("--large", type=int, default=1000)
    p.add_argument("--repeats", type=int, default=2, help="job runs per folder (first = cold)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--files-per-block", type=int, default=1024)
    p.add_argument("--num-actors", default="auto")
    p.add_argument("--cpus-per-actor", type=float, default=None)
    p.add_argument("--gpus-per-actor", type=float, default=0.0)
    args = p.parse_args()
    import ray

    info = machine()
    with tempfile.TemporaryDirectory(prefix="bench-predict-") as tmp:  # GBs at --small 100000
        root = Path(tmp)
        untrained_model(root)
        write_images(root / "small", args.small, sides=(32, 64))
        # smooth fields without noise: the photos the recorded figures were measured on
        write_photos(root / "large", args.large, coarse=(48, 64), noise=0)

        t = time.perf_counter()
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, configure_logging=False)
        ray.data.DataContext.get_current().enable_progress_bars = False
        results: dict = {"ray_start_s": time.perf_counter() - t}
        for name in ("small", "large"):
            figures = measure(root, name, args)
            if figures is not None:
                results[name] = figures
    c = results["small" if "small" in results else "large"]["compute"]
    print(
        f"Ray start-up (not included above): {results['ray_start_s']:.1f}s; actors in "
        f"{c['precision']}{' + channels_last' if c['channels_last'] else ''} ({c['chosen_by']})"
        f"  [{describe(info)}]"
    )
    write_json(args.json, info, results)


if __name__ == "__main__":
    main()
