"""What the connected Ray cluster has, or can autoscale to."""

from __future__ import annotations

import logging
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClusterInfo:
    cpus: float  # CPUs up now
    gpus: float  # GPUs up now, or the most the autoscaler can add (whichever is larger)


def cluster_info() -> ClusterInfo:
    """Current resources; GPUs include what an autoscaling cluster (cluster.yaml, KubeRay) can
    still start, so ``--use-gpu`` works on a cluster that scales GPU nodes from zero. Ray Train
    reads the same autoscaler config to size worker groups."""
    import ray

    now = ray.cluster_resources()
    gpus = now.get("GPU", 0.0)
    try:
        from ray._private.state import state

        most = state.get_max_resources_from_cluster_config() or {}
        gpus = max(gpus, float(most.get("GPU", 0) or 0))
    except Exception as e:  # private API: never let it break a job
        log.debug("autoscaler config unavailable: %s", e)
    return ClusterInfo(cpus=now.get("CPU", 0.0), gpus=gpus)
