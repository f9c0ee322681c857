"""Where and how the model computes, for training and inference alike: device, precision
(one vocabulary: ``auto``, ``fp32``, ``bf16``), memory format, and uint8 batches -> inputs."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from cifar.data import normalize, random_crop_flip

PRECISIONS = ("auto", "fp32", "bf16")


def parse_precision(value: str) -> str:
    """A typed precision; ``off`` (the old ``--amp off``) means fp32."""
    return "fp32" if value == "off" else value


def cpu_has_native_bf16() -> bool:
    """True on CPUs with bf16 instructions (AVX512-BF16 or AMX)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


@dataclass(frozen=True)
class Compute:
    """A resolved device, autocast dtype (None: fp32) and memory format."""

    device: torch.device
    amp_dtype: torch.dtype | None = None
    channels_last: bool = True

    @property
    def precision(self) -> str:
        return "bf16" if self.amp_dtype == torch.bfloat16 else "fp32"

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def place(self, model: nn.Module) -> nn.Module:
        """The model on this device, in this memory format."""
        fmt = torch.channels_last if self.channels_last else torch.preserve_format
        return model.to(self.device, memory_format=fmt)

    def inputs(
        self,
        images: torch.Tensor,
        mean: Sequence[float] | None,
        std: Sequence[float] | None,
        augment: bool = False,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """uint8 ``[B, 3, H, W]`` -> model input on the device: moved, augmented there (uint8),
        normalized, in the memory format."""
        images = images.to(self.device, non_blocking=True)
        if augment:
            images = random_crop_flip(images, generator=generator)
        x = normalize(images, mean, std)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x


def resolve_compute(
    device: torch.device | str, precision: str = "auto", channels_last: bool | None = None
) -> Compute:
    """``auto``: bf16 on GPUs and on CPUs with bf16 instructions; channels_last unless turned
    off (1.35x on a 2-core AVX512-BF16 CPU for training, 2x for inference)."""
    device = torch.device(device)
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    bf16 = precision == "bf16" or (
        precision == "auto" and (device.type == "cuda" or cpu_has_native_bf16())
    )
    return Compute(device, torch.bfloat16 if bf16 else None, channels_last is not False)
