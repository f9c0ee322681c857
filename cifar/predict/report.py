"""What a finished prediction job reports: ``_summary.json`` (counts, seconds, the model, a
class histogram; accuracy and a confusion matrix for labelled inputs) and the side files beside
the results (confusion matrix CSV/PNG, per-class table, preview sheet)."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from typing import Any

import numpy as np

from cifar.io import storage

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
    output: str, summary: dict[str, Any], preview: bytes | None, written: Sequence[str] = ()
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
        files[CONFUSION_PNG] = confusion_png(matrix, classes, f"predictions on {summary['input']}")
        files[PER_CLASS_CSV] = per_class_csv(matrix, classes)
    if preview is not None:
        files[PREVIEW_PNG] = preview
    summary["side_files"] = [SUMMARY_FILE, *written, *files]
    files[SUMMARY_FILE] = json.dumps(summary, indent=2, default=str).encode()
    for name, data in files.items():
        storage.write_bytes(f"{base}/{name}", data)
    return summary["side_files"]


def preview_png(table, n: int, size: int = 64) -> bytes | None:
    """A contact sheet of the first ``n`` classified files (by path) with class and
    confidence, and the folder's label where there is one."""
    import pyarrow.compute as pc

    from cifar.io.images import load_image_file
    from cifar.plots import image_grid_png

    rows = table.filter(pc.is_null(table["error"])).sort_by("path").slice(0, n).to_pylist()
    if not rows:
        return None
    images = np.stack([load_image_file(r["path"], size) for r in rows])
    captions = []
    for r in rows:
        name = r["path"].rstrip("/").rsplit("/", 1)[-1]
        label = f"true: {r['label']}\n" if r.get("label") else ""
        captions.append(f"{name[:22]}\n{label}{r['class_name']} {r['confidence']:.2f}")
    return image_grid_png(images, captions, f"first {len(rows)} predictions (by path)")
