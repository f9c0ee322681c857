"""Images made from real pixels that PyPI packages bundle, for the evaluation sets
(:mod:`benchmarks.evalsets`): random crops of photos with colour jitter, and handwritten-digit
scans redrawn. Needs ``scikit-learn`` and ``scikit-image`` (their bundled data only).
"""

from __future__ import annotations

import sys
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


def write_digits(
    root: Path, rng: np.random.Generator, n_train: int | None = None, n_val: int | None = None
) -> dict:
    """The job's own digits (:func:`cifar.data.examples.write_digits`)."""
    from cifar.data.examples import write_digits as write

    _need("sklearn.datasets", "scikit-learn")
    return write(root, rng, n_train, n_val)
