"""The sweep's first trial, the default recipe's: the run cifar-train makes of the sweep's flags,
there so that the sweep's best is never below it.

On CPUs it runs first and alone, with cifar-train's CPUs and torch threads per worker (another
count of threads sums in another order: other bits), so it also measures the precision as
cifar-train does (:func:`cifar.train.engine.job_compute`, same machine, batch and threads: the
same cached decision); the other trials start, packed, once it has ended. ASHA never stops it,
on CPUs or GPUs: at each rung it still counts, raising the bar the other trials must clear.

Ray Tune's own classes, subclassed: a search that makes one trial at a time until the first has
ended (Tune asks it for each new trial), and ASHA (asked after each reported epoch whether a
trial goes on).
"""

from __future__ import annotations

from typing import Any

from ray.tune.schedulers import ASHAScheduler
from ray.tune.search import ConcurrencyLimiter, Searcher
from ray.tune.search.basic_variant import BasicVariantGenerator

from cifar.tune.space import is_default


class SparingASHA(ASHAScheduler):
    """Ray Tune's ASHA, but a trial that drew ``point`` (the default recipe's) always goes on."""

    def __init__(self, point: dict[str, Any] | None, **asha: Any) -> None:
        super().__init__(**asha)
        self.point = point

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        action = super().on_trial_result(tune_controller, trial, result)  # recorded at the rung
        if action == self.STOP and is_default(self.point, trial.config):
            self._num_stopped -= 1
            return self.CONTINUE
        return action


class _ThenAtOnce:
    """At most ``max_concurrent`` live trials (Ray's own limit; 1 while the first trial runs
    alone) until a trial has ended, then ``at_once``. Tune tells the search of every trial that
    ends, fails or is stopped; the limit is in the search's state, which a resumed sweep
    restores."""

    at_once: int
    max_concurrent: int

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
        super().on_trial_complete(trial_id, result=result, error=error)
        self.max_concurrent = self.at_once


class RandomSearch(_ThenAtOnce, BasicVariantGenerator):
    """Ray's random search, ``points`` first, ``first`` trials at a time until one has ended."""

    def __init__(self, points: list | None, seed: int, first: int, at_once: int) -> None:
        super().__init__(points_to_evaluate=points, max_concurrent=first, random_state=seed)
        self.at_once = at_once


class Limited(_ThenAtOnce, ConcurrencyLimiter):
    """Ray's ConcurrencyLimiter around ``searcher``: ``first`` trials at a time until one has
    ended, then ``at_once``."""

    def __init__(self, searcher: Searcher, first: int, at_once: int) -> None:
        super().__init__(searcher, max_concurrent=first)
        self.at_once = at_once
