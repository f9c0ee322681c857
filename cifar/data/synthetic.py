"""Generate learnable datasets for tests, smoke runs and offline use (``cifar-data synthetic``).

:func:`write_synthetic` writes ``OUT_DIR/cifar-10-batches-py/`` with the same files, keys and
dtypes as the official archive; :func:`write_folders` a labelled image-folder tree,
``OUT_DIR/train/<class>/*.png|jpg`` and ``OUT_DIR/val/<class>/...``, of images between 32 and 96
pixels wide.

Each class is a smooth random colour pattern; every image is its class pattern shifted by a few
pixels, with random brightness and strong per-pixel noise, so a small CNN must actually learn
(chance is 10%, a trained CIFAR10-quick gets far above it). ``batches.meta`` carries
``generator: "cifar.synthetic"`` (a folder tree: a ``.cifar-ray-generated`` file) so runs
trained on it are labelled as generated everywhere.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch

from cifar.data.cifar10 import (
    BATCH_DIR,
    CIFAR10_CLASSES,
    META_FILE,
    SYNTHETIC_MARKER,
    TEST_FILE,
    TRAIN_FILES,
    has_cifar10,
    load_cifar10,
)
from cifar.data.dataset import DataRequest, ImageData, Loading
from cifar.data.loading import memory_only
from cifar.env import cache_root


def _prototypes(rng: np.random.Generator, num_classes: int) -> np.ndarray:
    """[num_classes, 3, 32, 32] float patterns in [-1, 1], smooth (upsampled from 4x4)."""
    coarse = torch.from_numpy(rng.uniform(-1, 1, size=(num_classes, 3, 4, 4)).astype(np.float32))
    return torch.nn.functional.interpolate(
        coarse, size=(32, 32), mode="bicubic", align_corners=False
    ).numpy()


def generate(
    n: int,
    protos: np.ndarray,
    rng: np.random.Generator,
    noise: float = 110.0,
    labels: np.ndarray | None = None,
) -> tuple[np.ndarray, list[int]]:
    """n images (uint8 [n, 3072], CIFAR row layout) and their labels (drawn uniformly unless
    given)."""
    num_classes = protos.shape[0]
    if labels is None:
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


def class_names(num_classes: int) -> list[str]:
    """CIFAR-10's names for up to 10 classes, ``class_000``... beyond."""
    if num_classes <= len(CIFAR10_CLASSES):
        return list(CIFAR10_CLASSES[:num_classes])
    return [f"class_{i:03d}" for i in range(num_classes)]


def write_folders(
    out_dir: str | Path,
    n_train: int = 600,
    n_val: int = 150,
    num_classes: int = 3,
    seed: int = 0,
    noise: float = 190.0,
) -> Path:
    """A labelled image-folder tree (PNG, every fourth image JPEG; sizes 32-96 px, upscaled
    from the 32x32 pattern). ``n_val=0`` writes no val/ folder. Returns ``out_dir``. The noise
    is heavier than the CIFAR-format set's: 3 classes x 600 images reach about 0.94 after 4
    epochs, so the pictures of what the model gets wrong have something to show."""
    from PIL import Image

    from cifar.data.folders import GENERATED_MARKER

    if num_classes < 2 or n_train < num_classes:
        raise ValueError("need at least 2 classes and one training image per class")
    rng = np.random.default_rng(seed)
    protos = _prototypes(rng, num_classes)
    names = class_names(num_classes)
    root = Path(out_dir).expanduser()
    for split, n in (("train", n_train), ("val", n_val)):
        if n == 0:
            continue
        labels = rng.integers(0, num_classes, size=n)
        if split == "train":  # every class present, even in tiny sets
            labels[:num_classes] = np.arange(num_classes)
        data, labels = generate(n, protos, rng, noise, labels)
        for i, (row, label) in enumerate(zip(data.reshape(n, 3, 32, 32), labels, strict=True)):
            img = Image.fromarray(row.transpose(1, 2, 0), "RGB")
            side = int(rng.integers(32, 97))
            img = img.resize((side, side), Image.BILINEAR)
            folder = root / split / names[label]
            folder.mkdir(parents=True, exist_ok=True)
            if i % 4 == 3:
                img.save(folder / f"{split}_{i:06d}.jpg", quality=92)
            else:
                img.save(folder / f"{split}_{i:06d}.png")
    (root / GENERATED_MARKER).write_text("written by cifar.data.synthetic.write_folders\n")
    return root


def ensure_synthetic(n_train: int, n_test: int, seed: int, root: str | None = None) -> Path:
    """A generated set in a per-node cache folder, written once under a lock (every process that
    asks for the same sizes and seed gets the same files). Returns its data_dir."""
    from filelock import FileLock

    base = Path(root) if root else cache_root()
    d = base / f"synthetic-{n_train}-{n_test}-seed{seed}"
    d.mkdir(parents=True, exist_ok=True)
    with FileLock(str(d / ".lock")):
        if not has_cifar10(d):
            write_synthetic(d, n_train, n_test, seed)
    return d


class GeneratedSource:
    """A generated CIFAR-format set (``--smoke-test``): made once per node, then read."""

    def __init__(self, request: DataRequest) -> None:
        self.request = request
        self.n_train, self.n_test, self.seed = request.synthetic

    def describe(self) -> tuple[str, int | None]:
        line = f"a generated CIFAR-format set ({self.n_train} train / {self.n_test} test)"
        return line, self.n_train

    def load(self) -> tuple[ImageData, Loading]:
        how = memory_only(self.request.loading, "a generated CIFAR-format set")
        return load_cifar10(ensure_synthetic(self.n_train, self.n_test, self.seed)), how
