"""Classify image folders with Ray Data: ``cifar-predict --model M --input I --output O`` (or
``python -m jobs.predict``).

Examples:
  cifar-predict --model ~/ray_results/run1 --input photos/ --output preds/
  cifar-predict --model mywork_10.pth --input 'shots/**/*.jpg' --output out --format csv
  cifar-predict --model run1/model --input s3://bucket/imgs --output s3://bucket/preds \\
      --gpus-per-actor 1 --num-actors 1-8
  cifar-predict --model run1 --input val/ --output val-preds --labels-from-dirs --preview 64
  cifar-predict --model run1 --input photos/ --output preds/ --dry-run   # check, start nothing
  cifar-predict --model run1 --input photos/ --output preds/ --resume    # after a crash

Read the results with pandas.read_parquet("preds/"), pyarrow.dataset.dataset("preds/"),
ray.data.read_parquet("preds/") or DuckDB's read_parquet('preds/*.parquet'); the side files
(_summary.json, _confusion_matrix.png, ...) start with "_" so those readers skip them.
"""

from __future__ import annotations

import sys

from cifar.bulk import PredictConfig, default_ray_init, plan_lines, preflight, run
from cifar.checkpoint import CheckpointError
from cifar.config import (
    ConfigError,
    add_job_flags,
    build_parser,
    configure_logging,
    make_config,
    parse_explicit,
    run_main,
)
from cifar.waiting import StallError


def main(argv: list[str] | None = None) -> int:
    parser = build_parser(
        PredictConfig, "cifar-predict", "Classify images in bulk with Ray Data.", __doc__
    )
    add_job_flags(parser)
    explicit = parse_explicit(parser, argv)
    dry_run = explicit.pop("dry_run", False)
    cfg = make_config(PredictConfig, explicit)
    configure_logging(cfg.verbose)
    pre = preflight(cfg)  # bad model, inputs or output fail here, before Ray starts
    if dry_run:
        print("\n".join(plan_lines(cfg, pre)))
        return 0
    from cifar.raycluster import cluster_info

    ray_seconds = default_ray_init(cfg.verbose)
    cluster = cluster_info()
    summary = run(cfg, cluster, pre=pre, ray_start_seconds=ray_seconds)
    acc = f", accuracy {summary['accuracy']:.4f}" if summary.get("accuracy") is not None else ""
    waited = summary["waited_seconds"]
    queued = f", {waited:.0f}s of it waiting for resources" if waited >= 5 else ""
    kept = summary["already_done"]
    resumed = f" ({kept} of them kept from the killed run)" if cfg.resume else ""
    print(
        f"[cifar] classified {summary['files']} files{resumed}: {summary['predicted']} predicted, "
        f"{summary['errors']} errors, {summary['skipped']} skipped{acc} in "
        f"{summary['seconds']:.1f}s ({summary['images_per_s'] or 0:.0f} img/s{queued}; Ray "
        f"start-up {ray_seconds:.1f}s not included)\n"
        f"  results: {cfg.output} ({cfg.format}; side files: {', '.join(summary['side_files'])})"
    )
    return 0


def cli() -> None:
    """The installed ``cifar-predict`` command."""
    run_main(lambda: main(sys.argv[1:]), (ConfigError, CheckpointError, StallError))


if __name__ == "__main__":
    cli()
