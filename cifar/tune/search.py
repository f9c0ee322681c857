"""How a sweep searches: its space and first trial, the search algorithm (random or Optuna's
TPE, seeded by ``--seed``) and ASHA's early stopping on test accuracy, which spares the first
trial (the default recipe's: :mod:`cifar.tune.first`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cifar.train.config import TrainConfig
from cifar.tune.config import SweepConfig
from cifar.tune.space import Space, default_point, default_space, parse_space

METRIC = "test_accuracy"
REDUCTION = 3  # ASHA: at each rung, the best third of the trials go on


@dataclass(frozen=True)
class Search:
    """The space, the default recipe's point in it (the first trial; None when outside), and
    the recipe values each trial picks for its own batch (not typed, not searched)."""

    space: Space
    point: dict[str, Any] | None
    follow: tuple[str, ...]

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.space]


def searched(cfg: SweepConfig, resolved: TrainConfig) -> Search:
    """The space typed with --search, else the default one around ``resolved`` (the recipe
    resolved for the data), and the default recipe's point in it."""
    typed = cfg.training()
    space = parse_space(cfg.search, typed) or default_space(resolved)
    follow = tuple(k for k in ("batch_size", "lr") if getattr(typed, k) is None)
    return Search(space, default_point(space, resolved), follow)


def grace_epochs(cfg: SweepConfig) -> int | None:
    """ASHA's first cut, after a quarter of the epochs; None without early stopping."""
    if not cfg.early_stop or cfg.epochs < 2:
        return None
    return min(max(1, cfg.epochs // 4), cfg.epochs - 1)


def cuts(cfg: SweepConfig) -> list[int]:
    """The epochs after which ASHA may stop a trial (its rungs)."""
    grace = grace_epochs(cfg)
    if grace is None:
        return []
    return [grace * REDUCTION**k for k in range(32) if grace * REDUCTION**k <= cfg.epochs - 1]


def scheduler(cfg: SweepConfig, search: Search):
    """ASHA on test accuracy with the epoch as its clock: after ``grace_epochs``, then at every
    REDUCTION times as many, a trial below the best third so far stops, but for the default
    recipe's. Its rungs end before the last epoch: a trial that gets there ends by itself, its
    model and summary written (Tune ends a trial it stops by ending its process)."""
    grace = grace_epochs(cfg)
    if grace is None:
        return None
    from cifar.tune.first import SparingASHA

    return SparingASHA(
        search.point,
        time_attr="epoch",
        max_t=cfg.epochs - 1,
        grace_period=grace,
        reduction_factor=REDUCTION,
        stop_last_trials=False,
    )


def searcher(cfg: SweepConfig, search: Search, at_once: int, first_alone: bool = False):
    """Random search or Optuna's TPE, the default recipe first, ``at_once`` trials at a time;
    ``first_alone``: that one alone, the others once it has ended (:mod:`cifar.tune.first`)."""
    from cifar.tune.first import Limited, RandomSearch

    points = [search.point] if search.point else None
    first = 1 if first_alone and points else at_once
    if cfg.search_alg == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        return Limited(OptunaSearch(points_to_evaluate=points, seed=cfg.seed), first, at_once)
    return RandomSearch(points, cfg.seed, first, at_once)


def search_text(cfg: SweepConfig) -> str:
    """The dry run's and the log's line on how trials are drawn and stopped."""
    how = {"random": "random search", "optuna": "Optuna's TPE"}[cfg.search_alg]
    stop = "no early stopping"
    rungs = cuts(cfg)
    if rungs:
        at = ", ".join(map(str, rungs))
        stop = f"ASHA: after epoch {at}, a trial below the best 1/{REDUCTION} so far stops"
    return f"{cfg.trials} by {how} (seed {cfg.seed}), at most {cfg.epochs} epochs each; {stop}"
