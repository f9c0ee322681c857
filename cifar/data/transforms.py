"""Batch transforms on image tensors, on whatever device the batch lives: augmentation suited to
the image size (random crop + flip for CIFAR-sized images, random resized crop + flip for
photos), resizing, normalization, and a sample grid for TensorBoard."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from cifar.device import Compute

PHOTO_SIZE = 64  # from this side on, images are photos: random-resized-crop augmentation
RRC_SCALE = (0.25, 1.0)  # share of the image a random resized crop keeps
RRC_RATIO = (3 / 4, 4 / 3)  # its aspect ratios


def augmentation(size: int, in_loader: bool = False) -> str:
    """The augmentation a training run at ``size`` pixels uses (recorded with the run);
    ``in_loader``: streamed photos, cropped from the files by the loader processes
    (:mod:`cifar.data.augment`), not from the decoded squares on the device."""
    if size >= PHOTO_SIZE:
        crop = f"random resized crop (scale {RRC_SCALE[0]:g}-{RRC_SCALE[1]:g}, ratio 3/4-4/3)"
        where = "of the original file, in the loader processes" if in_loader else "on the device"
        return f"{crop} {where} + horizontal flip"
    return "random crop (4px zero padding) + horizontal flip"


def model_input(
    images: torch.Tensor,
    size: int,
    mean: Sequence[float] | None,
    std: Sequence[float] | None,
    augment: bool = False,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """uint8 ``[B, 3, H, W]`` -> float ``[B, 3, size, size]``, normalized: augmented for
    training (:func:`augmentation`), resized where the images have another size (CIFAR-format
    data for a model at 224 px). At the images' own size without photo augmentation this is
    exactly crop/flip then :func:`normalize`."""
    if augment and size >= PHOTO_SIZE:
        return normalize(random_resized_crop_flip(images.float(), size, generator), mean, std)
    if augment:
        images = random_crop_flip(images, generator=generator)
    x = normalize(images, mean, std)
    if tuple(x.shape[-2:]) != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True)
    return x


def model_batch(
    compute: Compute,
    images: torch.Tensor,
    mean: Sequence[float] | None,
    std: Sequence[float] | None,
    augment: bool = False,
    generator: torch.Generator | None = None,
    size: int | None = None,
) -> torch.Tensor:
    """uint8 ``[B, 3, H, W]`` -> model input ``[B, 3, size, size]`` on ``compute``'s device:
    moved, augmented there, resized where ``size`` (default: the images' own) differs,
    normalized (:func:`model_input`), in its memory format."""
    images = images.to(compute.device, non_blocking=True)
    x = model_input(images, size or images.shape[-1], mean, std, augment, generator)
    return x.contiguous(memory_format=torch.channels_last) if compute.channels_last else x


def random_resized_crop_flip(
    x: torch.Tensor, size: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """torchvision's ``RandomResizedCrop(size, scale=RRC_SCALE, ratio=RRC_RATIO)`` +
    ``RandomHorizontalFlip()`` for a whole float batch in one ``grid_sample``: per image a box
    of a random share of the area and aspect ratio (clipped to the image), at a random place,
    resampled bilinearly to ``size`` and mirrored half the time."""
    b, dev = x.shape[0], x.device

    def uniform(lo: float, hi: float) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(b, device=dev, generator=generator)

    area = uniform(*RRC_SCALE)
    ratio = torch.exp(uniform(math.log(RRC_RATIO[0]), math.log(RRC_RATIO[1])))
    w = torch.sqrt(area * ratio).clamp(max=1.0)  # box side as a share of the image's
    h = torch.sqrt(area / ratio).clamp(max=1.0)
    cx = (1 - w) * uniform(-1.0, 1.0)  # centre in [-1, 1] coordinates, box inside the image
    cy = (1 - h) * uniform(-1.0, 1.0)
    flip = torch.where(torch.rand(b, device=dev, generator=generator) < 0.5, -1.0, 1.0)
    theta = torch.zeros(b, 2, 3, device=dev, dtype=x.dtype)
    theta[:, 0, 0], theta[:, 0, 2] = w * flip, cx
    theta[:, 1, 1], theta[:, 1, 2] = h, cy
    grid = F.affine_grid(theta, [b, x.shape[1], size, size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def random_crop_flip(
    x: torch.Tensor, padding: int = 4, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Per-image random crop (zero padding ``padding``) and horizontal flip of a ``[B, C, H, W]``
    batch, on whatever device it lives on; same distribution as torchvision's
    ``RandomCrop(H, padding)`` + ``RandomHorizontalFlip()``."""
    b, c, h, w = x.shape
    dev = x.device
    padded = torch.nn.functional.pad(x, (padding, padding, padding, padding))
    dy = torch.randint(0, 2 * padding + 1, (b,), device=dev, generator=generator)
    dx = torch.randint(0, 2 * padding + 1, (b,), device=dev, generator=generator)
    flip = torch.rand(b, device=dev, generator=generator) < 0.5
    rows = dy[:, None] + torch.arange(h, device=dev)  # [B, H]
    cols = dx[:, None] + torch.arange(w, device=dev)  # [B, W]
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    bi = torch.arange(b, device=dev)[:, None, None, None]
    ci = torch.arange(c, device=dev)[None, :, None, None]
    return padded[bi, ci, rows[:, None, :, None], cols[:, None, None, :]]


def normalize(
    x: torch.Tensor,
    mean: Sequence[float] | None,
    std: Sequence[float] | None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """uint8 (or float on the same 0..255 scale) ``[B, 3, H, W]`` -> float
    ``(x / 255 - mean) / std``; no mean/std: ``x / 255`` (what the tutorial's ``ToTensor()``
    gives)."""
    out = x.to(dtype)
    out = out.div_(255.0) if out is not x else out / 255.0
    if mean is not None and std is not None:
        m = torch.tensor(mean, dtype=dtype, device=x.device).view(1, -1, 1, 1)
        s = torch.tensor(std, dtype=dtype, device=x.device).view(1, -1, 1, 1)
        out = out.sub_(m).div_(s)
    return out


def make_grid_sample(images: torch.Tensor, n: int = 64) -> torch.Tensor:
    """First ``n`` images (uint8, or float in [0, 1]) as one float ``[3, H, W]`` grid for
    TensorBoard."""
    from torchvision.utils import make_grid

    x = images[:n]
    x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float().clamp(0, 1)
    return make_grid(x, nrow=8)
