"""Streamed training data vs torchvision's reference loader: images/s of what a training step
receives, same files, same DataLoader workers, size and batch, in this process.

    python -m benchmarks.streaming [--files 3000] [--sizes 64 224] [--workers 2] [--batch 64]
        [--repeats 5] [--threads 2] [--json benchmarks/results/streaming_cpu.json]

Writes a folder of photo-like JPEGs (smooth colour fields plus noise, sides drawn from
256-500 px, quality 90: they compress and decode as photos do) as train/<class>/... with a
small val/, then at each size times one epoch of
  ours:      the training job's streamed path: FileSplits (cifar.data.folders.list_tree) through
             the DataLoader that cifar.data.loaders.shard_loaders builds for rank 0 of 1
             (FileDataset.__getitems__ decodes + resizes a batch to uint8 in a loader process),
             then model_input (random resized crop + flip + normalise, in this process);
  reference: torchvision.datasets.ImageFolder(train/) with RandomResizedCrop(size) +
             RandomHorizontalFlip() + ToTensor() + Normalize(ImageNet), DataLoader +
             DistributedSampler(num_replicas=1, rank=0), persistent workers.
Both loaders are built once; their first epoch (worker start-up) is left out. The timed epochs
alternate between the two (which goes first alternates too), so drift from other load on the
machine falls on both. Prints the median images/s, its spread and the median of the per-repeat
ratios ours / reference; then each stage's CPU time per image on one thread, the figure that
other load on the machine moves least. --threads: torch threads in this process (a training
worker has one per CPU it holds: the default).
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import describe, machine, parser, write_json

CLASSES = ("ant", "bee", "cat", "dog")
SIDES = (256, 500)  # photo sides, each drawn apart (most photos are not square)
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # ImageNet's, for both loaders


def write_photo_tree(root: Path, n_train: int, n_val: int = 0, seed: int = 0) -> Path:
    """``root/train/<class>/pNNNNNN.jpg`` (``n_train`` files, classes in turn) and as many
    under ``val/`` as ``n_val``: JPEGs whose width and height are each drawn from ``SIDES``."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("val", n_val)):
        for i in range(n):
            w, h = (int(s) for s in rng.integers(SIDES[0], SIDES[1] + 1, 2))
            grid = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8), "RGB")
            img = np.asarray(grid.resize((w, h), Image.BICUBIC), dtype=np.int16)
            img = img + rng.integers(-20, 21, img.shape)
            sub = root / split / CLASSES[i % len(CLASSES)]
            sub.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(
                sub / f"p{i:06d}.jpg", quality=90
            )
    return root


# --------------------------------------------------------------------------- the two loaders


def ours(root: Path, size: int, batch: int, workers: int):
    """The job's streamed training loader for rank 0 of 1 and the step that turns a batch into
    the model's input: ``(loader, prepare)``."""
    from cifar.data import folders
    from cifar.data.loaders import shard_loaders
    from cifar.data.transforms import model_input

    splits = folders.list_tree(folders.scan(str(root), size))
    loader, _ = shard_loaders(splits, batch, False, 0, size, 0, 1, torch.device("cpu"), workers)
    generator = torch.Generator().manual_seed(0)

    def prepare(batch):
        images, labels, skipped = batch
        assert not skipped
        return model_input(images, size, MEAN, STD, augment=True, generator=generator), labels

    return loader, prepare


def reference(root: Path, size: int, batch: int, workers: int):
    """torchvision's ImageFolder + the usual photo transforms, sharded as DDP shards it."""
    from torch.utils.data import DataLoader, DistributedSampler
    from torchvision import datasets, transforms

    tf = transforms.Compose(
        [
            transforms.RandomResizedCrop(size),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(MEAN, STD),
        ]
    )
    data = datasets.ImageFolder(str(root / "train"), transform=tf)
    sampler = DistributedSampler(data, num_replicas=1, rank=0, shuffle=True, seed=0)
    loader = DataLoader(
        data,
        batch_size=batch,
        sampler=sampler,
        num_workers=workers,
        persistent_workers=workers > 0,
        prefetch_factor=2 if workers else None,
    )
    return loader, lambda b: b


def cpu_seconds() -> float:
    """CPU seconds used so far by this process and its loader processes (user + system)."""
    import psutil

    me = psutil.Process()
    total = 0.0
    for p in (me, *me.children(recursive=True)):
        try:
            t = p.cpu_times()
        except psutil.Error:
            continue
        total += t.user + t.system
    return total


def epoch(loader, prepare, number: int, size: int) -> dict:
    """One epoch: images/s, images, the share of the wall time spent in ``prepare`` (in this
    process), and the CPU milliseconds per image of this process and the loader's processes
    together (the other loader's processes sit idle meanwhile)."""
    loader.sampler.set_epoch(number)
    n, in_prepare = 0, 0.0
    cpu, t = cpu_seconds(), time.perf_counter()
    for batch in loader:
        t1 = time.perf_counter()
        x, labels = prepare(batch)
        in_prepare += time.perf_counter() - t1
        assert x.dtype == torch.float32 and tuple(x.shape[1:]) == (3, size, size)
        n += len(labels)
    wall, cpu = time.perf_counter() - t, cpu_seconds() - cpu
    return {"img_s": n / wall, "n": n, "prepare": in_prepare / wall, "cpu_ms": 1000 * cpu / n}


def cpu_ms_per_image(root: Path, size: int, n: int = 256) -> dict:
    """CPU milliseconds per image of each stage on one thread (``time.thread_time``, best of
    3): what other load on the machine changes least. Reference: one sample through
    ImageFolder's transforms; ours: FileDataset.__getitems__ (decode + resize) and
    model_input on a batch."""
    from cifar.data import folders
    from cifar.data.transforms import model_input

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    ref = reference(root, size, 64, 0)[0].dataset
    mine = folders.list_tree(folders.scan(str(root), size)).dataset("train")
    idx = list(range(min(n, len(mine))))
    images = mine.__getitems__(idx[:64])[0]
    g = torch.Generator().manual_seed(0)

    def best(f, count: int) -> float:
        ts = []
        for _ in range(3):
            t = time.thread_time()
            f()
            ts.append(time.thread_time() - t)
        return 1000 * min(ts) / count

    out = {
        "reference_sample": best(lambda: [ref[i] for i in idx], len(idx)),
        "ours_decode_resize": best(lambda: mine.__getitems__(idx), len(idx)),
        "ours_model_input": best(
            lambda: model_input(images, size, MEAN, STD, augment=True, generator=g), 64
        ),
    }
    torch.set_num_threads(threads)
    out["ours_total"] = out["ours_decode_resize"] + out["ours_model_input"]
    return out


# --------------------------------------------------------------------------- measuring


def spread(values: list[float]) -> dict:
    med = statistics.median(values)
    return {
        "median": med,
        "min": min(values),
        "max": max(values),
        "spread_pct": 100 * (max(values) - min(values)) / med,
        "each": values,
    }


def measure(root: Path, size: int, a) -> dict:
    both = {"ours": ours(root, size, a.batch, a.workers)}
    both["reference"] = reference(root, size, a.batch, a.workers)
    runs: dict[str, list[dict]] = {k: [] for k in both}
    counts = {k: epoch(*both[k], 0, size)["n"] for k in both}  # warm-up: loader processes
    assert counts["ours"] == counts["reference"]
    for r in range(a.repeats):
        for k in list(both) if r % 2 == 0 else list(both)[::-1]:
            runs[k].append(epoch(*both[k], r + 1, size))

    def each(k: str, field: str) -> list[float]:
        return [run[field] for run in runs[k]]

    out = {"size": size, "images_per_epoch": counts["ours"]}
    for k in both:
        out[f"{k}_img_s"] = spread(each(k, "img_s"))
        out[f"{k}_cpu_ms_per_image"] = spread(each(k, "cpu_ms"))
    pairs = zip(each("ours", "img_s"), each("reference", "img_s"), strict=True)
    out["ratio"] = spread([o / r for o, r in pairs])
    pairs = zip(each("reference", "cpu_ms"), each("ours", "cpu_ms"), strict=True)
    out["cpu_ratio"] = spread([r / o for r, o in pairs])  # > 1: ours costs less CPU
    out["ours_augment_share_of_wall"] = statistics.median(each("ours", "prepare"))
    out["cpu_ms_per_image_1_thread"] = cpu_ms_per_image(root, size)
    report(out)
    return out


def report(out: dict) -> None:
    o, r, c = out["ours_img_s"], out["reference_img_s"], out["cpu_ms_per_image_1_thread"]
    print(
        f"  {out['size']:4d} px  ours {o['median']:6.0f} img/s ({o['min']:.0f}-{o['max']:.0f})  "
        f"reference {r['median']:6.0f} img/s ({r['min']:.0f}-{r['max']:.0f})  ours/reference "
        f"{out['ratio']['median']:.2f}x ({out['ratio']['min']:.2f}-{out['ratio']['max']:.2f}); "
        f"model_input {out['ours_augment_share_of_wall']:.0%} of ours' wall time",
        flush=True,
    )
    print(
        f"        CPU ms/image, all processes: ours {out['ours_cpu_ms_per_image']['median']:.2f}"
        f", reference {out['reference_cpu_ms_per_image']['median']:.2f} (reference/ours "
        f"{out['cpu_ratio']['median']:.2f}x); one thread: reference {c['reference_sample']:.2f},"
        f" ours {c['ours_total']:.2f} = decode+resize {c['ours_decode_resize']:.2f} + "
        f"model_input {c['ours_model_input']:.2f}",
        flush=True,
    )


def main() -> None:
    p = parser(__doc__, "streaming_cpu.json")
    p.add_argument("--files", type=int, default=3000, help="training JPEGs")
    p.add_argument("--sizes", type=int, nargs="+", default=[64, 224])
    p.add_argument("--workers", type=int, default=os.cpu_count(), help="DataLoader processes")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--repeats", type=int, default=5, help="timed epochs per loader and size")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads here")
    p.add_argument("--data", help="an existing tree (default: generate one)")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    info = machine()
    with tempfile.TemporaryDirectory(prefix="bench-streaming-") as tmp:
        root = Path(a.data) if a.data else write_photo_tree(Path(tmp), a.files, 64)
        kib = sum(f.stat().st_size for f in (root / "train").rglob("*.jpg")) / a.files / 1024
        print(
            f"[{describe(info)}] {a.files} JPEGs of {SIDES[0]}-{SIDES[1]} px ({kib:.0f} KiB "
            f"each on average), batch {a.batch}, {a.workers} loader processes, "
            f"{torch.get_num_threads()} torch threads here",
            flush=True,
        )
        load = os.getloadavg()[0]
        res = {
            "files": a.files,
            "mean_file_kib": kib,
            "batch": a.batch,
            "loader_workers": a.workers,
            "torch_threads": torch.get_num_threads(),
            "repeats": a.repeats,
            "sizes": [measure(root, s, a) for s in a.sizes],
            "load_average_1min": [load, os.getloadavg()[0]],  # before, after
        }
    write_json(a.json, info, res)


if __name__ == "__main__":
    main()
