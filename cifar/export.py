"""``cifar-export``: a model as an ONNX or TorchScript file that records its preprocessing
(:func:`cifar.models.exported.record`), checked before it is kept: the file, run the way its
users run it (onnxruntime; ``torch.jit.load``), and the PyTorch model, as ``cifar-predict`` runs
it, classify the same batch of real images alike (top-1 identical, logits within
:data:`LOGIT_TOLERANCE`); a file that does not is refused and nothing is written.

The exporter: ``torch.onnx.export(dynamo=True)`` (PyTorch's default and the one it maintains)
for opset 18 on; it writes opset 18 natively, and asked for less it converts afterwards, which
for CIFAR10-quick fails and silently leaves opset 18 (torch 2.14, onnxscript 0.7). Opsets 7-17
are therefore written by the TorchScript-based exporter (``dynamo=False``), which writes them
as asked. Both give the same logits to ~1e-6 for CIFAR10-quick (both variants) and resnet18.
TorchScript files are traced (``torch.jit.trace``: any model whose forward has no
data-dependent branches, as these classifiers); PyTorch deprecates TorchScript for torch.export.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import tempfile
import time
import warnings
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cifar.config import Config, ConfigError, opt
from cifar.io import storage
from cifar.models.exported import EXTRA_FILE, INSTALL, OnnxModel, load_torchscript, record, to_props
from cifar.models.loading import LoadedModel, load_model
from cifar.models.registry import inference_forward

log = logging.getLogger(__name__)

SUFFIX = {"onnx": ".onnx", "torchscript": ".torchscript.pt"}
DEFAULT_OPSET = 18  # what the dynamo exporter writes natively: no conversion, most runtimes load it
DYNAMO_OPSETS = 18  # from this opset on the dynamo exporter, below it the TorchScript-based one
MIN_OPSET = 7
CHECK_IMAGES = 64
LOGIT_TOLERANCE = 1e-3  # of the largest logit (at least 1): fp32 exports differ by ~1e-6
TIE = 1e-5  # two classes whose logits are this close (relative) are both the top-1

ex_opt = partial(opt, group="export")


class ExportError(RuntimeError):
    """The exporter failed, or its file does not compute what the model computes."""


@dataclass
class ExportConfig(Config):
    # fmt: off
    run: str | None = opt(None, "run dir, checkpoint dir, model/ dir or .pt/.pth state_dict", cli=False)  # noqa: E501
    format: str = ex_opt("onnx", "onnx (onnxruntime, TensorRT, ...) or torchscript (torch.jit.load)", choices=tuple(SUFFIX))  # noqa: E501
    output: str | None = ex_opt(None, "the file to write (default: beside the weights, model.onnx or model.torchscript.pt)", metavar="FILE")  # noqa: E501
    opset: int | None = ex_opt(None, f"ONNX opset (default {DEFAULT_OPSET}; {DYNAMO_OPSETS} on: torch's dynamo exporter; {MIN_OPSET}-{DYNAMO_OPSETS - 1}: its TorchScript-based one)", metavar="N")  # noqa: E501
    dynamic_batch: bool = ex_opt(False, "ONNX: any batch size (default: the fixed --batch-size); TorchScript files take any batch")  # noqa: E501
    batch_size: int = ex_opt(1, "ONNX without --dynamic-batch: the batch the file takes", metavar="N")  # noqa: E501
    arch: str | None = ex_opt(None, "what a bare .pt/.pth state_dict is (resnet18, vgg16, ...; a run's model says it itself)", metavar="NAME")  # noqa: E501
    image_size: int | None = ex_opt(None, "export for this image size instead of the model's own", metavar="PIXELS")  # noqa: E501
    check_images: int = ex_opt(CHECK_IMAGES, "images the file and the PyTorch model must agree on", metavar="N")  # noqa: E501
    overwrite: bool = ex_opt(False, "replace FILE if it exists")
    verbose: bool = ex_opt(False, "also the exporter's own lines and INFO logs")
    # fmt: on

    def checks(self) -> list[tuple[bool, str]]:
        return [
            (bool(self.run), "RUN is required: a run dir, a model/ dir or a .pt/.pth file"),
            (
                self.opset is None or self.format == "onnx",
                "--opset applies to --format onnx only",
            ),
            (
                self.opset is None or self.opset >= MIN_OPSET,
                f"--opset {self.opset} is too old: {MIN_OPSET} at least",
            ),
            (self.batch_size >= 1, f"--batch-size must be at least 1 (got {self.batch_size})"),
            (self.check_images >= 1, "--check-images must be at least 1"),
        ]


@dataclass(frozen=True)
class Parity:
    """How the exported file and the PyTorch model compare on ``images`` inputs."""

    images: int
    where: str  # where the images came from
    agree: int  # same top-1 class
    ties: int  # different top-1, but the two classes' logits within TIE: either is the answer
    max_diff: float  # max abs logit difference
    scale: float  # the largest abs logit (at least 1)

    @property
    def ok(self) -> bool:
        return (
            self.agree + self.ties == self.images and self.max_diff <= LOGIT_TOLERANCE * self.scale
        )

    def line(self) -> str:
        ties = f" ({self.ties} near-ties, either class the answer)" if self.ties else ""
        return (
            f"top-1 identical on {self.agree + self.ties}/{self.images} images{ties}, max abs "
            f"logit difference {self.max_diff:.2e} (logits up to {self.scale:.3g}); images: "
            f"{self.where}"
        )


@dataclass(frozen=True)
class Exported:
    path: str
    format: str
    opset: int | None
    batch: int | None  # None: any
    size_bytes: int
    seconds: float
    parity: Parity
    model: LoadedModel


def default_output(loaded: LoadedModel, fmt: str) -> str:
    """Beside the weights: ``<dir>/model.onnx`` for a run's ``model.pt``, ``x.onnx`` for
    ``x.pth``."""
    folder, name = storage.parent(loaded.file), storage.name(loaded.file)
    stem = name.rsplit(".", 1)[0] if "." in name else name
    return storage.join(folder, stem + SUFFIX[fmt])


def prepare(cfg: ExportConfig) -> tuple[LoadedModel, str]:
    """Every check before exporting: the config, the model loads, the output may be written.
    (the model, the file to write)."""
    cfg.validate()
    if cfg.format == "onnx":
        _need_onnx()
    loaded = load_model(cfg.run, "cpu", cfg.arch, cfg.image_size)
    out = cfg.output or default_output(loaded, cfg.format)
    if storage.exists(out) and not cfg.overwrite:
        raise ConfigError(f"{out} exists: pass --overwrite to replace it, or another --output.")
    return loaded, out


def _need_onnx() -> None:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as e:
        raise ConfigError(f"--format onnx needs {e.name}: {INSTALL}.") from None


def export(cfg: ExportConfig) -> Exported:
    """Load the model, write the file, check it, and keep it only if it agrees."""
    loaded, out = prepare(cfg)
    pixels, where = sample_images(loaded, cfg.check_images)
    x = model_inputs(pixels, loaded)
    opset = (cfg.opset or DEFAULT_OPSET) if cfg.format == "onnx" else None
    batch = None if cfg.dynamic_batch or cfg.format == "torchscript" else cfg.batch_size
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="cifar-export-") as tmp:
        f = os.path.join(tmp, "model" + SUFFIX[cfg.format])
        example = x[torch.arange(batch or 2) % len(x)]  # 2 for any batch: 1 would be fixed
        if cfg.format == "onnx":
            write_onnx(loaded, example, f, opset, batch is None)
            exported = OnnxModel(f)
        else:
            write_torchscript(loaded, example, f)
            exported = load_torchscript(f)[0]
        parity = compare(loaded.model, exported, x, where)
        if not parity.ok:
            raise ExportError(
                f"the exported file does not compute what the model computes ({parity.line()}), "
                "so it was not written. Try another --opset or --format, and report it."
            )
        data = Path(f).read_bytes()
        seconds = time.perf_counter() - t0
        place(data, out)
    return Exported(out, cfg.format, opset, batch, len(data), seconds, parity, loaded)


def place(data: bytes, out: str) -> None:
    """Write ``out`` whole: a local file appears by a rename, an object in one upload."""
    if storage.is_uri(out):
        storage.write_bytes(out, data)
        return
    target = Path(out).expanduser()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.part")
    tmp.write_bytes(data)
    os.replace(tmp, target)


# --------------------------------------------------------------------------- writing


def write_onnx(
    loaded: LoadedModel,
    example: torch.Tensor,
    path: str,
    opset: int,
    dynamic: bool,
) -> None:
    """The model as ONNX at ``opset`` (input ``input``, output ``logits``), with its record in
    ``metadata_props``; an exporter failure or another opset than asked is an ExportError."""
    import onnx

    dynamo = opset >= DYNAMO_OPSETS
    if dynamo:
        shapes = ({0: torch.export.Dim("batch", min=1)},) if dynamic else None
        kw: dict[str, Any] = {"dynamic_shapes": shapes, "external_data": False}
    else:
        kw = {"dynamic_axes": {"input": {0: "batch"}, "logits": {0: "batch"}} if dynamic else None}
    which = "dynamo" if dynamo else "TorchScript-based"
    said = io.StringIO()  # the dynamo exporter prints its progress: into the log (--verbose)
    try:
        with contextlib.redirect_stdout(said), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript-based exporter's deprecation
            torch.onnx.export(
                loaded.model.eval(),
                (example,),
                path,
                input_names=["input"],
                output_names=["logits"],
                opset_version=opset,
                dynamo=dynamo,
                **kw,
            )
    except Exception as e:
        first = (str(e).strip().splitlines() or [""])[0][:300]
        raise ExportError(
            f"torch's {which} ONNX exporter cannot export {loaded.spec.arch} at opset {opset} "
            f"({type(e).__name__}: {first}). Try another --opset, or --format torchscript."
        ) from None
    finally:
        if said.getvalue().strip():
            log.info("%s", said.getvalue().rstrip())
    proto = onnx.load(path)
    got = [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")]
    if got != [opset]:
        raise ExportError(f"asked for ONNX opset {opset}, the {which} exporter wrote {got}.")
    for k, v in to_props(record(loaded)).items():
        proto.metadata_props.add(key=k, value=v)
    onnx.save(proto, path)


def write_torchscript(loaded: LoadedModel, example: torch.Tensor, path: str) -> None:
    """The model traced (``torch.jit.trace``) and saved with its record as ``EXTRA_FILE``."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.jit's deprecation, on every call
            traced = torch.jit.trace(loaded.model.eval(), example)
            extra = {EXTRA_FILE: json.dumps(record(loaded))}
            torch.jit.save(traced, path, _extra_files=extra)
    except Exception as e:
        first = (str(e).strip().splitlines() or [""])[0][:300]
        raise ExportError(
            f"torch.jit.trace cannot trace {loaded.spec.arch} ({type(e).__name__}: {first}). "
            "Try --format onnx."
        ) from None


# --------------------------------------------------------------------------- checking


@torch.inference_mode()
def compare(model: nn.Module, exported, x: torch.Tensor, where: str) -> Parity:
    """The PyTorch model (the forward ``cifar-predict`` uses on a CPU) and the exported file on
    the same inputs ``x``."""
    want = inference_forward(model.eval(), torch.device("cpu"))(x).float()
    got = exported(x).float()
    a, b = want.argmax(1), got.argmax(1)
    gap = want.gather(1, a[:, None]) - want.gather(1, b[:, None])  # >= 0
    scale = max(1.0, float(want.abs().max()))
    ties = int(((a != b) & (gap[:, 0] <= TIE * scale)).sum())
    diff = float((want - got).abs().max())
    return Parity(len(x), where, int((a == b).sum()), ties, diff, scale)


def model_inputs(pixels: np.ndarray, loaded: LoadedModel) -> torch.Tensor:
    """uint8 ``[N, 3, H, W]`` -> what the model takes: the prediction job's preprocessing in
    fp32 (resized where the size differs, normalised)."""
    from cifar.data.transforms import model_input

    spec = loaded.spec
    return model_input(torch.from_numpy(pixels), spec.input_size, spec.mean, spec.std)


def sample_images(loaded: LoadedModel, n: int) -> tuple[np.ndarray, str]:
    """Up to ``n`` images (uint8 ``[n, 3, H, W]``) of the run's data where it can be read here
    (its test batch, or files of its folders, decoded as prediction decodes them), else ``n``
    generated ones: smooth colour fields with noise, at the model's size."""
    dataset = loaded.meta.get("dataset") or {}
    root = dataset.get("root")
    if root and not storage.is_uri(root) and os.path.isdir(root):
        try:
            found = _run_images(root, dataset.get("kind"), n, loaded.spec.input_size)
        except (OSError, ValueError) as e:  # moved, changed, unreadable: generated ones do
            log.info("the run's data at %s cannot be read (%s): generated images instead", root, e)
            found = None
        if found is not None and len(found):
            return found, f"{len(found)} of the run's data ({root})"
    s = loaded.spec.input_size
    rng = np.random.default_rng(0)
    coarse = torch.from_numpy(rng.uniform(0, 255, (n, 3, 4, 4)).astype(np.float32))
    smooth = torch.nn.functional.interpolate(coarse, size=(s, s), mode="bicubic")
    noisy = smooth.numpy() + rng.normal(0, 20, smooth.shape)
    return np.clip(noisy, 0, 255).astype(np.uint8), "generated (the run's data is not here)"


def _run_images(root: str, kind: str | None, n: int, size: int) -> np.ndarray | None:
    if kind != "folder":  # CIFAR-format: the test batch
        from cifar.data.cifar10 import TEST_FILE, read_batch

        test = Path(root) / TEST_FILE
        return read_batch(test)[0][:n] if test.is_file() else None
    from cifar.io.images import IMAGE_EXTENSIONS, decode_batch

    top = next((Path(root) / d for d in ("val", "test") if (Path(root) / d).is_dir()), Path(root))
    paths: list[str] = []
    for folder, dirs, files in os.walk(top):
        dirs.sort()
        paths += [
            os.path.join(folder, f) for f in sorted(files) if f.lower().endswith(IMAGE_EXTENSIONS)
        ]
        if len(paths) >= 2 * n:  # room for unreadable files
            break
    if not paths:
        return None
    batch = decode_batch({"path": np.array(paths[: 2 * n], dtype=object)}, size)
    ok = np.array([not e for e in batch["error"]], dtype=bool)
    return batch["image"][ok][:n]
