"""Write labelled image-folder evaluation sets, built from real pixels that PyPI packages bundle.

    python -m benchmarks.evalsets OUT [--only NAME ...] [--seed S] [--force] [--list]

Each set is a tree the trainer reads as is (``--data-dir OUT/<name>``):

    OUT/<name>/train/<class>/*.png|jpg    training images
    OUT/<name>/val/<class>/*.png|jpg      held-out test split (evaluated every epoch)
    OUT/<name>/evalset.json               what was written: source, classes, counts, seed

The sets cover dataset size (245 to 50,000 training images), class count (2 to 20) and
difficulty; all but ``patterns-50k`` are made of real photographs or real handwriting:

    digits           10 classes, 1,438 train / 359 val, 32x32 PNG. scikit-learn's handwritten
                     digits (1,797 real 8x8 scans), split ~80/20 per class, each scan drawn
                     once: upscaled to 18-30 px, shifted by up to 4 px on a 32x32 canvas, dark
                     ink of a random colour on light paper of a random colour, plus noise.
    digits-7k        10 classes, 7,000 train / 1,000 val: the same scans and split, each
                     drawing also rotated by up to 12 degrees, training drawings made only of
                     the 1,438 training scans and val drawings only of the 359 held-out ones
                     (the size of a typical small user set of 32x32 images).
    pair-245         2 classes (brick, gravel), 245 train (124/121) / 153 val (70/83): the size
                     and split of the tutorial's ants/bees set. JPEGs of 64-200 px (quality
                     70-95) cut from two greyscale texture photos of scikit-image, tinted with
                     colours drawn from the same distribution for both classes: they differ in
                     texture only, and every image is resized by the loader.
    textures10-7k    10 classes, 7,000 train / 700 val, 32x32 PNG. Each class is random crops
                     (25-70% of the photo's short side, flips, brightness, contrast, saturation,
                     tint, noise) of one photo: brick, grass, gravel, moon, coins (greyscale,
                     tinted) and coffee, chelsea, astronaut, rocket (scikit-image), flower
                     (scikit-learn). Train and val crops are drawn independently from the whole
                     photo.
    textures10-20k   the same 10 classes and jitter, 20,000 train / 2,000 val: the middle size.
    textures20-hard  20 classes, 4,000 train / 1,000 val, 32x32 PNG. The 20 photos (the ten
                     above plus camera, cell, clock, page, text, immunohistochemistry,
                     hubble_deep_field, retina, stereo_motorcycle, china), smaller crops
                     (4-25%), colour jitter with greyscale and random channel order, blur and
                     heavier noise, and val crops cut only from the right 30% of each photo,
                     which no training crop touches: a generalisation gap, as in real data.
    patterns-50k     10 classes, 50,000 train / 10,000 val: the project's generated colour
                     patterns (``cifar.data.synthetic.write_folders``, 32-96 px PNG/JPEG, strong
                     noise); the large-set check. NOT real pixels.

Everything is a pure function of ``--seed`` (each set draws from its own stream, so ``--only``
writes the same files as a full run). Needs ``scikit-learn`` and ``scikit-image`` (their bundled
data only: nothing is downloaded); ``patterns-50k`` needs this repository's ``cifar`` package.
An existing ``OUT/<name>`` is left alone (and reported) unless ``--force`` rewrites it.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np

from benchmarks.realpixels import Jitter, write_digits, write_textures

TEXTURES10 = (
    "brick",
    "grass",
    "gravel",
    "moon",
    "coins",
    "coffee",
    "chelsea",
    "astronaut",
    "rocket",
    "flower",
)
TEXTURES20 = (
    *TEXTURES10,
    "camera",
    "cell",
    "clock",
    "page",
    "text",
    "immunohistochemistry",
    "hubble_deep_field",
    "retina",
    "stereo_motorcycle",
    "china",
)


def _balanced(n: int, k: int) -> list[int]:
    """``n`` split over ``k`` classes as evenly as possible."""
    return [n // k + (1 if i < n % k else 0) for i in range(k)]


def write_patterns(root: Path, seed: int) -> dict:
    """The project's generated set at 50,000 / 10,000 (cifar.data.synthetic.write_folders)."""
    from cifar.data.synthetic import write_folders

    write_folders(root, n_train=50_000, n_val=10_000, num_classes=10, seed=seed)
    return {"source": "cifar.data.synthetic.write_folders (generated colour patterns, NOT real)"}


TEXTURE_JITTER = Jitter(scale=(0.25, 0.7), noise=4.0, grey_p=0.0, tint=0.2)
HARD_JITTER = Jitter(
    scale=(0.04, 0.25), noise=28.0, grey_p=0.4, tint=0.5, channel_shuffle_p=0.3, blur=1.2
)
PAIR_JITTER = Jitter(scale=(0.12, 0.6), noise=6.0, grey_p=1.0, tint=0.35)

SETS: dict[str, tuple[str, Callable[[Path, np.random.Generator, int], dict]]] = {
    "digits": (
        "real handwritten digits, 10 classes, 1.4k train",
        lambda r, g, s: write_digits(r, g),
    ),
    "digits-7k": (
        "real handwritten digits redrawn, 10 classes, 7k train",
        lambda r, g, s: write_digits(r, g, 7000, 1000),
    ),
    "pair-245": (
        "2 texture classes, ants/bees size, 64-200 px JPEG",
        lambda r, g, s: write_textures(
            r, g, ("brick", "gravel"), [124, 121], [70, 83], PAIR_JITTER, (64, 200), jpeg=True
        ),
    ),
    "textures10-7k": (
        "10 photo classes, 7k train",
        lambda r, g, s: write_textures(
            r, g, TEXTURES10, _balanced(7000, 10), _balanced(700, 10), TEXTURE_JITTER
        ),
    ),
    "textures10-20k": (
        "10 photo classes, 20k train",
        lambda r, g, s: write_textures(
            r, g, TEXTURES10, _balanced(20000, 10), _balanced(2000, 10), TEXTURE_JITTER
        ),
    ),
    "textures20-hard": (
        "20 photo classes, held-out photo regions, heavy jitter, 4k train",
        lambda r, g, s: write_textures(
            r,
            g,
            TEXTURES20,
            _balanced(4000, 20),
            _balanced(1000, 20),
            HARD_JITTER,
            held_out_right=0.3,
        ),
    ),
    "patterns-50k": (
        "generated colour patterns, 10 classes, 50k train",
        lambda r, g, s: write_patterns(r, s),
    ),
}


def _count(root: Path) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for split in ("train", "val"):
        d = root / split
        if d.is_dir():
            out[split] = {
                c.name: sum(1 for f in c.iterdir() if f.is_file())
                for c in sorted(d.iterdir())
                if c.is_dir()
            }
    return out


def _disk_bytes(root: Path) -> int:
    return sum(f.stat().st_size for f in root.rglob("*") if f.is_file())


def write_set(out: Path, name: str, seed: int, force: bool = False) -> dict | None:
    """Write ``out/name``; returns its manifest, or None if it existed and ``force`` is off."""
    root = out / name
    if root.exists():
        if not force:
            return None
        shutil.rmtree(root)
    root.mkdir(parents=True)
    stream = np.random.default_rng([seed, zlib.crc32(name.encode())])
    t0 = time.perf_counter()
    info = SETS[name][1](root, stream, seed)
    counts = _count(root)
    manifest = {
        "name": name,
        "description": SETS[name][0],
        "seed": seed,
        "classes": list(counts["train"]),
        "counts": counts,
        "train_images": sum(counts["train"].values()),
        "val_images": sum(counts.get("val", {}).values()),
        "seconds": round(time.perf_counter() - t0, 1),
        **info,
    }
    manifest["disk_bytes"] = _disk_bytes(root)
    (root / "evalset.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.evalsets",
        description="Write labelled image-folder evaluation sets (train/ and val/) to OUT.",
        allow_abbrev=False,
    )
    p.add_argument("out", type=Path, nargs="?", help="output folder (one subfolder per set)")
    p.add_argument("--only", nargs="+", choices=sorted(SETS), metavar="NAME", help="these sets")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--force", action="store_true", help="rewrite sets that already exist")
    p.add_argument("--list", action="store_true", help="list the sets and exit")
    a = p.parse_args(argv)
    if a.list or a.out is None:
        for name, (desc, _) in SETS.items():
            print(f"{name:16s} {desc}")
        if a.out is None and not a.list:
            p.error("OUT is required")
        return
    a.out.mkdir(parents=True, exist_ok=True)
    for name in a.only or list(SETS):
        m = write_set(a.out, name, a.seed, a.force)
        if m is None:
            print(f"{name}: {a.out / name} exists, left as is (--force rewrites it)")
            continue
        per_class = ", ".join(
            f"{c} {m['counts']['train'][c]}/{m['counts'].get('val', {}).get(c, 0)}"
            for c in m["classes"]
        )
        print(
            f"{name}: {len(m['classes'])} classes, {m['train_images']} train / "
            f"{m['val_images']} val images, {m['disk_bytes'] / 1e6:.1f} MB, "
            f"{m['seconds']:.1f}s -> {a.out / name}"
        )
        print(f"  train/val per class: {per_class}")


if __name__ == "__main__":
    main()
