"""What a training checkpoint carries besides the weights: :class:`TrainState`."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cifar.models import checkpoint as ckpt


@dataclass
class TrainState:
    """What a checkpoint carries besides the weights (``train_state.pt``), so a restarted or
    resumed run continues exactly where it stopped."""

    epoch: int = -1  # last completed epoch (0-based); -1: none yet
    restarts: int = 0  # worker failures, elastic resizes and --resume continuations so far
    restored_from: list[int] = field(default_factory=list)  # epoch each restart continued at
    history: list[dict[str, float]] = field(default_factory=list)  # one row per epoch
    rng: list[dict[str, Any]] = field(default_factory=list)  # per rank, end of the last epoch
    optimizer: dict[str, Any] | None = None
    scheduler: dict[str, Any] | None = None
    scaler: dict[str, Any] | None = None  # fp16's loss scale
    compute: dict[str, Any] | None = None  # precision and layout chosen at the start
    # best epoch so far: {"epoch", "confusion", "examples"} (rank 0's misclassified images)
    best: dict[str, Any] | None = None
    # streamed files no decoder could read, found while training: {"path", "error"}
    skipped: list[dict[str, str]] = field(default_factory=list)

    @property
    def start_epoch(self) -> int:
        return self.epoch + 1

    @classmethod
    def from_checkpoint(cls, directory: str | Path) -> TrainState:
        saved = ckpt.load_train_state(directory)
        return cls(**{k: saved[k] for k in cls.__dataclass_fields__ if k in saved})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def continued(self) -> TrainState:
        """This state as the start of a restart: one more restart, recorded where it began."""
        self.restarts += 1
        self.restored_from = [*self.restored_from, self.start_epoch]
        return self
