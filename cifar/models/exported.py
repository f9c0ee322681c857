"""Exported models as files: what ``cifar-export`` records in them (the model's preprocessing and
where it came from) and an ONNX file loaded to classify with, through onnxruntime.

The record is a flat string map, ONNX's ``metadata_props`` (lists and numbers as JSON, text as
it is), so that any ONNX tool shows it; TorchScript files carry the same keys as one JSON file in
their ``_extra_files`` (:data:`EXTRA_FILE`). :func:`load_onnx` reads it back into the
:class:`~cifar.models.registry.ModelSpec` prediction feeds the model by, so ``cifar-predict
--model model.onnx`` needs nothing retyped. onnxruntime (the ``onnx`` extra) is imported only
when an ONNX file is loaded.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from cifar.config import ConfigError
from cifar.io import storage
from cifar.io.faults import StorageError
from cifar.models.checkpoint import CheckpointError
from cifar.models.loading import LoadedModel
from cifar.models.registry import ModelSpec

log = logging.getLogger(__name__)

EXTRA_FILE = "cifar_ray.json"  # a TorchScript file's record, in its _extra_files
REQUIRED = ("arch", "classes", "image_size", "mean", "std")  # the spec: what prediction needs
_JSON = frozenset(("classes", "image_size", "mean", "std", "dataset"))  # the rest is plain text
INSTALL = "pip install 'cifar-ray[onnx]'"


def is_onnx(path: str | os.PathLike) -> bool:
    """``--model`` names an ONNX file (local or URI): classified with onnxruntime."""
    return str(path).lower().endswith(".onnx")


def record(loaded: LoadedModel) -> dict[str, Any]:
    """What an exported file says about itself: the spec (architecture, classes, input size,
    mean/std), how its input is made and its output read, and the weights it came from."""
    from cifar import __version__

    spec, s = loaded.spec, loaded.spec.input_size
    norm = ", then (x - mean) / std per channel" if spec.mean else " (no mean/std)"
    dataset = loaded.meta.get("dataset") or {}
    out = {
        "arch": spec.arch,
        "classes": list(spec.classes),
        "image_size": s,
        "mean": list(spec.mean) if spec.mean else None,
        "std": list(spec.std) if spec.std else None,
        "input": f"float32 [N, 3, {s}, {s}]: the image as RGB (EXIF-rotated, first frame), "
        f"resized to {s}x{s} (PIL bilinear, no crop), divided by 255{norm}",
        "output": f"float32 [N, {spec.num_classes}]: logits in the order of classes "
        "(softmax for probabilities)",
        "source": loaded.file,
        "source_sha256": loaded.sha256,
        "exported_by": f"cifar-ray {__version__}",
    }
    if dataset:  # whether it learnt from generated data: the pictures of its predictions say so
        out["dataset"] = {"kind": dataset.get("kind"), "generated": bool(dataset.get("generated"))}
    return out


def to_props(rec: Mapping[str, Any]) -> dict[str, str]:
    """The record as ONNX ``metadata_props``: strings only."""
    return {k: json.dumps(v) if k in _JSON else str(v) for k, v in rec.items()}


def from_props(props: Mapping[str, str], source: str) -> dict[str, Any]:
    """ONNX ``metadata_props`` -> the record; a file without one is a CheckpointError."""
    missing = [k for k in REQUIRED if k not in props]
    if missing:
        raise CheckpointError(
            f"{source} carries no record of its preprocessing (no {', '.join(missing)} in its "
            "metadata): it was not written by cifar-export. Export the run with `cifar-export "
            "RUN --format onnx`, which records input size, mean/std and classes in the file."
        )
    try:
        return {k: json.loads(v) if k in _JSON else v for k, v in props.items()}
    except json.JSONDecodeError as e:
        raise CheckpointError(
            f"{source}: its metadata is not what cifar-export writes ({e})."
        ) from None


def spec_from_record(rec: Mapping[str, Any], source: str) -> ModelSpec:
    try:
        return ModelSpec.of(rec["arch"], rec["classes"], rec["mean"], rec["std"], rec["image_size"])
    except ConfigError as e:
        raise CheckpointError(f"{source}: {e}") from None


def onnxruntime():
    """The onnxruntime module, or a ConfigError that says how to install it."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise ConfigError(f"an .onnx model needs onnxruntime: {INSTALL}.") from None
    return ort


def providers(device: torch.device | str) -> list[str]:
    """onnxruntime's execution providers for ``device``: CUDA first where the actor has a GPU
    and onnxruntime has the provider (onnxruntime-gpu), always the CPU."""
    available = onnxruntime().get_available_providers()
    if torch.device(device).type != "cuda":
        return ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    log.warning("onnxruntime here has no CUDAExecutionProvider (onnxruntime-gpu): CPU it is")
    return ["CPUExecutionProvider"]


class OnnxModel:
    """An ONNX file as the classifier's forward: model input ``[B, 3, S, S]`` (a float tensor)
    -> logits ``[B, k]``, computed by onnxruntime with as many threads as torch has here. A
    file exported for a fixed batch is fed in chunks of that batch, the last one padded."""

    def __init__(self, path: str, device: torch.device | str = "cpu") -> None:
        ort = onnxruntime()
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = torch.get_num_threads()  # an actor's CPUs, set before this
        opts.inter_op_num_threads = 1
        self.path, self.device = path, torch.device(device)
        try:
            self.session = ort.InferenceSession(path, opts, providers=providers(device))
        except Exception as e:  # onnxruntime's own errors: not an ONNX model it can run
            first = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
            raise CheckpointError(f"onnxruntime cannot load {path}: {first}") from None
        inp = self.session.get_inputs()[0]
        self.input_name, self.shape = inp.name, list(inp.shape)
        self.batch = self.shape[0] if isinstance(self.shape[0], int) else None  # None: any
        self.props = dict(self.session.get_modelmeta().custom_metadata_map)

    def on(self, device: torch.device | str) -> OnnxModel:
        """This model where ``device`` computes (a new session only for another device)."""
        same = torch.device(device).type == self.device.type
        return self if same else OnnxModel(self.path, device)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        arr = x.detach().to("cpu", torch.float32).contiguous().numpy()
        if self.batch is None:
            out = self._run(arr)
        else:
            parts = []
            for i in range(0, len(arr), self.batch):
                chunk = arr[i : i + self.batch]
                pad = np.zeros((self.batch - len(chunk), *chunk.shape[1:]), chunk.dtype)
                parts.append(self._run(np.concatenate([chunk, pad]))[: len(chunk)])
            out = np.concatenate(parts)
        return torch.from_numpy(out).to(x.device)

    def _run(self, arr: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: arr})[0]


def load_onnx(
    path: str | os.PathLike, arch: str | None = None, image_size: int | None = None
) -> LoadedModel:
    """An ONNX file written by ``cifar-export`` (local or URI) as a :class:`LoadedModel` whose
    ``model`` is an :class:`OnnxModel`, its spec read from the file's metadata."""
    p = str(path)
    if arch is not None:
        raise ConfigError(f"--arch does not apply to {p}: an exported model records its own.")
    try:
        local = str(storage.local_copy(p))
    except StorageError:
        raise
    except OSError as e:
        raise CheckpointError(f"cannot read the model file {p}: {e}") from None
    if not os.path.isfile(local):
        raise CheckpointError(f"model file {p} does not exist.")
    with open(local, "rb") as f:
        sha256 = hashlib.sha256(f.read()).hexdigest()
    model = OnnxModel(local)
    rec = from_props(model.props, p)
    spec = spec_from_record(rec, p)
    s = spec.input_size
    if image_size is not None and image_size != s:
        raise ConfigError(
            f"{p} was exported for {s}x{s} images: drop --image-size {image_size}, or export "
            f"the run again with `cifar-export RUN --image-size {image_size}`."
        )
    if model.shape[1:] != [3, s, s]:
        raise CheckpointError(f"{p} takes {model.shape}, its metadata says [N, 3, {s}, {s}].")
    meta = {**spec.to_meta(), **{k: v for k, v in rec.items() if k not in REQUIRED}}
    file = storage.absolute(p)  # what the actors load: wherever their working folder is
    return LoadedModel(model, spec, {**meta, "format": "onnx"}, p, sha256, file)  # type: ignore[arg-type]


def load_torchscript(path: str) -> tuple[torch.jit.ScriptModule, dict[str, Any]]:
    """A TorchScript file written here: (the module, its record)."""
    extra = {EXTRA_FILE: ""}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = torch.jit.load(path, map_location="cpu", _extra_files=extra)
    return module.eval(), json.loads(extra[EXTRA_FILE] or "{}")
