"""Classify image folders with Ray Data: ``python -m jobs.predict --model M --input I --output O``.

Examples:
  python -m jobs.predict --model ~/ray_results/run1 --input photos/ --output preds/
  python -m jobs.predict --model mywork_10.pth --input 'shots/**/*.jpg' --output out --format csv
  python -m jobs.predict --model run1/model --input s3://bucket/imgs --output s3://bucket/preds \\
      --gpus-per-actor 1 --num-actors 1-8
  python -m jobs.predict --model run1 --input val/ --output val-preds --labels-from-dirs
"""

from __future__ import annotations

import logging
import sys

from cifar.bulk import PredictConfig, default_ray_init, preflight, run
from cifar.checkpoint import CheckpointError
from cifar.config import ConfigError, build_parser, make_config, parse_explicit, run_main
from cifar.raycluster import cluster_info


def main(argv: list[str] | None = None) -> int:
    parser = build_parser(
        PredictConfig, "python -m jobs.predict", "Classify images in bulk with Ray Data.", __doc__
    )
    cfg = make_config(PredictConfig, parse_explicit(parser, argv))
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    pre = preflight(cfg)  # bad model, inputs or output fail here, before Ray starts
    ray_seconds = default_ray_init()
    cluster = cluster_info()
    summary = run(cfg, cluster.cpus, cluster.gpus, pre=pre, ray_start_seconds=ray_seconds)
    acc = f", accuracy {summary['accuracy']:.4f}" if summary.get("accuracy") is not None else ""
    print(
        f"[cifar] classified {summary['files']} files: {summary['predicted']} predicted, "
        f"{summary['errors']} errors, {summary['skipped']} skipped{acc} in "
        f"{summary['seconds']:.1f}s ({summary['images_per_s']:.0f} img/s; Ray start-up "
        f"{ray_seconds:.1f}s not included) -> {cfg.output} ({cfg.format}, summary.json)"
    )
    return 0


if __name__ == "__main__":
    run_main(lambda: main(sys.argv[1:]), (ConfigError, CheckpointError))
