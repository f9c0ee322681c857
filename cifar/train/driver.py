"""The training driver: name the run, load the data once, start Ray Train's workers
(:mod:`cifar.train.worker`), then export the best model and write ``summary.json``
(:mod:`cifar.train.summary`).

Ray must already be initialised (the job, ``jobs/train.py``, calls ``ray.init`` and applies
:func:`ray_train_env` first).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from datetime import datetime
from typing import Any

from cifar.cluster.resources import ClusterInfo
from cifar.cluster.state import placement_waiting
from cifar.cluster.watchdog import Watchdog
from cifar.config import ConfigError
from cifar.data import raydata
from cifar.data.dataset import TrainingData
from cifar.data.sources import load_training_data
from cifar.io import storage
from cifar.models.loading import Pretrained
from cifar.models.registry import ModelSpec
from cifar.train.config import RESUMABLE_FIELDS, TrainConfig, resolve_recipe, workers_text
from cifar.train.outputs import HEARTBEAT_FILE
from cifar.train.setup import model_setup
from cifar.train.summary import describe_data, log_data, run_summary
from cifar.train.worker import WorkerArgs, train_loop_per_worker

# None: picked for the data and model (the recipe, the arch's size); a resumed run keeps them
RECIPE_CHOSEN = ("batch_size", "lr", "image_size", "backbone_lr", "preprocess")
log = logging.getLogger(__name__)
progress = logging.getLogger("cifar.progress")


class TrainingError(RuntimeError):
    """The training run failed for good (after its retries)."""


def run_dir(cfg: TrainConfig) -> str:
    """Where the run lives: ``<storage-path>/<name>`` (a local path made absolute, or a URI)."""
    return f"{storage.absolute(cfg.storage_path).rstrip('/')}/{cfg.name}"


def named(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` with a run name: the one given, else a new time-stamped one."""
    if cfg.name is not None:
        return cfg
    return dataclasses.replace(cfg, name=datetime.now().strftime("cifar-%Y%m%d-%H%M%S-%f"))


def last_checkpoint(cfg: TrainConfig) -> str | None:
    """The run's newest checkpoint folder (what ``--resume`` continues from), if any."""
    rdir = run_dir(cfg)
    found = (
        [
            d
            for d in storage.list_dirs(rdir)
            if d.startswith("checkpoint_epoch_") and storage.is_file(f"{rdir}/{d}/model.pt")
        ]
        if storage.is_dir(rdir)
        else []
    )
    return f"{rdir}/{max(found)}" if found else None


def prepare_run(cfg: TrainConfig) -> TrainConfig:
    """Name the run, and on --resume reload its saved config, read once (flags may only change
    scale; the classes it recorded come back in ``cfg.classes`` for :func:`check_classes`)."""
    cfg = named(cfg)
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
        cfg = dataclasses.replace(cfg, **chosen, classes=saved.get("classes"))
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
            "--gpu was given but the Ray cluster has no GPUs "
            f"(cluster resources: {cluster.cpus:g} CPUs, 0 GPUs). Run without --gpu to train "
            "on CPU, or connect to a cluster with GPU nodes (RAY_ADDRESS)."
        )
    if cfg.cpus_per_worker is not None:
        cpus = cfg.cpus_per_worker
    elif use_gpu:
        cpus = 2
    elif cfg.elastic:  # workers come and go with nodes: one per node, the smallest node's CPUs
        node = cluster.smallest_node_cpus or cluster.largest_node_cpus or cluster.cpus
        cpus = max(1, int(node))
    else:  # what is free now (other jobs may hold the rest), shared evenly, and no more than
        # one node has: a worker never spans nodes (1 worker on 2 nodes of 2 CPUs: 2, not 4)
        cpus = max(1, int(cluster.idle_cpus) // cfg.num_workers)
        if cluster.largest_node_cpus:
            cpus = max(1, min(cpus, int(cluster.largest_node_cpus)))
    if cfg.data_loading == "ray":  # Ray Data's 1-CPU decode tasks need CPUs of their own
        if cfg.cpus_per_worker is None and not use_gpu:
            cpus = max(1, cpus // 2)  # half left to them
        check_decode_room(cfg, cluster, use_gpu, cpus)
    return use_gpu, cpus


def check_decode_room(cfg: TrainConfig, cluster: ClusterInfo, use_gpu: bool, cpus: float) -> None:
    """--data-loading ray: refuses workers that would leave Ray Data's 1-CPU decode tasks no CPU
    (they would wait for ever). A fixed size places its workers; an elastic run as many as fit,
    up to its most (Ray Train's elastic policy), and a cluster that grows then only adds to what
    is left. Counted on the cluster's totals, not node by node: a layout that only just fits
    may be refused."""
    lo, hi = cfg.worker_range
    placed = lo
    if cfg.elastic:
        placed = min(hi, int(cluster.cpus // cpus), int(cluster.gpus) if use_gpu else hi)
    left = cluster.cpus - placed * cpus
    if left >= 1:
        return
    grows = " (an elastic run places as many as fit, up to its most)" if cfg.elastic else ""
    raise ConfigError(
        f"--data-loading ray decodes in 1-CPU Ray Data tasks beside the training workers, but "
        f"{placed} worker(s) of {cpus:g} CPU(s){grows} would leave {max(left, 0):g} of the "
        f"{cluster.cpus:g} CPUs of the Ray cluster: the decoding could never start. Lower "
        "--num-workers (for an elastic run, its most) or --cpus-per-worker, add a node, or use "
        "--data-loading stream."
    )


def check_classes(cfg: TrainConfig, data: TrainingData) -> TrainConfig:
    """Record the data's classes in the config; a resumed run must see the classes it began with
    (its model has one output per class; :func:`prepare_run` put them in ``cfg.classes``)."""
    classes = list(data.classes)
    if cfg.resume:
        saved = cfg.classes
        if saved is not None and saved != classes:
            raise ConfigError(
                f"--resume of '{cfg.name}': the data's classes changed ({saved} -> {classes}). "
                "A resumed run keeps its classes: point --data-dir at the data it started with, "
                "or start a new run with another --name."
            )
    return dataclasses.replace(cfg, classes=classes)


def ray_train_env(cfg: TrainConfig) -> dict[str, str]:
    """Ray Train's own settings (environment variables, read by its controller) that this run
    wants; the job sets those not already set before ``fit()``."""
    # Ray Train's controller polls its workers every 2 s by default: starting and finishing a
    # run each wait for a poll (docs/results.md: the fixed cost of a run)
    settings = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.25"}
    # A busy cluster: Ray Train gives up on a placement group after 60 s, logs a traceback and
    # asks again. A fixed size only waits in line: the watchdog reports that wait and ends it
    # after --stall-timeout. An elastic size keeps Ray's 60 s: Ray Train counts the nodes'
    # CPUs, not what other jobs hold, and may ask for more workers than fit (or for a node just
    # lost); after 60 s it counts again and asks for what there is.
    if not cfg.elastic:
        wait_s = cfg.stall_timeout + 60 if cfg.stall_timeout > 0 else 10**9
        settings["RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"] = f"{wait_s:g}"
    return settings


def build_trainer(
    cfg: TrainConfig,
    args: WorkerArgs,
    use_gpu: bool,
    callbacks: tuple = (),
    cpus: float | None = None,
    gpus: float = 1,
    datasets: dict[str, Any] | None = None,
):
    """The TorchTrainer for a prepared config (run named, data loaded and put on the driver);
    a sweep's trial adds Ray Train ``callbacks`` and asks for shares of a CPU or GPU per worker.
    ``datasets``: Ray Datasets for the workers' ``get_dataset_shard`` (``--data-loading ray``)."""
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig
    from ray.train.torch import TorchTrainer

    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config=args.to_config(),
        datasets=datasets,
        dataset_config=raydata.data_config() if datasets else None,
        scaling_config=scaling_config(cfg, use_gpu, args.threads if cpus is None else cpus, gpus),
        run_config=RunConfig(
            name=cfg.name,
            callbacks=list(callbacks),
            storage_path=storage.absolute(cfg.storage_path),
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


def scaling_config(cfg: TrainConfig, use_gpu: bool, cpus: float, gpus: float = 1):
    """Ray Train's ScalingConfig: a fixed size, or for ``--num-workers MIN-MAX`` a (min, max)
    range that Ray Train starts with what the cluster has room for and resizes (a restart from
    the latest checkpoint) when that changes, looking every ``--resize-interval`` seconds."""
    from ray.train import ScalingConfig

    lo, hi = cfg.worker_range
    return ScalingConfig(
        num_workers=(lo, hi) if cfg.elastic else lo,
        use_gpu=use_gpu,
        resources_per_worker={"CPU": cpus, **({"GPU": gpus} if use_gpu else {})},
        placement_strategy=cfg.placement,
        elastic_resize_monitor_interval_s=cfg.resize_interval,
    )


@dataclasses.dataclass
class Prepared:
    """A run ready to start: its config resolved, its data, model and starting weights."""

    cfg: TrainConfig
    data: TrainingData
    spec: ModelSpec
    pretrained: Pretrained | None


def prepare(cfg: TrainConfig) -> Prepared:
    """The run named (or its saved config reloaded), its data loaded once on the driver (or
    listed, to be streamed), its classes recorded, its recipe resolved for the data, its model
    and preprocessing chosen; config.json written for a new run."""
    if not storage.is_uri(cfg.data_dir):  # recorded in config.json: make it absolute
        cfg = dataclasses.replace(cfg, data_dir=storage.absolute(cfg.data_dir))
    cfg = prepare_run(cfg)
    data, loading = load_training_data(cfg.data_request())
    progress.info(loading.line())
    cfg = check_classes(cfg, data)
    # one global batch and schedule for the whole run: an elastic one's for its largest size
    cfg = resolve_recipe(cfg, len(data.train_labels), cfg.worker_range[1])
    spec, pretrained, record = model_setup(cfg, data, loading)
    cfg = dataclasses.replace(cfg, preprocess=record)
    if not cfg.resume:
        storage.write_text(f"{run_dir(cfg)}/config.json", json.dumps(cfg.to_dict(), indent=2))
    return Prepared(cfg, data, spec, pretrained)


def train(cfg: TrainConfig, cluster: ClusterInfo) -> dict[str, Any]:
    """Driver: check and load the data, start the workers, fit, export ``model/`` and write
    ``summary.json``. Ray must already be initialised (the job calls ``ray.init``)."""
    import ray

    from cifar.train import tracking

    use_gpu, cpus = resolve_scale(cfg, cluster)
    p = prepare(cfg)
    cfg, data = p.cfg, p.data
    dataset = describe_data(data)
    log_data(data, dataset)
    rdir = run_dir(cfg)
    # the data is read once here and shared by every worker through the object store (zero-copy
    # on a node, fetched once by every other node): workers never need it on their disk. Data
    # too large for that goes as file lists: every worker streams its shard.
    shared = data.for_workers()
    weights = ray.put(p.pretrained.state_dict) if p.pretrained is not None else None
    loader_workers = cfg.loader_workers if cfg.loader_workers is not None else cpus
    tracked = tracking.start_run(cfg, rdir, dataset)  # MLflow: with --mlflow-uri
    ray_data = cfg.preprocess["data_loading"] == "ray"
    args = WorkerArgs(
        cfg,
        p.spec,
        cpus,
        rdir,
        ray.put(shared),
        dataset,
        weights,
        loader_workers,
        tracked.ref,
        ray_data,
    )
    # --data-loading ray: the training set as a Ray Dataset, decoded on any CPU of the cluster
    # (the workers' own excluded) and streamed into them; evaluation stays on the workers
    datasets = {"train": raydata.train_dataset(shared, cfg.seed)} if ray_data else None
    each = f"{cpus} CPU{'s' if cpus > 1 else ''}" + (" + 1 GPU" if use_gpu else "")
    if cfg.elastic:
        progress.info(
            "[cifar] elastic: %s workers of %s; global batch %d at every size; looks for room "
            "for more every %gs; a resize or a lost node continues from the latest checkpoint",
            workers_text(cfg.num_workers),
            each,
            cfg.batch_size,
            cfg.resize_interval,
        )
    t0 = time.perf_counter()
    with tracked:  # a run that fails ends FAILED in MLflow too
        result = fit(
            build_trainer(cfg, args, use_gpu, datasets=datasets),
            cfg,
            f"{workers_text(cfg.num_workers)} worker(s) x {each}",
        )
    summary = run_summary(result, cfg, data, rdir, time.perf_counter() - t0)
    storage.write_text(f"{rdir}/summary.json", json.dumps(summary, indent=2))
    tracked.finish_run(summary)  # its files and model as artifacts
    return summary


def fit(trainer, cfg: TrainConfig, need: str):
    """``trainer.fit()`` under the watchdog (which says what the run waits for and ends it after
    --stall-timeout without progress); a run that failed for good is a TrainingError."""
    from ray.train import TrainingFailedError

    rdir = run_dir(cfg)
    beat = f"{rdir}/{HEARTBEAT_FILE}"
    dog = Watchdog(
        f"training run '{cfg.name}'",
        need,
        lambda: _heartbeat(beat),
        placement_waiting,
        cfg.stall_timeout,
    )
    try:
        with dog:  # a stall leaves it as a StallError
            result = trainer.fit()
        dog.check()  # a stall that Ray Train's own SIGINT handler ended quietly
    except SystemExit:  # Ray Train's SIGINT handler aborts the run, then exits with status 0
        raise KeyboardInterrupt("interrupted (SIGINT)") from None
    except TrainingFailedError as e:
        raise TrainingError(
            f"training run '{cfg.name}' failed after {cfg.max_failures} retries: "
            f"{_root_cause(e).rstrip('.')}. Its checkpoints are in {rdir}; continue it with "
            f"--resume --name {cfg.name}."
        ) from e
    return result


def _heartbeat(path: str) -> str | None:
    """What rank 0 last wrote to the run's heartbeat file (None before it first did)."""
    return storage.read_text(path) if storage.exists(path) else None


def _root_cause(e: BaseException) -> str:
    while e.__cause__ is not None:
        e = e.__cause__
    text = str(e).strip().splitlines()
    return text[-1] if text else type(e).__name__
