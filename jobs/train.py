"""Train CIFAR10-quick with Ray Train: ``cifar-train [flags]`` or ``python -m jobs.train``.

Examples:
  cifar-train --smoke-test
  cifar-train --data-dir data --epochs 20 --num-workers 2
  cifar-train --data-dir pets/ --epochs 4          # your folders: pets/train/<class>/...
  cifar-train --recipe tutorial                    # the tutorial's exact training
  cifar-train --name run1 --resume                 # continue run1 from its latest checkpoint
  cifar-train --config runs/run1/config.json --seed 1 --name run2   # rerun a saved config
  cifar-train --data-dir data --dry-run            # check everything, print the plan, start nothing
  cifar-train --num-workers 1-4 --storage-path s3://bucket/runs   # elastic: grows with the cluster
  ray job submit --working-dir . -- python -m jobs.train --num-workers 4 --gpu \\
      --storage-path s3://bucket/runs
"""

from __future__ import annotations

import os
import sys

from cifar.checkpoint import CheckpointError
from cifar.config import (
    ConfigError,
    add_job_flags,
    build_parser,
    configure_logging,
    parse_explicit,
    read_saved_config,
    run_main,
)
from cifar.data import DataError
from cifar.train import TrainingError, plan_lines, run
from cifar.train_config import TrainConfig, resolve_config
from cifar.waiting import StallError


def main(argv: list[str] | None = None) -> int:
    parser = build_parser(TrainConfig, "cifar-train", "Train CIFAR10-quick on Ray Train.", __doc__)
    add_job_flags(parser, saved_config=True)
    explicit = parse_explicit(parser, argv)
    dry_run = explicit.pop("dry_run", False)
    saved = read_saved_config(explicit.pop("config", None))
    cfg = resolve_config(explicit, saved)
    configure_logging(cfg.verbose)
    if dry_run:
        print("\n".join(plan_lines(cfg)))
        return 0
    os.environ.setdefault("RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS", "0")
    import ray

    from cifar.raycluster import cluster_info

    ray.init(log_to_driver=True, configure_logging=False)
    summary = run(cfg, cluster_info())
    label = {"synthetic": " (GENERATED data, not CIFAR-10)", "folder": ""}.get(
        summary["dataset"], ""
    )
    if summary["data"].get("generated"):
        label = " (GENERATED image folders)"
    print(
        f"[cifar] done{label}: best test accuracy {summary['best_test_accuracy']:.4f} "
        f"(epoch {summary['best_epoch']}), {summary['epochs_completed']} epochs in "
        f"{summary['seconds']:.1f}s, {summary['train_images_per_s']:.0f} train img/s\n"
        f"  model:       {summary['model_path']}\n"
        f"  summary:     {summary['run_dir']}/summary.json (per epoch: metrics.csv)\n"
        f"  tensorboard: tensorboard --logdir {summary['tensorboard_dir']}"
    )
    return 0


def cli() -> None:
    """The installed ``cifar-train`` command."""
    handled = (ConfigError, DataError, CheckpointError, TrainingError, StallError)
    run_main(lambda: main(sys.argv[1:]), handled)


if __name__ == "__main__":
    cli()
