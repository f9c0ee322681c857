"""Write labelled image-folder evaluation sets, built from real pixels that PyPI packages bundle.

    python scripts/evalsets.py OUT [--only NAME ...] [--seed S] [--force] [--list]

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
                     patterns (``cifar.synthetic.write_folders``, 32-96 px PNG/JPEG, strong
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
import sys
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

# --------------------------------------------------------------------------- sources


def _need(module: str, package: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        sys.exit(f"evalsets: this set needs {package}: pip install {package}")


def _photo(name: str) -> np.ndarray:
    """A bundled photo as uint8 HxW (greyscale) or HxWx3 (colour)."""
    if name in ("china", "flower"):
        datasets = _need("sklearn.datasets", "scikit-learn")
        images = datasets.load_sample_images()
        for fname, img in zip(images.filenames, images.images, strict=True):
            if Path(fname).stem == name:
                return np.asarray(img, dtype=np.uint8)
        raise KeyError(name)
    data = _need("skimage.data", "scikit-image")
    img = getattr(data, name)()
    if isinstance(img, tuple):  # stereo_motorcycle: (left, right, disparity)
        img = img[0]
    img = np.asarray(img)
    if img.ndim == 3 and img.shape[2] == 4:
        img = img[:, :, :3]
    return img.astype(np.uint8)


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


# --------------------------------------------------------------------------- crops and jitter


@dataclass(frozen=True)
class Jitter:
    """How one training or val image is cut from its class's photo and disturbed."""

    scale: tuple[float, float]  # crop side as a fraction of the photo's short side
    noise: float  # max std of per-pixel Gaussian noise (0-255 scale)
    grey_p: float  # chance a colour crop is made greyscale (then tinted)
    tint: float  # per-channel gain range for tinting greyscale: 1 +- tint
    channel_shuffle_p: float = 0.0  # chance of a random channel order
    blur: float = 0.0  # max Gaussian blur radius at 32 px
    vflip_p: float = 0.1


def _colour(img: np.ndarray, rng: np.random.Generator, j: Jitter) -> np.ndarray:
    """float HxWx3 (or HxW) in 0-255 -> jittered uint8 HxWx3."""
    x = img.astype(np.float32)
    if x.ndim == 3 and rng.random() < j.grey_p:
        x = x.mean(axis=2)
    if x.ndim == 2:
        x = x[:, :, None] * rng.uniform(1 - j.tint, 1 + j.tint, size=3).astype(np.float32)
    m = x.mean()
    x = (x - m) * rng.uniform(0.6, 1.4) + m * rng.uniform(0.65, 1.35)  # contrast, brightness
    g = x.mean(axis=2, keepdims=True)
    x = g + (x - g) * rng.uniform(0.4, 1.5)  # saturation
    if rng.random() < j.channel_shuffle_p:
        x = x[:, :, rng.permutation(3)]
    if j.noise > 0:
        x = x + rng.normal(0.0, rng.uniform(0, j.noise), size=x.shape).astype(np.float32)
    return np.clip(x + 0.5, 0, 255).astype(np.uint8)


def _crop(
    photo: Image.Image,
    region: tuple[int, int, int, int],
    short: int,
    out: int,
    rng: np.random.Generator,
    j: Jitter,
) -> np.ndarray:
    """A random square-ish crop inside ``region`` (x0, y0, x1, y1), resized to ``out`` px."""
    x0, y0, x1, y1 = region
    side = short * rng.uniform(*j.scale)
    aspect = np.exp(rng.uniform(-0.2, 0.2))
    w = min(side * aspect, x1 - x0)
    h = min(side / aspect, y1 - y0)
    cx = rng.uniform(x0, x1 - w)
    cy = rng.uniform(y0, y1 - h)
    img = photo.resize((out, out), Image.BILINEAR, box=(cx, cy, cx + w, cy + h))
    if rng.random() < 0.5:
        img = img.transpose(Image.FLIP_LEFT_RIGHT)
    if rng.random() < j.vflip_p:
        img = img.transpose(Image.FLIP_TOP_BOTTOM)
    if j.blur > 0:
        radius = rng.uniform(0, j.blur) * out / 32
        if radius > 0.3:
            img = img.filter(ImageFilter.GaussianBlur(radius))
    return np.asarray(img)


def _balanced(n: int, k: int) -> list[int]:
    """``n`` split over ``k`` classes as evenly as possible."""
    return [n // k + (1 if i < n % k else 0) for i in range(k)]


# --------------------------------------------------------------------------- writers


def _save(arr: np.ndarray, path: Path, jpeg_quality: int | None = None) -> None:
    img = Image.fromarray(arr, "RGB")
    if jpeg_quality is None:
        img.save(path, optimize=False, compress_level=6)
    else:
        img.save(path, quality=jpeg_quality)


def write_textures(
    root: Path,
    rng: np.random.Generator,
    photos: tuple[str, ...],
    train_counts: list[int],
    val_counts: list[int],
    jitter: Jitter,
    sizes: tuple[int, int] = (32, 32),
    jpeg: bool = False,
    held_out_right: float = 0.0,
) -> dict:
    """One class per photo. ``held_out_right > 0``: val crops come only from that right-hand
    share of each photo and train crops only from the rest."""
    for name, n_train, n_val in zip(photos, train_counts, val_counts, strict=True):
        arr = _photo(name)
        photo = Image.fromarray(arr)
        hgt, wid = arr.shape[:2]
        short = min(hgt, wid)
        cut = round(wid * (1 - held_out_right)) if held_out_right > 0 else wid
        regions = {
            "train": (0, 0, cut, hgt),
            "val": (cut, 0, wid, hgt) if held_out_right > 0 else (0, 0, wid, hgt),
        }
        for split, n in (("train", n_train), ("val", n_val)):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                out = int(rng.integers(sizes[0], sizes[1] + 1))
                small = _crop(photo, regions[split], short, out, rng, jitter)
                pixels = _colour(small, rng, jitter)
                if jpeg:
                    _save(pixels, folder / f"{split}_{i:05d}.jpg", int(rng.integers(70, 96)))
                else:
                    _save(pixels, folder / f"{split}_{i:05d}.png")
    return {
        "source": "scikit-image / scikit-learn bundled photos: "
        + ", ".join(photos)
        + "; one class per photo, random crops with colour jitter",
        "held_out_right": held_out_right,
        "image_sizes": list(sizes),
        "format": "jpeg" if jpeg else "png",
    }


def _digit_image(ink8: np.ndarray, rng: np.random.Generator, rotate: float) -> np.ndarray:
    """One 8x8 scan (ink 0..1) -> uint8 32x32x3: scaled to 18-30 px, rotated, shifted by up to
    4 px, dark ink on light paper of random colours, plus noise."""
    side = int(rng.integers(18, 31))
    ink = Image.fromarray((ink8 * 255).astype(np.uint8), "L").resize((side, side), Image.BICUBIC)
    if rotate > 0:
        ink = ink.rotate(rng.uniform(-rotate, rotate), Image.BILINEAR)
    alpha = np.zeros((32, 32), dtype=np.float32)
    top = min(max((32 - side) // 2 + int(rng.integers(-4, 5)), 0), 32 - side)
    left = min(max((32 - side) // 2 + int(rng.integers(-4, 5)), 0), 32 - side)
    alpha[top : top + side, left : left + side] = np.asarray(ink, dtype=np.float32) / 255
    bg = rng.uniform(DIGIT_PAPER[0], DIGIT_PAPER[1], size=3)  # light paper
    fg = rng.uniform(DIGIT_INK[0], DIGIT_INK[1], size=3)  # darker ink
    x = bg * (1 - alpha[..., None]) + fg * alpha[..., None]
    x = x + rng.normal(0, rng.uniform(0, DIGIT_NOISE), size=x.shape)
    return np.clip(x + 0.5, 0, 255).astype(np.uint8)


def write_digits(
    root: Path, rng: np.random.Generator, n_train: int | None = None, n_val: int | None = None
) -> dict:
    """scikit-learn's 1,797 handwritten digits, ~80/20 per class into train/val scans. Without
    counts every scan is drawn once; with counts, ``n_train`` (``n_val``) drawings are made of
    the train (val) scans, each with its own size, rotation, shift and colours, so no val image
    comes from a scan that a training image comes from."""
    datasets = _need("sklearn.datasets", "scikit-learn")
    d = datasets.load_digits()
    images = (d.images / 16.0).astype(np.float32)  # [1797, 8, 8] ink in 0..1
    labels = d.target
    splits: dict[str, list[int]] = {"train": [], "val": []}
    for c in range(10):
        idx = np.flatnonzero(labels == c)
        idx = idx[rng.permutation(len(idx))]
        k = round(len(idx) * 0.2)
        splits["val"] += sorted(idx[:k].tolist())
        splits["train"] += sorted(idx[k:].tolist())
    for split, n in (("train", n_train), ("val", n_val)):
        scans = np.array(splits[split])
        if n is not None:
            scans = np.sort(rng.choice(scans, size=n, replace=n > len(scans)))
        for j, i in enumerate(scans):
            folder = root / split / str(labels[i])
            folder.mkdir(parents=True, exist_ok=True)
            pixels = _digit_image(images[i], rng, 0.0 if n is None else 12.0)
            _save(pixels, folder / f"{split}_{j:05d}_scan{i:04d}.png")
    return {"source": "sklearn.datasets.load_digits (1,797 real 8x8 scans), recoloured"}


def write_patterns(root: Path, seed: int) -> dict:
    """The project's generated set at 50,000 / 10,000 (cifar.synthetic.write_folders)."""
    try:
        from cifar.synthetic import write_folders
    except ImportError:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        from cifar.synthetic import write_folders
    write_folders(root, n_train=50_000, n_val=10_000, num_classes=10, seed=seed)
    return {"source": "cifar.synthetic.write_folders (generated colour patterns, NOT real)"}


DIGIT_PAPER, DIGIT_INK, DIGIT_NOISE = (130.0, 255.0), (0.0, 120.0), 10.0
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
        prog="scripts/evalsets.py",
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
