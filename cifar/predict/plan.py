"""How a prediction job uses the cluster: its inference actor pool (sized from what is free now,
able to grow to what the cluster has), how many decode and write tasks run at once, and the
precision and memory format every actor classifies in. A frozen :class:`Plan`."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from cifar.cluster.resources import ClusterInfo
from cifar.config import ConfigError
from cifar.device import Compute, Work
from cifar.models.loading import LoadedModel
from cifar.predict.config import PredictConfig, parse_actors
from cifar.predict.predictor import UNKNOWN_WORK, inference_compute

# Decode and write tasks ask Ray for no CPU. A job whose inference actors held every CPU it could
# get while its decode tasks waited for one was the deadlock of several jobs on one cluster (each
# waiting for CPUs the others' actors held): now a job whose actors run can always decode and
# write, whatever else runs. How many run at once is bounded by the plan instead, from the CPUs
# the actors leave. Decoding costs about half as much CPU per image as CIFAR10-quick's forward
# pass in bf16 (docs/results.md), so actors get about two thirds of the CPUs.
DECODE_SHARE = 1 / 3
WRITERS_PER_ACTOR = 1  # a writer spends its time in Arrow and file I/O: one per actor keeps up


@dataclass(frozen=True)
class Plan:
    actors: tuple[int, int, int]  # min, initial, max: the pool grows when CPUs/GPUs free up
    gpus_per_actor: float
    device: str
    actor_cpus: float = 1.0
    decode_tasks: int = 1  # at most this many at once
    write_tasks: int = 1
    compute: Compute | None = None  # precision and layout of every actor: actor_compute()

    def describe(self) -> str:
        lo, first, hi = self.actors
        gpu = f" + {self.gpus_per_actor:g} GPU" if self.gpus_per_actor else ""
        return (
            f"{first} inference actor(s) of {self.actor_cpus:g} CPU{gpu} to start with "
            f"(at least {lo}, growing to {hi} as resources free up) on {self.device}, "
            f"up to {self.decode_tasks} decode and {self.write_tasks} write tasks"
        )


def plan_resources(cfg: PredictConfig, cluster: ClusterInfo, files: int | None = None) -> Plan:
    """Actor pool and task bounds for this cluster, sized from what it has free now and able to
    grow to what it has in all (no more tasks than there are blocks of ``files``, when known);
    fails before any work when the job could never run."""
    gpus = cfg.gpus_per_actor if cfg.gpus_per_actor is not None else (1.0 if cluster.gpus else 0)
    if gpus > 0 and cluster.gpus < gpus:
        raise ConfigError(
            f"--gpus-per-actor {gpus:g} but the Ray cluster has {cluster.gpus:g} GPUs. Use "
            "--gpus-per-actor 0 to classify on CPU, or connect to a cluster with GPUs."
        )
    cpus = cfg.cpus_per_actor or 1.0
    if cluster.largest_node_cpus is not None and cpus > cluster.largest_node_cpus:
        raise ConfigError(
            f"--cpus-per-actor {cpus:g}, but the largest node of the Ray cluster has "
            f"{cluster.largest_node_cpus:g} CPUs: no actor could ever start. Lower "
            "--cpus-per-actor."
        )
    actors = parse_actors(cfg.num_actors)
    if gpus > 0:
        most = max(1, int(cluster.gpus // gpus))
        now = max(1, int(cluster.idle_gpus // gpus))
    else:
        most = max(1, int(cluster.cpus * (1 - DECODE_SHARE) // cpus))
        now = max(1, int(cluster.idle_cpus * (1 - DECODE_SHARE) // cpus))
    lo, hi = actors if actors is not None else (1, most)
    spare = cluster.cpus - (0 if gpus > 0 else hi * cpus)
    tasks = 10**9 if files is None else max(1, -(-files // cfg.files_per_block))  # blocks
    return Plan(
        actors=(lo, min(max(lo, now), hi), hi),
        gpus_per_actor=gpus,
        device="cuda" if gpus > 0 else "cpu",
        actor_cpus=cpus,
        decode_tasks=min(tasks, max(1, int(spare))),  # more tasks than blocks would idle
        write_tasks=min(tasks, max(1, hi * WRITERS_PER_ACTOR)),
    )


def with_compute(
    cfg: PredictConfig, plan: Plan, model: LoadedModel, files: int | None = None
) -> Plan:
    """``plan`` with what every actor classifies in. ``auto`` on CPU actors: measured here, with
    the actors' threads and batch size, on the driver's node (CPU clusters are taken to be
    uniform), so all actors compute alike and _summary.json can say what they did. What the
    measurement costs is bounded by the work: ``files`` to classify (None: not known yet, a
    prefix listed as it is classified)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, int(plan.actor_cpus)))
    work = Work(files if files is not None else UNKNOWN_WORK, cfg.batch_size)
    try:
        compute = inference_compute(model, plan.device, cfg.precision, cfg.batch_size, work=work)
    finally:
        torch.set_num_threads(threads)
    return dataclasses.replace(plan, compute=compute)
