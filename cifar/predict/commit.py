"""The prediction output folder as a commit log: result files appear whole or not at all, and a
killed job can be resumed from what it committed.

    OUT/part-<digest>.parquet   committed results (about --rows-per-file rows each)
    OUT/_job.json               what the job is (model fingerprint, inputs, format): a resume
                                must be the same job
    OUT/_tmp/                   files being written (local folders): renamed into OUT when whole

A result file is written under ``_tmp/`` and renamed into the folder (one atomic rename on a
local file system); on object storage it is uploaded under its final name, where it becomes
visible only once the upload completes (a single PUT, or a multipart upload completed at the
end). Its name is a digest of the paths it holds, so a write task that Ray retries after the
rename writes the same file again instead of a second copy. Readers that list the folder skip
``_``-prefixed names (pandas, pyarrow, Ray Data, DuckDB globs): they never see a half-written
file.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from cifar.config import ConfigError
from cifar.io import storage
from cifar.io.lock import LOCK_FILE
from cifar.predict.formats import SCHEMA_VERSION, get_format, is_result_file

JOB_FILE = "_job.json"
TMP_DIR = "_tmp"
PART_PREFIX = "part-"
ROWS_PER_FILE = 100_000
# what must match for a resume to continue a job: the rows it kept would otherwise be another
# job's (other inputs, another model) or another shape (format, top-k, labels)
JOB_KEYS = (
    "input",
    "extensions",
    "labels_from_dirs",
    "format",
    "top_k",
    "probs",
    "model_sha256",
    "arch",
    "image_size",
)
# what a _job.json written before a key existed meant by leaving it out
EARLIER = {"probs": False, "arch": None, "image_size": None}


def job_record(cfg: Any, model_sha256: str) -> dict[str, Any]:
    from cifar.predict.inputs import wanted_extensions

    return {
        "input": [storage.absolute(i).rstrip("/") or "/" for i in cfg.input],
        "extensions": sorted(set(wanted_extensions(cfg.extensions))) if cfg.extensions else None,
        "labels_from_dirs": cfg.labels_from_dirs,
        "format": cfg.format,
        "top_k": cfg.top_k,
        "probs": cfg.probs,
        "model": storage.absolute(cfg.model),
        "model_sha256": model_sha256,
        "arch": getattr(cfg, "arch", None),
        "image_size": getattr(cfg, "image_size", None),
        "schema_version": SCHEMA_VERSION,
    }


def _local(output: str) -> bool:
    """A folder on this machine's file system (a path or a file:// URI): commit by rename."""
    return not storage.is_uri(output) or output.startswith("file://")


def check_resume(output: str, record: dict[str, Any]) -> bool:
    """True if ``output`` holds a job to resume (it must be this job: else ConfigError); False
    if there is nothing there yet."""
    path = storage.join(output, JOB_FILE)
    if not storage.exists(path):
        if storage.is_dir(output) and storage.has_entries(output):
            raise ConfigError(
                f"--resume: {output} is not empty but holds no {JOB_FILE} (results of an older "
                "version, of another program, or not results at all), so nothing there can be "
                "resumed and nothing was touched. Choose another --output, or pass --overwrite "
                "(instead of --resume) to replace what is there."
            )
        return False
    saved = json.loads(storage.read_text(path))
    changed = [k for k in JOB_KEYS if saved.get(k, EARLIER.get(k)) != record.get(k)]
    if changed:
        what = "; ".join(
            f"{'model (its weights)' if k == 'model_sha256' else '--' + k.replace('_', '-')}: "
            f"{_short(saved.get(k))} -> {_short(record.get(k))}"
            for k in changed
        )
        raise ConfigError(
            f"--resume: {output} holds results of another job ({what}). A resume reruns the "
            "same command: pass the same --model and --input flags, or pass --overwrite to "
            "start again, or choose another --output."
        )
    return True


def _short(v: Any) -> str:
    s = json.dumps(v)
    return s if len(s) <= 80 else s[:38] + "..." + s[-38:]


def start(output: str, record: dict[str, Any], resume: bool) -> None:
    """Make the output folder ready: emptied for a new job (or --overwrite), its unfinished
    files dropped for a resume; then the job record."""
    if resume:
        if _local(output):
            storage.clear_dir(storage.join(output, TMP_DIR))
    else:
        storage.clear_dir(output, keep=(LOCK_FILE,))
    storage.write_text(storage.join(output, JOB_FILE), json.dumps(record, indent=2))


def finish(output: str) -> None:
    """Drop the (now empty) folder of unfinished files."""
    if _local(output):
        tmp = Path(storage.absolute(output).removeprefix("file://")) / TMP_DIR
        if tmp.is_dir() and not any(tmp.iterdir()):
            tmp.rmdir()


def committed_files(output: str, fmt: str) -> list[str]:
    """The result files in ``output`` (relative names), not side files or unfinished ones."""
    return [e.rel for e in storage.list_files(output) if is_result_file(e.rel, fmt)]


def committed_paths(output: str, fmt: str):
    """The ``path`` column of every committed result (a pyarrow array, no Python objects)."""
    import pyarrow as pa

    from cifar.predict.formats import read_results

    if not storage.is_dir(output) or not committed_files(output, fmt):
        return pa.array([], pa.string())
    table = read_results(output, fmt, columns=["path"])
    return table.column("path").combine_chunks()


def committed_rows(output: str, fmt: str) -> int:
    """How many result rows are committed in ``output``."""
    return len(committed_paths(output, fmt))


def digest(paths) -> str:
    """A name for the rows of these paths: the same rows, the same name."""
    h = hashlib.sha1()
    for p in paths.to_pylist():
        h.update(p.encode() + b"\0")
    return h.hexdigest()[:20]


def commit(output: str, name: str, data: bytes) -> None:
    """Put ``data`` at ``output/name`` whole or not at all."""
    if not _local(output):
        storage.write_bytes(storage.join(output, name), data)  # visible once complete
        return
    out = Path(storage.absolute(output).removeprefix("file://"))
    tmp = out / TMP_DIR / f"{name}.{uuid.uuid4().hex[:8]}"
    tmp.parent.mkdir(parents=True, exist_ok=True)
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, out / name)


def make_sink(output: str, fmt: str, schema, rows_per_file: int):
    """A Ray Data datasink writing ``schema`` rows in files of about ``rows_per_file`` rows,
    each committed whole."""
    import pyarrow as pa
    from ray.data import Datasink

    form = get_format(fmt)

    class ResultSink(Datasink):
        @property
        def min_rows_per_write(self) -> int:
            return rows_per_file

        def get_name(self) -> str:
            return "WriteResults"

        def write(self, blocks: Iterable, ctx) -> dict[str, Any]:
            tables = [pa.table(b) if not isinstance(b, pa.Table) else b for b in blocks]
            tables = [t.select(schema.names).cast(schema) for t in tables if t.num_rows]
            if not tables:
                return {"files": [], "rows": 0}
            table = pa.concat_tables(tables).combine_chunks()
            # Ray Data hands over at least rows_per_file rows, in whole blocks: a bundle of
            # several files' worth is cut into files of about rows_per_file rows each
            n = max(1, table.num_rows // rows_per_file)
            size = -(-table.num_rows // n)
            names = []
            for i in range(0, table.num_rows, size):
                part = table.slice(i, size)
                digest_ = digest(part.column("path").combine_chunks())
                names.append(f"{PART_PREFIX}{digest_}{form.suffix}")
                commit(output, names[-1], form.serialize(part))
            return {"files": names, "rows": table.num_rows}

    return ResultSink()
