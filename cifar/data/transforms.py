"""Batch transforms on uint8 image tensors, on whatever device the batch lives: augmentation
(random crop + flip), normalization, and a sample grid for TensorBoard."""

from __future__ import annotations

from collections.abc import Sequence

import torch


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
    """uint8 ``[B, 3, H, W]`` -> float ``(x / 255 - mean) / std``; no mean/std: ``x / 255``
    (what the tutorial's ``ToTensor()`` gives)."""
    out = x.to(dtype).div_(255.0)
    if mean is not None and std is not None:
        m = torch.tensor(mean, dtype=dtype, device=x.device).view(1, -1, 1, 1)
        s = torch.tensor(std, dtype=dtype, device=x.device).view(1, -1, 1, 1)
        out = out.sub_(m).div_(s)
    return out


def make_grid_sample(images: torch.Tensor, n: int = 64) -> torch.Tensor:
    """First ``n`` uint8 images as one float ``[3, H, W]`` grid for TensorBoard."""
    from torchvision.utils import make_grid

    return make_grid(images[:n].float() / 255.0, nrow=8)
