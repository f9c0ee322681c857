"""The model seam: an architecture's name -> how to build it, the input size it sees, and a
faster inference forward where it has one; :class:`ModelSpec`, everything needed to rebuild a
model and feed it, stored in ``meta.json`` beside its weights.

Training, prediction, checkpoints and the speed probes all build models through
:func:`build_model` and read sizes and normalisation from a spec: a new architecture is an entry
in :data:`ARCHS` (or, for torchvision's, a name it knows), nothing else.
"""

from __future__ import annotations

import difflib
import functools
import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch import nn

from cifar.config import ConfigError
from cifar.data.cifar10 import CIFAR10_CLASSES
from cifar.models import vision
from cifar.models.cifar_quick import INPUT_SIZE, CifarQuick

DEFAULT_ARCH = "cifar10_quick"
MIN_SIZE = 16


@dataclass(frozen=True)
class Arch:
    """A registered architecture."""

    build: Callable[[int], nn.Module]  # num_classes -> a freshly initialised module
    input_size: int  # the side of the square images it is trained at by default
    fixed_size: bool  # True: no other size works (a Linear after a fixed flatten)
    about: str


ARCHS: dict[str, Arch] = {
    "cifar10_quick": Arch(
        partial(CifarQuick, relu=False),
        INPUT_SIZE,
        True,
        "the tutorial's CIFAR10-quick (no ReLU; its parameter names)",
    ),
    "cifar10_quick_relu": Arch(
        partial(CifarQuick, relu=True),
        INPUT_SIZE,
        True,
        "CIFAR10-quick with the Caffe original's ReLUs",
    ),
}


_FIXED_TORCHVISION = ("vit_", "maxvit_")  # a position embedding / window grid made for 224


def get_arch(name: str) -> Arch:
    """The architecture ``name``: one of :data:`ARCHS`, else torchvision's builder of that name
    (its head sized by :func:`cifar.models.vision.build`); a ConfigError with the nearest names
    otherwise."""
    if name in ARCHS:
        return ARCHS[name]
    if name in vision.names():
        return Arch(
            partial(vision.build, name),
            vision.default_size(name),
            name.startswith(_FIXED_TORCHVISION),
            f"torchvision's {name}",
        )
    known = [*ARCHS, *vision.names()]
    near = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
    hint = f" Did you mean {' or '.join(near)}?" if near else ""
    raise ConfigError(
        f"unknown architecture {name!r}.{hint} --arch takes {', '.join(ARCHS)} or any "
        "torchvision classification model by its builder name (resnet18, resnet50, vgg16, "
        "mobilenet_v3_small, efficientnet_b0, convnext_tiny, ...: "
        "torchvision.models.list_models(module=torchvision.models))."
    )


def is_torchvision(arch: str) -> bool:
    return arch not in ARCHS


@dataclass(frozen=True)
class ModelSpec:
    """What a model is and what it is fed: architecture, classes (index = output), the side of
    the square input, the per-channel normalisation on the [0, 1] scale (None: ``x / 255``,
    the tutorial's ``ToTensor()``), and the ``Linear`` layers appended after a torchvision
    head (the tutorial's ``vgg16.classifier.add_module(...)``; the last one's width is the
    number of classes)."""

    arch: str
    classes: tuple[str, ...]
    input_size: int
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    appended: tuple[vision.Appended, ...] = ()

    @classmethod
    def of(
        cls,
        arch: str = DEFAULT_ARCH,
        classes: Sequence[str] = CIFAR10_CLASSES,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        input_size: int | None = None,
        appended: Sequence[vision.Appended] = (),
    ) -> ModelSpec:
        """A spec with the architecture's own input size unless one is given."""
        a = get_arch(arch)
        size = input_size or a.input_size
        if a.fixed_size and size != a.input_size:
            raise ConfigError(
                f"{arch} takes {a.input_size}x{a.input_size} images only (got --image-size "
                f"{size}); drop --image-size or pick another --arch."
            )
        if size < MIN_SIZE:
            raise ConfigError(f"--image-size {size} is too small: {MIN_SIZE} pixels at least.")
        _check_appended(arch, len(classes), appended)
        return cls(
            arch,
            tuple(classes),
            size,
            tuple(mean) if mean is not None else None,
            tuple(std) if std is not None else None,
            tuple(appended),
        )

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def head(self) -> str:
        """The module that produces the logits: the last appended layer, else the
        architecture's head (what fine-tuning replaces and ``--freeze-backbone`` trains)."""
        if self.appended:
            return f"{self.appended[-1].to}.{self.appended[-1].name}"
        return head_name_of(self.arch)

    def to_meta(self) -> dict[str, Any]:
        """The spec as ``meta.json`` keys (``relu`` and ``image_size`` as earlier versions
        wrote them; ``appended`` only where there are such layers)."""
        norm = {"mean": list(self.mean), "std": list(self.std)} if self.mean else None
        meta = {
            "arch": self.arch,
            "relu": self.arch == "cifar10_quick_relu",
            "num_classes": self.num_classes,
            "classes": list(self.classes),
            "normalize": norm,
            "image_size": self.input_size,
        }
        if self.appended:
            meta["appended"] = [a.to_meta() for a in self.appended]
        return meta

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any]) -> ModelSpec:
        """The spec a ``meta.json`` describes, including those earlier versions wrote
        (``arch: cifar10_quick`` with ``relu: true``; no ``appended``)."""
        arch = meta.get("arch") or DEFAULT_ARCH
        if arch == "cifar10_quick" and meta.get("relu"):
            arch = "cifar10_quick_relu"
        k = int(meta.get("num_classes") or len(meta.get("classes") or CIFAR10_CLASSES))
        classes = meta.get("classes") or [str(i) for i in range(k)]
        norm = meta.get("normalize") or {}
        appended = [vision.Appended.from_meta(d) for d in meta.get("appended") or ()]
        size = meta.get("image_size")
        return cls.of(arch, classes, norm.get("mean"), norm.get("std"), size, appended)


def _check_appended(arch: str, classes: int, appended: Sequence[vision.Appended]) -> None:
    """Appended layers fit a torchvision architecture, each other, and the classes."""
    if not appended:
        return
    if not is_torchvision(arch):
        raise ConfigError(f"{arch} takes no appended layers: only torchvision's architectures.")
    for a, b in itertools.pairwise(appended):
        if b.in_features != a.out_features:
            raise ConfigError(
                f"{b.to}.{b.name} takes {b.in_features} inputs, {a.to}.{a.name} before it "
                f"gives {a.out_features}."
            )
    last = appended[-1]
    if last.out_features != classes:
        raise ConfigError(
            f"{classes} classes, but the last appended layer {last.to}.{last.name} has "
            f"{last.out_features} outputs."
        )


@functools.cache
def head_name_of(arch: str) -> str:
    """The name of ``arch``'s head module (``fc``, ``classifier.6``, ``model1.8``, ...), from a
    model built on the meta device where it can be (no memory, no initialisation)."""
    try:
        with torch.device("meta"):
            return vision.head_name(get_arch(arch).build(2))
    except (NotImplementedError, RuntimeError):  # a builder that initialises from data
        return vision.head_name(get_arch(arch).build(2))


def head_width(arch: str, sd: Mapping[str, torch.Tensor]) -> int | None:
    """The classes a state_dict's head has, for ``arch`` (None: ``sd`` has no such head)."""
    prefix = head_name_of(arch)
    for k in (f"{prefix}.bias", f"{prefix}.weight"):
        if k in sd and sd[k].ndim >= 1:
            return int(sd[k].shape[0])
    return None


def build_model(spec: ModelSpec) -> nn.Module:
    """A freshly initialised model for ``spec`` (pure: on the CPU, in fp32): the
    architecture's head as wide as the first appended layer takes, where there are such."""
    if not spec.appended:
        return get_arch(spec.arch).build(spec.num_classes)
    model = get_arch(spec.arch).build(spec.appended[0].in_features)
    return vision.append(model, spec.appended)


def inference_forward(model: nn.Module, device: torch.device) -> Callable[..., torch.Tensor]:
    """The forward to classify with: the model's ``forward_inference`` on a CPU where it has one
    (identical logits, faster), else the model itself."""
    fast = getattr(model, "forward_inference", None)
    return fast if device.type == "cpu" and fast is not None else model


def match_state_dict(sd: Mapping[str, torch.Tensor]) -> tuple[str, int] | None:
    """(architecture, number of classes) of a registered fixed-size architecture whose parameter
    names equal ``sd``'s (the classes from the last layer's bias); None when none does."""
    for name, arch in ARCHS.items():
        if not arch.fixed_size:
            continue
        keys = list(arch.build(2).state_dict())
        if set(keys) == set(sd):
            return name, int(sd[keys[-1]].shape[0])
    return None
