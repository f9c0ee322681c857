"""Checkpoints: a directory of ``model.pt`` (state_dict), ``meta.json`` and ``train_state.pt``.

This is the one module that calls ``torch.load``, always with ``weights_only=True``: a file that
holds a pickled module or any other code is refused, never executed.

Accepted model sources (``resolve_model``): a training run directory (its ``model/`` export, or
its best checkpoint), a checkpoint directory, an exported ``model/`` directory, or a bare
``.pt``/``.pth`` state_dict such as the tutorial's ``torch.save(model.state_dict(), path)``.
What is built from them: :mod:`cifar.models.loading`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import platform
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cifar.io import storage
from cifar.io.faults import StorageError
from cifar.models.registry import ModelSpec

log = logging.getLogger(__name__)

MODEL_FILE = "model.pt"
META_FILE = "meta.json"
TRAIN_STATE_FILE = "train_state.pt"
FORMAT_VERSION = 1
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


class CheckpointError(RuntimeError):
    """A model file or checkpoint cannot be used; the message names the problem and the fix."""


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside DDP / FSDP-style ``.module`` and ``torch.compile`` wrappers."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(model, nn.parallel.DistributedDataParallel) or (
            hasattr(model, "module") and isinstance(model.module, nn.Module)
        ):
            model = model.module
        else:
            return model


def clean_state_dict(sd: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Strip ``module.`` / ``_orig_mod.`` prefixes that wrappers leak into parameter names."""
    out = {}
    for k, v in sd.items():
        while k.startswith(_WRAPPER_PREFIXES):
            k = k.split(".", 1)[1]
        out[k] = v
    return out


def versions() -> dict[str, str]:
    import ray
    import torchvision

    from cifar import __version__

    return {
        "cifar_ray": __version__,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "ray": ray.__version__,
        "python": platform.python_version(),
    }


# --------------------------------------------------------------------------- saving


def save_checkpoint(
    directory: str | os.PathLike,
    model: nn.Module,
    meta: dict[str, Any],
    train_state: dict[str, Any] | None = None,
) -> Path:
    """Write ``model.pt`` (state_dict of the unwrapped model, CPU tensors), ``meta.json`` and,
    when given, ``train_state.pt`` into ``directory``."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    sd = {k: v.detach().cpu() for k, v in clean_state_dict(unwrap(model).state_dict()).items()}
    torch.save(sd, d / MODEL_FILE)
    (d / META_FILE).write_text(json.dumps({"format_version": FORMAT_VERSION, **meta}, indent=2))
    if train_state is not None:
        torch.save(train_state, d / TRAIN_STATE_FILE)
    return d


# --------------------------------------------------------------------------- loading


def _torch_load(path: Path, what: str) -> Any:
    """``torch.load(weights_only=True)`` with errors that say what to do."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        msg = str(e)
        m = re.search(r"GLOBAL ([\w.]+)", msg)
        found = f" (it references '{m.group(1)}')" if m else ""
        raise CheckpointError(
            f"{path} is not a plain {what}{found}: it holds pickled Python objects, such as a "
            "whole model saved with torch.save(model, path) (the tutorial's 'method 1'). "
            "Loading it would run code from the file, so it was refused and nothing in it was "
            "executed. If you trust the file, re-save its weights once, in the script where the "
            "model class is defined: `torch.save(torch.load(path, weights_only=False)"
            ".state_dict(), 'model_state.pth')`, and pass that file instead."
        ) from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as e:
        raise CheckpointError(
            f"{path} is not a readable PyTorch file ({type(e).__name__}: {e}). It may be "
            "truncated or not a checkpoint at all; point --model at a .pt/.pth state_dict or a "
            "checkpoint directory."
        ) from None


def load_state_dict_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"model file {p} does not exist.")
    obj = _torch_load(p, "state_dict")
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]  # common {'state_dict': ..., 'epoch': ...} wrapper
    if isinstance(obj, Mapping) and "model" in obj and isinstance(obj["model"], Mapping):
        obj = obj["model"]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(
            f"{p} holds a {type(obj).__name__}, not a state_dict (a mapping of parameter names "
            "to tensors). Save weights with torch.save(model.state_dict(), path)."
        )
    return clean_state_dict(obj)


def load_train_state(directory: str | os.PathLike) -> dict[str, Any]:
    return _torch_load(Path(directory) / TRAIN_STATE_FILE, "training state")


def read_meta(directory: str | os.PathLike) -> dict[str, Any]:
    p = Path(directory) / META_FILE
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{p} is not valid JSON ({e}).") from None


def model_meta(spec: ModelSpec, **extra: Any) -> dict[str, Any]:
    """What ``meta.json`` says: the spec (architecture, classes, input size, normalisation) and,
    in ``extra``, run details (epoch, metrics, config, versions, dataset, compute)."""
    return {**spec.to_meta(), **extra}


def _is_checkpoint_dir(d: str) -> bool:
    return storage.is_file(storage.join(d, MODEL_FILE))


def _meta_at(d: str) -> dict[str, Any] | None:
    """``meta.json`` in the folder ``d`` (local or URI), or None where there is none."""
    p = storage.join(d, META_FILE)
    if not storage.is_file(p):
        return None
    try:
        return json.loads(storage.read_text(p))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{p} is not valid JSON ({e}).") from None


def _best_checkpoint_in_run(run_dir: str) -> str | None:
    """The run's best checkpoint by test accuracy (latest epoch breaks ties)."""
    best: tuple[float, int, str] | None = None
    for name in storage.list_dirs(run_dir):
        d = storage.join(run_dir, name)
        if not name.startswith("checkpoint_") or not _is_checkpoint_dir(d):
            continue
        try:
            meta = _meta_at(d)
        except CheckpointError:
            continue
        if meta is None:
            continue
        acc = float(meta.get("metrics", {}).get("test_accuracy", float("-inf")))
        key = (acc, int(meta.get("epoch", -1)), d)
        if best is None or key[:2] > best[:2]:
            best = key
    return best[2] if best else None


def resolve_model(path: str | os.PathLike) -> tuple[str, dict[str, Any] | None]:
    """Map what the user passed (a local path or a URI: s3://, gs://, file://) to (state_dict
    file, metadata or None for a bare file)."""
    p = str(path)
    if not storage.is_uri(p):
        p = str(Path(p).expanduser())
    if storage.is_file(p):
        if storage.name(p) == MODEL_FILE:
            return p, _meta_at(storage.parent(p))
        return p, None
    if not storage.is_dir(p):
        storage.check_bucket(p)
        raise CheckpointError(
            f"--model {p} does not exist. Pass a training run directory, a checkpoint "
            "directory, an exported model/ directory or a .pt/.pth state_dict file (local "
            "paths or URIs such as s3://bucket/runs/r1)."
        )
    candidates = [p] if _is_checkpoint_dir(p) else []
    candidates.append(storage.join(p, "model"))
    best = _best_checkpoint_in_run(p)
    if best is not None:
        candidates.append(best)
    for c in candidates:
        if _is_checkpoint_dir(c):
            return storage.join(c, MODEL_FILE), _meta_at(c)
    raise CheckpointError(
        f"{p} is a directory without a model: expected {MODEL_FILE} in it, in "
        f"{storage.join(p, 'model')}, or in a checkpoint_* subdirectory of a training run."
    )


def read_state_dict(sd_path: str) -> tuple[dict[str, torch.Tensor], str]:
    """(state_dict, SHA-256 of the file) of a local path or URI (a URI is downloaded once per
    node, then re-used), loaded with ``weights_only=True``."""
    try:
        local = storage.local_copy(sd_path)
    except StorageError:
        raise  # the store, not the file: the job says so as such
    except OSError as e:
        raise CheckpointError(f"cannot read the model file {sd_path}: {e}") from None
    sd = load_state_dict_file(local)
    return sd, hashlib.sha256(Path(local).read_bytes()).hexdigest()
