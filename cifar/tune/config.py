"""The sweep job's config: the training job's flags (data, model, recipe to start from, storage,
speed) plus how to search and how to pack trials. The command line (``python -m jobs.tune
--help``) is generated from it."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import partial
from typing import Any

from cifar.config import make_config, opt
from cifar.models.registry import DEFAULT_ARCH
from cifar.train.config import (
    NOT_RERUN,
    RECIPE_PRESETS,
    SMOKE_DATA,
    TrainConfig,
    recipe_opt,
    run_opt,
)

SEARCH_ALGS = ("random", "optuna")
GPUS_PER_TRIAL = 0.25  # a GPU cluster's default: four single-worker trials share a GPU
sweep_opt = partial(opt, group="sweep")
# --smoke-test: a generated set, a few short trials, on CPUs
SMOKE_SWEEP = {"epochs": 2, "trials": 4, "use_gpu": False, "synthetic": SMOKE_DATA}
# what sweep.json records of the flags, and a resumed sweep must keep (Tune restores its search
# and its trials at once as they were)
RECORDED = (
    "search",
    "trials",
    "search_alg",
    "early_stop",
    "epochs",
    "seed",
    "cpus_per_trial",
    "gpus_per_trial",
    "max_concurrent",
    "workers_per_trial",
)


@dataclass
class SweepConfig(TrainConfig):
    # fmt: off
    search: list[str] = sweep_opt([], "a recipe setting and how trials draw it: NAME=loguniform:LO:HI, uniform:LO:HI, randint:LO:HI (both ends included) or choice:A,B,...; or a YAML/JSON file of NAME: SPEC lines. Repeatable. Default: lr, batch_size and weight_decay around the default recipe's", metavar="NAME=SPEC|FILE")  # noqa: E501, RUF009 (sweep_opt is opt)
    trials: int = sweep_opt(16, "trials (recipes tried); the first is the default recipe when the space holds it: cifar-train's run of the same flags (on CPUs it runs first, alone)", metavar="N")  # noqa: E501
    search_alg: str = sweep_opt("random", "how trials are drawn: random, or optuna (TPE; needs optuna, the 'tune' extra)", choices=SEARCH_ALGS)  # noqa: E501
    early_stop: bool = sweep_opt(True, "ASHA: stop a trial whose test accuracy trails the others' at the same epoch (never the default recipe's)")  # noqa: E501
    cpus_per_trial: float = sweep_opt(1.0, "CPUs of each trial's training, shared by its workers; a fraction packs trials onto a CPU", metavar="CPUS")  # noqa: E501
    gpus_per_trial: float | None = sweep_opt(None, f"GPUs of each trial on a GPU cluster; a fraction packs trials onto a GPU (default: {GPUS_PER_TRIAL} for a trial of one worker, a whole GPU per worker for more)", metavar="GPUS")  # noqa: E501
    max_concurrent: int | None = sweep_opt(None, "trials at once at most (default: as many as the free CPUs and GPUs hold)", metavar="N")  # noqa: E501
    workers_per_trial: int = sweep_opt(1, "Ray Train workers per trial (DDP within the trial)", metavar="N")  # noqa: E501
    epochs: int = recipe_opt(20, "the most epochs a trial runs (ASHA stops trailing trials earlier)")  # noqa: E501
    storage_path: str = run_opt("~/ray_results", "where sweeps go (local path or s3://, gs://)", resumable=True)  # noqa: E501
    name: str | None = run_opt(None, "sweep name (default: time-stamped)", resumable=True)
    resume: bool = run_opt(False, "continue sweep --name: finished trials are kept, the others continue from their latest checkpoints", resumable=True)  # noqa: E501
    smoke_test: bool = run_opt(False, "tiny generated set, 4 trials of 2 epochs, on CPUs")
    # the training job's scale flags: a sweep sets them per trial
    num_workers: int | list[int] = opt(1, cli=False)
    cpus_per_worker: int | None = opt(None, cli=False)
    resize_interval: float = opt(60.0, cli=False)
    # fmt: on

    def checks(self) -> list[tuple[bool, str]]:
        w = self.workers_per_trial
        # the training checks, less those of --num-workers (here: --workers-per-trial)
        inherited = [c for c in super().checks() if "--num-workers" not in c[1]]
        return [
            (self.trials >= 1, f"--trials must be at least 1 (got {self.trials})"),
            (w >= 1, f"--workers-per-trial must be at least 1 (got {w})"),
            (
                self.batch_size is None or self.batch_size >= w,
                f"--batch-size {self.batch_size} is the global batch and must be at least "
                f"--workers-per-trial {w}: every worker takes its share of each batch",
            ),
            (
                self.cpus_per_trial > 0,
                f"--cpus-per-trial must be above 0 (got {self.cpus_per_trial})",
            ),
            (
                self.gpus_per_trial is None or self.gpus_per_trial > 0,
                f"--gpus-per-trial must be above 0 (got {self.gpus_per_trial}); --no-gpu trains "
                "every trial on CPUs",
            ),
            (
                w == 1 or self.gpus_per_trial is None or (self.gpus_per_trial / w).is_integer(),
                f"--workers-per-trial {w} with --gpus-per-trial {self.gpus_per_trial}: the "
                "workers of one trial cannot share a GPU (DDP over NCCL). Give each a whole GPU "
                f"(--gpus-per-trial {w}) or use one worker per trial",
            ),
            (
                self.max_concurrent is None or self.max_concurrent >= 1,
                f"--max-concurrent must be at least 1 (got {self.max_concurrent})",
            ),
            (  # trials are packed onto the CPUs they reserve: nothing is left to Ray Data's tasks
                self.data_loading != "ray",
                "cifar-tune does not take --data-loading ray (its trials are packed onto the "
                "cluster's CPUs, which leaves none to Ray Data's decoding); use --data-loading "
                "stream",
            ),
            *inherited,
        ]

    def training(self) -> TrainConfig:
        """The training config every trial starts from (the sweep's own fields left out)."""
        train_fields = {f.name for f in dataclasses.fields(TrainConfig)}
        return TrainConfig(**{k: v for k, v in vars(self).items() if k in train_fields})

    def recorded(self) -> dict[str, Any]:
        """The flags sweep.json records (a resumed sweep must keep them)."""
        return {k: getattr(self, k) for k in RECORDED}


def resolve_sweep(explicit: dict[str, Any], saved: dict[str, Any] | None = None) -> SweepConfig:
    """Dataclass defaults <- a saved config (``--config``) <- the recipe preset <- smoke-test
    preset <- flags the user typed; a trial's workers are ``--workers-per-trial``."""
    saved = {k: v for k, v in (saved or {}).items() if k not in NOT_RERUN}
    preset = {}
    if "recipe" in explicit or not saved:
        preset = RECIPE_PRESETS[explicit.get("recipe", saved.get("recipe", "default"))]
    smoking = explicit.get("smoke_test", saved.get("smoke_test"))
    layers = [saved, preset, SMOKE_SWEEP if smoking else {}, explicit]
    workers = next(
        (x["workers_per_trial"] for x in reversed(layers) if "workers_per_trial" in x), 1
    )
    cfg = make_config(SweepConfig, *layers, {"num_workers": workers})
    if cfg.relu and cfg.arch == DEFAULT_ARCH:  # --relu, as the training job reads it
        cfg = dataclasses.replace(cfg, arch="cifar10_quick_relu")
    return cfg
