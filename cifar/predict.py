"""Prediction: one decode/preprocess function, one classifier, used by both the single-image CLI
and the Ray Data batch job.

    python -m cifar.predict --model MODEL IMAGE [IMAGE ...]

prints ``path<TAB>class<TAB>confidence`` per image, like the tutorial's ``test.py`` but with the
preprocessing the model was trained with (its ``meta.json``; the tutorial's Resize((32, 32)) +
ToTensor() for a bare state_dict). Exit status 1 if any image failed, reasons on stderr.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from cifar.checkpoint import CheckpointError, LoadedModel, load_model
from cifar.data import normalize
from cifar.images import load_image_file

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- classifying


PRECISIONS = ("auto", "fp32", "bf16")


def resolve_precision(precision: str, device: torch.device) -> bool:
    """True for bf16 autocast. ``auto``: bf16 on GPUs and on CPUs with bf16 instructions."""
    from cifar.train import cpu_has_native_bf16

    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "auto":
        return device.type == "cuda" or cpu_has_native_bf16()
    return precision == "bf16"


class Classifier:
    """A loaded model plus the preprocessing its metadata asks for."""

    def __init__(
        self, model: LoadedModel, device: torch.device | str = "cpu", precision: str = "fp32"
    ) -> None:
        self.device = torch.device(device)
        self.amp = resolve_precision(precision, self.device)
        self.loaded = model
        # channels_last: 2x the images/s of the default layout on CPU (CIFAR10-quick, batch 256)
        self.model = model.model.to(self.device, memory_format=torch.channels_last).eval()
        self.classes = model.classes
        self.mean, self.std = model.mean, model.std

    @classmethod
    def from_path(
        cls, path: str, device: torch.device | str = "cpu", precision: str = "fp32"
    ) -> Classifier:
        return cls(load_model(path, "cpu"), device, precision)

    @torch.inference_mode()
    def probabilities(self, images: np.ndarray) -> np.ndarray:
        """uint8 ``[B, 3, 32, 32]`` -> softmax probabilities ``[B, classes]`` (float32)."""
        x = torch.from_numpy(np.ascontiguousarray(images)).to(self.device, non_blocking=True)
        x = normalize(x, self.mean, self.std).contiguous(memory_format=torch.channels_last)
        # On CPU the pools as strided maxima (identical values, ~1.6x the images/s); on GPU
        # cuDNN's pooling is already cheap.
        forward = self.model.forward_inference if self.device.type == "cpu" else self.model
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            logits = forward(x)
        return torch.softmax(logits.float(), dim=1).cpu().numpy()


def prediction_columns(
    probs: np.ndarray, ok: np.ndarray, classes: Sequence[str], top_k: int
) -> dict[str, Any]:
    """Result columns (pyarrow arrays) for a batch; ``probs`` has one row per ``ok`` row and the
    failed rows are null. Vectorized: building them row by row in Python cost as much as the
    forward pass of a small image."""
    import pyarrow as pa

    n, k = len(ok), min(top_k, len(classes))
    rows = np.flatnonzero(ok)
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    names = np.asarray(classes, dtype=object)
    null = ~ok

    def spread(values: np.ndarray, fill) -> np.ndarray:
        out = np.full(n, fill, dtype=values.dtype)
        out[rows] = values
        return out

    def column(j: int) -> tuple[pa.Array, pa.Array]:
        idx = order[:, j]
        name = pa.array(spread(names[idx], None), type=pa.string(), mask=null)
        prob = spread(np.take_along_axis(probs, idx[:, None], 1)[:, 0].astype(np.float64), 0.0)
        return name, pa.array(prob, type=pa.float64(), mask=null)

    tops = [column(j) for j in range(k)]
    cols: dict[str, Any] = {
        "class_index": pa.array(spread(order[:, 0].astype(np.int64), 0), mask=null),
        "class_name": tops[0][0],
        "confidence": tops[0][1],
    }
    for j, (name, prob) in enumerate(tops, start=1):
        cols[f"top{j}_class"], cols[f"top{j}_prob"] = name, prob
    return cols


def result_schema(top_k: int, num_classes: int, with_label: bool):
    """The output columns, typed, so every block (even one of only errors) has one schema."""
    import pyarrow as pa

    fields = [
        ("path", pa.string()),
        ("class_index", pa.int64()),
        ("class_name", pa.string()),
        ("confidence", pa.float64()),
    ]
    for j in range(1, min(top_k, num_classes) + 1):
        fields += [(f"top{j}_class", pa.string()), (f"top{j}_prob", pa.float64())]
    if with_label:
        fields.append(("label", pa.string()))
    fields.append(("error", pa.string()))
    return pa.schema(fields)


class BatchPredictor:
    """Ray Data actor: weights loaded once in ``__init__``; ``__call__(batch) -> batch``."""

    def __init__(
        self,
        model_path: str,
        device: str = "cpu",
        top_k: int = 3,
        threads: int = 1,
        label_dirs: bool = False,
        precision: str = "auto",
    ) -> None:
        if device == "cpu":
            torch.set_num_threads(max(1, threads))
        self.classifier = Classifier.from_path(model_path, device, precision)
        self.top_k = top_k
        self.label_dirs = label_dirs
        self.schema = result_schema(top_k, len(self.classifier.classes), label_dirs)

    def __call__(self, batch: dict[str, np.ndarray]):
        """``{"path", "image", "error"}`` -> a pyarrow Table of results, one row per input row."""
        import pyarrow as pa

        errors = [str(e) or None for e in batch["error"]]
        paths = [str(p) for p in batch["path"]]
        ok = np.array([e is None for e in errors], dtype=bool)
        probs = (
            self.classifier.probabilities(batch["image"][ok])
            if ok.any()
            else np.zeros((0, len(self.classifier.classes)), dtype=np.float32)
        )
        cols: dict[str, Any] = {"path": paths}
        cols.update(prediction_columns(probs, ok, self.classifier.classes, self.top_k))
        if self.label_dirs:  # labels read from the folders by the driver (bulk.label_from_dirs)
            cols["label"] = [None if v is None else str(v) for v in batch["label"]]
        cols["error"] = errors
        return pa.table(cols, schema=self.schema)


# --------------------------------------------------------------------------- single-image CLI


@dataclass
class ImageResult:
    path: str
    class_name: str | None
    class_index: int | None
    confidence: float | None
    error: str | None


def classify_files(
    classifier: Classifier, paths: Sequence[str], top_k: int = 1
) -> list[ImageResult]:
    """The single-image path: same decode, same preprocessing, same classifier as the job."""
    results = []
    for p in paths:
        try:
            img = load_image_file(p)
        except ValueError as e:
            results.append(ImageResult(p, None, None, None, str(e)))
            continue
        except OSError as e:
            results.append(ImageResult(p, None, None, None, f"cannot read file: {e.strerror or e}"))
            continue
        probs = classifier.probabilities(img[None])
        cols = prediction_columns(probs, np.array([True]), classifier.classes, top_k)
        results.append(
            ImageResult(
                p,
                cols["class_name"][0].as_py(),
                cols["class_index"][0].as_py(),
                cols["confidence"][0].as_py(),
                None,
            )
        )
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m cifar.predict",
        description="Classify images with a trained CIFAR10-quick model (one line per image).",
    )
    p.add_argument("--model", required=True, help="run dir, checkpoint dir, model/ or .pt/.pth")
    p.add_argument("images", nargs="+", help="image files")
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="auto",
        help="auto: bf16 on GPUs and bf16-capable CPUs (what jobs.predict uses); fp32: exactly "
        "the tutorial's test.py arithmetic",
    )
    a = p.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        classifier = Classifier.from_path(a.model, device, a.precision)
    except CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    failed = 0
    for r in classify_files(classifier, a.images):
        if r.error is None:
            print(f"{r.path}\t{r.class_name}\t{r.confidence:.4f}")
        else:
            failed += 1
            print(f"{r.path}: {r.error}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
