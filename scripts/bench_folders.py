"""Image-folder training data: decode + cache throughput, and training speed from the cache.

    .venv/bin/python scripts/bench_folders.py [--small 50000] [--large 2000] [--json out.json]

Writes (in a temporary folder, removed afterwards):
  small: a 10-class tree of --small generated images, 32-96 px PNGs (a quarter JPEGs);
  large: a 2-class tree of --large 1024x768 JPEG photos;
then, on a local Ray runtime, loads each tree as the training job does (cifar.folders):
  decoded in this process, decoded in parallel Ray tasks and cached (a first run), and read from
  the cache (every later run). Finally it trains 2 epochs through the job (cifar.train.run,
  1 worker) on the small tree's cache and on a CIFAR-format set of the same size: the second
  epoch's images/s of each, which should be equal (both are uint8 tensors in memory).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import describe, machine

from cifar import folders
from cifar.images import decode_batch
from cifar.synthetic import write_folders, write_synthetic


def write_large(root: Path, n: int, seed: int = 0) -> Path:
    """n 1024x768 JPEGs of smooth random colour fields with noise, in two class folders."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        coarse = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8), "RGB")
        img = np.asarray(coarse.resize((1024, 768), Image.BICUBIC), dtype=np.int16)
        img = np.clip(img + rng.integers(-20, 21, img.shape), 0, 255).astype(np.uint8)
        folder = root / "train" / ("a" if i % 2 else "b")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(folder / f"photo_{i:05d}.jpg", quality=90)
    return root


def time_loads(root: Path) -> dict:
    tree = folders.scan(str(root))
    n = len(tree.files)
    paths = tree.paths()
    t = time.perf_counter()
    for s in range(0, n, 256):  # what decode_files does without Ray
        decode_batch({"path": np.array(paths[s : s + 256], dtype=object)})
    serial = time.perf_counter() - t
    shutil.rmtree(root / folders.CACHE_DIR, ignore_errors=True)
    t = time.perf_counter()
    first = folders.load_folders(str(root))
    first_s = time.perf_counter() - t
    t = time.perf_counter()
    folders.load_folders(str(root))
    cached_s = time.perf_counter() - t
    cache_file = Path(first.info["decode"]["cache_file"])
    return {
        "files": n,
        "in_process_img_s": n / serial,
        "first_run_s": first_s,
        "first_run_img_s": n / first_s,
        "cached_run_s": cached_s,
        "cached_run_img_s": n / cached_s,
        "cache_mib": cache_file.stat().st_size / 2**20,
    }


def job_img_s(data_dir: Path, storage: Path, name: str) -> float:
    import os

    from cifar.raycluster import ClusterInfo
    from cifar.train import run
    from cifar.train_config import TrainConfig

    cfg = TrainConfig(
        data_dir=str(data_dir),
        download=False,
        epochs=2,
        num_workers=1,
        use_gpu=False,
        storage_path=str(storage),
        name=name,
    )
    summary = run(cfg, ClusterInfo(cpus=float(os.cpu_count()), gpus=0))
    return summary["history"][-1]["images_per_s"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--small", type=int, default=50000)
    p.add_argument("--large", type=int, default=2000)
    p.add_argument("--no-train", action="store_true", help="skip the training comparison")
    p.add_argument("--json")
    a = p.parse_args()
    import ray

    info = machine()
    work = Path(tempfile.mkdtemp(prefix="bench-folders-"))
    res: dict = {"machine": info, "small_images": a.small, "large_images": a.large}
    try:
        t = time.perf_counter()
        small = write_folders(work / "small", a.small, 0, num_classes=10, seed=0)
        print(f"wrote {a.small} small images in {time.perf_counter() - t:.0f}s")
        large = write_large(work / "large", a.large) if a.large else None
        ray.init(include_dashboard=False, configure_logging=False, log_to_driver=False)
        res["small"] = time_loads(small)
        if large is not None:
            res["large"] = time_loads(large)
        if not a.no_train:
            cifar_dir = work / "cifar"
            n_val = round(a.small * 0.1)  # what the folder tree holds out with --val-fraction
            write_synthetic(cifar_dir, a.small - n_val, n_val, seed=0)
            res["train_img_s"] = {
                "folder_cache": job_img_s(small, work / "runs", "folders"),
                "cifar_format": job_img_s(cifar_dir, work / "runs", "cifar"),
            }
        ray.shutdown()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"[{describe(info)}]")
    for k in ("small", "large"):
        if k in res:
            r = res[k]
            print(
                f"  {k:5s} {r['files']:6d} files: in one process {r['in_process_img_s']:7.0f} "
                f"img/s; first run (Ray tasks + cache write) {r['first_run_s']:6.1f}s = "
                f"{r['first_run_img_s']:7.0f} img/s; cached {r['cached_run_s']:5.2f}s = "
                f"{r['cached_run_img_s']:8.0f} img/s; cache {r['cache_mib']:.0f} MiB"
            )
    if "train_img_s" in res:
        t = res["train_img_s"]
        print(
            f"  training (job, 1 worker, epoch 2): folder cache {t['folder_cache']:.0f} img/s, "
            f"CIFAR format {t['cifar_format']:.0f} img/s "
            f"({t['folder_cache'] / t['cifar_format']:.2f}x)"
        )
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
