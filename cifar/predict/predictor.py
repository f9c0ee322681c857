"""The one predictor: a loaded model, the preprocessing its spec asks for (decode, input size,
normalisation), the precision it computes in, and the rows it answers with. The batch job's Ray
Data actors (:class:`BatchPredictor`), ``cifar-classify`` and ``cifar-serve``'s replicas all build
one from the same :class:`PredictorSettings`, so a file gets the same answer from each."""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from cifar.config import ConfigError
from cifar.device import Compute, Work, machine_key, resolve_compute
from cifar.io.images import decode_batch, decode_image
from cifar.models.exported import OnnxModel, is_onnx
from cifar.models.loading import LoadedModel, load_model
from cifar.models.probe import spec_key, step_probe
from cifar.models.registry import inference_forward
from cifar.predict.formats import prediction_columns, result_schema

log = logging.getLogger(__name__)

UNKNOWN_WORK = 10**9  # online, or not counted: the time budget alone bounds measuring


@dataclass(frozen=True)
class PredictorSettings:
    """Everything a predictor is built from. It crosses process boundaries as it is (to Ray
    Data's actors, to Serve's replicas): one typed object, not loose keyword arguments."""

    model: str  # a run, checkpoint, model/ folder, .pt/.pth state_dict or .onnx file (or URI)
    arch: str | None = None  # what a bare state_dict is
    image_size: int | None = None  # classify at another size than the model's own
    device: str = "auto"  # auto: the GPU where there is one, else the CPU
    precision: str = "auto"  # auto: measured on a CPU at ``batch_size`` (cached), bf16 on GPUs
    channels_last: bool | None = None
    batch_size: int = 1  # images per forward pass: what ``auto`` is measured at
    threads: int | None = None  # torch threads on a CPU (None: torch's default)
    top_k: int = 1
    work: int | None = None  # images it will classify, if known: bounds measuring ``auto``

    def resolved_device(self) -> str:
        if self.device != "auto":
            return self.device
        return "cuda" if torch.cuda.is_available() else "cpu"


def inference_compute(
    model: LoadedModel,
    device: torch.device | str,
    precision: str,
    batch: int = 1,
    channels_last: bool | None = None,
    work: Work | None = None,
) -> Compute:
    """Precision and layout to classify with; ``auto`` on a CPU: measured for ``batch`` (once
    per machine, model shape and batch: the timings are cached), at a cost bounded by the
    ``work`` (:func:`cifar.device.measure_bounded`). An ONNX model: fp32, NCHW."""
    if isinstance(model.model, OnnxModel):
        return onnx_compute(device, precision)
    probe = step_probe(lambda: copy.deepcopy(model.model), model.spec, batch, train=False)
    key = f"classify|{machine_key()}|batch={batch}|{spec_key(model.spec)}"
    return resolve_compute(device, precision, channels_last, probe, cache_key=key, work=work)


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


@dataclass
class ImageResult:
    """One image's answer, the same object from every entry point (``cifar-classify --json``
    prints it, ``cifar-serve`` returns it)."""

    path: str
    class_name: str | None
    class_index: int | None
    confidence: float | None
    error: str | None
    top_k: list[dict[str, Any]] = field(default_factory=list)  # {class_index, class_name, prob}

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "class_index": self.class_index,
            "class_name": self.class_name,
            "confidence": self.confidence,
            "top_k": self.top_k,
            "error": self.error,
        }


class Predictor:
    """A loaded model plus its preprocessing, precision and output rows."""

    def __init__(self, settings: PredictorSettings, model: LoadedModel | None = None) -> None:
        device = settings.resolved_device()
        if device == "cpu" and settings.threads:
            torch.set_num_threads(max(1, settings.threads))
        if model is None:
            model = load_for_prediction(settings.model, "cpu", settings.arch, settings.image_size)
        self.settings = settings
        work = Work(settings.work or UNKNOWN_WORK, settings.batch_size)
        self.compute = inference_compute(
            model, device, settings.precision, settings.batch_size, settings.channels_last, work
        )
        if isinstance(model.model, OnnxModel):  # onnxruntime places it: its providers
            self.model = self.forward = model.model.on(self.compute.device)
        else:
            self.model = self.compute.place(model.model).eval()
            self.forward = inference_forward(self.model, self.compute.device)
        self.loaded = model
        self.spec = model.spec
        self.classes = model.classes

    @classmethod
    def from_path(cls, path: str, device: str = "cpu", **kw: Any) -> Predictor:
        """The predictor of a model source (``kw``: the other :class:`PredictorSettings`)."""
        return cls(PredictorSettings(path, device=device, **kw))

    @property
    def input_size(self) -> int:
        return self.spec.input_size

    @torch.inference_mode()
    def probabilities(self, images: np.ndarray) -> np.ndarray:
        """uint8 ``[B, 3, S, S]`` (S: the spec's input size) -> softmax probabilities
        ``[B, classes]`` (float32)."""
        from cifar.data.transforms import model_batch

        pixels = torch.from_numpy(np.ascontiguousarray(images))
        x = model_batch(self.compute, pixels, self.spec.mean, self.spec.std, size=self.input_size)
        with self.compute.autocast():
            logits = self.forward(x)
        return torch.softmax(logits.float(), dim=1).cpu().numpy()

    def _probs_of_good(self, batch: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        ok = np.array([not e for e in batch["error"]], dtype=bool)
        if not ok.any():
            return np.zeros((0, len(self.classes)), dtype=np.float32), ok
        return self.probabilities(batch["image"][ok]), ok

    def columns(self, batch: dict[str, np.ndarray], all_probs: bool = False) -> dict[str, Any]:
        """A decoded batch (``decode_batch``'s ``image``/``error``) -> the batch job's result
        columns; rows that failed to decode get null predictions."""
        probs, ok = self._probs_of_good(batch)
        return prediction_columns(probs, ok, self.classes, self.settings.top_k, all_probs)

    def results(self, batch: dict[str, np.ndarray], top_k: int | None = None) -> list[ImageResult]:
        """A decoded batch -> one :class:`ImageResult` per row, in order."""
        k = min(top_k or self.settings.top_k, len(self.classes))
        probs, ok = self._probs_of_good(batch)
        good = iter(range(len(probs)))
        out = []
        for path, error, fine in zip(batch["path"], batch["error"], ok, strict=True):
            if not fine:
                out.append(ImageResult(str(path), None, None, None, str(error)))
                continue
            p = probs[next(good)]
            order = np.argsort(-p, kind="stable")[:k]
            top = [
                {"class_index": int(i), "class_name": self.classes[int(i)], "prob": float(p[i])}
                for i in order
            ]
            best = top[0]
            out.append(
                ImageResult(
                    str(path), best["class_name"], best["class_index"], best["prob"], None, top
                )
            )
        return out

    def classify_files(self, paths: Sequence[str], top_k: int | None = None) -> list[ImageResult]:
        """Files (local or URIs) -> results, ``batch_size`` files per forward pass."""
        out: list[ImageResult] = []
        step = max(1, self.settings.batch_size)
        for i in range(0, len(paths), step):
            chunk = np.array(list(paths[i : i + step]), dtype=object)
            out += self.results(decode_batch({"path": chunk}, self.input_size), top_k)
        return out

    def classify_bytes(
        self, named: Sequence[tuple[str, bytes]], top_k: int | None = None
    ) -> list[ImageResult]:
        """(name, encoded bytes) pairs -> results in one forward pass (the online path)."""
        return self.results(self.decode_bytes(named), top_k)

    def decode_bytes(self, named: Sequence[tuple[str, bytes]]) -> dict[str, np.ndarray]:
        """As ``decode_batch`` for bytes in memory: the same decode, errors as rows."""
        size = self.input_size
        images = np.zeros((len(named), 3, size, size), dtype=np.uint8)
        errors = [""] * len(named)
        for i, (_, data) in enumerate(named):
            try:
                images[i] = decode_image(data, size)
            except ValueError as e:
                errors[i] = str(e)
        paths = np.array([n for n, _ in named], dtype=object)
        return {"path": paths, "image": images, "error": np.array(errors, dtype=object)}

    def describe(self) -> dict[str, Any]:
        """What the model is and how it computes (``cifar-serve``'s ``GET /model``)."""
        return {
            "arch": self.spec.arch,
            "classes": list(self.classes),
            "input_size": self.input_size,
            "normalize": {"mean": self.spec.mean, "std": self.spec.std}
            if self.spec.mean is not None
            else None,
            "precision": self.compute.describe(),
            "sha256": self.loaded.sha256,
        }


class BatchPredictor:
    """Ray Data actor: the predictor built once in ``__init__``; ``__call__(batch) -> batch``.
    With ``decode`` (``decode_batch`` or a shard's ``decode_samples``), it decodes its batch of
    paths itself: small images then never cross the object store as pixels."""

    def __init__(
        self,
        settings: PredictorSettings,
        label_dirs: bool = False,
        probs: bool = False,
        decode: Callable[..., dict[str, np.ndarray]] | None = None,
    ) -> None:
        self.predictor = Predictor(settings)
        self.label_dirs, self.probs, self.decode = label_dirs, probs, decode
        k = len(self.predictor.classes)
        self.schema = result_schema(settings.top_k, k, label_dirs, probs)

    def __call__(self, batch: dict[str, np.ndarray]):
        """``{"path", "image", "error"}`` (or ``{"path"}`` with ``decode``) -> a pyarrow Table of
        results, one row per input row."""
        import pyarrow as pa

        if self.decode is not None:
            batch = self.decode(batch, size=self.predictor.input_size)
        cols: dict[str, Any] = {
            "path": pa.array(batch["path"], pa.string()),
            "relpath": pa.array(batch["relpath"], pa.string()),
        }
        cols.update(self.predictor.columns(batch, self.probs))
        if self.label_dirs:  # labels read from the folders by the driver (label_from_dirs)
            # a block whose labels are all null arrives as NaNs (Arrow -> numpy)
            cols["label"] = [v if isinstance(v, str) else None for v in batch["label"]]
        cols["error"] = [str(e) or None for e in batch["error"]]
        return pa.table(cols, schema=self.schema)
