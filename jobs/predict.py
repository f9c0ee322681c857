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
from typing import Any

from cifar import env
from cifar.cluster.watchdog import StallError
from cifar.config import ConfigError, add_job_flags, build_parser, make_config, parse_explicit
from cifar.models.checkpoint import CheckpointError
from cifar.predict.config import PredictConfig
from cifar.predict.pipeline import predict, ray_init
from cifar.predict.preflight import preflight, preflight_lines
from jobs.common import configure_logging, run_main


def main(argv: list[str] | None = None) -> int:
    parser = build_parser(
        PredictConfig,
        "cifar-predict",
        "Classify images in bulk with Ray Data.",
        f"{__doc__}\n{env.help_text()}",
    )
    add_job_flags(parser)
    explicit = parse_explicit(parser, argv)
    dry_run = explicit.pop("dry_run", False)
    cfg = make_config(PredictConfig, explicit)
    configure_logging(cfg.verbose)
    pre = preflight(cfg)  # bad model, inputs or output fail here, before Ray starts
    if dry_run:
        print("\n".join(preflight_lines(cfg, pre)))
        return 0
    from cifar.cluster.resources import cluster_info

    ray_seconds = ray_init()
    summary = predict(cfg, cluster_info(), pre=pre, ray_start_seconds=ray_seconds)
    print(done_lines(cfg, summary, ray_seconds))
    return 0


def done_lines(cfg: PredictConfig, summary: dict[str, Any], ray_seconds: float) -> str:
    """The job's last lines: what it classified, how fast, and where the results are."""
    acc = f", accuracy {summary['accuracy']:.4f}" if summary.get("accuracy") is not None else ""
    waited = summary["waited_seconds"]
    queued = f", {waited:.0f}s of it waiting for resources" if waited >= 5 else ""
    kept = summary["already_done"]
    resumed = f" ({kept} of them kept from the killed run)" if cfg.resume else ""
    return (
        f"[cifar] classified {summary['files']} files{resumed}: {summary['predicted']} predicted, "
        f"{summary['errors']} errors, {summary['skipped']} skipped{acc} in "
        f"{summary['seconds']:.1f}s ({summary['images_per_s'] or 0:.0f} img/s{queued}; Ray "
        f"start-up {ray_seconds:.1f}s not included)\n"
        f"  results: {cfg.output} ({cfg.format}; side files: {', '.join(summary['side_files'])})"
    )


def cli() -> None:
    """The installed ``cifar-predict`` command."""
    run_main(lambda: main(sys.argv[1:]), (ConfigError, CheckpointError, StallError))


if __name__ == "__main__":
    cli()
