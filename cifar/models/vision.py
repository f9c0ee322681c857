"""torchvision's classification architectures, by their builder names (``resnet18``,
``vgg16``, ``convnext_tiny``, ...): built without weights (nothing is downloaded, ever) with a
head for the data's classes, and what the rest of the project needs to know about them: which
parameters are the head, the ImageNet preprocessing their published weights expect, and which
architecture a bare state_dict belongs to.

The head is the tutorial's lesson made general: torchvision's builders take ``num_classes`` and
make their last layer (``fc``, ``classifier[6]``, ``head``, ...) that wide, which is what
``vgg16.classifier[6] = nn.Linear(4096, 10)`` does by hand: same parameter names, so a state_dict
saved either way loads into the other.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Iterable, Mapping

import torch
from torch import nn

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


def head_keys(model: nn.Module) -> list[str]:
    """The state_dict keys of the head (its weight and bias)."""
    prefix = head_name(model) + "."
    return [k for k in model.state_dict() if k.startswith(prefix)]


@functools.cache
def _keys(name: str) -> frozenset[str] | None:
    """``name``'s state_dict keys, from a model built on the meta device (no memory, no init);
    None for the few builders that cannot be built there."""
    try:
        with torch.device("meta"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return frozenset(build(name, 2).state_dict())
    except (NotImplementedError, RuntimeError):
        return None


def guess_arch(keys: Iterable[str], candidates: Iterable[str] | None = None) -> str | None:
    """The torchvision architecture whose parameter names are exactly ``keys`` (head included),
    or None. Builds each candidate on the meta device: a few seconds for all of them, so only
    error paths call it."""
    wanted = frozenset(keys)
    for name in candidates if candidates is not None else names():
        if _keys(name) == wanted:
            return name
    return None


def imagenet_categories() -> list[str]:
    """ImageNet-1k's class names, in the order of torchvision's 1000-way heads (shipped with
    torchvision: no download)."""
    from torchvision.models import ResNet18_Weights

    return list(ResNet18_Weights.IMAGENET1K_V1.meta["categories"])


def head_outputs(sd: Mapping[str, torch.Tensor], model: nn.Module) -> int | None:
    """The number of classes a state_dict's head has, read from its bias (or weight) under
    ``model``'s head name; None where the file has no such key."""
    prefix = head_name(model)
    for k in (f"{prefix}.bias", f"{prefix}.weight"):
        if k in sd:
            return int(sd[k].shape[0])
    return None
