"""Helpers for scripts/cluster-up.sh and cluster-down.sh: a multi-node Ray cluster on one machine
whose every server listens on loopback only.

Why not plain ``ray start --address=127.0.0.1:PORT`` for the extra nodes: ``ray start`` rewrites
``127.0.0.1`` to the machine's network address, and with a non-loopback node address Ray's GCS and
raylets listen on all interfaces. A node whose address is ``127.0.0.1`` listens on loopback only;
``ray start`` allows that for a head (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, which makes Ray
use the loopback address), but refuses it for joining nodes, so joining nodes are started here
the way ``ray start`` starts them (``ray._private.node.Node``, as ``ray.cluster_utils`` does).

    python -m jobs.local_cluster worker --address 127.0.0.1:6389 --temp-dir T [--num-cpus N]
    python -m jobs.local_cluster ports-free PORT [PORT ...]
    python -m jobs.local_cluster down --temp-dir T --address 127.0.0.1:6389
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import sys
import time

LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


def start_worker(address: str, temp_dir: str, num_cpus: int | None, num_gpus: int | None) -> None:
    os.environ.update(LOOPBACK_ENV)
    import ray._private.node
    import ray._private.parameter

    params = ray._private.parameter.RayParams(
        gcs_address=address,
        node_ip_address="127.0.0.1",
        temp_dir=temp_dir,
        num_cpus=num_cpus,
        num_gpus=num_gpus,
        include_log_monitor=False,  # one per machine: the head's
        node_manager_port=0,
        dashboard_agent_listen_port=None,
        min_worker_port=0,
        max_worker_port=0,
    )
    node = ray._private.node.Node(params, head=False, shutdown_at_exit=False, spawn_reaper=False)
    print(f"worker node {node.node_id[:12]} joined {address} on {node.node_ip_address}")


def ports_free(ports: list[int]) -> int:
    busy = []
    for port in ports:
        with socket.socket() as s:
            # as the servers themselves do: a port whose old connections linger in TIME_WAIT
            # is free to listen on
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                busy.append(port)
    if busy:
        print(" ".join(map(str, busy)))
        return 1
    return 0


def cluster_processes(temp_dir: str, address: str):
    """Processes of this cluster: those naming its temp dir or GCS address, and their children."""
    import psutil

    roots = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if p.pid != os.getpid() and (temp_dir in cmd or f"--address={address}" in cmd):
            roots.append(p)
    found = {p.pid: p for p in roots}
    for p in roots:
        try:
            for c in p.children(recursive=True):
                found.setdefault(c.pid, c)
        except psutil.NoSuchProcess:
            pass
    return list(found.values())


def down(temp_dir: str, address: str, grace: float = 10.0) -> int:
    import psutil

    procs = cluster_processes(temp_dir, address)
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.terminate()
    _, alive = psutil.wait_procs(procs, timeout=grace)
    for p in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    psutil.wait_procs(alive, timeout=5)
    time.sleep(0.5)
    left = cluster_processes(temp_dir, address)
    print(f"stopped {len(procs)} processes" + (f"; {len(left)} left" if left else ""))
    return 1 if left else 0


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="localcluster.py")
    sub = p.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("worker")
    w.add_argument("--address", required=True)
    w.add_argument("--temp-dir", required=True)
    w.add_argument("--num-cpus", type=int)
    w.add_argument("--num-gpus", type=int)
    f = sub.add_parser("ports-free")
    f.add_argument("ports", type=int, nargs="+")
    d = sub.add_parser("down")
    d.add_argument("--temp-dir", required=True)
    d.add_argument("--address", required=True)
    c = sub.add_parser("count")
    c.add_argument("--temp-dir", required=True)
    c.add_argument("--address", required=True)
    a = p.parse_args(argv)
    if a.cmd == "worker":
        start_worker(a.address, a.temp_dir, a.num_cpus, a.num_gpus)
        return 0
    if a.cmd == "ports-free":
        return ports_free(a.ports)
    if a.cmd == "count":
        print(len(cluster_processes(a.temp_dir, a.address)))
        return 0
    return down(a.temp_dir, a.address)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
