"""Giving back the resources of trials that Tune stopped early.

Tune stops a trial (ASHA) by ending its actor; the trial's Ray Train controller, owned by that
actor, ends with it, but the placement group the controller made for its workers stays: Ray
keeps a placement group made by an actor until the whole job ends. Ray Train starts a helper to
remove it, which asks Ray's state API (the dashboard) whether the controller lives: where there
is no dashboard, or several Ray instances share the machine, it cannot, and the next trials wait
for CPUs that no one uses. So each trial's reports also name its workers' placement group and
its controller (:class:`ReportToTune`, :class:`NotePlacementGroup`, in the controller), and the
sweep's driver removes the group once Tune stopped the trial and the controller is gone
(:class:`Reclaimer`).
"""

from __future__ import annotations

import logging
import time

import ray
from ray.train.v2._internal.execution.callback import WorkerGroupCallback
from ray.tune.integration.ray_train import TuneReportCallback

log = logging.getLogger(__name__)
PG_KEY, CONTROLLER_KEY, REPORTED_AT = "placement_group", "train_controller", "reported_at"


class ReportToTune(TuneReportCallback):
    """Ray's Train -> Tune report callback (in the Train controller), each report also naming
    the workers' placement group and the controller, and when it was made (Tune's own
    timestamp is in whole seconds: too coarse to tell which trials ran at the same time)."""

    placement_group: str | None = None  # set by NotePlacementGroup

    def after_report(self, run_context, metrics, checkpoint) -> None:
        extra = {
            PG_KEY: self.placement_group,
            CONTROLLER_KEY: ray.get_runtime_context().get_actor_id(),
            REPORTED_AT: time.time(),
        }
        super().after_report(run_context, [{**metrics[0], **extra}, *metrics[1:]], checkpoint)


class NotePlacementGroup(WorkerGroupCallback):
    """Tells ``report`` the placement group of each worker group the controller starts."""

    def __init__(self, report: ReportToTune) -> None:
        self.report = report

    def after_worker_group_start(self, worker_group) -> None:
        try:
            state = worker_group.get_worker_group_state()
            self.report.placement_group = state.placement_group_handle.placement_group.id.hex()
        except Exception as e:  # Ray Train's internals moved: the trial trains all the same
            log.debug("placement group not found: %s", e)


def train_callbacks() -> tuple:
    """The Ray Train callbacks of a trial (built in the trial, inside its Tune session)."""
    report = ReportToTune()
    return report, NotePlacementGroup(report)


class Reclaimer:
    """In the sweep's driver: what each trial's reports named, and the placement groups of
    stopped trials to remove once their controllers are gone."""

    EVERY = 1.0  # seconds between looks

    def __init__(self) -> None:
        self.named: dict[str, tuple[str, str]] = {}  # trial id -> (placement group, controller)
        self.stopped: list[tuple[str, str]] = []
        self._last = 0.0

    def saw(self, trial_id: str, result: dict) -> None:
        if result.get(PG_KEY) and result.get(CONTROLLER_KEY):
            self.named[trial_id] = (result[PG_KEY], result[CONTROLLER_KEY])

    def stop(self, trial_id: str) -> None:
        if trial_id in self.named:
            self.stopped.append(self.named.pop(trial_id))

    def reclaim(self, force: bool = False) -> int:
        """Remove the groups whose controllers are gone; how many."""
        now = time.monotonic()
        if not self.stopped or (now - self._last < self.EVERY and not force):
            return 0
        self._last = now
        gone = [(pg, c) for pg, c in self.stopped if _dead(c)]
        for pg, _ in gone:
            _remove(pg)
        self.stopped = [s for s in self.stopped if s not in gone]
        return len(gone)


def _dead(actor_id: str) -> bool:
    """Whether the actor has ended, asked of Ray's GCS directly (no dashboard needed)."""
    from ray._private.state import actors

    try:
        return actors(actor_id).get("State", "DEAD") == "DEAD"
    except Exception as e:
        log.debug("actor %s: state unknown (%s)", actor_id, e)
        return False


def _remove(pg_hex: str) -> None:
    from ray.util.placement_group import (
        PlacementGroup,
        placement_group_table,
        remove_placement_group,
    )

    pg = PlacementGroup(ray.PlacementGroupID(bytes.fromhex(pg_hex)))
    try:
        if placement_group_table(pg).get("state") not in (None, "REMOVED"):
            remove_placement_group(pg)
            log.debug("removed placement group %s of a stopped trial", pg_hex)
    except Exception as e:  # removed meanwhile (Ray Train's own helper, where it works)
        log.debug("placement group %s: %s", pg_hex, e)
