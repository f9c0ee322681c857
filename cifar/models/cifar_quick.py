"""CIFAR10-quick, exactly as the tutorial defines it.

The network is pure: no device moves, no dtype casts, no file access. Parameter names match the
tutorial's ``MyNetwork`` (``model1.0.weight`` ... ``model1.8.bias``) so a ``state_dict`` saved by
the tutorial's code loads as is. ``relu=True`` adds the ReLUs of the Caffe original; that variant
has different parameter indices (the registry calls it ``cifar10_quick_relu``).
"""

from __future__ import annotations

import torch
from torch import nn

INPUT_SIZE = 32  # the 64 x 4 x 4 flatten below holds only at 32x32


class CifarQuick(nn.Module):
    """CIFAR10-quick: 3x (5x5 conv, 2x2 max-pool), Flatten, Linear(1024, 64), Linear(64, classes).

    Input: float images ``[B, 3, 32, 32]``. Output: logits ``[B, num_classes]``.
    """

    def __init__(self, num_classes: int = 10, relu: bool = False) -> None:
        super().__init__()
        self.relu = relu
        act = [nn.ReLU(inplace=True)] if relu else []
        self.model1 = nn.Sequential(
            nn.Conv2d(3, 32, kernel_size=5, stride=1, padding=2),
            *act,
            nn.MaxPool2d(2),
            nn.Conv2d(32, 32, kernel_size=5, stride=1, padding=2),
            *act,
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, kernel_size=5, stride=1, padding=2),
            *act,
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(64 * 4 * 4, 64),  # 64 channels @ 4x4 after three 2x pools
            *act,
            nn.Linear(64, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model1(x)

    def forward_inference(self, x: torch.Tensor) -> torch.Tensor:
        """``forward`` with each 2x2 max-pool computed by :func:`max_pool_2x2`: bit-identical
        logits, faster on CPU. For inference only (the gradient of a tie would differ)."""
        for layer in self.model1:
            x = max_pool_2x2(x) if isinstance(layer, nn.MaxPool2d) else layer(x)
        return x


def max_pool_2x2(x: torch.Tensor) -> torch.Tensor:
    """``nn.MaxPool2d(2)`` on even-sized maps as two maxima of strided views. Max is exact, so
    the values are identical; on CPU it is faster (docs/results.md) because ATen's pooling also
    computes the indices that only a backward pass needs."""
    rows = torch.maximum(x[:, :, 0::2, :], x[:, :, 1::2, :])
    return torch.maximum(rows[:, :, :, 0::2], rows[:, :, :, 1::2])
