"""One classifier: a loaded model plus the preprocessing its spec asks for (input size,
normalisation), used by the single-image command (``jobs/classify.py``) and, as a Ray Data
callable (:class:`BatchPredictor`), by the bulk job, so a file gets the same answer from both."""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from cifar.config import ConfigError
from cifar.device import Compute, machine_key, resolve_compute, spec_key, step_probe
from cifar.io.images import decode_batch
from cifar.models.exported import OnnxModel, is_onnx
from cifar.models.loading import LoadedModel, load_model
from cifar.models.registry import inference_forward
from cifar.predict.formats import prediction_columns, result_schema

log = logging.getLogger(__name__)


def inference_compute(
    model: LoadedModel,
    device: torch.device | str,
    precision: str,
    batch: int = 1,
    channels_last: bool | None = None,
) -> Compute:
    """Precision and layout to classify with; ``auto`` on a CPU: measured at ``batch`` (once
    per machine, model shape and batch: the timings are cached). An ONNX model: fp32, NCHW."""
    if isinstance(model.model, OnnxModel):
        return onnx_compute(device, precision)
    probe = step_probe(lambda: copy.deepcopy(model.model), model.spec, batch, train=False)
    key = f"classify|{machine_key()}|batch={batch}|{spec_key(model.spec)}"
    return resolve_compute(device, precision, channels_last, probe=probe, cache_key=key)


def onnx_compute(device: torch.device | str, precision: str) -> Compute:
    """How an ONNX model classifies: onnxruntime computes in the file's own precision (fp32);
    its input is contiguous NCHW."""
    if precision not in ("auto", "fp32"):
        raise ConfigError(
            f"--precision {precision} does not apply to an ONNX model: onnxruntime computes in "
            "the file's own precision (fp32). Drop --precision, or classify the run itself."
        )
    return Compute(torch.device(device), None, channels_last=False, chosen_by="onnxruntime")


def load_for_prediction(
    path: str,
    device: torch.device | str = "cpu",
    arch: str | None = None,
    image_size: int | None = None,
) -> LoadedModel:
    """What ``--model`` names: an ONNX file from ``cifar-export`` (classified by onnxruntime),
    or any source :func:`~cifar.models.loading.load_model` takes."""
    if is_onnx(path):
        from cifar.models.exported import load_onnx

        return load_onnx(path, arch, image_size)
    return load_model(path, device, arch, image_size)


class Classifier:
    """A loaded model plus the preprocessing its spec asks for."""

    def __init__(
        self,
        model: LoadedModel,
        device: torch.device | str = "cpu",
        precision: str = "fp32",
        batch: int = 1,
        channels_last: bool | None = None,
    ) -> None:
        self.compute = inference_compute(model, device, precision, batch, channels_last)
        if isinstance(model.model, OnnxModel):  # onnxruntime places it: its providers
            self.model = self.forward = model.model.on(self.compute.device)
        else:
            self.model = self.compute.place(model.model).eval()
            self.forward = inference_forward(self.model, self.compute.device)
        self.spec = model.spec
        self.classes = model.classes

    @classmethod
    def from_path(
        cls,
        path: str,
        device: torch.device | str = "cpu",
        arch: str | None = None,
        image_size: int | None = None,
        **kw: Any,
    ) -> Classifier:
        """The classifier of a model source, an ONNX file included (``arch``: what a bare
        state_dict is; ``image_size``: another size than the model's own)."""
        return cls(load_for_prediction(path, "cpu", arch, image_size), device, **kw)

    @torch.inference_mode()
    def probabilities(self, images: np.ndarray) -> np.ndarray:
        """uint8 ``[B, 3, S, S]`` (S: the spec's input size) -> softmax probabilities
        ``[B, classes]`` (float32)."""
        pixels = torch.from_numpy(np.ascontiguousarray(images))
        x = self.compute.inputs(pixels, self.spec.mean, self.spec.std, size=self.spec.input_size)
        with self.compute.autocast():
            logits = self.forward(x)
        return torch.softmax(logits.float(), dim=1).cpu().numpy()

    def predict(
        self, batch: dict[str, np.ndarray], top_k: int, all_probs: bool = False
    ) -> dict[str, Any]:
        """A decoded batch (``decode_batch``'s ``image``/``error``) -> result columns; rows that
        failed to decode get null predictions."""
        ok = np.array([not e for e in batch["error"]], dtype=bool)
        probs = (
            self.probabilities(batch["image"][ok])
            if ok.any()
            else np.zeros((0, len(self.classes)), dtype=np.float32)
        )
        return prediction_columns(probs, ok, self.classes, top_k, all_probs)


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
        probs: bool = False,
        arch: str | None = None,
        image_size: int | None = None,
    ) -> None:
        if device == "cpu":
            torch.set_num_threads(max(1, threads))
        self.classifier = Classifier.from_path(
            model_path,
            device,
            arch,
            image_size,
            precision=precision,
            batch=batch_size,
            channels_last=channels_last,
        )
        self.top_k, self.label_dirs, self.probs = top_k, label_dirs, probs
        self.schema = result_schema(top_k, len(self.classifier.classes), label_dirs, probs)

    def __call__(self, batch: dict[str, np.ndarray]):
        """``{"path", "image", "error"}`` -> a pyarrow Table of results, one row per input row."""
        import pyarrow as pa

        cols: dict[str, Any] = {
            "path": [str(p) for p in batch["path"]],
            "relpath": [str(p) for p in batch["relpath"]],
        }
        cols.update(self.classifier.predict(batch, self.top_k, self.probs))
        if self.label_dirs:  # labels read from the folders by the driver (label_from_dirs)
            # a block whose labels are all null arrives as NaNs (Arrow -> numpy)
            cols["label"] = [v if isinstance(v, str) else None for v in batch["label"]]
        cols["error"] = [str(e) or None for e in batch["error"]]
        return pa.table(cols, schema=self.schema)


@dataclass
class ImageResult:
    path: str
    class_name: str | None
    class_index: int | None
    confidence: float | None
    error: str | None
    top: list[tuple[str, float]] | None = None  # the top-k (class, probability), best first


def classify_files(
    classifier: Classifier, paths: Sequence[str], top_k: int = 1
) -> list[ImageResult]:
    """The single-image path: the job's decode (``decode_batch``), preprocessing and
    classifier, one file after another."""
    results = []
    for p in paths:
        batch = decode_batch({"path": np.array([p], dtype=object)}, classifier.spec.input_size)
        error = str(batch["error"][0])
        if error:
            results.append(ImageResult(p, None, None, None, error))
            continue
        probs = classifier.probabilities(batch["image"])[0]
        order = np.argsort(-probs, kind="stable")[:top_k]
        best = int(order[0])
        ranked = [(classifier.classes[int(i)], float(probs[i])) for i in order]
        results.append(
            ImageResult(p, classifier.classes[best], best, float(probs[best]), None, ranked)
        )
    return results
