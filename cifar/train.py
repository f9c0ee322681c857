"""The training driver: name the run, load the data once, start Ray Train's workers
(:mod:`cifar.worker`), then export the best model and write ``summary.json``.

Ray must already be initialised (the job, ``jobs/train.py``, calls ``ray.init``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from cifar import checkpoint as ckpt
from cifar import storage
from cifar.config import ConfigError
from cifar.data import ImageData
from cifar.plots import per_class_accuracy
from cifar.raycluster import ClusterInfo
from cifar.train_config import RESUMABLE_FIELDS, TrainConfig, resolve_recipe, workers_text
from cifar.waiting import Watchdog, placement_waiting
from cifar.worker import TrainState, train_loop_per_worker
from cifar.writer import HEARTBEAT_FILE

RECIPE_CHOSEN = ("batch_size", "lr")  # None: the default recipe picks them for the data
log = logging.getLogger(__name__)
progress = logging.getLogger("cifar.progress")


def load_data(cfg: TrainConfig) -> ImageData:
    """The run's dataset, read (or generated, or downloaded) once, on the driver."""
    from cifar.sources import load_data as load

    return load(cfg.data_dir, cfg.download, cfg.val_fraction, cfg.synthetic)


def storage_root(cfg: TrainConfig) -> str:
    """``--storage-path`` as Ray Train takes it: a URI as is, a local path absolute."""
    if storage.is_uri(cfg.storage_path):
        return cfg.storage_path
    return str(Path(cfg.storage_path).expanduser().resolve())


def run_dir(cfg: TrainConfig) -> str:
    return f"{storage_root(cfg).rstrip('/')}/{cfg.name}"


def prepare_run(cfg: TrainConfig) -> TrainConfig:
    """Name the run, and on --resume reload its saved config (flags may only change scale)."""
    if cfg.name is None:
        cfg = dataclasses.replace(cfg, name=datetime.now().strftime("cifar-%Y%m%d-%H%M%S-%f"))
    rdir = run_dir(cfg)
    config_file = f"{rdir}/config.json"
    if cfg.resume:
        if not storage.exists(config_file):
            raise ConfigError(
                f"--resume: no run named '{cfg.name}' in {cfg.storage_path} (no {config_file}). "
                "Check --name and --storage-path, or drop --resume to start a new run."
            )
        saved = json.loads(storage.read_text(config_file))
        # what the recipe chose for the run (not typed now) is what it continues with
        chosen = {k: saved[k] for k in RECIPE_CHOSEN if getattr(cfg, k) is None and k in saved}
        cfg = dataclasses.replace(cfg, **chosen)
        current = cfg.to_dict()
        changed = [
            f"--{k.replace('_', '-')} {saved.get(k)!r} -> {current[k]!r}"
            for k in current
            if k not in RESUMABLE_FIELDS | {"classes"} and k in saved and saved[k] != current[k]
        ]
        if changed:
            raise ConfigError(
                f"--resume of '{cfg.name}' with a different recipe ({'; '.join(changed)}). A "
                "resumed run keeps the recipe it started with: pass the same flags, or start "
                "a new run with another --name."
            )
        return cfg
    if storage.exists(rdir):
        raise ConfigError(
            f"run '{cfg.name}' already exists in {cfg.storage_path}. Pass --resume to continue "
            "it from its latest checkpoint, or choose another --name."
        )
    return cfg


def resolve_scale(cfg: TrainConfig, cluster: ClusterInfo) -> tuple[bool, int]:
    """(use_gpu, CPUs per worker = its torch threads) for this cluster; fails fast when
    impossible."""
    use_gpu = cfg.use_gpu if cfg.use_gpu is not None else cluster.gpus > 0
    if use_gpu and cluster.gpus < 1:
        raise ConfigError(
            "--use-gpu was given but the Ray cluster has no GPUs "
            f"(cluster resources: {cluster.cpus:g} CPUs, 0 GPUs). Run without --use-gpu to train "
            "on CPU, or connect to a cluster with GPU nodes (RAY_ADDRESS)."
        )
    if cfg.cpus_per_worker is not None:
        cpus = cfg.cpus_per_worker
    elif use_gpu:
        cpus = 2
    elif cfg.elastic:  # workers come and go with nodes: one per node, the smallest node's CPUs
        node = cluster.smallest_node_cpus or cluster.largest_node_cpus or cluster.cpus
        cpus = max(1, int(node))
    else:  # what is free now (other jobs may hold the rest), shared evenly
        cpus = max(1, int(cluster.idle_cpus) // cfg.num_workers)
    return use_gpu, cpus


def check_classes(cfg: TrainConfig, data: ImageData) -> TrainConfig:
    """Record the data's classes in the config; a resumed run must see the classes it began with
    (its model has one output per class)."""
    classes = list(data.classes)
    if cfg.resume:
        saved = json.loads(storage.read_text(f"{run_dir(cfg)}/config.json")).get("classes")
        if saved is not None and saved != classes:
            raise ConfigError(
                f"--resume of '{cfg.name}': the data's classes changed ({saved} -> {classes}). "
                "A resumed run keeps its classes: point --data-dir at the data it started with, "
                "or start a new run with another --name."
            )
    return dataclasses.replace(cfg, classes=classes)


def describe_data(data: ImageData) -> dict[str, Any]:
    """What meta.json, summary.json and TensorBoard say about the dataset."""
    return {
        "kind": data.kind,
        "root": data.root,
        "classes": list(data.classes),
        "train_images": len(data.train_labels),
        "test_images": len(data.test_labels),
        "class_counts": data.class_counts(),
        **{k: v for k, v in data.info.items() if k != "skipped_files"},
    }


def log_data(data: ImageData, d: dict[str, Any]) -> None:
    """The dataset in the job's log: where, how split, per-class counts, decode, skips."""
    what = {"folder": "image folders", "synthetic": "GENERATED CIFAR-format set (not CIFAR-10)"}
    split = f", evaluated on {d['eval_split']}" if d.get("eval_split") else ""
    progress.info(
        "[cifar] data: %s %s: %d classes, %d train / %d test images%s",
        what.get(data.kind, f"CIFAR-format ({data.kind})"),
        data.root,
        len(data.classes),
        d["train_images"],
        d["test_images"],
        split,
    )
    width = max(len(c) for c in data.classes)
    for c in data.classes:
        n_train, n_test = d["class_counts"]["train"][c], d["class_counts"]["test"][c]
        progress.info("[cifar]   %-*s %7d train %6d test", width, c, n_train, n_test)
    dec = d.get("decode")
    if dec:
        how = "read from cache" if dec["cache"] == "hit" else "decoded and cached"
        progress.info(
            "[cifar] %d files %s in %.1fs (%s img/s): %s",
            dec["files"],
            how,
            dec["seconds"],
            dec["images_per_s"],
            dec["cache_file"],
        )
    skipped = data.info.get("skipped_files") or []
    if skipped:
        shown = "; ".join(f"{s['path']} ({s['error']})" for s in skipped[:3])
        log.warning(
            "skipped %d unreadable file(s) in the training tree (all listed in summary.json): %s%s",
            data.info["skipped"],
            shown,
            " ..." if data.info["skipped"] > 3 else "",
        )


def plan_lines(cfg: TrainConfig) -> list[str]:
    """``--dry-run``: what this config would do, every check made, nothing started or written."""
    from cifar.sources import check_data

    cfg = prepare_run(cfg)
    data, n_train = check_data(cfg.data_dir, cfg.download, cfg.synthetic)
    chose = "" if cfg.batch_size and cfg.lr else " (batch/lr picked for the data)"
    if n_train:
        cfg = resolve_recipe(cfg, n_train, cfg.worker_range[1])
    gpu = {True: "1 GPU each", False: "CPU only", None: "a GPU each if the cluster has GPUs"}
    shared = "a node's CPUs (CPU runs)" if cfg.elastic else "the cluster's CPUs shared"
    cpus = cfg.cpus_per_worker or shared
    elastic = (
        f" (elastic: resizes from the latest checkpoint; looks for room every "
        f"{cfg.resize_interval:g}s)"
        if cfg.elastic
        else ""
    )
    return [
        "[cifar] dry run: the config, data and run directory check out; nothing was started",
        f"  run:       {run_dir(cfg)} ({'resumes its latest checkpoint' if cfg.resume else 'new'})",
        f"  data:      {data}",
        f"  recipe:    {cfg.recipe}{chose}: {cfg.epochs} epochs, global batch "
        f"{cfg.batch_size}, lr {cfg.lr:g} ({cfg.schedule}), momentum {cfg.momentum:g}, weight "
        f"decay {cfg.weight_decay:g}, augment {'on' if cfg.augment else 'off'}",
        f"  scale:     {workers_text(cfg.num_workers)} worker(s){elastic}, {gpu[cfg.use_gpu]}, "
        f"CPUs per worker: {cpus}",
        f"  precision: {cfg.precision}"
        + (" (on a CPU: measured at the start; bf16 on GPUs)" if cfg.precision == "auto" else ""),
    ]


def build_trainer(
    cfg: TrainConfig,
    data: ImageData,
    use_gpu: bool,
    cpus: int,
    dataset: dict[str, Any] | None = None,
):
    """The TorchTrainer for a prepared config (run named, data loaded on the driver)."""
    import ray
    from ray.train import (
        CheckpointConfig,
        FailureConfig,
        LoggingConfig,
        RunConfig,
    )
    from ray.train.torch import TorchTrainer

    mean, std = data.channel_stats() if cfg.normalize else (None, None)
    rdir = run_dir(cfg)
    loop_config = {
        "cfg": cfg.to_dict(),
        "mean": mean,
        "std": std,
        "threads": cpus,
        "run_dir": rdir,
        # Read once here, shared by every worker through the object store (zero-copy on a
        # node, fetched once by every other node): workers never need the data on their disk.
        "data": ray.put(data.arrays()),
        "dataset": dataset or describe_data(data),
    }
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config,
        scaling_config=scaling_config(cfg, use_gpu, cpus),
        run_config=RunConfig(
            name=cfg.name,
            storage_path=storage_root(cfg),
            failure_config=FailureConfig(max_failures=cfg.max_failures),
            # Ray Train's own INFO lines (worker group, checkpoint written, result reported)
            # bury the job's one line per epoch: shown with --verbose
            logging_config=LoggingConfig(log_level="INFO" if cfg.verbose else "WARNING"),
            checkpoint_config=CheckpointConfig(
                num_to_keep=cfg.keep_checkpoints,
                checkpoint_score_attribute="test_accuracy",
                checkpoint_score_order="max",
            ),
        ),
    )


def scaling_config(cfg: TrainConfig, use_gpu: bool, cpus: int):
    """Ray Train's ScalingConfig: a fixed size, or for ``--num-workers MIN-MAX`` a (min, max)
    range that Ray Train starts with what the cluster has room for and resizes (a restart from
    the latest checkpoint) when that changes, looking every ``--resize-interval`` seconds."""
    from ray.train import ScalingConfig

    lo, hi = cfg.worker_range
    return ScalingConfig(
        num_workers=(lo, hi) if cfg.elastic else lo,
        use_gpu=use_gpu,
        resources_per_worker={"CPU": cpus, **({"GPU": 1} if use_gpu else {})},
        placement_strategy=cfg.placement,
        elastic_resize_monitor_interval_s=cfg.resize_interval,
    )


def world_sizes(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The worker counts a run trained with, as runs of epochs: ``[{"epochs": [1, 3],
    "workers": 1}, {"epochs": [4, 6], "workers": 2}]`` (``workers`` None for epochs recorded
    before runs kept it)."""
    spans: list[dict[str, Any]] = []
    for h in history:
        n = h.get("workers")
        if spans and spans[-1]["workers"] == n:
            spans[-1]["epochs"][1] = h["epoch"]
        else:
            spans.append({"epochs": [h["epoch"], h["epoch"]], "workers": n})
    return spans


def export_model(result, rdir: str) -> tuple[str, dict[str, Any]]:
    """Copy the best checkpoint's model.pt + meta.json to ``<run>/model/``."""
    best = result.get_best_checkpoint("test_accuracy", "max") or result.checkpoint
    target = f"{rdir}/model"
    with best.as_directory() as d:
        meta = ckpt.read_meta(d)
        storage.copy_files(d, [ckpt.MODEL_FILE, ckpt.META_FILE], target)
    return target, meta


def summarize(result, cfg: TrainConfig, data: ImageData, seconds: float) -> dict[str, Any]:
    rdir = run_dir(cfg)
    model_path, best_meta = export_model(result, rdir)
    with result.checkpoint.as_directory() as d:
        state = TrainState.from_checkpoint(d)
        last_meta = ckpt.read_meta(d)
    history = state.history
    ips = [h["images_per_s"] for h in history]
    return {
        "run_dir": rdir,
        "dataset": data.kind,
        "dataset_root": data.root,
        # classes, per-class counts, the evaluation split, decoding, every skipped file
        "data": {**describe_data(data), "skipped_files": data.info.get("skipped_files", [])},
        "best_test_accuracy": max(h["test_accuracy"] for h in history),
        "final_test_accuracy": last_meta["metrics"]["test_accuracy"],
        "final_test_loss": last_meta["metrics"]["test_loss"],
        "epochs_completed": int(last_meta["epoch"]),
        "epochs": cfg.epochs,
        "train_images_per_s": sum(ips) / len(ips) if ips else None,
        "seconds": seconds,
        "restarts": state.restarts,
        # the epoch whose checkpoint each restart (worker failure, resize, --resume) continued from
        "restored_from_epochs": state.restored_from,
        "best_epoch": int(best_meta["epoch"]),
        "best_per_class_accuracy": per_class_accuracy(state.best["confusion"], data.classes)
        if state.best
        else None,
        "best_confusion_matrix": state.best["confusion"] if state.best else None,
        "compute": last_meta.get("compute"),  # precision and layout, and why
        "model_path": model_path,
        "tensorboard_dir": f"{rdir}/tensorboard",
        "num_workers": cfg.num_workers,  # as asked: N, or [MIN, MAX] for an elastic run
        "world_sizes": world_sizes(history),  # as trained, epoch by epoch
        "history": history,
        "config": cfg.to_dict(),
    }


def run(cfg: TrainConfig, cluster: ClusterInfo) -> dict[str, Any]:
    """Driver: check data, build the trainer, fit, export ``model/`` and write ``summary.json``.

    Ray must already be initialised (the job calls ``ray.init``)."""
    from ray.train import TrainingFailedError

    use_gpu, cpus = resolve_scale(cfg, cluster)
    if not storage.is_uri(cfg.data_dir):  # recorded in config.json: make it absolute
        cfg = dataclasses.replace(cfg, data_dir=str(Path(cfg.data_dir).expanduser().resolve()))
    cfg = prepare_run(cfg)
    data = load_data(cfg)
    cfg = check_classes(cfg, data)
    # one global batch and schedule for the whole run: an elastic one's for its largest size
    cfg = resolve_recipe(cfg, len(data.train_labels), cfg.worker_range[1])
    dataset = describe_data(data)
    log_data(data, dataset)
    rdir = run_dir(cfg)
    if not cfg.resume:
        storage.write_text(f"{rdir}/config.json", json.dumps(cfg.to_dict(), indent=2))
    trainer = build_trainer(cfg, data, use_gpu, cpus, dataset)
    # Ray Train's controller polls its workers every 2 s by default: starting and finishing a
    # run each wait for a poll (measured: a run that only reports, 15.1 s -> 11.2 s at 0.2 s)
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.25")
    # A busy cluster: Ray Train gives up on a placement group after 60 s, logs a traceback and
    # asks again. A fixed size only waits in line: the watchdog reports that wait and ends it
    # after --stall-timeout. An elastic size keeps Ray's 60 s: Ray Train counts the nodes'
    # CPUs, not what other jobs hold, and may ask for more workers than fit (or for a node just
    # lost); after 60 s it counts again and asks for what there is.
    if not cfg.elastic:
        wait_s = cfg.stall_timeout + 60 if cfg.stall_timeout > 0 else 10**9
        os.environ.setdefault("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", str(wait_s))
    each = f"{cpus} CPU{'s' if cpus > 1 else ''}" + (" + 1 GPU" if use_gpu else "")
    workers = workers_text(cfg.num_workers)
    need = f"{workers} worker(s) x {each}"
    if cfg.elastic:
        progress.info(
            "[cifar] elastic: %s workers of %s; global batch %d at every size; looks for room "
            "for more every %gs; a resize or a lost node continues from the latest checkpoint",
            workers,
            each,
            cfg.batch_size,
            cfg.resize_interval,
        )
    beat = f"{rdir}/{HEARTBEAT_FILE}"
    dog = Watchdog(
        f"training run '{cfg.name}'",
        need,
        lambda: _heartbeat(beat),
        placement_waiting,
        cfg.stall_timeout,
    )
    t0 = time.perf_counter()
    try:
        with dog:  # a stall leaves it as a StallError
            result = trainer.fit()
        dog.check()  # a stall that Ray Train's own SIGINT handler ended quietly
    except TrainingFailedError as e:
        raise TrainingError(
            f"training run '{cfg.name}' failed after {cfg.max_failures} retries: "
            f"{_root_cause(e).rstrip('.')}. Its checkpoints are in {rdir}; continue it with "
            f"--resume --name {cfg.name}."
        ) from e
    summary = summarize(result, cfg, data, time.perf_counter() - t0)
    storage.write_text(f"{rdir}/summary.json", json.dumps(summary, indent=2))
    return summary


def _heartbeat(path: str) -> str | None:
    """What rank 0 last wrote to the run's heartbeat file (None before it first did)."""
    return storage.read_text(path) if storage.exists(path) else None


class TrainingError(RuntimeError):
    """The training run failed for good (after its retries)."""


def _root_cause(e: BaseException) -> str:
    while e.__cause__ is not None:
        e = e.__cause__
    text = str(e).strip().splitlines()
    return text[-1] if text else type(e).__name__
