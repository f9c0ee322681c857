"""The optimizer side of a run: which parameters learn and how fast (the whole network at
``--lr``; fine-tuning: the backbone at ``--backbone-lr`` times it, or frozen), and the
learning-rate schedule."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from cifar.models.registry import ModelSpec
from cifar.train.config import TrainConfig


def make_optimizer(model: nn.Module, spec: ModelSpec, cfg: TrainConfig) -> torch.optim.Optimizer:
    """SGD over :func:`param_groups` (call before the model is wrapped: freezing must come
    before DDP registers the parameters it synchronises)."""
    return torch.optim.SGD(
        param_groups(model, spec, cfg),
        lr=cfg.lr,
        momentum=cfg.momentum,
        nesterov=cfg.nesterov,
        weight_decay=cfg.weight_decay,
    )


def param_groups(model: nn.Module, spec: ModelSpec, cfg: TrainConfig) -> list[dict[str, Any]]:
    """The optimizer's parameter groups: one (every parameter at ``--lr``), or the backbone at
    ``--backbone-lr`` times it and the head at ``--lr``; with ``--freeze-backbone`` only the
    head, the backbone's ``requires_grad`` turned off (so DDP leaves it alone too)."""
    share = 1.0 if cfg.backbone_lr is None else cfg.backbone_lr
    if share == 1.0 and not cfg.freeze_backbone:
        return [{"params": list(model.parameters())}]
    prefix = spec.head + "."
    head = [p for n, p in model.named_parameters() if n.startswith(prefix)]
    body = [p for n, p in model.named_parameters() if not n.startswith(prefix)]
    if cfg.freeze_backbone:
        for p in body:
            p.requires_grad_(False)
        return [{"params": head}]
    return [{"params": body, "lr": cfg.lr * share}, {"params": head}]


def make_scheduler(
    optimizer: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LRScheduler | None:
    # +1: the lr after the last step stays >= 0; at least 8: OneCycleLR's warm-up then lasts a
    # step (a 3-step run, total 4, made it divide by zero; a short run ends before the schedule)
    total = max(cfg.epochs * steps_per_epoch + 1, 8)
    if cfg.schedule == "onecycle":  # each parameter group peaks at its own lr
        peaks = [g["lr"] for g in optimizer.param_groups]
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=peaks, total_steps=total, pct_start=0.25, anneal_strategy="linear"
        )
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total)
    return None
