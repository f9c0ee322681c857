"""Streamed training at photo sizes against the project's in-memory path and torchvision's
reference recipe: images/s of whole training steps, same files, model, precision, batch and
loader processes, in this process.

    python -m benchmarks.streaming [--files 300] [--sides 900 1300] [--size 224]
        [--arch resnet18] [--workers 2] [--batch 32] [--repeats 3] [--threads 2]
        [--json benchmarks/results/streaming_cpu.json]

Writes photo-like JPEGs (smooth colour fields plus noise, quality 90: they compress and decode
as photos do; each side drawn from --sides, camera-sized by default) as train/<class>/... with
a small val/, then times epochs of the job's engine (cifar.train.engine.build +
train_one_epoch: what a Ray Train worker runs) on
  ours:      the streamed path: FileSplits (cifar.data.folders.list_tree, augment on) through
             the loader cifar.data.loaders.shard_loaders builds for rank 0 of 1; the loader
             processes decode each file at a reduced JPEG scale, take torchvision's random
             resized crop of the original + flip, to uint8 S x S (cifar.data.augment); the
             training process normalises;
  memory:    the in-memory path: the same files decoded once at S x S (load_folders), the
             random resized crop + flip on the device (cifar.data.transforms), no loader
             processes;
  reference: torchvision.datasets.ImageFolder(train/) with RandomResizedCrop(S) +
             RandomHorizontalFlip() + ToTensor() + Normalize(ImageNet), DataLoader +
             DistributedSampler(num_replicas=1, rank=0), persistent workers, and the usual
             loop (forward, loss, backward, step) on the same model and precision.
One warm-up epoch each (loader processes, kernels), then --repeats epochs of each in turn (the
order rotates), so drift from other load on the machine falls on all three. Prints the median
images/s and the medians of the per-round ratios ours / memory and ours / reference; then each
loader stage's CPU time per image on one thread (what other load moves least).
"""

from __future__ import annotations

import dataclasses
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
CAMERA = (900, 1300)  # camera-sized photos (the 1,200 px JPEGs)
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # ImageNet's, for every path


def write_photo_tree(
    root: Path, n_train: int, n_val: int = 0, seed: int = 0, sides: tuple[int, int] = SIDES
) -> Path:
    """``root/train/<class>/pNNNNNN.jpg`` (``n_train`` files, classes in turn) and as many
    under ``val/`` as ``n_val``: JPEGs whose width and height are each drawn from ``sides``."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("val", n_val)):
        for i in range(n):
            w, h = (int(s) for s in rng.integers(sides[0], sides[1] + 1, 2))
            grid = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8), "RGB")
            img = np.asarray(grid.resize((w, h), Image.BICUBIC), dtype=np.int16)
            img = img + rng.integers(-20, 21, img.shape)
            sub = root / split / CLASSES[i % len(CLASSES)]
            sub.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(
                sub / f"p{i:06d}.jpg", quality=90
            )
    return root


# --------------------------------------------------------------------------- the three paths


def engines(root: Path, a) -> dict:
    """The job's engine over the streamed files and over the same files in memory, and one
    more for the reference loop (its model, optimizer and precision; its own loader)."""
    from cifar.data import folders
    from cifar.models.registry import ModelSpec
    from cifar.train.config import TrainConfig, resolve_recipe
    from cifar.train.engine import build, job_compute

    streamed = folders.list_tree(folders.scan(str(root), a.size), 0.1, augment=True)
    memory = folders.load_folders(str(root), 0.1, a.size)
    n = streamed.n_train
    cfg = TrainConfig(arch=a.arch, image_size=a.size, epochs=a.repeats + 1, batch_size=a.batch)
    cfg = resolve_recipe(cfg, n, 1)
    spec = ModelSpec.of(a.arch, streamed.classes, MEAN, STD, input_size=a.size)
    compute = job_compute(cfg, spec, torch.device("cpu"), n_train=n)
    ref = build(cfg, memory.splits(), spec, compute)
    return {
        "ours": build(cfg, streamed, spec, compute, loader_workers=a.workers),
        "memory": build(cfg, memory.splits(), spec, compute),
        "reference": dataclasses.replace(ref, train_loader=reference(root, a)),
    }


def reference(root: Path, a, workers: int | None = None):
    """torchvision's ImageFolder + the usual photo transforms, sharded as DDP shards it."""
    from torch.utils.data import DataLoader, DistributedSampler
    from torchvision import datasets, transforms

    tf = transforms.Compose(
        [
            transforms.RandomResizedCrop(a.size),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(MEAN, STD),
        ]
    )
    data = datasets.ImageFolder(str(root / "train"), transform=tf)
    sampler = DistributedSampler(data, num_replicas=1, rank=0, shuffle=True, seed=0)
    workers = a.workers if workers is None else workers
    return DataLoader(
        data,
        batch_size=a.batch,
        sampler=sampler,
        num_workers=workers,
        persistent_workers=workers > 0,
        prefetch_factor=2 if workers else None,
    )


def reference_epoch(e, epoch: int) -> tuple[int, float]:
    """The reference recipe's loop (torchvision's references/classification train_one_epoch,
    less its logging) on the engine's model, optimizer and precision: (images, seconds)."""
    e.train_loader.sampler.set_epoch(epoch)
    e.train_mode()
    n, t = 0, time.perf_counter()
    for x, y in e.train_loader:
        if e.compute.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with e.compute.autocast():
            loss = e.loss_fn(e.model(x).float(), y)
        e.optimizer.zero_grad(set_to_none=True)
        e.scaler.scale(loss).backward()
        e.scaler.step(e.optimizer)
        e.scaler.update()
        n += len(y)
    return n, time.perf_counter() - t


def run_epoch(name: str, e, epoch: int) -> tuple[int, float]:
    from cifar.train.engine import train_one_epoch

    if name == "reference":
        return reference_epoch(e, epoch)
    st = train_one_epoch(e, epoch)
    assert not st.skipped
    return st.samples, st.seconds


def cpu_ms_per_image(root: Path, a, n: int = 64) -> dict:
    """CPU milliseconds per image of each loader stage on one thread (``time.thread_time``,
    best of 3): the reference's transforms on one sample; ours' decode + crop (a loader
    process's work) and normalisation (the training process's); the in-memory path's device
    crop + normalisation."""
    from cifar.data import folders
    from cifar.data.transforms import model_input

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    ref = reference(root, a, 0).dataset
    mine = folders.list_tree(folders.scan(str(root), a.size), 0.1, augment=True).dataset("train")
    idx = list(range(min(n, len(mine))))
    keys = [(0, 1, i) for i in idx]
    images = mine.__getitems__(keys)[0]
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
        "ours_decode_crop": best(lambda: mine.__getitems__(keys), len(idx)),
        "ours_normalize": best(lambda: model_input(images, a.size, MEAN, STD), len(idx)),
        "memory_device_crop": best(
            lambda: model_input(images, a.size, MEAN, STD, True, g), len(idx)
        ),
    }
    torch.set_num_threads(threads)
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


def measure(root: Path, a) -> dict:
    built = engines(root, a)
    rates: dict[str, list[float]] = {k: [] for k in built}
    counts = {}
    for k, e in built.items():  # warm-up: loader processes, kernels
        counts[k], seconds = run_epoch(k, e, 0)
        print(f"    warm-up {k:9s} {counts[k] / seconds:6.1f} img/s", flush=True)
    assert len(set(counts.values())) == 1, counts
    for r in range(a.repeats):
        order = list(built)[r % len(built) :] + list(built)[: r % len(built)]
        for k in order:
            n, seconds = run_epoch(k, built[k], r + 1)
            rates[k].append(n / seconds)
            print(f"    round {r + 1} {k:9s} {n / seconds:6.1f} img/s", flush=True)
    out = {
        "size": a.size,
        "arch": a.arch,
        "images_per_epoch": counts["ours"],
        "compute": built["ours"].compute.describe(),
    }
    for k in built:
        out[f"{k}_img_s"] = spread(rates[k])
    for k in ("memory", "reference"):
        pairs = zip(rates["ours"], rates[k], strict=True)
        out[f"ours_vs_{k}"] = spread([o / b for o, b in pairs])
    out["cpu_ms_per_image_1_thread"] = cpu_ms_per_image(root, a)
    report(out)
    return out


def report(out: dict) -> None:
    m = {k: out[f"{k}_img_s"] for k in ("ours", "memory", "reference")}
    rate = "  ".join(f"{k} {v['median']:.1f} ({v['min']:.1f}-{v['max']:.1f})" for k, v in m.items())
    vm, vr, c = out["ours_vs_memory"], out["ours_vs_reference"], out["cpu_ms_per_image_1_thread"]
    print(
        f"  {out['arch']} at {out['size']} px, img/s: {rate}\n"
        f"  ours / memory {vm['median']:.2f}x ({vm['min']:.2f}-{vm['max']:.2f}), "
        f"ours / reference {vr['median']:.2f}x ({vr['min']:.2f}-{vr['max']:.2f})\n"
        f"  CPU ms/image, one thread: reference sample {c['reference_sample']:.2f}; ours decode"
        f" + crop {c['ours_decode_crop']:.2f} (loader) + normalise {c['ours_normalize']:.2f};"
        f" memory's device crop + normalise {c['memory_device_crop']:.2f}",
        flush=True,
    )


def main() -> None:
    p = parser(__doc__, "streaming_cpu.json")
    p.add_argument("--files", type=int, default=300, help="training JPEGs")
    p.add_argument("--sides", type=int, nargs=2, default=list(CAMERA), help="photo side range")
    p.add_argument("--size", type=int, default=224, help="pixels a side the model sees")
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--workers", type=int, default=os.cpu_count(), help="DataLoader processes")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3, help="timed epochs per path")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads here")
    p.add_argument("--data", help="an existing tree (default: generate one)")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    info = machine()
    with tempfile.TemporaryDirectory(prefix="bench-streaming-") as tmp:
        sides = tuple(a.sides)
        root = Path(a.data) if a.data else write_photo_tree(Path(tmp), a.files, 32, 0, sides)
        kib = sum(f.stat().st_size for f in (root / "train").rglob("*.jpg")) / a.files / 1024
        print(
            f"[{describe(info)}] {a.files} JPEGs of {sides[0]}-{sides[1]} px ({kib:.0f} KiB "
            f"each on average), {a.arch} at {a.size} px, batch {a.batch}, {a.workers} loader "
            f"processes, {torch.get_num_threads()} torch threads here",
            flush=True,
        )
        load = os.getloadavg()[0]
        res = {
            "files": a.files,
            "sides": list(sides),
            "mean_file_kib": kib,
            "batch": a.batch,
            "loader_workers": a.workers,
            "torch_threads": torch.get_num_threads(),
            "repeats": a.repeats,
            "result": measure(root, a),
            "load_average_1min": [load, os.getloadavg()[0]],  # before, after
        }
    write_json(a.json, info, res)


if __name__ == "__main__":
    main()
