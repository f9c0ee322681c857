"""How a sweep packs its trials onto the cluster: what each trial's training takes (workers,
CPUs, a GPU or a share of one) and how many trials run at once. The model is small: one trial
leaves a GPU, or a big CPU, mostly idle, so several trials share it."""

from __future__ import annotations

import math
from dataclasses import dataclass

from cifar.cluster.resources import ClusterInfo
from cifar.config import ConfigError
from cifar.train.driver import resolve_scale
from cifar.tune.config import GPUS_PER_TRIAL, SweepConfig

# A trial's own process (Tune's function trainable) only starts and watches its training run:
# it takes no CPU, so that every CPU goes to training workers, and a little memory, because a
# Ray Tune trial must ask for something.
TRIAL_DRIVER = {"CPU": 0, "memory": 256 * 2**20}


@dataclass(frozen=True)
class Packing:
    """Each trial: ``workers`` Ray Train workers sharing ``cpus`` CPUs and ``gpus`` GPUs (0: CPU
    training); ``at_once`` trials at a time, for the reason ``why``. On CPUs, the default
    recipe's trial first runs alone, its workers with ``default_threads`` CPUs (and torch
    threads) each: what cifar-train takes here (:mod:`cifar.tune.first`). None: on GPUs, or a
    sweep begun before this was recorded."""

    workers: int
    cpus: float
    gpus: float
    at_once: int
    why: str
    default_threads: int | None = None

    @property
    def use_gpu(self) -> bool:
        return self.gpus > 0

    @property
    def cpus_per_worker(self) -> float:
        return self.cpus / self.workers

    @property
    def gpus_per_worker(self) -> float:
        return self.gpus / self.workers

    @property
    def threads(self) -> int:
        """torch threads per worker: its CPUs, at least one (a fraction shares a core)."""
        return max(1, int(self.cpus_per_worker))

    def text(self) -> str:
        each = f"{self.cpus_per_worker:g} CPU" + (
            f" + {self.gpus_per_worker:g} GPU" if self.use_gpu else ""
        )
        threads = f"{self.threads} torch thread{'s' if self.threads > 1 else ''}"
        return (
            f"each trial {self.workers} worker(s) x {each} ({threads}); {self.at_once} trial(s) "
            f"at once ({self.why})"
        )

    @property
    def first_alone(self) -> bool:
        """The default recipe's trial runs first and alone, as cifar-train runs it."""
        return self.default_threads is not None

    def worker(self, default_recipe: bool) -> tuple[float, int]:
        """(CPUs, torch threads) of each worker of a trial: the default recipe's, or another."""
        if default_recipe and self.first_alone:
            return self.default_threads, self.default_threads
        return self.cpus_per_worker, self.threads


def plan_packing(cfg: SweepConfig, cluster: ClusterInfo) -> Packing:
    """The packing for this cluster now: what each trial asks for, and as many trials at once
    as the free resources hold (``--max-concurrent`` caps it; other jobs' resources count as
    taken). Fails fast where one trial can never fit."""
    use_gpu = cfg.use_gpu if cfg.use_gpu is not None else cluster.gpus > 0
    if use_gpu and cluster.gpus <= 0:
        raise ConfigError(
            f"--gpu was given but the Ray cluster has no GPUs ({cluster.cpus:g} CPUs). Run "
            "without --gpu to train the trials on CPUs, or connect to a cluster with GPU nodes "
            "(RAY_ADDRESS)."
        )
    w = cfg.workers_per_trial
    gpus = (cfg.gpus_per_trial or (GPUS_PER_TRIAL if w == 1 else float(w))) if use_gpu else 0.0
    node = cluster.largest_node_cpus or cluster.cpus
    if cfg.cpus_per_trial / w > node:
        raise ConfigError(
            f"--cpus-per-trial {cfg.cpus_per_trial:g} over {w} worker(s): each worker needs "
            f"{cfg.cpus_per_trial / w:g} CPUs and the largest node has {node:g}. Lower "
            "--cpus-per-trial, or raise --workers-per-trial."
        )
    hold = _fits(cluster.idle_cpus, cfg.cpus_per_trial)
    pool = f"the {cluster.idle_cpus:g} free CPUs"
    if use_gpu:
        gpu_pool = cluster.idle_gpus if cluster.idle_gpus > 0 else cluster.gpus
        hold = min(hold, _fits(gpu_pool, gpus))
        pool += f" and {gpu_pool:g} GPUs"
    if cfg.max_concurrent is not None:
        at_once, why = cfg.max_concurrent, "--max-concurrent"
    elif hold >= 1:
        at_once, why = hold, f"{pool} hold {hold}"
    else:
        at_once, why = 1, f"{pool} hold none now: other jobs hold the rest; the first waits"
    if at_once > cfg.trials:
        at_once, why = cfg.trials, f"all {cfg.trials} trials"
    # cifar-train's CPUs per worker here (on a GPU the threads change no result), within a node
    alone = None if use_gpu else min(resolve_scale(cfg.training(), cluster)[1], max(1, int(node)))
    return Packing(w, cfg.cpus_per_trial, gpus, at_once, why, alone)


def _fits(pool: float, each: float) -> int:
    return math.floor(pool / each + 1e-9)
