"""Classify images in bulk with Ray Data: ``cifar-predict --model M --input I --output O``
(``python -m jobs.predict`` for ``ray job submit``).

Examples:
  cifar-predict --model ~/ray_results/run1 --input photos/ --output preds/
  cifar-predict --model mywork_10.pth --input 'shots/**/*.jpg' --output out --format csv
  cifar-predict --model run1 --input s3://bucket/imgs --output s3://bucket/preds --num-actors 1-8
  cifar-predict --model run1 --input val/ --output val-preds --labels-from-dirs --preview 64
  cifar-predict --model run1 --input hf/ --output out --image-column img --label-column fine_label
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
from cifar.config import ConfigError, config_yaml, make_config
from cifar.failures import STORAGE
from cifar.io import storage
from cifar.models.checkpoint import CheckpointError
from cifar.predict.commit import committed_rows
from cifar.predict.config import PredictConfig
from cifar.predict.pipeline import complete, predict, ray_init
from cifar.predict.preflight import preflight, preflight_lines

from .common import Boundary, command, configure_logging, handle_signals, parse, quiet_ray_data

PROGRAM = "cifar-predict"
PROGRESS_EVERY_S = 10.0  # a log that is not a terminal: one progress line this often


def main(boundary: Boundary, argv: list[str]) -> int:
    asked = parse(
        PredictConfig,
        PROGRAM,
        "Classify images in bulk with Ray Data.",
        __doc__,
        argv,
        lambda typed, saved: make_config(PredictConfig, saved, typed),
    )
    cfg = asked.cfg
    if asked.print_config:
        print(config_yaml(cfg, leave_out=("resume", "overwrite")), end="")
        return 0
    configure_logging(cfg.verbose)
    boundary.verbose = cfg.verbose
    pre = preflight(cfg)  # bad model, inputs or output fail here, before Ray starts
    if asked.dry_run:
        print("\n".join(preflight_lines(cfg, pre)))
        return 0
    boundary.hint = lambda code: resume_hint(cfg, argv, code)
    if pre.resuming and pre.todo is not None and pre.todo.true_count == 0:
        print(done_lines(cfg, complete(cfg, pre), None))  # nothing left: no Ray needed
        return 0
    from cifar.cluster.resources import cluster_info

    quiet_ray_data(cfg.verbose)
    shown = env.get("CIFAR_RAY_PROGRESS") != "0"
    terminal = sys.stdout.isatty()  # Ray Data's bars there; elsewhere a line every 10 s
    ray_seconds = ray_init(progress_bars=shown)  # a terminal's; logged INFO lines otherwise
    handle_signals()
    every = PROGRESS_EVERY_S if shown and not terminal else None
    summary = predict(cfg, cluster_info(), pre, ray_seconds, report_every=every)
    print(done_lines(cfg, summary, ray_seconds))
    return 0


def resume_hint(cfg: PredictConfig, argv: list[str], code: int) -> str:
    """What a stopped job keeps, and the command that continues it. The rows are counted unless
    the output is in a store that failed (counting would only fail again, slowly)."""
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()  # first: a write task still running would commit rows after the count
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
