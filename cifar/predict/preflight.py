"""Every check a prediction job makes before Ray starts: the model loads, the inputs are listed
(or, for one object-storage prefix, found), the output can take the results, and what a
``--resume`` keeps. The result is a frozen :class:`Preflight`; ``--dry-run`` prints it."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cifar.config import ConfigError
from cifar.io import storage
from cifar.io.lock import LOCK_FILE, busy, holder_of
from cifar.models.exported import OnnxModel
from cifar.models.loading import LoadedModel
from cifar.predict.commit import check_resume, committed_paths, job_record
from cifar.predict.config import PredictConfig
from cifar.predict.inputs import label_from_dirs, list_inputs, streamed_input
from cifar.predict.predictor import load_for_prediction, onnx_compute
from cifar.predict.shard_input import (
    describe,
    expand_shards,
    holds_shards,
    read_columns,
    shard_labels,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Preflight:
    model: LoadedModel
    record: dict[str, Any]  # the job, as _job.json says it
    files: Any = None  # every input file: a pyarrow string array (None: streamed)
    labels: Any = None  # with --labels-from-dirs: a pyarrow string array beside ``files``
    relpaths: Any = None  # beside ``files``: each one's path below its --input
    skipped: int = 0  # left out by --extensions
    stream: str | None = None  # a prefix listed while classifying (files is None then)
    resuming: bool = False  # --resume of a job that committed results here
    todo: Any = None  # pyarrow boolean mask of the files still to classify (None: all)
    done: Any = None  # with stream and --resume: the committed paths, for the lister
    seconds: float = 0.0
    shards: dict[str, Any] | None = None  # beside files: where shard samples lie (shard_input)

    @property
    def already_done(self) -> int:
        return 0 if self.todo is None else len(self.files) - self.todo.true_count

    def remaining(self) -> dict[str, Any] | None:
        """The columns (path, relpath, label) of the files still to classify (None: streamed)."""
        if self.files is None:
            return None
        cols = {"path": self.files, "relpath": self.relpaths}
        if self.labels is not None:
            cols["label"] = self.labels
        cols.update(self.shards or {})
        return {k: v.filter(self.todo) for k, v in cols.items()} if self.todo is not None else cols


def check_output(output: str, overwrite: bool, resume: bool = False) -> None:
    """Refuse an output that holds results (unless --overwrite or --resume) or that cannot be
    written."""
    if not storage.is_uri(output):
        out = Path(output).expanduser()
        if out.exists() and not out.is_dir():
            raise ConfigError(f"--output {out} is a file; pass a folder path.")
        probe_dir = out if out.is_dir() else next(p for p in out.parents if p.exists())
        if not os.access(probe_dir, os.W_OK):
            raise ConfigError(f"--output {out} is not writable. Choose a folder you can write.")
    if storage.is_dir(output) and storage.has_entries(output) and not (overwrite or resume):
        raise ConfigError(
            f"--output {output} already holds results. Pass --resume to continue the job that "
            "wrote them (same command), --overwrite to replace them, or choose another --output."
        )


def listed_inputs(cfg: PredictConfig, classes: list[str]) -> tuple[Any, Any, Any, int, Any]:
    """(files, their relpaths, labels or None, skipped by --extensions, where the shard samples
    among the files lie or None), listed now: a shard is listed as its samples."""
    import pyarrow as pa

    listed = list_inputs(cfg.input, cfg.extensions)
    found, samples = expand_shards(listed, cfg.image_column, cfg.label_column)
    relpaths = found.relpaths()
    labels = None
    if cfg.labels_from_dirs:
        pairs = zip(found.files.to_pylist(), found.root_list(), strict=True)
        labels = pa.array([label_from_dirs(f, r, classes) for f, r in pairs], pa.string())
        labels = shard_labels(labels, samples, classes)  # a shard sample: the label it stores
        check_labels(labels, relpaths, classes)
    return found.files, relpaths, labels, found.skipped, read_columns(samples)


def check_labels(labels, relpaths, classes: list[str]) -> None:
    """``--labels-from-dirs`` asked for an evaluation: none at all (no folder names a class of
    the model) is an error before Ray starts; a partial one is said in one line."""
    unlabelled = [
        r
        for r, label in zip(relpaths.to_pylist(), labels.to_pylist(), strict=True)
        if label is None
    ]
    if not unlabelled:
        return
    folders = sorted({r.split("/")[0] for r in unlabelled if "/" in r})
    named = ", ".join(folders[:12]) + (", ..." if len(folders) > 12 else "") or "none"
    if len(unlabelled) == len(labels):
        raise ConfigError(
            f"--labels-from-dirs: no folder below the input names one of the model's classes, so "
            f"no file has a label. The model's classes: {', '.join(classes[:20])}"
            f"{', ...' if len(classes) > 20 else ''}; the folders found: {named}. Name the "
            "folders after the classes, or drop --labels-from-dirs."
        )
    log.warning(
        "--labels-from-dirs: %d of %d files got a label; the folders that name no class of the "
        "model: %s (their files have no label and count in no accuracy)",
        len(labels) - len(unlabelled),
        len(labels),
        named,
    )


def preflight(cfg: PredictConfig) -> Preflight:
    """Every check that needs no cluster: config, model, inputs, output. Runs before Ray starts."""
    t0 = time.perf_counter()
    cfg.validate()
    model = load_for_prediction(cfg.model, arch=cfg.arch, image_size=cfg.image_size)
    if isinstance(model.model, OnnxModel):
        onnx_compute("cpu", cfg.precision)  # refuses a precision onnxruntime cannot compute in
    stream = streamed_input(cfg.input)  # a prefix listed while classifying: not listed here
    stream = None if stream and holds_shards(stream) else stream  # shards: their keys first
    listed = (None, None, None, 0, None) if stream else listed_inputs(cfg, model.classes)
    files, relpaths, labels, skipped, shards = listed
    held = holder_of(cfg.output)
    if held is not None:  # before saying the folder holds results: another job writes them
        raise busy(storage.join(cfg.output, LOCK_FILE), held)
    check_output(cfg.output, cfg.overwrite, cfg.resume)
    record = job_record(cfg, model.sha256)
    resuming = cfg.resume and check_resume(cfg.output, record)
    done = committed_paths(cfg.output, cfg.format) if resuming else None
    todo = still_to_do(files, done) if resuming and stream is None else None
    return Preflight(
        model,
        record,
        files,
        labels,
        relpaths,
        skipped,
        stream,
        resuming,
        todo,
        done if stream else None,  # the lister leaves them out as it lists
        time.perf_counter() - t0,
        shards,
    )


def still_to_do(files, done):
    """A mask of the ``files`` not among ``done`` (pyarrow arrays of paths)."""
    import pyarrow.compute as pc

    return pc.invert(pc.is_in(files, value_set=done))


def preflight_lines(cfg: PredictConfig, pre: Preflight) -> list[str]:
    """``--dry-run``: what this job would do, every check made, nothing started or written."""
    spec = pre.model.spec
    labels = ""
    if pre.labels is not None:
        labelled = len(pre.labels) - pre.labels.null_count
        labels = f"; {labelled} of them in folders named after a class (--labels-from-dirs)"
    classes = pre.model.classes
    onnx = " (ONNX, classified by onnxruntime)" if isinstance(pre.model.model, OnnxModel) else ""
    return [
        "[cifar] dry run: the model, inputs and output check out; nothing was started",
        f"  model:   {pre.model.path}: {spec.arch}{onnx} at {spec.input_size}x{spec.input_size}, "
        f"{len(classes)} classes ({', '.join(classes[:10])}{', ...' if len(classes) > 10 else ''})",
        f"  inputs:  {len(pre.files)} files ({pre.skipped} skipped by --extensions"
        f"{describe(pre.shards)}){labels}"
        if pre.stream is None
        else f"  inputs:  the files under {pre.stream}, listed folder by folder while they are "
        "classified",
        f"  output:  {cfg.output} ({cfg.format}, top {cfg.top_k}"
        f"{', replacing what is there' if cfg.overwrite else ''})",
        f"  actors:  {cfg.num_actors} (sized from the cluster when it runs), batch "
        f"{cfg.batch_size}, precision {cfg.precision}",
    ]
