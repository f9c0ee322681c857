"""A small labelled image set from real pixels that a PyPI package bundles, to try the jobs on
something that looks like the world: scikit-learn's 1,797 handwritten digits (8x8 scans by 43
people), each redrawn at 32x32 with its own size, slant, shift, ink and paper colours
(``cifar-data digits``; needs ``pip install scikit-learn``, the ``examples`` extra)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from cifar.data.dataset import DataError

DIGIT_NAMES = tuple(str(d) for d in range(10))  # folder names: sorted, index = digit
# a drawn digit: light paper and dark ink, each channel drawn from its range, plus noise (std)
PAPER, INK, NOISE = (130.0, 255.0), (0.0, 120.0), 10.0


def digit_image(ink8: np.ndarray, rng: np.random.Generator, rotate: float) -> np.ndarray:
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
    bg = rng.uniform(PAPER[0], PAPER[1], size=3)
    fg = rng.uniform(INK[0], INK[1], size=3)
    x = bg * (1 - alpha[..., None]) + fg * alpha[..., None]
    x = x + rng.normal(0, rng.uniform(0, NOISE), size=x.shape)
    return np.clip(x + 0.5, 0, 255).astype(np.uint8)


def write_digits(
    root: str | Path,
    rng: np.random.Generator,
    n_train: int | None = None,
    n_val: int | None = None,
    names: Sequence[str] = DIGIT_NAMES,
) -> dict:
    """``root/train/<digit>/`` and ``root/val/<digit>/`` from scikit-learn's digits, the scans
    split ~80/20 per class. Without counts every scan is drawn once; with counts, ``n_train``
    (``n_val``) drawings are made of the train (val) scans, each with its own size, rotation,
    shift and colours, so no val image comes from a scan a training image comes from."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise DataError(
            "the digits come with scikit-learn: pip install scikit-learn (or the project's "
            "'examples' extra), then run this again."
        ) from None
    d = load_digits()
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
            folder = Path(root) / split / names[labels[i]]
            folder.mkdir(parents=True, exist_ok=True)
            pixels = digit_image(images[i], rng, 0.0 if n is None else 12.0)
            Image.fromarray(pixels, "RGB").save(folder / f"{split}_{j:05d}_scan{i:04d}.png")
    return {"source": "sklearn.datasets.load_digits (1,797 real 8x8 scans), recoloured"}
