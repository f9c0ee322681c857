"""Models from files: what prediction classifies with (:func:`load_model`) and what fine-tuning
starts from (:func:`load_pretrained`). Files are read by :mod:`cifar.models.checkpoint`
(``weights_only=True``, always); here they meet an architecture, and a file that does not fit
one is refused with what it holds and what was expected.

A bare state_dict carries no architecture: CIFAR10-quick's are recognised by their parameter
names, any other is named with ``--arch`` (its classes then come from the head's width:
CIFAR-10's names for 10, ImageNet's for a torchvision 1000-way head, else ``0``..``k-1``).
``Linear`` layers the tutorial appended to a torchvision head's ``Sequential``
(``vgg16.classifier.add_module('cadd_linear', nn.Linear(1000, 10))``) are found in the file and
built (their widths are all a state_dict says; see :class:`cifar.models.vision.Appended`); a
layer added where the architecture's forward never calls it is refused.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from cifar.config import ConfigError
from cifar.models import vision
from cifar.models.checkpoint import CheckpointError, model_meta, read_state_dict, resolve_model
from cifar.models.registry import (
    ARCHS,
    ModelSpec,
    build_model,
    get_arch,
    head_width,
    is_torchvision,
    match_state_dict,
)

log = logging.getLogger(__name__)
BARE_SOURCE = "bare state_dict (tutorial preprocessing assumed)"


@dataclass(frozen=True)
class LoadedModel:
    model: nn.Module  # or an OnnxModel (cifar.models.exported): called like one
    spec: ModelSpec
    meta: dict[str, Any]  # meta.json as saved (a bare file: its spec's keys)
    path: str
    sha256: str = ""  # of the state_dict file: what a resumed prediction job must still use
    file: str = ""  # the state_dict file ``path`` resolved to (local path or URI)

    @property
    def classes(self) -> list[str]:
        return list(self.spec.classes)


def load_model(
    path: str | os.PathLike,
    device: torch.device | str = "cpu",
    arch: str | None = None,
    image_size: int | None = None,
) -> LoadedModel:
    """Load any accepted model source onto ``device`` in eval mode (weights_only=True).
    ``arch``: what a bare state_dict is (a run's or checkpoint's meta.json says it itself);
    ``image_size``: classify at another size than the model's own (where the arch allows)."""
    sd_path, meta = resolve_model(path)
    sd, sha256 = read_state_dict(sd_path)
    if meta is None:
        spec = bare_spec(sd, sd_path, arch, image_size)
        meta = model_meta(spec, source=BARE_SOURCE)
    else:
        spec = spec_of(meta, sd_path, arch, image_size)
    model = build_from_state_dict(sd, spec, sd_path)
    model.to(device).eval()
    return LoadedModel(model, spec, meta, path=str(path), sha256=sha256, file=sd_path)


def bare_spec(
    sd: Mapping[str, torch.Tensor],
    source: str,
    arch: str | None = None,
    image_size: int | None = None,
) -> ModelSpec:
    """The spec of a bare state_dict: ``arch`` (else the CIFAR10-quick variant its keys match),
    classes from its head's width, the tutorial's preprocessing (``ToTensor()``, no
    normalisation), except ImageNet's mean/std for a torchvision 1000-way head: ImageNet
    weights, trained with it."""
    appended: tuple[vision.Appended, ...] = ()
    if arch is None:
        found = match_state_dict(sd)
        if found is None:
            other = vision.guess_arch(sd)
            if other is None:
                raise mismatch_error(sd, ModelSpec.of(), source)
            raise CheckpointError(
                f"{source} is a bare state_dict of {other} ({len(sd)} tensors, "
                f"{next(iter(sd))} ... {list(sd)[-1]}), not of CIFAR10-quick: a bare file does "
                f"not say its architecture. Pass --arch {other}."
            )
        arch, k = found
    else:
        appended = _appended(arch, sd, source)
        k = appended[-1].out_features if appended else head_width(arch, sd)
        if k is None:
            two = _checked(lambda: ModelSpec.of(arch, ["a", "b"]), source)
            raise mismatch_error(sd, two, source, any_classes=True)
    imagenet = is_torchvision(arch) and k == vision.IMAGENET_CLASSES
    norm = (vision.IMAGENET_MEAN, vision.IMAGENET_STD) if imagenet else (None, None)
    classes = bare_classes(k, arch)
    return _checked(lambda: ModelSpec.of(arch, classes, *norm, image_size, appended), source)


def _appended(
    arch: str, sd: Mapping[str, torch.Tensor], source: str
) -> tuple[vision.Appended, ...]:
    """The layers ``sd`` has appended to torchvision ``arch``'s head (none for this project's
    own architectures); a CheckpointError for a layer its forward would never call."""
    _checked(lambda: get_arch(arch), source)
    if not is_torchvision(arch):
        return ()
    return _checked(lambda: vision.appended_layers(arch, sd), source)


def bare_classes(k: int, arch: str | None = None) -> list[str]:
    """CIFAR-10's names for a 10-way head, ImageNet's for a torchvision 1000-way one,
    ``0``..``k-1`` otherwise."""
    default = ModelSpec.of().classes
    if k == len(default):
        return list(default)
    if arch is not None and is_torchvision(arch) and k == vision.IMAGENET_CLASSES:
        return vision.imagenet_categories()
    return [str(i) for i in range(k)]


def spec_of(
    meta: Mapping[str, Any], source: str, arch: str | None = None, image_size: int | None = None
) -> ModelSpec:
    """The spec ``meta.json`` describes (at ``image_size`` if given); one it cannot describe,
    or an ``arch`` that contradicts it, is a CheckpointError."""
    classes, k = meta.get("classes"), meta.get("num_classes")
    if classes is not None and k is not None and len(classes) != int(k):
        raise CheckpointError(
            f"{source}: meta.json lists {len(classes)} classes, the weights have {k} outputs."
        )
    spec = _checked(lambda: ModelSpec.from_meta(meta), source)
    if arch is not None and arch != spec.arch:
        raise CheckpointError(
            f"{source} is a {spec.arch} model (its meta.json says so); --arch {arch} does not "
            "apply to it. Drop --arch: a run's model carries its architecture."
        )
    if image_size is not None and image_size != spec.input_size:
        sized = _checked(
            lambda: ModelSpec.of(spec.arch, spec.classes, input_size=image_size), source
        )
        spec = replace(spec, input_size=sized.input_size)
    return spec


def _checked(make, source: str):
    try:
        return make()
    except ConfigError as e:
        raise CheckpointError(f"{source}: {e}") from None


def build_from_state_dict(
    sd: Mapping[str, torch.Tensor], spec: ModelSpec, source: str
) -> nn.Module:
    """The model of ``spec`` with the weights ``sd``; errors name the missing, unexpected or
    mis-shaped keys."""
    model = build_model(spec)
    want = model.state_dict()
    if set(want) != set(sd) or any(want[k].shape != sd[k].shape for k in want):
        raise mismatch_error(sd, spec, source)
    model.load_state_dict(sd, strict=True)
    return model


def mismatch_error(
    sd: Mapping[str, torch.Tensor],
    spec: ModelSpec,
    source: str,
    want: Mapping[str, torch.Tensor] | None = None,
    free: frozenset[str] = frozenset(),
    any_classes: bool = False,
) -> CheckpointError:
    """What a file that does not fit ``spec`` holds, what was expected, and (where its keys are
    those of another architecture) which ``--arch`` it is for. ``free``: keys whose shape may
    differ (a head about to be replaced)."""
    want = want if want is not None else build_model(spec).state_dict()
    missing = [k for k in want if k not in sd]
    unexpected = [k for k in sd if k not in want]
    shapes = [
        f"{k}: file {tuple(sd[k].shape)} vs model {tuple(want[k].shape)}"
        for k in want
        if k in sd and k not in free and sd[k].shape != want[k].shape
    ]
    parts = []
    for what, items in (("missing keys", missing), ("unexpected keys", unexpected)):
        if items:
            parts.append(f"{what} {items[:8]}{' ...' if len(items) > 8 else ''}")
    if shapes:
        parts.append(f"shape mismatches {shapes[:8]}{' ...' if len(shapes) > 8 else ''}")
    keys = list(sd)
    held = f"{len(keys)} tensors, {keys[0]} ... {keys[-1]}" if keys else "no tensors"
    other = _guess(sd) if missing or unexpected else None
    if any_classes:  # the head's width is the file's, whatever it is
        shapes = []
    if other is not None and other != spec.arch:
        held += f": {other} weights (pass --arch {other})"
    how = (
        "the tutorial's MyNetwork"
        if spec.arch in ARCHS
        else f"torch.save(torchvision.models.{spec.arch}(weights=...).state_dict(), FILE)"
    )
    width = "" if any_classes else f" for {spec.num_classes} classes"
    return CheckpointError(
        f"{source} does not hold {spec.arch} weights{width}: "
        + "; ".join(parts)
        + f". The file holds {held}. Expected {len(want)} tensors ({next(iter(want))} ... "
        f"{list(want)[-1]}), as {how} saves them."
    )


def _guess(sd: Mapping[str, torch.Tensor]) -> str | None:
    found = match_state_dict(sd)
    return found[0] if found else vision.guess_arch(sd)


@dataclass(frozen=True)
class Pretrained:
    """What fine-tuning starts from: the weights to load (the head left out unless it fits),
    the normalisation they were trained with, and the layers the file appended to the
    architecture's head, which the model to train has too
    (``ModelSpec.of(..., appended=pretrained.appended)``)."""

    state_dict: dict[str, torch.Tensor]
    file: str  # the state_dict file (local path or URI)
    sha256: str
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None
    kept_head: bool
    from_run: bool  # an earlier run of this project, not a bare state_dict file
    message: str  # one line for the job's log
    appended: tuple[vision.Appended, ...] = ()  # the file's, the last one the new head

    def describe(self) -> dict[str, Any]:
        """For config.json and meta.json."""
        return {
            "file": self.file,
            "sha256": self.sha256,
            "kept_head": self.kept_head,
            "from_run": self.from_run,
        }


def load_pretrained(source: str, spec: ModelSpec) -> Pretrained:
    """``--weights``: a state_dict file for ``spec.arch`` (local or URI; e.g. torchvision's
    ``resnet18(weights=...).state_dict()`` or a file from torch hub's cache), or an earlier run
    of this project. Every parameter but the head's must be there with its shape; the head is
    kept only from a run with the same classes, else dropped (and said so). Where the file has
    layers appended to the head, the model keeps them and the last one is the head (sized for
    ``spec``'s classes): :attr:`Pretrained.appended`. Nothing is downloaded from the internet:
    a missing file is an error."""
    sd_path, meta = resolve_model(source)
    sd, sha256 = read_state_dict(sd_path)
    run = spec_of(meta, sd_path) if meta is not None else None
    if run is not None and run.arch != spec.arch:
        raise CheckpointError(
            f"--weights {source} is a {run.arch} model (an earlier run); this run's --arch is "
            f"{spec.arch}. Pass --arch {run.arch} to fine-tune it."
        )
    where = f"--weights {sd_path}"
    found = run.appended if run is not None else _appended(spec.arch, sd, where)
    if found:  # the last appended layer is the head: as wide as this run's classes
        last = replace(found[-1], out_features=spec.num_classes)
        spec = replace(spec, appended=(*found[:-1], last))
    want = build_model(spec).state_dict()
    head = frozenset(k for k in want if k.startswith(spec.head + "."))
    body_ok = all(k in sd and sd[k].shape == want[k].shape for k in want if k not in head)
    if not body_ok or any(k not in want for k in sd):
        raise mismatch_error(sd, spec, where, want, free=head)
    head_fits = all(k in sd and sd[k].shape == want[k].shape for k in head)
    keep = head_fits and run is not None and run.classes == spec.classes
    body = {k: v for k, v in sd.items() if keep or k not in head}
    if run is not None:
        mean, std = run.mean, run.std
    elif is_torchvision(spec.arch):
        mean, std = vision.IMAGENET_MEAN, vision.IMAGENET_STD
    else:
        mean = std = None
    k = found[-1].out_features if found else head_width(spec.arch, sd)
    of = f"{spec.arch} + {', '.join(f'{a.to}.{a.name}' for a in found)}" if found else spec.arch
    if keep:
        fate = "head kept (same classes)"
    else:
        fate = f"its {k}-way head dropped for a new {spec.num_classes}-way one"
    message = f"[cifar] fine-tuning from {sd_path}: {len(body)} tensors of {of} loaded, {fate}"
    from_run = run is not None
    return Pretrained(body, sd_path, sha256, mean, std, keep, from_run, message, spec.appended)
