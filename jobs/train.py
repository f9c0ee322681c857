"""Train an image classifier with Ray Train: ``cifar-train [flags]`` (``python -m jobs.train`` for
``ray job submit``).

Examples:
  cifar-train --smoke-test
  cifar-train --data-dir data --epochs 20 --num-workers 2
  cifar-train --data-dir pets --epochs 4           # your folders: pets/train/<class>/...
  cifar-train --recipe tutorial                    # the tutorial's exact training
  cifar-train --name run1 --resume                 # continue run1 from its latest checkpoint
  cifar-train --config runs/run1/config.json --seed 1 --name run2   # rerun a saved config
  cifar-train --data-dir pets --epochs 8 --print-config > pets.yaml  # a config to edit
  cifar-train --config pets.yaml --name pets8      # ... and to run
  cifar-train --data-dir data --dry-run            # check everything, print the plan, start nothing
  cifar-train --num-workers 1-4 --storage-path s3://bucket/runs   # elastic: grows with the cluster
"""

from __future__ import annotations

import os
import sys
from typing import Any

from cifar.config import ConfigError, config_yaml
from cifar.data.dataset import DataError
from cifar.models.checkpoint import CheckpointError
from cifar.train.config import TrainConfig, resolve_config
from cifar.train.driver import (
    TrainingError,
    last_checkpoint,
    named,
    ray_train_env,
    train,
)
from cifar.train.plan import train_plan

from .common import Boundary, command, configure_logging, handle_signals, parse

PROGRAM = "cifar-train"


def main(boundary: Boundary, argv: list[str]) -> int:
    asked = parse(
        TrainConfig,
        PROGRAM,
        "Train an image classifier on Ray Train.",
        __doc__,
        argv,
        resolve_config,
    )
    cfg = asked.cfg
    if asked.print_config:
        print(config_yaml(cfg, leave_out=("name", "resume")), end="")
        return 0
    cfg = named(cfg)
    configure_logging(cfg.verbose)
    boundary.verbose = cfg.verbose
    if asked.dry_run:
        print("\n".join(train_plan(cfg)))
        return 0
    settings = {"RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS": "0", **ray_train_env(cfg)}
    for k, v in settings.items():
        os.environ.setdefault(k, v)
    from cifar.cluster.resources import cluster_info, connect

    connect(log_to_driver=True, configure_logging=False)
    handle_signals()
    boundary.hint = lambda code: resume_hint(cfg, argv)
    print(done_lines(train(cfg, cluster_info())))
    return 0


def resume_hint(cfg: TrainConfig, argv: list[str]) -> str:
    """What a stopped run keeps, and the command that continues it."""
    last = last_checkpoint(cfg)
    kept = f"its last checkpoint is {last}" if last else "it had written no checkpoint yet"
    again = command(
        PROGRAM, argv, add=["--resume", *([] if "--name" in argv else ["--name", cfg.name])]
    )
    return f"Run '{cfg.name}': {kept}; continue it with: {again}"


def done_lines(summary: dict[str, Any]) -> str:
    """The run's last lines: its result, and where the model, summary and TensorBoard logs are."""
    label = {"synthetic": " (GENERATED data, not CIFAR-10)", "folder": ""}.get(
        summary["dataset"], ""
    )
    if summary["data"].get("generated"):
        label = " (GENERATED image folders)"
    return (
        f"[cifar] done{label}: best test accuracy {summary['best_test_accuracy']:.4f} "
        f"(epoch {summary['best_epoch']}), {summary['epochs_completed']} epochs in "
        f"{summary['seconds']:.1f}s, {summary['train_images_per_s']:.0f} train img/s\n"
        f"  model:       {summary['model_path']}\n"
        f"  summary:     {summary['run_dir']}/summary.json (per epoch: metrics.csv)\n"
        f"  tensorboard: tensorboard --logdir {summary['tensorboard_dir']}"
    )


def cli() -> None:
    """The installed ``cifar-train`` command."""
    handled = (ConfigError, DataError, CheckpointError, TrainingError)
    Boundary(handled).run(lambda b: main(b, sys.argv[1:]))


if __name__ == "__main__":
    cli()
