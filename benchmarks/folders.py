"""Image-folder training data: decode + cache throughput, and training speed from the cache.

    python -m benchmarks.folders [--small 50000] [--large 2000] [--no-train]
        [--json benchmarks/results/folders_cpu.json]

Writes (in a temporary folder, removed afterwards):
  small: a 10-class tree of --small generated images, 32-96 px PNGs (a quarter JPEGs);
  large: a 2-class tree of --large 1024x768 JPEG photos;
then, on a local Ray runtime, loads each tree as the training job does (cifar.data.folders):
  decoded in this process, decoded in parallel Ray tasks and cached (a first run), and read from
  the cache (every later run). Finally it trains 2 epochs through the job
  (cifar.train.driver.train, 1 worker) on the small tree's cache and on a CIFAR-format set of
  the same size: the second epoch's images/s of each, which should be equal (both are uint8
  tensors in memory).
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import (
    describe,
    local_cluster,
    machine,
    parser,
    use_job_train_env,
    write_json,
    write_photos,
)
from cifar.data import folders
from cifar.data.synthetic import write_folders, write_synthetic
from cifar.io.images import decode_batch
from cifar.train.config import TrainConfig


def time_loads(root: Path) -> dict:
    tree = folders.scan(str(root))
    n = len(tree.files)
    paths = tree.paths()
    t = time.perf_counter()
    for s in range(0, n, 256):  # what decode_files does without Ray
        decode_batch({"path": np.array(paths[s : s + 256], dtype=object)}, tree.size)
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


def job_config(data_dir: Path, storage: Path, name: str) -> TrainConfig:
    return TrainConfig(
        data_dir=str(data_dir),
        download=False,
        epochs=2,
        num_workers=1,
        use_gpu=False,
        storage_path=str(storage),
        name=name,
    )


def job_img_s(cfg: TrainConfig) -> float:
    from cifar.train.driver import train

    return train(cfg, local_cluster())["history"][-1]["images_per_s"]


def measure(work: Path, n_small: int, n_large: int, with_training: bool) -> dict:
    import ray

    t = time.perf_counter()
    small = write_folders(work / "small", n_small, 0, num_classes=10, seed=0)
    print(f"wrote {n_small} small images in {time.perf_counter() - t:.0f}s")
    if n_large:
        write_photos(work / "large" / "train", n_large, classes=("b", "a"))
    runs = work / "runs"
    use_job_train_env(job_config(small, runs, "folders"))
    ray.init(include_dashboard=False, configure_logging=False, log_to_driver=False)
    res: dict = {"small_images": n_small, "large_images": n_large, "small": time_loads(small)}
    if n_large:
        res["large"] = time_loads(work / "large")
    if with_training:
        cifar_dir = work / "cifar"
        n_val = round(n_small * 0.1)  # what the folder tree holds out with --val-fraction
        write_synthetic(cifar_dir, n_small - n_val, n_val, seed=0)
        res["train_img_s"] = {
            "folder_cache": job_img_s(job_config(small, runs, "folders")),
            "cifar_format": job_img_s(job_config(cifar_dir, runs, "cifar")),
        }
    ray.shutdown()
    return res


def report(info: dict, res: dict) -> None:
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


def main() -> None:
    p = parser(__doc__, "folders_cpu.json")
    p.add_argument("--small", type=int, default=50000)
    p.add_argument("--large", type=int, default=2000)
    p.add_argument("--no-train", action="store_true", help="skip the training comparison")
    a = p.parse_args()
    info = machine()
    work = Path(tempfile.mkdtemp(prefix="bench-folders-"))
    try:
        res = measure(work, a.small, a.large, not a.no_train)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report(info, res)
    write_json(a.json, info, res)


if __name__ == "__main__":
    main()
