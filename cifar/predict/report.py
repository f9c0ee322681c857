"""What a finished prediction job reports: ``_summary.json`` (counts, seconds, the model, a
class histogram; accuracy and a confusion matrix for labelled inputs) and the side files beside
the results (confusion matrix CSV/PNG, per-class table, preview sheet)."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import threading
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from cifar.io import storage
from cifar.predict.preflight import Preflight

progress = logging.getLogger("cifar.progress")

# Side files start with "_", like Spark's _SUCCESS: pandas, pyarrow, Ray Data and DuckDB
# globs over the output folder skip them and read only the results.
SUMMARY_FILE = "_summary.json"
CONFUSION_CSV = "_confusion_matrix.csv"
CONFUSION_PNG = "_confusion_matrix.png"
PER_CLASS_CSV = "_per_class.csv"
PREVIEW_PNG = "_preview.png"


def job_summary(
    table,
    config: dict[str, Any],
    files: int,
    skipped: int,
    seconds: float,
    model_meta: dict[str, Any],
    **extra: Any,
) -> dict[str, Any]:
    """What ``summary.json`` says about a finished job. ``extra``: the seconds reported apart
    from the pipeline's (``preflight_seconds``, ``ray_start_seconds``), the part of the
    pipeline's seconds spent waiting for resources before any actor was placed
    (``waited_seconds``), the ``compute`` the actors used."""
    import pyarrow.compute as pc

    errors = table.column("error")
    failed = table.filter(pc.is_valid(errors)).slice(0, 20)
    counts = pc.value_counts(table.column("class_name").drop_null())
    histogram = {v["values"]: v["counts"] for v in counts.to_pylist()}
    predicted = errors.null_count
    summary: dict[str, Any] = {
        "files": files,
        "rows": table.num_rows,
        "predicted": predicted,
        "errors": table.num_rows - predicted,
        "skipped": skipped,
        "seconds": seconds,
        # of the files this run classified (a resumed run: not the ones it kept)
        "images_per_s": extra.get("classified", files) / seconds if seconds > 0 else None,
        **extra,
        "input": ", ".join(config["input"] or []),
        "output": config["output"],
        "format": config["format"],
        "model": config["model"],
        "model_meta": {k: v for k, v in model_meta.items() if k != "config"},
        "class_histogram": dict(sorted(histogram.items())),
        "error_examples": [
            {"path": p, "error": e}
            for p, e in zip(
                failed.column("path").to_pylist(), failed.column("error").to_pylist(), strict=True
            )
        ],
    }
    if config["labels_from_dirs"]:
        summary.update(accuracy_and_confusion(table, list(model_meta["classes"])))
    summary["config"] = config
    return summary


def accuracy_and_confusion(table, classes: list[str]) -> dict[str, Any]:
    """Accuracy and confusion matrix over the rows with a label and a prediction."""
    import pyarrow.compute as pc

    ok = table.filter(pc.and_(pc.is_valid(table.column("label")), pc.is_null(table["error"])))
    pairs = ok.group_by(["label", "class_name"]).aggregate([("label", "count")]).to_pylist()
    idx = {c: i for i, c in enumerate(classes)}
    confusion = [[0] * len(classes) for _ in classes]
    for p in pairs:
        confusion[idx[p["label"]]][idx[p["class_name"]]] += p["label_count"]
    right = sum(confusion[i][i] for i in range(len(classes)))
    return {
        "labelled": ok.num_rows,
        "accuracy": right / ok.num_rows if ok.num_rows else None,
        "confusion_matrix": {"classes": classes, "rows_true_cols_pred": confusion},
    }


def write_side_files(
    output: str,
    summary: dict[str, Any],
    preview: bytes | None,
    written: Sequence[str] = (),
    note: str = "",
) -> list[str]:
    """``_summary.json`` and, for labelled inputs, the confusion matrix (CSV and PNG) and the
    per-class table; the preview sheet if there is one. Returns the names of the side files
    (``written``: those already there)."""
    from cifar.plots import confusion_png, per_class_csv

    base = output.rstrip("/")
    files: dict[str, bytes] = {}
    if summary.get("confusion_matrix") and summary.get("labelled"):
        cm = summary["confusion_matrix"]
        classes, matrix = cm["classes"], cm["rows_true_cols_pred"]
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["true \\ predicted", *classes])
        w.writerows([c, *row] for c, row in zip(classes, matrix, strict=True))
        files[CONFUSION_CSV] = buf.getvalue().encode()
        title = f"{note}predictions on {summary['input']}"
        files[CONFUSION_PNG] = confusion_png(matrix, classes, title)
        files[PER_CLASS_CSV] = per_class_csv(matrix, classes)
    if preview is not None:
        files[PREVIEW_PNG] = preview
    summary["side_files"] = [SUMMARY_FILE, *written, *files]
    files[SUMMARY_FILE] = json.dumps(summary, indent=2, default=str).encode()
    for name, data in files.items():
        storage.write_bytes(f"{base}/{name}", data)
    return summary["side_files"]


def preview_sample(table, n: int) -> list[dict[str, Any]]:
    """Up to ``n`` classified rows to look at, taken from the predicted classes in turn (each
    class's rows by path) so every class shows; with labels, the wrong predictions first."""
    import pyarrow.compute as pc

    ok = table.filter(pc.is_null(table["error"]))
    parts = [ok]
    if "label" in ok.column_names:
        wrong = pc.fill_null(pc.not_equal(ok["label"], ok["class_name"]), False)
        parts = [ok.filter(wrong), ok.filter(pc.invert(wrong))]
    picked: list[dict[str, Any]] = []
    for part in parts:
        pools = [
            part.filter(pc.equal(part["class_name"], c)).sort_by("path").slice(0, n).to_pylist()
            for c in sorted(pc.unique(part["class_name"]).to_pylist())
        ]
        picked += [pool[i] for i in range(n) for pool in pools if i < len(pool)]
    return picked[:n]


def preview_png(table, n: int, size: int = 64, note: str = "", load=None) -> bytes | None:
    """A contact sheet of :func:`preview_sample`'s rows with class and confidence, and the
    folder's label where there is one; ``note`` goes into the title (e.g. GENERATED data).
    ``load(paths, size)``: the images of rows that are not files (shard samples)."""
    from cifar.io.images import load_image_file
    from cifar.plots import image_grid_png

    rows = preview_sample(table, n)
    if not rows:
        return None
    paths = [r["path"] for r in rows]
    images = load(paths, size) if load else np.stack([load_image_file(p, size) for p in paths])
    captions = []
    for r in rows:
        name = r["path"].rstrip("/").rsplit("/", 1)[-1]
        label = f"true: {r['label']}\n" if r.get("label") else ""
        name = name if len(name) <= 22 else f"..{name[-20:]}"  # a shard's #key is at the end
        captions.append(f"{name}\n{label}{r['class_name']} {r['confidence']:.2f}")
    wrong = " (wrong ones first)" if any(r.get("label") for r in rows) else ""
    title = f"{note}{len(rows)} predictions across the predicted classes{wrong}"
    return image_grid_png(images, captions, title)


class RowProgress:
    """While a job runs: every ``every`` seconds one line of how many files have their rows
    committed (of ``total`` to do, when known), at what rate, and about how long is left.
    For logs that are not a terminal, where Ray Data's progress bars would print a block of
    ten lines instead."""

    def __init__(self, output: str, fmt: str, total: int | None, every: float) -> None:
        self.output, self.fmt, self.total, self.every = output, fmt, total, every
        self.counted: dict[str, int] = {}  # result file -> its rows, each file read once
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cifar-progress", daemon=True)

    def __enter__(self) -> RowProgress:
        self._start_rows, self._t0 = self._rows(), time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _rows(self) -> int:
        from cifar.predict.formats import count_rows, is_result_file

        with contextlib.suppress(OSError):  # a listing that fails now is tried again later
            for e in storage.list_files(self.output):
                if e.rel not in self.counted and is_result_file(e.rel, self.fmt):
                    self.counted[e.rel] = count_rows(storage.join(self.output, e.rel), self.fmt)
        return sum(self.counted.values())

    def _run(self) -> None:
        last = None
        while not self._stop.wait(self.every):
            done = self._rows() - self._start_rows
            if done == last:
                continue
            last, seconds = done, time.monotonic() - self._t0
            rate = done / seconds if seconds > 0 else 0.0
            line = f"[cifar] {done:,} files classified"
            if self.total:
                left = f", about {(self.total - done) / rate:.0f}s left" if rate > 0 else ""
                line = f"[cifar] {done:,} of {self.total:,} files classified "
                line += f"({done / self.total:.0%}), {rate:.0f} img/s{left}"
            else:
                line += f" so far, {rate:.0f} img/s"
            progress.info(line)


def check_exactly_once(table, files, n_files: int) -> None:
    """Every input file has exactly one row (rows of files that vanished since a killed run
    may remain: they are results too). ``files`` None (listed while classifying): their
    number ``n_files`` is checked."""
    import pyarrow.compute as pc

    paths = table.column("path")
    unique = pc.unique(paths)
    if files is None:
        missing = max(0, n_files - len(unique))
    else:
        missing = len(files) - (pc.sum(pc.is_in(files, value_set=unique)).as_py() or 0)
    if missing or len(unique) != len(paths):
        raise RuntimeError(
            f"{missing} of {n_files} files have no result row and {len(paths) - len(unique)} "
            f"rows repeat a path in {table.num_rows} rows: results are incomplete"
        )


def generated_note(pre: Preflight) -> str:
    """How the pictures' titles say they show generated images, or a model trained on such."""
    from cifar.data.folders import GENERATED_MARKER

    for root in pre.record["input"]:
        for folder in (root, storage.parent(root)):
            if storage.is_uri(folder) and not storage.is_dir(folder):
                continue
            if storage.exists(storage.join(folder, GENERATED_MARKER)):
                return "GENERATED images: "
    dataset = pre.model.meta.get("dataset") or {}
    if dataset.get("kind") == "synthetic" or dataset.get("generated"):
        return "model trained on GENERATED data: "
    return ""
