"""Prediction results as files: the one table of output formats (:data:`FORMATS`: suffix, how a
table is serialized, how files are read back), the typed result schema and the columns built
from probabilities. A new output format is one :class:`Format` here."""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from cifar.config import ConfigError
from cifar.io import storage
from cifar.io.faults import retrying


def _parquet(table) -> bytes:
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(table, buf, compression="snappy")
    return buf.getvalue()


def _csv(table) -> bytes:
    import pyarrow.csv as pcsv

    buf = io.BytesIO()
    pcsv.write_csv(table, buf)
    return buf.getvalue()


def _jsonl(table) -> bytes:
    return table.to_pandas().to_json(orient="records", lines=True).encode()


def _parquet_reader(schema):
    return "parquet"


def _csv_reader(schema):
    """An empty field is a null (no error, no label), as pandas reads it; typed by the schema."""
    import pyarrow.csv as pcsv
    import pyarrow.dataset as pds

    types = {} if schema is None else {n: schema.field(n).type for n in schema.names}
    options = pcsv.ConvertOptions(strings_can_be_null=True, column_types=types)
    return pds.CsvFileFormat(convert_options=options)


def _jsonl_reader(schema):
    import pyarrow.dataset as pds
    import pyarrow.json as pjson

    if schema is None:
        return "json"
    return pds.JsonFileFormat(parse_options=pjson.ParseOptions(explicit_schema=schema))


@dataclass(frozen=True)
class Format:
    """An output format: the suffix of its files, a result table -> file bytes, and the
    ``pyarrow.dataset`` format that reads the files back (given the schema they were written
    with, so every file reads alike, even one whose error column is empty)."""

    suffix: str
    serialize: Callable[[Any], bytes]
    arrow: Callable[[Any], Any]  # schema (or None) -> pyarrow.dataset file format
    lists: bool = True  # can hold a list column (--probs)
    earlier: tuple[str, ...] = ()  # suffixes earlier versions wrote, read back on --resume


FORMATS: dict[str, Format] = {
    "parquet": Format(".parquet", _parquet, _parquet_reader),
    "csv": Format(".csv", _csv, _csv_reader, lists=False),
    "jsonl": Format(".jsonl", _jsonl, _jsonl_reader, earlier=(".json",)),
}
# What the result files are, in the Parquet files' key-value metadata and in _job.json:
# 2 added relpath (and probs with --probs) to the columns of 1.
SCHEMA_VERSION = 2


def get_format(name: str) -> Format:
    """The format ``name``; an unknown one is a ConfigError, never a silent default."""
    if name not in FORMATS:
        raise ConfigError(f"unknown result format {name!r}; known: {', '.join(FORMATS)}.")
    return FORMATS[name]


def is_result_file(rel: str, fmt: str) -> bool:
    """A committed result file of format ``fmt`` (by its path relative to the output): not a
    side file or an unfinished one (anything under a ``_`` name)."""
    f = get_format(fmt)
    return rel.endswith((f.suffix, *f.earlier)) and not any(
        p.startswith("_") for p in rel.split("/")
    )


def result_schema(
    top_k: int,
    num_classes: int,
    with_label: bool,
    probs: bool = False,
    provenance: dict[str, Any] | None = None,
):
    """The output columns, typed, so every block (even one of only errors) has one schema;
    ``provenance`` (the model and the job) goes into its key-value metadata as JSON under
    ``cifar_ray``, which Parquet files keep."""
    import json

    import pyarrow as pa

    fields = [
        ("path", pa.string()),
        ("relpath", pa.string()),  # below the --input it was found under
        ("class_index", pa.int64()),
        ("class_name", pa.string()),
        ("confidence", pa.float64()),
    ]
    for j in range(1, min(top_k, num_classes) + 1):
        fields += [(f"top{j}_class", pa.string()), (f"top{j}_prob", pa.float64())]
    if probs:
        fields.append(("probs", pa.list_(pa.float32(), num_classes)))  # in the classes' order
    if with_label:
        fields.append(("label", pa.string()))
    fields.append(("error", pa.string()))
    meta = {"schema_version": SCHEMA_VERSION, **(provenance or {})}
    return pa.schema(fields, metadata={"cifar_ray": json.dumps(meta)})


def prediction_columns(
    probs: np.ndarray, ok: np.ndarray, classes: Sequence[str], top_k: int, all_probs: bool = False
) -> dict[str, Any]:
    """Result columns (pyarrow arrays) for a batch; ``probs`` has one row per ``ok`` row and the
    failed rows are null. Vectorized: building them row by row in Python cost as much as the
    forward pass of a small image."""
    import pyarrow as pa

    n, k = len(ok), min(top_k, len(classes))
    rows = np.flatnonzero(ok)
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    names = np.asarray(classes, dtype=object)
    null = ~ok

    def spread(values: np.ndarray, fill) -> np.ndarray:
        out = np.full(n, fill, dtype=values.dtype)
        out[rows] = values
        return out

    def column(j: int) -> tuple[pa.Array, pa.Array]:
        idx = order[:, j]
        name = pa.array(spread(names[idx], None), type=pa.string(), mask=null)
        prob = spread(np.take_along_axis(probs, idx[:, None], 1)[:, 0].astype(np.float64), 0.0)
        return name, pa.array(prob, type=pa.float64(), mask=null)

    tops = [column(j) for j in range(k)]
    cols: dict[str, Any] = {
        "class_index": pa.array(spread(order[:, 0].astype(np.int64), 0), mask=null),
        "class_name": tops[0][0],
        "confidence": tops[0][1],
    }
    for j, (name, prob) in enumerate(tops, start=1):
        cols[f"top{j}_class"], cols[f"top{j}_prob"] = name, prob
    if all_probs:
        # error rows: NaNs, not a null list: pyarrow 25 cannot read a null fixed-size list back
        # from Parquet ("Expected all lists to be of size=N"), and neither can its users
        flat = np.full((n, len(classes)), np.nan, dtype=np.float32)
        flat[rows] = probs
        cols["probs"] = pa.FixedSizeListArray.from_arrays(pa.array(flat.ravel()), len(classes))
    return cols


def count_rows(path: str, fmt: str) -> int:
    """The rows of one result file (Parquet: from its footer)."""
    import pyarrow.dataset as pds

    fs, p = storage.fs_path(path)
    return pds.dataset(p, format=get_format(fmt).arrow(None), filesystem=fs).count_rows()


def read_results(output: str, fmt: str, columns: list[str] | None = None, schema=None):
    """The written result files back as one pyarrow Table (side files like _summary.json and
    unfinished files under _tmp/ left out, as every reader of the folder leaves them out)."""
    import pyarrow.dataset as pds

    f = get_format(fmt)
    fs, base = storage.fs_path(output)
    files = [
        f"{base.rstrip('/')}/{e.rel}"
        for e in storage.list_files(output)
        if is_result_file(e.rel, fmt)
    ]
    if not files and schema is not None:
        return schema.empty_table().select(columns or schema.names)
    # with the schema the job wrote: else the first file decides each column's type, and an
    # error column that is empty there (null) fails on the first file that has an error
    return retrying(
        f"reading the results in {output}",
        output,
        lambda: pds.dataset(files, format=f.arrow(schema), filesystem=fs, schema=schema).to_table(
            columns=columns
        ),
    )
