"""One trial of a sweep: a training run of the project's own TorchTrainer (the worker loop of
:mod:`cifar.train.worker`, unchanged) with the recipe settings Tune drew, its metrics passed on
to Tune by Ray's ``TuneReportCallback`` (:mod:`cifar.tune.reclaim`). Ray's Train V2 + Tune
pattern: Tune runs :func:`run_trial` as a function trainable, which builds and fits the
TorchTrainer."""

from __future__ import annotations

import dataclasses
import json
import os
import time
import typing
from dataclasses import dataclass
from typing import Any

from cifar.config import _base_type
from cifar.data.dataset import TrainingData
from cifar.data.transforms import augmentation
from cifar.io import storage
from cifar.models.registry import ModelSpec
from cifar.train.config import TrainConfig, resolve_recipe
from cifar.train.driver import build_trainer, run_dir
from cifar.tune.packing import Packing
from cifar.tune.space import is_default

RUNS_DIR = "runs"  # <sweep>/runs/<trial id>/: each trial's run, as the training job writes one


@dataclass(frozen=True)
class Shared:
    """What the sweep's driver hands every trial (put in the object store once)."""

    base: TrainConfig  # the recipe every trial starts from, resolved for the data
    follow: tuple[str, ...]  # batch_size / lr not typed: picked for each trial's batch
    spec: ModelSpec  # architecture, classes, size, normalisation
    data: Any  # ObjectRef of the data's Splits (TrainingData.for_workers()): put once
    facts: TrainingData  # the data less its pixels (TrainingData.facts()): for summary.json
    dataset: dict[str, Any]  # what meta.json and TensorBoard say about the data
    weights: Any  # ObjectRef of the --weights to start from, or None
    runs: str  # <sweep>/runs
    packing: Packing
    train_env: dict[str, str]  # Ray Train settings of the training job (ray_train_env)
    mlflow_parent: Any = None  # the sweep's MLflow run (tracking.RunRef): trials are its children
    point: dict[str, Any] | None = None  # the default recipe's settings (Search.point)


def drawn(values: dict[str, Any]) -> dict[str, Any]:
    """Tune's draws as the config's own types (numpy integers are not JSON)."""
    hints = typing.get_type_hints(TrainConfig)
    return {k: _base_type(hints[k])[0](v) for k, v in values.items()}


def trial_config(
    shared: Shared, values: dict[str, Any], name: str
) -> tuple[TrainConfig, ModelSpec]:
    """The training config and model spec of the trial ``name`` that drew ``values``: the
    sweep's base with those settings, batch and lr picked for it where not typed, run in
    ``<sweep>/runs/<name>``, its torch threads per worker recorded (``cpus_per_worker``; the
    default recipe's trial takes cifar-train's: :mod:`cifar.tune.first`)."""
    base = shared.base
    run = {"name": name, "storage_path": shared.runs, "resume": False}
    drew = {k: None for k in shared.follow} | drawn(values)
    pack = shared.packing
    _, threads = pack.worker(is_default(shared.point, values))
    cfg = dataclasses.replace(
        base, **drew, **run, num_workers=pack.workers, cpus_per_worker=threads
    )
    cfg = resolve_recipe(cfg, len(shared.facts.train_labels), pack.workers)
    record = dict(base.preprocess or {})
    record["augmentation"] = augmentation(cfg.size) if cfg.augment else "none"
    spec = shared.spec
    if not cfg.normalize:  # the sweep computed the statistics; this trial goes without
        record["normalize"] = None
        spec = dataclasses.replace(spec, mean=None, std=None)
    return dataclasses.replace(cfg, preprocess=record), spec


def run_trial(config: dict[str, Any], shared: Shared) -> None:
    """Tune's function trainable: the trial's training run, from start or, for a trial that a
    stopped sweep left unfinished, from its latest checkpoint (Ray Train continues a run of
    the same storage path and name); then its ``model/`` and ``summary.json``."""
    import ray.tune

    from cifar.train import tracking
    from cifar.train.summary import run_summary
    from cifar.train.worker import WorkerArgs
    from cifar.tune.reclaim import train_callbacks

    # this actor is the trial's training driver: Ray Train reads its settings from here
    for k, v in shared.train_env.items():
        os.environ.setdefault(k, v)
    cfg, spec = trial_config(shared, config, ray.tune.get_context().get_trial_id())
    rdir = run_dir(cfg)
    if storage.exists(f"{rdir}/summary.json"):  # it ended before a kill, Tune had not saved so
        return
    if not storage.exists(f"{rdir}/config.json"):
        storage.write_text(f"{rdir}/config.json", json.dumps(cfg.to_dict(), indent=2))
    cpus, threads = shared.packing.worker(is_default(shared.point, config))
    loaders = cfg.loader_workers if cfg.loader_workers is not None else int(cpus)
    tracked = tracking.start_trial(cfg, rdir, shared.dataset, shared.mlflow_parent)
    args = WorkerArgs(
        cfg,
        spec,
        threads,
        rdir,
        shared.data,
        shared.dataset,
        shared.weights,
        loaders,
        tracked.ref,
    )
    trainer = build_trainer(
        cfg,
        args,
        shared.packing.use_gpu,
        callbacks=train_callbacks(),  # Ray's TuneReportCallback: each epoch's report to Tune
        cpus=cpus,
        gpus=shared.packing.gpus_per_worker,
    )
    t0 = time.perf_counter()
    with tracked:  # a trial ASHA stops ends KILLED in MLflow, a failed one FAILED
        result = trainer.fit()
    summary = run_summary(result, cfg, shared.facts, rdir, time.perf_counter() - t0)
    storage.write_text(f"{rdir}/summary.json", json.dumps(summary, indent=2))
    tracked.finish_run(summary)
