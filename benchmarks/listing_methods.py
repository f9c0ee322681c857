"""The listing methods that ``benchmarks.listing`` measures, each run by it in a fresh
interpreter (``python -m benchmarks.listing_methods METHOD TARGET``, which prints one JSON line)
so that each peak memory is that method's own.

Nothing heavy is imported at the top: a method's imports are loaded in its own process.
"""

from __future__ import annotations

import importlib
import json
import resource
import sys
import time

CHUNK = 10_000  # paths per streamed chunk, as the job's walk yields them
MB = 1024 * 1024
# What a prediction job has loaded before it lists: loaded here before the base is read, so
# that a figure is the method's own. pyarrow's first array (its memory pool and the pandas and
# numpy shims it loads) is paid the same way.
JOB_MODULES = (
    "pyarrow",
    "pyarrow.compute",
    "pyarrow.fs",
    "cifar.io.storage",
    "cifar.predict.inputs",
)


def walk_sorted(root: str, chunk: int = CHUNK):
    """The job's walk (cifar.predict.inputs.walk_sorted)."""
    from cifar.predict.inputs import walk_sorted as walk

    return walk(root, chunk)


# --------------------------------------------------------------------------- memory


def _status_mb(key: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    return 0.0


def peak_mb() -> float:
    """This process's peak RSS: VmHWM, which begins at exec. (ru_maxrss also counts what the
    forked parent held before exec; both are recorded: see maxrss_mb.)"""
    return _status_mb("VmHWM")


def rss_mb() -> float:
    return _status_mb("VmRSS")


def reset_peak() -> bool:
    """Start VmHWM again from the current RSS (Linux 4.0+)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


# --------------------------------------------------------------------------- the methods
# Each fills ``out`` and returns the paths it kept (a pyarrow ChunkedArray) or None.


def list_inputs_method(method: str, target: str, out: dict, t0: float):
    from cifar.predict.inputs import list_inputs

    res = list_inputs([target], None)
    out["files"] = len(res.files)
    out["first"], out["last"] = res.files[0].as_py(), res.files[-1].as_py()


def selector(method: str, target: str, out: dict, t0: float):
    import pyarrow.fs

    from cifar.io import storage

    fs, p = storage.fs_path(target)
    sel = pyarrow.fs.FileSelector(p, recursive=True)
    paths = [i.path for i in fs.get_file_info(sel) if i.type == pyarrow.fs.FileType.File]
    out["files"] = len(paths)


def boto3_paginator(method: str, target: str, out: dict, t0: float):
    import boto3

    bucket, _, prefix = target.removeprefix("s3://").partition("/")
    client = boto3.client("s3")
    keys: list[str] = []
    pages = client.get_paginator("list_objects_v2").paginate(
        Bucket=bucket, Prefix=prefix.rstrip("/") + "/", PaginationConfig={"PageSize": 1000}
    )
    for page in pages:
        keys += [o["Key"] for o in page.get("Contents", [])]
    out["files"] = len(keys)


def stream(method: str, target: str, out: dict, t0: float):
    """The sorted walk chunk by chunk; every method but c_stream keeps the chunks."""
    import pyarrow as pa

    kept, n, first, prev_last, ordered = [], 0, None, None, True
    for chunk in walk_sorted(target):
        if first is None:
            first = time.perf_counter() - t0
        n += len(chunk)
        # sorted within the chunk and across chunk borders (checked outside the timing
        # would need the whole list; this costs about as much as a sort check can)
        lo = chunk[0].as_py()
        if prev_last is not None and not prev_last < lo:
            ordered = False
        prev_last = chunk[-1].as_py()
        if method != "c_stream":
            kept.append(chunk)
    out["first_chunk_s"] = round(first or 0.0, 4)
    out["files"] = n
    out["chunks"] = -(-n // CHUNK)
    out["borders_ordered"] = ordered
    if method == "c_stream":
        return None
    paths = pa.chunked_array(kept, type=pa.string())
    out["arrow_nbytes_mb"] = round(paths.nbytes / MB, 1)
    return paths


def verify(method: str, target: str, out: dict, t0: float):
    """Not a measurement: the walk's order is the job's, path for path."""
    import pyarrow as pa

    from cifar.predict.inputs import list_inputs

    job = list_inputs([target], None).files.to_pylist()
    walked = pa.chunked_array(list(walk_sorted(target)), type=pa.string()).to_pylist()
    out["files"] = len(walked)
    out["same_as_list_inputs"] = walked == job


METHODS = {
    "a_list_inputs": list_inputs_method,
    "a_list_inputs_uri": list_inputs_method,
    "s3_list_inputs": list_inputs_method,
    "b_pyarrow_selector": selector,
    "s3_pyarrow_selector": selector,
    "s3_boto3_paginator": boto3_paginator,
    "c_stream": stream,
    "d_stream_keep": stream,
    "e_is_in_arrow": stream,
    "e_is_in_pyset": stream,
    "verify": verify,
}


def filter_done(paths, method: str) -> dict:
    """After e_*: the paths a resumed job still has to classify, 90% of them done, with Arrow's
    is_in or with a Python set."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    rng = np.random.default_rng(0)
    n_done = int(len(paths) * 0.9)
    done_idx = np.sort(rng.permutation(len(paths))[:n_done])
    done = paths.take(pa.array(done_idx)).combine_chunks()  # as read back from results
    del done_idx
    before_rss = rss_mb()
    out: dict = {"step_peak_reset": reset_peak()}
    t = time.perf_counter()
    # every list stays referenced until the clock stops: freeing a million strings takes time
    if method == "e_is_in_arrow":
        mask = pc.is_in(paths, value_set=done)
        todo = paths.filter(pc.invert(mask))
    else:
        all_list = paths.to_pylist()
        done_set = set(done.to_pylist())
        todo = [p for p in all_list if p not in done_set]
    n_todo = len(todo)
    out["step_seconds"] = round(time.perf_counter() - t, 3)
    out["step_done"], out["step_todo"] = n_done, n_todo
    out["step_rss_before_mb"] = round(before_rss, 1)
    out["step_peak_mb"] = round(peak_mb(), 1)
    out["step_extra_peak_mb"] = round(peak_mb() - before_rss, 1)
    return out


def run_method(method: str, target: str) -> dict:
    """One method, in this (fresh) process: its result as a dict."""
    if method not in METHODS:
        raise SystemExit(f"unknown method {method}")
    for m in JOB_MODULES:
        importlib.import_module(m)
    import pyarrow as pa

    pa.array(["warm-up"], type=pa.string())
    out: dict = {"method": method}
    base = peak_mb()
    out["base_mb"] = round(base, 1)
    t = time.perf_counter()
    paths = METHODS[method](method, target, out, t)
    out["seconds"] = round(time.perf_counter() - t, 3)
    out["peak_mb"] = round(peak_mb(), 1)
    out["rss_end_mb"] = round(rss_mb(), 1)
    out["maxrss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    if method.startswith("e_is_in"):
        out.update(filter_done(paths, method))
    return out


if __name__ == "__main__":
    print(json.dumps(run_method(*sys.argv[1:3])))
