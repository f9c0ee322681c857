"""Training photos augmented where they are decoded: torchvision's ``RandomResizedCrop`` of the
original file + ``RandomHorizontalFlip``, to uint8 ``S x S`` in the DataLoader's processes.

A streamed training set at photo sizes (``size >= PHOTO_SIZE``) with augmentation on crops each
file as torchvision's recipe does (a box of ``RRC_SCALE`` of the original's area and an aspect
ratio in ``RRC_RATIO``, drawn by ``RandomResizedCrop.get_params``' algorithm: 10 tries, then the
centre crop), not a crop of an image already squashed to ``S x S`` as the device-side
:func:`cifar.data.transforms.random_resized_crop_flip` must for a set held in memory. The
JPEG decoder's DCT scale keeps the box at least ``S`` pixels a side
(:func:`cifar.io.images.decode_image`).
Normalisation, dtype and memory format stay on the device.

The draws of a sample are a pure function of (seed, epoch, index): whichever loader process
decodes it and in whatever order, a run repeats and a resumed epoch sees the same crops. The
loaders' samplers carry ``(seed, epoch)`` with every index (:mod:`cifar.data.loaders`), since
persistent loader processes never see ``set_epoch``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from cifar.data.transforms import PHOTO_SIZE, RRC_RATIO, RRC_SCALE
from cifar.io.images import View

# an index as a training sampler hands it over: (seed, epoch, index), or a plain index
Key = tuple[int, int, int] | int

_LOG_RATIO = torch.log(torch.tensor(RRC_RATIO))  # float32, as torchvision computes it


def in_loader(augment: bool, size: int) -> bool:
    """Whether a streamed training set at ``size`` is augmented in its loader processes (photo
    sizes); CIFAR-sized images keep the device's random crop + flip."""
    return augment and size >= PHOTO_SIZE


def sample_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    """The RNG of one sample's crop and flip: a pure function of (seed, epoch, index)."""
    state = np.random.SeedSequence([seed, epoch, index]).generate_state(2, np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 31 | int(state[1]) >> 1)


def crop_params(width: int, height: int, g: torch.Generator) -> tuple[int, int, int, int]:
    """``(i, j, h, w)``: torchvision's ``RandomResizedCrop.get_params`` (scale ``RRC_SCALE``,
    ratio ``RRC_RATIO``) for a ``width x height`` image, drawing from ``g``: the same draws in
    the same order, so a generator seeded as ``torch.manual_seed`` gives the same box."""
    area = height * width
    for _ in range(10):
        target_area = area * torch.empty(1).uniform_(*RRC_SCALE, generator=g).item()
        log_ratio = torch.empty(1).uniform_(_LOG_RATIO[0], _LOG_RATIO[1], generator=g)
        aspect_ratio = torch.exp(log_ratio).item()
        w = round(math.sqrt(target_area * aspect_ratio))
        h = round(math.sqrt(target_area / aspect_ratio))
        if 0 < w <= width and 0 < h <= height:
            i = torch.randint(0, height - h + 1, size=(1,), generator=g).item()
            j = torch.randint(0, width - w + 1, size=(1,), generator=g).item()
            return int(i), int(j), h, w
    in_ratio = width / height  # fallback: the centre crop of the nearest allowed ratio
    if in_ratio < min(RRC_RATIO):
        w, h = width, round(width / min(RRC_RATIO))
    elif in_ratio > max(RRC_RATIO):
        w, h = round(height * max(RRC_RATIO)), height
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def crop_flip(g: torch.Generator) -> Callable[[int, int], View]:
    """A :func:`~cifar.io.images.decode_image` view: ``RandomResizedCrop`` then
    ``RandomHorizontalFlip`` (p=0.5), as ``Compose`` draws them."""

    def view(width: int, height: int) -> View:
        i, j, h, w = crop_params(width, height, g)
        flip = bool(torch.rand(1, generator=g) < 0.5)
        return (j, i, j + w, i + h), flip

    return view


@dataclass(frozen=True)
class LoaderAugment:
    """What a training dataset does to each sample it decodes: a random resized crop of the
    file and a flip, drawn from the sample's own (seed, epoch, index)."""

    def split(self, key: Key) -> tuple[int, Callable[[int, int], View] | None]:
        """``key`` -> (the dataset index, the view to decode it through). A plain index (from
        a caller that is not a keyed training sampler: a sample grid, Ray Data's decode tasks,
        whose batches the device augments) decodes the whole image, unaugmented."""
        if not isinstance(key, tuple):
            return int(key), None
        seed, epoch, index = (int(k) for k in key)
        return index, crop_flip(sample_generator(seed, epoch, index))
