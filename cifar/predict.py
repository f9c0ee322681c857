"""Prediction: one classifier (a loaded model plus the preprocessing its metadata asks for),
used by the single-image command and, as a Ray Data callable, by the bulk job.

    cifar-classify --model MODEL IMAGE [IMAGE ...]     (or python -m cifar.predict)

prints ``path<TAB>class<TAB>confidence`` per image, like the tutorial's ``test.py`` but with the
preprocessing the model was trained with (its ``meta.json``; the tutorial's Resize((32, 32)) +
ToTensor() for a bare state_dict). Exit status 1 if any image failed, reasons on stderr.
"""

from __future__ import annotations

import argparse
import copy
import logging
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from cifar.checkpoint import CheckpointError, LoadedModel, load_model
from cifar.device import PRECISIONS, Compute, machine_key, resolve_compute
from cifar.images import decode_batch
from cifar.results import prediction_columns, result_schema

log = logging.getLogger(__name__)


def inference_probe(
    model: torch.nn.Module, mean: list[float] | None, std: list[float] | None, batch: int
) -> Callable[[Compute], Callable[[], None]]:
    """For :func:`cifar.device.resolve_compute`: classifying one batch of ``batch`` images."""

    def probe(c: Compute) -> Callable[[], None]:
        m = c.place(copy.deepcopy(model)).eval()
        forward = m.forward_inference if c.device.type == "cpu" else m
        g = torch.Generator().manual_seed(0)
        images = torch.randint(0, 256, (batch, 3, 32, 32), dtype=torch.uint8, generator=g)

        @torch.inference_mode()
        def step() -> None:
            with c.autocast():
                forward(c.inputs(images, mean, std))
            if c.device.type == "cuda":
                torch.cuda.synchronize(c.device)

        return step

    return probe


def inference_compute(
    model: LoadedModel,
    device: torch.device | str,
    precision: str,
    batch: int = 1,
    channels_last: bool | None = None,
) -> Compute:
    """Precision and layout to classify with; ``auto`` on a CPU: measured at ``batch`` (once
    per machine, model shape and batch: the timings are cached)."""
    probe = inference_probe(model.model, model.mean, model.std, batch)
    relu, k = model.meta.get("relu", False), len(model.classes)
    key = f"classify|{machine_key()}|batch={batch}|classes={k}|relu={relu}"
    return resolve_compute(device, precision, channels_last, probe=probe, cache_key=key)


class Classifier:
    """A loaded model plus the preprocessing its metadata asks for."""

    def __init__(
        self,
        model: LoadedModel,
        device: torch.device | str = "cpu",
        precision: str = "fp32",
        batch: int = 1,
        channels_last: bool | None = None,
    ) -> None:
        self.compute = inference_compute(model, device, precision, batch, channels_last)
        self.model = self.compute.place(model.model).eval()
        self.classes = model.classes
        self.mean, self.std = model.mean, model.std

    @classmethod
    def from_path(cls, path: str, device: torch.device | str = "cpu", **kw: Any) -> Classifier:
        return cls(load_model(path, "cpu"), device, **kw)

    @torch.inference_mode()
    def probabilities(self, images: np.ndarray) -> np.ndarray:
        """uint8 ``[B, 3, 32, 32]`` -> softmax probabilities ``[B, classes]`` (float32)."""
        x = self.compute.inputs(torch.from_numpy(np.ascontiguousarray(images)), self.mean, self.std)
        # On CPU the pools as strided maxima (identical values, ~1.6x the images/s); on GPU
        # cuDNN's pooling is already cheap.
        cpu = self.compute.device.type == "cpu"
        forward = self.model.forward_inference if cpu else self.model
        with self.compute.autocast():
            logits = forward(x)
        return torch.softmax(logits.float(), dim=1).cpu().numpy()

    def predict(self, batch: dict[str, np.ndarray], top_k: int) -> dict[str, Any]:
        """A decoded batch (``decode_batch``'s ``image``/``error``) -> result columns; rows that
        failed to decode get null predictions."""
        ok = np.array([not e for e in batch["error"]], dtype=bool)
        probs = (
            self.probabilities(batch["image"][ok])
            if ok.any()
            else np.zeros((0, len(self.classes)), dtype=np.float32)
        )
        return prediction_columns(probs, ok, self.classes, top_k)


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
        batch_size: int = 256,
        channels_last: bool | None = None,
    ) -> None:
        if device == "cpu":
            torch.set_num_threads(max(1, threads))
        self.classifier = Classifier.from_path(
            model_path,
            device,
            precision=precision,
            batch=batch_size,
            channels_last=channels_last,
        )
        self.top_k = top_k
        self.label_dirs = label_dirs
        self.schema = result_schema(top_k, len(self.classifier.classes), label_dirs)

    def __call__(self, batch: dict[str, np.ndarray]):
        """``{"path", "image", "error"}`` -> a pyarrow Table of results, one row per input row."""
        import pyarrow as pa

        cols: dict[str, Any] = {"path": [str(p) for p in batch["path"]]}
        cols.update(self.classifier.predict(batch, self.top_k))
        if self.label_dirs:  # labels read from the folders by the driver (bulk.label_from_dirs)
            # a block whose labels are all null arrives as NaNs (Arrow -> numpy)
            cols["label"] = [v if isinstance(v, str) else None for v in batch["label"]]
        cols["error"] = [str(e) or None for e in batch["error"]]
        return pa.table(cols, schema=self.schema)


# --------------------------------------------------------------------------- single-image CLI


@dataclass
class ImageResult:
    path: str
    class_name: str | None
    class_index: int | None
    confidence: float | None
    error: str | None


def classify_files(classifier: Classifier, paths: Sequence[str]) -> list[ImageResult]:
    """The single-image path: the job's decode (``decode_batch``), preprocessing and
    classifier, one file after another."""
    results = []
    for p in paths:
        batch = decode_batch({"path": np.array([p], dtype=object)})
        error = str(batch["error"][0])
        if error:
            results.append(ImageResult(p, None, None, None, error))
            continue
        probs = classifier.probabilities(batch["image"])[0]
        top = int(np.argmax(probs))
        results.append(ImageResult(p, classifier.classes[top], top, float(probs[top]), None))
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="cifar-classify",
        description="Classify images with a trained CIFAR10-quick model (one line per image).",
        allow_abbrev=False,
    )
    p.add_argument("--model", required=True, help="run dir, checkpoint dir, model/ or .pt/.pth")
    p.add_argument("images", nargs="+", help="image files")
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="auto",
        help="auto: bf16 on GPUs; on a CPU the faster of fp32 and bf16, measured; fp32: "
        "exactly the tutorial's test.py arithmetic",
    )
    a = p.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        classifier = Classifier.from_path(a.model, device, precision=a.precision)
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


def cli() -> None:
    """The installed ``cifar-classify`` command (also ``python -m cifar.predict``)."""
    sys.exit(main())


if __name__ == "__main__":
    cli()
