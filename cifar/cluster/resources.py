"""What the connected Ray cluster has, or can autoscale to."""

from __future__ import annotations

import logging
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClusterInfo:
    cpus: float  # CPUs up now
    gpus: float  # GPUs up now, or the most the autoscaler can add (whichever is larger)
    free_cpus: float | None = None  # not held by any job now (None: all of them)
    free_gpus: float | None = None
    largest_node_cpus: float | None = None  # the most CPUs one task or actor can get
    smallest_node_cpus: float | None = None  # of the nodes with any CPU

    @property
    def idle_cpus(self) -> float:
        return self.cpus if self.free_cpus is None else self.free_cpus

    @property
    def idle_gpus(self) -> float:
        return self.gpus if self.free_gpus is None else self.free_gpus


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
    free = ray.available_resources()
    nodes = [n.get("Resources", {}).get("CPU", 0.0) for n in ray.nodes() if n.get("Alive")]
    return ClusterInfo(
        cpus=now.get("CPU", 0.0),
        gpus=gpus,
        free_cpus=free.get("CPU", 0.0),
        free_gpus=free.get("GPU", 0.0),
        largest_node_cpus=max(nodes, default=None),
        smallest_node_cpus=min((n for n in nodes if n > 0), default=None),
    )
