"""torchvision's classification architectures, by their builder names (``resnet18``,
``vgg16``, ``convnext_tiny``, ...): built without weights (nothing is downloaded, ever) with a
head for the data's classes, and what the rest of the project needs to know about them: which
parameters are the head, the ImageNet preprocessing their published weights expect, and which
architecture a bare state_dict belongs to.

The head is the tutorial's lesson made general: torchvision's builders take ``num_classes`` and
make their last layer (``fc``, ``classifier[6]``, ``head``, ...) that wide, which is what
``vgg16.classifier[6] = nn.Linear(4096, 10)`` does by hand: same parameter names, so a state_dict
saved either way loads into the other. The tutorial's other lesson, a layer added with
``add_module``, runs only where a ``Sequential`` runs it: :class:`Appended` rebuilds those, and
:func:`appended_layers` refuses one that the architecture's forward never calls.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from cifar.config import ConfigError

DEFAULT_SIZE = 224  # what every torchvision classification model is trained at (inception: 299)
# the normalisation torchvision's published ImageNet weights were trained with
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGENET_CLASSES = 1000
_OWN_SIZE = {"inception_v3": 299}
_NO_AUX = ("googlenet", "inception_v3")  # built without their auxiliary training heads


@functools.cache
def names() -> tuple[str, ...]:
    """Every torchvision classification builder name."""
    from torchvision import models

    return tuple(models.list_models(module=models))


def default_size(name: str) -> int:
    return _OWN_SIZE.get(name, DEFAULT_SIZE)


def build(name: str, num_classes: int) -> nn.Module:
    """torchvision's ``name`` with random weights and a ``num_classes``-wide head."""
    from torchvision import models

    kw = {"aux_logits": False, "init_weights": True} if name in _NO_AUX else {}
    with warnings.catch_warnings():  # googlenet/inception warn about their init's future
        warnings.simplefilter("ignore", FutureWarning)
        return models.get_model(name, weights=None, num_classes=num_classes, **kw)


def head_name(model: nn.Module) -> str:
    """The module that produces the logits: the last ``Linear`` (squeezenet's: its last
    1x1 ``Conv2d``), e.g. ``fc``, ``classifier.6``, ``heads.head``, ``model1.8``."""
    linear = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if linear:
        return linear[-1]
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    return convs[-1]


@functools.cache
def _skeleton(name: str) -> nn.Module | None:
    """``name`` built on the meta device (no memory, no init), to read its structure; None for
    the few builders that cannot be built there. Shared: never modify it."""
    try:
        with torch.device("meta"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return build(name, 2)
    except (NotImplementedError, RuntimeError):
        return None


@functools.cache
def _keys(name: str) -> frozenset[str] | None:
    """``name``'s state_dict keys; None where it cannot be built on the meta device."""
    model = _skeleton(name)
    return frozenset(model.state_dict()) if model is not None else None


def guess_arch(keys: Iterable[str], candidates: Iterable[str] | None = None) -> str | None:
    """The torchvision architecture whose parameter names are exactly ``keys`` (head included),
    else one whose names ``keys`` hold plus layers added the tutorial's ways (appended to its
    head's ``Sequential``, or beside its modules), or None. Builds each candidate on the meta
    device: a few seconds for all of them, so only error paths call it."""
    wanted = frozenset(keys)
    pool = tuple(candidates if candidates is not None else names())
    for name in pool:
        if _keys(name) == wanted:
            return name
    for name in pool:
        own, model = _keys(name), _skeleton(name)
        if own is not None and model is not None and own < wanted:
            seq = _head_sequential(model)
            added = [k for k in wanted - own if not _in_added_slot(k, model, seq)]
            if not added:
                return name
    return None


def _in_added_slot(key: str, model: nn.Module, seq: tuple[str, nn.Sequential] | None) -> bool:
    """``key`` names a parameter of a module added to ``model``: at the top level, or directly
    in the ``Sequential`` that ends with its head."""
    if key.split(".")[0] not in model._modules:
        return True
    if seq is None or not key.startswith(seq[0] + "."):
        return False
    child, _, param = key[len(seq[0]) + 1 :].partition(".")
    return child not in seq[1]._modules and "." not in param


@dataclass(frozen=True)
class Appended:
    """A ``Linear`` added after an architecture's head in the ``Sequential`` that ends with it,
    as the tutorial's ``vgg16.classifier.add_module('cadd_linear', nn.Linear(1000, 10))``
    does: a ``Sequential`` runs its children in order, so the model answers its
    ``out_features`` classes.

    Only ``Linear`` layers are rebuilt: a state_dict shows a layer by its parameters, and a
    ``Linear``'s weight says both its widths. A ``ReLU`` or ``Dropout`` appended beside one has
    no parameters and leaves no key, so it cannot be read back (one under a number is noticed
    by the gap it leaves in the numbering, and refused); nothing in a file is ever executed to
    find out what it was.
    """

    to: str  # the Sequential's path in the model: "classifier" (vgg16), "heads" (vit_b_16)
    name: str  # what it was added as: "cadd_linear"; "7" for classifier.append(...)
    in_features: int
    out_features: int
    bias: bool = True

    def to_meta(self) -> dict[str, Any]:
        return {
            "to": self.to,
            "name": self.name,
            "kind": "Linear",
            "in_features": self.in_features,
            "out_features": self.out_features,
            "bias": self.bias,
        }

    @classmethod
    def from_meta(cls, d: Mapping[str, Any]) -> Appended:
        try:
            if d.get("kind", "Linear") != "Linear":
                raise ValueError(f"kind {d['kind']!r}")
            return cls(
                str(d["to"]),
                str(d["name"]),
                int(d["in_features"]),
                int(d["out_features"]),
                bool(d.get("bias", True)),
            )
        except (AttributeError, KeyError, TypeError, ValueError) as e:
            raise ConfigError(
                f"meta.json's appended layer {d!r} is not a Linear this version can rebuild "
                f"({type(e).__name__}: {e})."
            ) from None


def append(model: nn.Module, layers: Sequence[Appended]) -> nn.Module:
    """``model`` with ``layers`` added, in order (fresh weights: a state_dict fills them)."""
    for a in layers:
        layer = nn.Linear(a.in_features, a.out_features, bias=a.bias)
        model.get_submodule(a.to).add_module(a.name, layer)
    return model


def _head_sequential(model: nn.Module) -> tuple[str, nn.Sequential] | None:
    """(path, module) of the ``Sequential`` whose last child is the head (vgg16's
    ``classifier``), where the head is a ``Linear`` in one."""
    head = head_name(model)
    path, _, last = head.rpartition(".")
    seq = model.get_submodule(path) if path else None
    if (
        isinstance(seq, nn.Sequential)
        and isinstance(seq[-1], nn.Linear)
        and list(seq._modules)[-1] == last
    ):
        return path, seq
    return None


def appended_layers(name: str, sd: Mapping[str, torch.Tensor]) -> tuple[Appended, ...]:
    """The ``Linear`` layers ``sd`` holds after torchvision's ``name``'s head, in the
    ``Sequential`` that ends with it, in the order they run; () where it holds none. Keys
    that fit neither the architecture nor such a layer are left for the caller's strict load
    to name. A ConfigError, in one line with the fix, for a module added beside the
    architecture's own (the tutorial's ``vgg16.add_module('add_linear', ...)``: its forward
    never calls it), for a layer after one without weights, and for a chain whose widths do
    not meet."""
    model, own = _skeleton(name), _keys(name)
    if model is None or own is None:
        return ()
    extra = [k for k in sd if k not in own]
    if not extra:
        return ()
    if all(k in sd for k in own):  # the architecture's own parameters, and modules beside them
        beside = [k.split(".")[0] for k in extra if k.split(".")[0] not in model._modules]
        if beside:
            raise ConfigError(_never_called(name, model, beside[0], sd))
    seq = _head_sequential(model)
    if seq is None:
        return ()
    path, modules = seq
    params: dict[str, dict[str, torch.Tensor]] = {}
    for k in extra:
        if _in_added_slot(k, model, seq) and k.startswith(path + "."):
            child, _, param = k[len(path) + 1 :].partition(".")
            params.setdefault(child, {})[param] = sd[k]
    layers: list[Appended] = []
    for child, p in params.items():
        w, b = p.get("weight"), p.get("bias")
        if set(p) - {"weight", "bias"} or w is None or w.ndim != 2:
            continue  # not a Linear: the strict load names its keys
        if b is not None and tuple(b.shape) != (w.shape[0],):
            continue
        if child.isdigit() and int(child) != len(modules) + len(layers):
            before = f"{path}.{len(modules) + len(layers)}"
            raise ConfigError(
                f"{path}.{child} comes after {before}, a layer without weights (a ReLU, "
                "Dropout, ...): a state_dict does not say which, so the model cannot be "
                f"rebuilt. Append Linear layers only, or replace {path}[{len(modules) - 1}]."
            )
        layers.append(Appended(path, child, int(w.shape[1]), int(w.shape[0]), b is not None))
    prev = head_name(model)
    out = int(sd[f"{prev}.weight"].shape[0]) if f"{prev}.weight" in sd else None
    for a in layers:
        if out is not None and a.in_features != out:
            raise ConfigError(
                f"{a.to}.{a.name} takes {a.in_features} inputs but {prev} before it gives {out}: "
                f"the model would fail at its first forward. Make {a.to}.{a.name} "
                f"nn.Linear({out}, {a.out_features})."
            )
        prev, out = f"{a.to}.{a.name}", a.out_features
    return tuple(layers)


def _never_called(name: str, model: nn.Module, layer: str, sd: Mapping[str, torch.Tensor]) -> str:
    """Why the module ``layer``, added beside ``name``'s own, is refused, and how to add one
    that runs (``sd`` holds all of ``name``'s own keys)."""
    head = head_name(model)
    hw = sd[f"{head}.weight"]  # [classes, features]
    classes = int(hw.shape[0])
    answers = f"{classes} ImageNet classes" if classes == IMAGENET_CLASSES else f"{classes} classes"
    w = sd.get(f"{layer}.weight")
    linear = w is not None and w.ndim == 2
    out = int(w.shape[0]) if linear else "N"
    path, _, last = head.rpartition(".")
    where = f"{path}[{last}]" if path and last.isdigit() else head  # classifier[6], fc
    fix = f"replace {where}: {name}.{where} = nn.Linear({hw.shape[1]}, {out})"
    if _head_sequential(model) is not None:
        new = f"nn.Linear({w.shape[1]}, {out})" if linear else "..."
        fix = f"append it to {path}: {name}.{path}.add_module('{layer}', {new}); or {fix}"
    keys = ", ".join(k for k in sd if k.split(".")[0] == layer)
    return (
        f"the layer {layer} ({keys}) is never called by {name}'s forward, which calls only "
        f"its own modules ({', '.join(model._modules)}), so the model would still answer "
        f"{answers}. To add a layer that runs, {fix}; then save the state_dict again."
    )
