"""``cifar-train --dry-run``: what a config would do, every check made, nothing started."""

from __future__ import annotations

from cifar.config import ConfigError
from cifar.data.sources import check_data
from cifar.io import storage
from cifar.train.config import TrainConfig, resolve_recipe, workers_text
from cifar.train.driver import prepare_run, run_dir


def train_plan(cfg: TrainConfig) -> list[str]:
    """``--dry-run``: what this config would do, every check made, nothing started or written."""

    cfg = prepare_run(cfg)
    data, n_train = check_data(cfg.data_request())
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
        f"  model:     {model_text(cfg)}",
        f"  recipe:    {cfg.recipe}{chose}: {cfg.epochs} epochs, global batch "
        f"{cfg.batch_size}, lr {cfg.lr:g} ({cfg.schedule}), momentum {cfg.momentum:g}, weight "
        f"decay {cfg.weight_decay:g}, augment {'on' if cfg.augment else 'off'}",
        f"  scale:     {workers_text(cfg.num_workers)} worker(s){elastic}, {gpu[cfg.use_gpu]}, "
        f"CPUs per worker: {cpus}",
        f"  precision: {cfg.precision}"
        + (" (on a CPU: measured at the start; bf16 on GPUs)" if cfg.precision == "auto" else ""),
    ]


def model_text(cfg: TrainConfig) -> str:
    """The dry run's model line: arch, input size, and what it starts from."""
    start = "random weights"
    if cfg.weights and not (storage.exists(cfg.weights) or storage.is_dir(cfg.weights)):
        raise ConfigError(
            f"--weights {cfg.weights}: no such file or run. Pass a state_dict file (local or "
            "URI) for this --arch, or an earlier run's directory; nothing is downloaded."
        )
    if cfg.weights:
        lr = f"backbone lr x{cfg.backbone_lr:g}" if cfg.backbone_lr is not None else ""
        start = f"--weights {cfg.weights} (" + ("backbone frozen" if cfg.freeze_backbone else lr)
        start += ", read when the run starts)"
    return f"{cfg.arch} at {cfg.size}x{cfg.size} px, from {start}"
