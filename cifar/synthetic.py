"""Generate a CIFAR-format dataset with learnable classes, for tests, smoke runs and offline use.

    python -m cifar.synthetic OUT_DIR [--train N] [--test M] [--seed S]

writes ``OUT_DIR/cifar-10-batches-py/`` with the same files, keys and dtypes as the official
archive. Each class is a smooth random colour pattern; every image is its class pattern shifted by a
few pixels, with random brightness and strong per-pixel noise, so a small CNN must actually learn
(chance is 10%, a trained CIFAR10-quick gets far above it). ``batches.meta`` carries
``generator: "cifar.synthetic"`` so runs trained on it are labelled as synthetic everywhere.
"""

from __future__ import annotations

import argparse
import os
import pickle
import tempfile
from pathlib import Path

import numpy as np
import torch

from cifar.data import BATCH_DIR, META_FILE, SYNTHETIC_MARKER, TEST_FILE, TRAIN_FILES
from cifar.model import CIFAR10_CLASSES


def _prototypes(rng: np.random.Generator, num_classes: int) -> np.ndarray:
    """[num_classes, 3, 32, 32] float patterns in [-1, 1], smooth (upsampled from 4x4)."""
    coarse = torch.from_numpy(rng.uniform(-1, 1, size=(num_classes, 3, 4, 4)).astype(np.float32))
    return torch.nn.functional.interpolate(
        coarse, size=(32, 32), mode="bicubic", align_corners=False
    ).numpy()


def generate(
    n: int, protos: np.ndarray, rng: np.random.Generator, noise: float = 110.0
) -> tuple[np.ndarray, list[int]]:
    """n images (uint8 [n, 3072], CIFAR row layout) and their labels."""
    num_classes = protos.shape[0]
    labels = rng.integers(0, num_classes, size=n)
    out = np.empty((n, 3, 32, 32), dtype=np.uint8)
    for start in range(0, n, 4096):
        lab = labels[start : start + 4096]
        b = len(lab)
        x = protos[lab] * 40.0  # [b, 3, 32, 32]
        shifts = rng.integers(-3, 4, size=(b, 2))
        for i in range(b):
            x[i] = np.roll(x[i], shift=tuple(shifts[i]), axis=(1, 2))
        x += rng.uniform(-30, 30, size=(b, 1, 1, 1))
        x += rng.normal(0.0, noise, size=x.shape)
        out[start : start + b] = np.clip(x + 128.0, 0, 255).astype(np.uint8)
    return out.reshape(n, -1), [int(v) for v in labels]


def write_synthetic(
    out_dir: str | Path, n_train: int = 5000, n_test: int = 1000, seed: int = 0
) -> Path:
    """Write a learnable CIFAR-format set; returns the ``cifar-10-batches-py`` folder."""
    if n_train < len(TRAIN_FILES) or n_test < 1:
        raise ValueError(f"need at least {len(TRAIN_FILES)} training and 1 test image")
    rng = np.random.default_rng(seed)
    protos = _prototypes(rng, len(CIFAR10_CLASSES))
    d = Path(out_dir).expanduser() / BATCH_DIR
    d.mkdir(parents=True, exist_ok=True)
    sizes = [n_train // len(TRAIN_FILES)] * len(TRAIN_FILES)
    sizes[-1] += n_train - sum(sizes)
    for i, (name, size) in enumerate(zip((*TRAIN_FILES, TEST_FILE), (*sizes, n_test), strict=True)):
        data, labels = generate(size, protos, rng)
        batch = {
            "batch_label": f"synthetic batch {i + 1}",
            "labels": labels,
            "data": data,
            "filenames": [f"synthetic_{i}_{j:06d}.png" for j in range(size)],
        }
        with open(d / name, "wb") as f:
            pickle.dump(batch, f, protocol=2)
    meta = {
        "num_cases_per_batch": sizes[0],
        "label_names": list(CIFAR10_CLASSES),
        "num_vis": 3072,
        "generator": SYNTHETIC_MARKER,
        "seed": seed,
    }
    with open(d / META_FILE, "wb") as f:
        pickle.dump(meta, f, protocol=2)
    return d


def ensure_synthetic(n_train: int, n_test: int, seed: int, root: str | None = None) -> Path:
    """A generated set in a per-node cache folder, written once under a lock (every process that
    asks for the same sizes and seed gets the same files). Returns its data_dir."""
    from filelock import FileLock

    from cifar.data import has_cifar10

    base = Path(root or os.environ.get("CIFAR_RAY_CACHE", tempfile.gettempdir())) / "cifar-ray"
    d = base / f"synthetic-{n_train}-{n_test}-seed{seed}"
    d.mkdir(parents=True, exist_ok=True)
    with FileLock(str(d / ".lock")):
        if not has_cifar10(d):
            write_synthetic(d, n_train, n_test, seed)
    return d


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="python -m cifar.synthetic",
        description="Write a learnable CIFAR-format dataset (NOT CIFAR-10) to OUT_DIR.",
    )
    p.add_argument("out_dir")
    p.add_argument("--train", type=int, default=5000, help="training images (default 5000)")
    p.add_argument("--test", type=int, default=1000, help="test images (default 1000)")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    if a.train < len(TRAIN_FILES) or a.test < 1:
        p.error(f"--train must be >= {len(TRAIN_FILES)} and --test >= 1")
    d = write_synthetic(a.out_dir, a.train, a.test, a.seed)
    print(f"wrote synthetic CIFAR-format set ({a.train} train / {a.test} test) to {d}")


if __name__ == "__main__":
    main()
