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
# write, whatever else runs, and on CPUs the actors take every CPU: the decode tasks run on the
# same cores (co-scheduled), or in the actors themselves (small inputs, below). How many decode
# tasks run at once is bounded instead: a third of the CPUs.
DECODE_SHARE = 1 / 3
WRITERS_PER_ACTOR = 1  # a writer spends its time in Arrow and file I/O: one per actor keeps up
# Inputs of at most this many pixels a side are decoded in the inference actors: a 32 px PNG
# decodes in ~50 us and CIFAR10-quick classifies it in ~60 us, so a separate decode stage's
# per-task, per-block and object-store costs were most of the job (docs/results.md, Prediction).
# At 224 px the forward pass is the work, and decode tasks run beside the actors.
DECODE_IN_ACTORS_UP_TO = 64
# Pixels of one inference batch on CPUs: --batch-size images at most, fewer where the input is
# large (32 at 224 px, --batch-size at 32-64 px): a CPU's forward pass reaches its rate by then,
# and smaller batches spread a few hundred photos evenly over the actors.
BATCH_PIXELS = 32 * 224 * 224
# Torch threads (= CPUs) of a CPU actor classifying inputs decoded by tasks (> 64 px): on a quiet
# 2-vCPU AMD EPYC, resnet18 at 224 px on 550 photos (bf16, precision cache warm, runs
# alternating), one actor of 2 threads made 31.8 and 32.9 img/s where two actors of one thread
# made 26.9 and 23.9: a second actor's start (a process importing torch) costs more than a
# forward pass loses to a second thread.
# Small inputs keep one thread an actor (their decode, in the actor, is single-threaded). Above
# 2 threads is not measured: bigger nodes get actors of 2 threads each.
PHOTO_ACTOR_CPUS = 2


@dataclass(frozen=True)
class Plan:
    actors: tuple[int, int, int]  # min, initial, max: the pool grows when CPUs/GPUs free up
    gpus_per_actor: float
    device: str
    actor_cpus: float = 1.0  # = the actor's torch threads on CPUs
    decode_tasks: int = 1  # at most this many at once (0: the actors decode)
    write_tasks: int = 1
    batch_size: int = 256  # images per inference batch
    compute: Compute | None = None  # precision and layout of every actor: actor_compute()

    @property
    def decode_in_actors(self) -> bool:
        return self.decode_tasks == 0

    def describe(self) -> str:
        lo, first, hi = self.actors
        gpu = f" + {self.gpus_per_actor:g} GPU" if self.gpus_per_actor else ""
        decode = (
            "decoding their own batches"
            if self.decode_in_actors
            else f"up to {self.decode_tasks} decode tasks"
        )
        return (
            f"{first} inference actor(s) of {self.actor_cpus:g} CPU{gpu} to start with "
            f"(at least {lo}, growing to {hi} as resources free up) on {self.device}, batches "
            f"of {self.batch_size}, {decode} and up to {self.write_tasks} write tasks"
        )


def plan_resources(
    cfg: PredictConfig,
    cluster: ClusterInfo,
    files: int | None = None,
    input_size: int | None = None,
) -> Plan:
    """Actor pool and task bounds for this cluster, sized from what it has free now and able to
    grow to what it has in all (no more actors than batches, nor tasks than blocks, of
    ``files`` when known); fails before any work when the job could never run.

    On CPUs the actors take every CPU: one thread each for inputs of ``input_size`` <=
    DECODE_IN_ACTORS_UP_TO, which they decode themselves; larger inputs are decoded by tasks
    beside actors of PHOTO_ACTOR_CPUS threads (:func:`actor_cpus`; docs/results.md,
    Prediction)."""
    gpus = cfg.gpus_per_actor if cfg.gpus_per_actor is not None else (1.0 if cluster.gpus else 0)
    if gpus > 0 and cluster.gpus < gpus:
        raise ConfigError(
            f"--gpus-per-actor {gpus:g} but the Ray cluster has {cluster.gpus:g} GPUs. Use "
            "--gpus-per-actor 0 to classify on CPU, or connect to a cluster with GPUs."
        )
    cpus = cfg.cpus_per_actor or actor_cpus(cluster, gpus, input_size)
    if cluster.largest_node_cpus is not None and cpus > cluster.largest_node_cpus:
        raise ConfigError(
            f"--cpus-per-actor {cpus:g}, but the largest node of the Ray cluster has "
            f"{cluster.largest_node_cpus:g} CPUs: no actor could ever start. Lower "
            "--cpus-per-actor."
        )
    batch = cfg.batch_size
    if gpus == 0 and input_size:
        batch = max(1, min(batch, BATCH_PIXELS // (input_size * input_size)))
    actors = parse_actors(cfg.num_actors)
    if gpus > 0:
        most = max(1, int(cluster.gpus // gpus))
        now = max(1, int(cluster.idle_gpus // gpus))
    else:
        most = max(1, int(cluster.cpus // cpus))
        now = max(1, int(cluster.idle_cpus // cpus))
    if files is not None and actors is None:  # an actor more than there are batches would idle
        most = min(most, max(1, -(-files // batch)))
    lo, hi = actors if actors is not None else (1, most)
    tasks = 10**9 if files is None else max(1, -(-files // cfg.files_per_block))  # blocks
    if gpus > 0:
        decode = min(tasks, max(1, int(cluster.cpus)))
    elif input_size is not None and input_size <= DECODE_IN_ACTORS_UP_TO:
        decode = 0
    else:
        decode = min(tasks, max(1, int(cluster.cpus * DECODE_SHARE)))
    return Plan(
        actors=(lo, min(max(lo, now), hi), hi),
        gpus_per_actor=gpus,
        device="cuda" if gpus > 0 else "cpu",
        actor_cpus=cpus,
        decode_tasks=decode,
        write_tasks=min(tasks, max(1, hi * WRITERS_PER_ACTOR)),
        batch_size=batch,
    )


def actor_cpus(cluster: ClusterInfo, gpus: float, input_size: int | None) -> float:
    """CPUs (torch threads) of an inference actor when --cpus-per-actor is not given: 1, or
    PHOTO_ACTOR_CPUS for inputs decoded by tasks on CPUs, as far as a node has them and they are
    free now (an actor waiting for a second CPU would hold up a busy cluster's job)."""
    if gpus > 0 or not input_size or input_size <= DECODE_IN_ACTORS_UP_TO:
        return 1.0
    room = min(cluster.largest_node_cpus or cluster.cpus, cluster.idle_cpus)
    return float(max(1, min(PHOTO_ACTOR_CPUS, int(room))))


# A batch job may spend up to a quarter of its estimated work choosing its precision: measuring
# pays for itself once the best setting is 1.33x fp32, and bf16 is 2.0x fp32 for resnet18 at
# 224 px on an AVX512-BF16 EPYC (benchmarks/predict.py); at a tenth, 550 photos went unmeasured.
MEASURE_SHARE = 0.25


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
    work = Work(files if files is not None else UNKNOWN_WORK, plan.batch_size, MEASURE_SHARE)
    try:
        compute = inference_compute(model, plan.device, cfg.precision, plan.batch_size, work=work)
    finally:
        torch.set_num_threads(threads)
    return dataclasses.replace(plan, compute=compute)
