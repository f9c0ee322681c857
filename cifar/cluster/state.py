"""Who holds what on the cluster, from Ray's state API (the dashboard): the jobs holding CPUs and
GPUs, this job's actors and placement groups, and one line that says it all. Every query
degrades to less detail, never to an error, where the state API is not there."""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)


def _resources(r: dict[str, Any]) -> str:
    parts = [f"{r[k]:g} {k}s" for k in ("CPU", "GPU") if r.get(k)]
    return " + ".join(parts) or "no CPU or GPU"


def holds(actor) -> bool:
    """An actor holds its resources once placed: alive, or placed and still constructing
    (PENDING_CREATION with a process; one that waits for resources has none yet)."""
    return actor.state in ("ALIVE", "RESTARTING") or (
        actor.state == "PENDING_CREATION" and bool(actor.pid)
    )


def held_by_jobs(exclude_job: str | None = None) -> list[tuple[str, dict[str, float]]]:
    """(job, CPUs/GPUs it holds) for every job holding any, largest first: its placement
    groups, its placed actors outside them and its running tasks. Needs Ray's state API (the
    dashboard); [] without it."""
    try:
        from ray.util import state

        pgs = state.list_placement_groups(
            detail=True, filters=[("state", "=", "CREATED")], limit=10000, timeout=10
        )
        actors = state.list_actors(
            detail=True, filters=[("state", "!=", "DEAD")], limit=10000, timeout=10
        )
        tasks = state.list_tasks(filters=[("state", "=", "RUNNING")], limit=10000, timeout=10)
        jobs = {j.job_id: j for j in state.list_jobs(timeout=10) if j.job_id}
    except Exception as e:  # no dashboard, or an older state API: say less, never fail
        log.debug("state API unavailable: %s", e)
        return []
    held: dict[str, dict[str, float]] = {}

    def add(job: str | None, resources: dict | None) -> None:
        if not job or job == exclude_job:
            return
        for k in ("CPU", "GPU"):
            held.setdefault(job, {}).setdefault(k, 0.0)
            held[job][k] += float((resources or {}).get(k, 0.0))

    for pg in pgs:
        for bundle in pg.bundles:
            add(pg.creator_job_id, bundle.get("unit_resources", bundle))
    for a in actors:
        if holds(a) and not a.placement_group_id:
            add(a.job_id, a.required_resources)
    for t in tasks:
        if not getattr(t, "placement_group_id", None):
            add(t.job_id, getattr(t, "required_resources", None))

    def name(job_id: str) -> str:
        j = jobs.get(job_id)
        entry = (j.entrypoint or "").strip() if j else ""
        if len(entry) > 70:
            entry = entry[:67] + "..."
        label = (j.submission_id if j and j.submission_id else None) or f"job {job_id}"
        return f"{label} ({entry})" if entry else label

    out = [(name(j), r) for j, r in held.items() if r["CPU"] or r["GPU"]]
    return sorted(out, key=lambda x: (-x[1]["GPU"], -x[1]["CPU"]))


def this_job() -> str:
    import ray

    return ray.get_runtime_context().get_job_id()


def job_actors(class_contains: str) -> list:
    """This job's actors (not dead) whose class name contains ``class_contains``."""
    from ray.util import state

    found = state.list_actors(
        detail=True,
        filters=[("job_id", "=", this_job()), ("state", "!=", "DEAD")],
        limit=10000,
        timeout=10,
    )
    return [a for a in found if class_contains in a.class_name]


def actors_waiting(class_contains: str) -> bool:
    """This job has such an actor that Ray has not placed yet: it waits for resources."""
    return any(a.state == "PENDING_CREATION" and not a.pid for a in job_actors(class_contains))


def actors_placed(class_contains: str) -> int:
    """How many such actors of this job hold their resources."""
    return sum(holds(a) for a in job_actors(class_contains))


def placement_waiting() -> bool:
    """This job has a placement group (Ray Train's worker group) that Ray cannot place yet."""
    from ray.util import state

    pgs = state.list_placement_groups(
        detail=True, filters=[("state", "=", "PENDING")], limit=10000, timeout=10
    )
    return any(pg.creator_job_id == this_job() for pg in pgs)


def describe_cluster(exclude_job: str | None = None) -> str:
    """'1 of 4 CPUs free; held by: raysubmit_x (cifar-predict ...): 3 CPUs'."""
    import ray

    free, total = ray.available_resources(), ray.cluster_resources()
    text = f"{free.get('CPU', 0):g} of {total.get('CPU', 0):g} CPUs free"
    if total.get("GPU"):
        text += f", {free.get('GPU', 0):g} of {total.get('GPU', 0):g} GPUs free"
    held = held_by_jobs(exclude_job)
    if held:
        text += "; held by: " + "; ".join(f"{j}: {_resources(r)}" for j, r in held)
    return text
