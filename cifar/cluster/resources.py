"""What the connected Ray cluster has, or can autoscale to."""

from __future__ import annotations

import logging
import os
import socket
import time
from dataclasses import dataclass

log = logging.getLogger(__name__)


class RayConnectError(RuntimeError):
    """The Ray cluster cannot be reached, or refuses this process; the message says which."""


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


PROBE_TIMEOUT_S = 5.0  # how long a cluster address may take to accept a connection


def connect(**init_kwargs) -> float:
    """``ray.init(**init_kwargs)`` (start Ray here, or join the cluster RAY_ADDRESS names) in
    bounded time; returns the seconds it took. No cluster answering at the address, a refused
    token or another Ray version is a RayConnectError that says what to do."""
    import ray

    t0 = time.perf_counter()
    address = os.environ.get("RAY_ADDRESS", "")
    _probe(address)
    named = not address and init_kwargs.get("include_dashboard") is not False
    if named:
        init_kwargs = _own_api_server(init_kwargs)
    try:
        context = ray.init(**init_kwargs)
    except ConnectionError as e:
        raise RayConnectError(_unreachable(address or "auto", str(e).splitlines()[0])) from e
    except Exception as e:
        said = str(e)
        if "token" not in said.lower() and "authenticat" not in said.lower():
            raise
        raise RayConnectError(
            f"the Ray cluster at {address or 'this machine'} refused this process: "
            f"{said.splitlines()[0]}. To fix: set RAY_AUTH_MODE=token and put the cluster's "
            "token in ~/.ray/auth_token (or RAY_AUTH_TOKEN)"
        ) from e
    if named:  # ray.init may have joined a `ray start` cluster of this machine instead
        url = getattr(context, "dashboard_url", None)
        if url:
            os.environ["RAY_API_SERVER_ADDRESS"] = url if "://" in url else f"http://{url}"
        else:
            os.environ.pop("RAY_API_SERVER_ADDRESS", None)
    return time.perf_counter() - t0


def _own_api_server(init_kwargs: dict) -> dict:
    """Ray started here answers state queries at a dashboard port chosen now, named to every
    process it starts. Without this, Ray's own actors that query state (Ray Train's
    PlacementGroupCleaner) look for "the" Ray on this machine, find another job's as well and
    print a ConnectionError traceback ("Found multiple active Ray instances"). Where
    ``ray.init`` joins a cluster that ``ray start`` left on this machine instead, the port goes
    unused and :func:`connect` names that cluster's dashboard to this process."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ["RAY_API_SERVER_ADDRESS"] = f"http://127.0.0.1:{port}"  # Ray's processes inherit it
    return {"dashboard_port": port, **init_kwargs}


def _probe(address: str) -> None:
    """A ``host:port`` address where nothing accepts a connection fails here, in seconds, not
    after Ray's own minutes of retries."""
    host, _, port = address.rpartition(":")
    if "://" in address or not host or not port.isdigit():
        return  # not a GCS address (unset, "auto", a ray:// client URL): Ray says
    try:
        socket.create_connection((host, int(port)), PROBE_TIMEOUT_S).close()
    except OSError as e:
        raise RayConnectError(_unreachable(address, e.strerror or str(e))) from None


def _unreachable(address: str, why: str) -> str:
    return (
        f"no Ray cluster answers at RAY_ADDRESS={address} ({why}). To fix: start it "
        "(scripts/cluster-up.sh or ray start --head), correct RAY_ADDRESS, or unset it to run "
        "on a Ray started on this machine"
    )


def cluster_info() -> ClusterInfo:
    """Current resources; GPUs include what an autoscaling cluster (cluster.yaml, KubeRay) can
    still start, so ``--gpu`` works on a cluster that scales GPU nodes from zero. Ray Train
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
