"""The sweep's log, a line when a trial starts, reports an epoch, ends, is stopped early or
fails (Ray Tune's own tables stay off); and what the watchdog reads to tell a sweep that moves
from one that waits."""

from __future__ import annotations

import logging
import time
from typing import Any

from ray.tune import Callback

from cifar.io import storage
from cifar.train.outputs import HEARTBEAT_FILE
from cifar.tune.reclaim import Reclaimer
from cifar.tune.report import in_order

progress = logging.getLogger("cifar.progress")


def number(trial, trials: list) -> int:
    """The trial's place in the sweep, from 0, as trials.csv numbers it."""
    ids = [t.trial_id for t in in_order(trials)]
    return ids.index(trial.trial_id) if trial.trial_id in ids else -1


def settings_text(config: dict[str, Any], names: list[str]) -> str:
    return ", ".join(
        f"{n} {config[n]:.4g}" if isinstance(config.get(n), float) else f"{n} {config.get(n)}"
        for n in names
    )


class SweepLog(Callback):
    """Ray Tune callback, run by the sweep's driver: one line per trial event; gives back the
    placement groups of trials stopped early (:mod:`cifar.tune.reclaim`)."""

    def __init__(self, epochs: int, names: list[str]) -> None:
        self.epochs, self.names = epochs, names
        self.best: tuple[float, int] | None = None
        self.reclaimer = Reclaimer()

    def on_step_end(self, iteration: int, trials: list, **info) -> None:
        self.reclaimer.reclaim()

    def on_trial_start(self, iteration: int, trials: list, trial, **info) -> None:
        progress.info(
            "[cifar] trial %d started (%s): %s",
            number(trial, trials),
            trial.trial_id,
            settings_text(trial.config, self.names),
        )

    def on_trial_result(self, iteration: int, trials: list, trial, result: dict, **info) -> None:
        self.reclaimer.saw(trial.trial_id, result)
        acc, epoch = result.get("test_accuracy"), result.get("epoch")
        if acc is None:
            return
        if self.best is None or acc > self.best[0]:
            self.best = (acc, number(trial, trials))
        progress.info(
            "[cifar] trial %d  epoch %d/%d  test_acc %.4f  (best so far %.4f, trial %d)",
            number(trial, trials),
            epoch,
            self.epochs,
            acc,
            *self.best,
        )

    def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
        self.reclaimer.stop(trial.trial_id)
        ran = (trial.last_result or {}).get("epoch", 0)
        if ran and ran < self.epochs:
            what = f"stopped early after epoch {ran}: its test accuracy trailed (ASHA)"
        else:
            what = f"done: {ran} epochs"
        progress.info("[cifar] trial %d %s", number(trial, trials), what)

    def on_trial_error(self, iteration: int, trials: list, trial, **info) -> None:
        self.reclaimer.stop(trial.trial_id)
        text = (trial.get_error() or "").strip().splitlines()
        progress.info(
            "[cifar] trial %d failed: %s", number(trial, trials), text[-1] if text else "?"
        )


class Heartbeats:
    """The watchdog's sign of life: the heartbeats of every trial's run (rank 0 writes one at
    least every 10 s while it trains, and after each epoch), read at most every ``every``
    seconds (on object storage each look lists the runs)."""

    def __init__(self, runs: str, every: float = 5.0) -> None:
        self.runs, self.every = runs, every
        self._seen: tuple[Any, ...] = ()
        self._last = 0.0

    def __call__(self) -> tuple[Any, ...]:
        if time.monotonic() - self._last >= self.every:
            self._last = time.monotonic()
            names = storage.list_dirs(self.runs) if storage.is_dir(self.runs) else []
            beats = []
            for n in sorted(names):
                path = f"{self.runs}/{n}/{HEARTBEAT_FILE}"
                beats.append(storage.read_text(path) if storage.exists(path) else None)
            self._seen = (*names, *beats)
        return self._seen
