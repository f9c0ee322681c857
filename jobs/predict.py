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

import contextlib
import sys
from typing import Any

from cifar import env
from cifar.config import ConfigError, add_job_flags, build_parser, make_config, parse_explicit
from cifar.failures import STORAGE
from cifar.io import storage
from cifar.models.checkpoint import CheckpointError
from cifar.predict.commit import committed_rows
from cifar.predict.config import PredictConfig
from cifar.predict.pipeline import complete, predict, ray_init
from cifar.predict.preflight import preflight, preflight_lines
from jobs.common import (
    Boundary,
    command,
    configure_logging,
    exit_codes_text,
    handle_signals,
    quiet_ray_data,
)

PROGRAM = "cifar-predict"


def main(boundary: Boundary, argv: list[str]) -> int:
    epilog = f"{__doc__}\n{env.help_text()}\n\n{exit_codes_text()}"
    parser = build_parser(PredictConfig, PROGRAM, "Classify images in bulk with Ray Data.", epilog)
    add_job_flags(parser)
    explicit = parse_explicit(parser, argv)
    dry_run = explicit.pop("dry_run", False)
    cfg = make_config(PredictConfig, explicit)
    configure_logging(cfg.verbose)
    boundary.verbose = cfg.verbose
    pre = preflight(cfg)  # bad model, inputs or output fail here, before Ray starts
    if dry_run:
        print("\n".join(preflight_lines(cfg, pre)))
        return 0
    boundary.hint = lambda code: resume_hint(cfg, argv, code)
    if pre.resuming and pre.todo is not None and pre.todo.true_count == 0:
        print(done_lines(cfg, complete(cfg, pre), None))  # nothing left: no Ray needed
        return 0
    from cifar.cluster.resources import cluster_info

    quiet_ray_data(cfg.verbose)
    ray_seconds = ray_init()
    handle_signals()
    summary = predict(cfg, cluster_info(), pre=pre, ray_start_seconds=ray_seconds)
    print(done_lines(cfg, summary, ray_seconds))
    return 0


def resume_hint(cfg: PredictConfig, argv: list[str], code: int) -> str:
    """What a stopped job keeps, and the command that continues it. The rows are counted unless
    the output is in a store that failed (counting would only fail again, slowly)."""
    again = command(PROGRAM, argv, add=["--resume"], drop=["--overwrite"])
    where = storage.absolute(cfg.output)
    kept = "the result files"
    if code != STORAGE or not storage.is_uri(cfg.output):
        with contextlib.suppress(OSError):
            kept = f"{committed_rows(cfg.output, cfg.format)} result rows"
    return f"{kept} committed in {where} are kept; continue with: {again}"


def done_lines(cfg: PredictConfig, summary: dict[str, Any], ray_seconds: float | None) -> str:
    """The job's last lines: what it classified, how fast, and where the results are."""
    acc = f", accuracy {summary['accuracy']:.4f}" if summary.get("accuracy") is not None else ""
    results = (
        f"  results: {cfg.output} ({cfg.format}; side files: {', '.join(summary['side_files'])})"
    )
    kept = summary["already_done"]
    if ray_seconds is None:
        return (
            f"[cifar] nothing left to do: all {summary['files']} files already have their row "
            f"(resumed; Ray not started): {summary['predicted']} predicted, {summary['errors']} "
            f"errors, {summary['skipped']} skipped{acc}\n{results}"
        )
    waited = summary["waited_seconds"]
    queued = f", {waited:.0f}s of it waiting for resources" if waited >= 5 else ""
    resumed = f" ({kept} of them kept from the stopped run)" if summary["resumed"] else ""
    return (
        f"[cifar] classified {summary['files']} files{resumed}: {summary['predicted']} predicted, "
        f"{summary['errors']} errors, {summary['skipped']} skipped{acc} in "
        f"{summary['seconds']:.1f}s ({summary['images_per_s'] or 0:.0f} img/s{queued}; Ray "
        f"start-up {ray_seconds:.1f}s not included)\n{results}"
    )


def cli() -> None:
    """The installed ``cifar-predict`` command."""
    Boundary((ConfigError, CheckpointError)).run(lambda b: main(b, sys.argv[1:]))


if __name__ == "__main__":
    cli()
