"""Pictures and tables of what a model gets wrong: a confusion matrix (PNG, per-class CSV) and
captioned image grids, as bytes (written by the caller through :mod:`cifar.io.storage`, shown in
TensorBoard too). Shared by training and prediction.

matplotlib with its non-interactive Agg backend: works without a screen, imported only when a
picture is drawn.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from typing import Any

import numpy as np


def _figure(width: float, height: float):
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure  # not pyplot: no global state, no GUI

    return Figure(figsize=(width, height), dpi=100)


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight", pad_inches=0.15)
    return buf.getvalue()


def confusion_png(matrix: Sequence[Sequence[int]], classes: Sequence[str], title: str) -> bytes:
    """Rows: true class, columns: predicted. Colour: share of the row (so rare classes show),
    numbers: counts; per-class accuracy (recall) beside each row."""
    m = np.asarray(matrix, dtype=np.int64)
    k = len(classes)
    rows = m.sum(axis=1, keepdims=True)
    share = np.divide(m, rows, out=np.zeros(m.shape, dtype=float), where=rows > 0)
    side = min(max(4.0, 0.55 * k + 2.5), 22.0)
    fig = _figure(side + 1.2, side)
    ax = fig.add_subplot()
    im = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    labels = [f"{c} ({share[i, i]:.0%})" if rows[i, 0] else c for i, c in enumerate(classes)]
    ax.set_xticks(range(k), list(classes), rotation=45, ha="right", rotation_mode="anchor")
    ax.set_yticks(range(k), labels)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class (accuracy)")
    accuracy = np.trace(m) / max(m.sum(), 1)
    ax.set_title(f"{title}\n{int(m.sum())} images, accuracy {accuracy:.1%}")
    if k <= 30:
        size = 10 if k <= 12 else 7
        for i in range(k):
            for j in range(k):
                if m[i, j]:
                    colour = "white" if share[i, j] > 0.6 else "black"
                    ax.text(j, i, str(m[i, j]), ha="center", va="center", color=colour, size=size)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    return _png(fig)


def image_grid_png(
    images: np.ndarray, captions: Sequence[str], title: str, columns: int = 8
) -> bytes:
    """uint8 ``[N, 3, H, W]`` images in a grid, each with its caption under it."""
    n = len(images)
    if n == 0:
        fig = _figure(6, 1.2)
        fig.text(0.5, 0.5, f"{title}\n(none)", ha="center", va="center")
        return _png(fig)
    columns = max(1, min(columns, n))
    rows = max(1, -(-n // columns))
    fig = _figure(1.9 * columns, 2.1 * rows + 0.5)
    fig.suptitle(title)
    for i in range(rows * columns):
        ax = fig.add_subplot(rows, columns, i + 1)
        ax.axis("off")
        if i < n:
            ax.imshow(np.asarray(images[i]).transpose(1, 2, 0), interpolation="nearest")
            ax.set_title(captions[i], fontsize=8)
    return _png(fig)


def png_to_chw(png: bytes) -> np.ndarray:
    """PNG bytes -> uint8 ``[3, H, W]``, for TensorBoard's add_image."""
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).transpose(2, 0, 1)


def per_class_accuracy(confusion: list[list[int]], classes: Sequence[str]) -> dict[str, Any]:
    """{class: accuracy (None without test images)} from a ``[true][pred]`` confusion matrix."""
    m = np.asarray(confusion)
    rows = m.sum(axis=1)
    return {c: (float(m[i, i] / rows[i]) if rows[i] else None) for i, c in enumerate(classes)}


def per_class_csv(confusion: list[list[int]], classes: Sequence[str]) -> bytes:
    m = np.asarray(confusion)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["class", "images", "correct", "accuracy", "most_confused_with"])
    for i, c in enumerate(classes):
        off = m[i].copy()
        off[i] = -1
        other = classes[int(off.argmax())] if len(classes) > 1 and off.max() > 0 else ""
        acc = f"{m[i, i] / m[i].sum():.4f}" if m[i].sum() else ""
        w.writerow([c, int(m[i].sum()), int(m[i, i]), acc, other])
    return buf.getvalue().encode()
