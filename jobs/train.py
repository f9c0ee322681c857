"""Train CIFAR10-quick with Ray Train: ``python -m jobs.train [flags]`` (``--help`` for all).

Examples:
  python -m jobs.train --smoke-test
  python -m jobs.train --data-dir data --epochs 20 --num-workers 2
  python -m jobs.train --recipe tutorial           # the tutorial's exact training
  python -m jobs.train --name run1 --resume        # continue run1 from its latest checkpoint
  ray job submit --working-dir . -- python -m jobs.train --num-workers 4 --use-gpu \\
      --storage-path s3://bucket/runs
"""

from __future__ import annotations

import json
import logging
import os
import sys

from cifar.checkpoint import CheckpointError
from cifar.config import ConfigError, build_parser, parse_explicit, run_main
from cifar.data import DataError
from cifar.raycluster import cluster_info
from cifar.train import TrainingError, run
from cifar.train_config import TrainConfig, resolve_config


def main(argv: list[str] | None = None) -> int:
    parser = build_parser(
        TrainConfig, "python -m jobs.train", "Train CIFAR10-quick on Ray Train.", __doc__
    )
    cfg = resolve_config(parse_explicit(parser, argv))
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS", "0")
    import ray

    ray.init(log_to_driver=True, configure_logging=False)
    summary = run(cfg, cluster_info())
    brief = {k: v for k, v in summary.items() if k not in ("history", "config")}
    print(json.dumps(brief, indent=2))
    label = " (GENERATED synthetic data, not CIFAR-10)" if summary["dataset"] == "synthetic" else ""
    print(
        f"[cifar] done{label}: best test accuracy {summary['best_test_accuracy']:.4f}, "
        f"{summary['epochs_completed']} epochs in {summary['seconds']:.1f}s, "
        f"{summary['train_images_per_s']:.0f} train img/s\n"
        f"  model:       {summary['model_path']}\n"
        f"  summary:     {summary['run_dir']}/summary.json\n"
        f"  tensorboard: tensorboard --logdir {summary['tensorboard_dir']}"
    )
    return 0


if __name__ == "__main__":
    run_main(
        lambda: main(sys.argv[1:]),
        (ConfigError, DataError, CheckpointError, TrainingError),
    )
