"""Listing a prediction job's inputs on the driver: time and peak memory at scale.

    PYTHONPATH=. .venv/bin/python scripts/bench_listing.py --files 1000000 --dir /tmp/listing-1m
        [--keep] [--s3-objects 20000] [--no-s3] [--json /tmp/bench_listing.json]

Creates ``--files`` tiny files (100 bytes each, ``d0001/img_000001.png``, 1000 per folder) under
``--dir`` (reused when it already holds exactly that tree), then runs each method in a fresh
subprocess, so that each peak RSS (the child's ``ru_maxrss``) is that method's own:

  a_list_inputs        the job's code path: cifar.inputs.list_inputs([dir], None) (the sorted
                       walk; before it, rglob + resolve: 32 s, +556 MB at 1M files)
  a_list_inputs_uri    the same for file://dir, which goes through storage.list_files (pyarrow)
  b_pyarrow_selector   pyarrow LocalFileSystem + FileSelector(recursive=True), paths only
  c_stream             os.scandir depth-first walk, entries in sorted order, chunks of 10,000
                       paths as pyarrow string arrays, each dropped after use (time to first)
  d_stream_keep        the same, every chunk kept as one pyarrow ChunkedArray (a driver's hold)
  e_is_in_arrow        after d: pyarrow.compute.is_in of all paths against 900k "done" paths
  e_is_in_pyset        the same with Python objects: a set of the done paths, a list filter

The streamed order is checked against sorted() of the paths (Python's order, which is the job's):
folders sort by ``name + "/"`` so the walk's order equals that of the full path strings.

With S3 (moto's server on loopback, tests/s3server.py): uploads ``--s3-objects`` tiny objects
(boto3, 8 threads), then lists the prefix with pyarrow's FileSelector(recursive=True), with
boto3's list_objects_v2 paginator (1000 keys a page) and with list_inputs, at half and at the full
count (does the rate hold?), each in a fresh subprocess; 1M keys is extrapolated from those rates.

The local listings run on a warm page cache (the tree was just written or listed): a cold cache,
a network filesystem or a slower disk takes longer.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

PER_DIR = 1000
CHUNK = 10_000
CONTENT = b"x" * 100
MB = 1024 * 1024


def rel_name(i: int) -> str:
    return f"d{i // PER_DIR + 1:04d}/img_{i + 1:06d}.png"


# --------------------------------------------------------------------------- the tree


def marker(root: Path) -> Path:
    """Beside the tree, not in it: the job lists hidden files too."""
    return root.with_name(root.name + ".bench-tree")


def tree_ok(root: Path, n: int) -> bool:
    marker_ = marker(root)
    return marker_.is_file() and marker_.read_text() == str(n)


def create_tree(root: Path, n: int) -> float:
    """n files of 100 bytes under root; seconds taken. One process, raw os.open/write/close."""
    if root.exists():
        shutil.rmtree(root)
    t = time.perf_counter()
    root.mkdir(parents=True)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    folder = None
    for i in range(n):
        if i % PER_DIR == 0:
            folder = root / f"d{i // PER_DIR + 1:04d}"
            folder.mkdir()
            dfd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        fd = os.open(f"img_{i + 1:06d}.png", flags, 0o644, dir_fd=dfd)
        os.write(fd, CONTENT)
        os.close(fd)
        if i % PER_DIR == PER_DIR - 1 or i == n - 1:
            os.close(dfd)
    took = time.perf_counter() - t
    t = time.perf_counter()
    os.sync()  # the whole machine's dirty pages: others' too
    print(f"  created in {took:.2f}s, then sync {time.perf_counter() - t:.2f}s", flush=True)
    marker(root).write_text(str(n))
    return took


# --------------------------------------------------------------------------- streamed listing


def walk_sorted(root: str, chunk: int = CHUNK):
    """The job's walk (cifar.inputs.walk_sorted): imported here so each method's imports are
    timed in its own child process."""
    from cifar.inputs import walk_sorted as walk

    return walk(root, chunk)


def check_order() -> bool:
    """On a small tree of awkward names, walk_sorted's order is sorted() of the full paths."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        names = ["a.txt", "a/b", "a/c/d", "a-b/x", "a b/y", "A/z", "a0", "ab/q", "é/e", "a/.h"]
        names += ["b/_/1", "b/1", "b/01", "b.png", ".hidden/x", "z"]
        for n in names:
            (Path(tmp) / n).parent.mkdir(parents=True, exist_ok=True)
            (Path(tmp) / n).write_bytes(b"")
        want = sorted(f"{tmp}/{n}" for n in names)
        got = [p for c in walk_sorted(tmp, chunk=3) for p in c.to_pylist()]
        from cifar.inputs import list_inputs

        return got == want == list_inputs([tmp], None).files.to_pylist()


# --------------------------------------------------------------------------- measured methods


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


def run_method(method: str, target: str, arg: str) -> dict:
    """One method, in this (fresh) process: its result as a dict."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.fs

    from cifar import storage
    from cifar.inputs import list_inputs

    # pyarrow's first array costs ~0.15 s and ~50 MB once (its memory pool and the pandas/numpy
    # shims it loads); a job has paid it already, so it is paid here before the clock starts
    pa.array(["warm-up"], type=pa.string())
    out: dict = {"method": method}
    base = peak_mb()
    out["base_mb"] = round(base, 1)
    t = time.perf_counter()
    if method in ("a_list_inputs", "a_list_inputs_uri", "s3_list_inputs"):
        res = list_inputs([target], None)
        out["files"] = len(res.files)
        out["first"], out["last"] = res.files[0].as_py(), res.files[-1].as_py()
    elif method in ("b_pyarrow_selector", "s3_pyarrow_selector"):
        fs, p = storage.fs_path(target)
        sel = pyarrow.fs.FileSelector(p, recursive=True)
        paths = [i.path for i in fs.get_file_info(sel) if i.type == pyarrow.fs.FileType.File]
        out["files"] = len(paths)
    elif method == "s3_boto3_paginator":
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
    elif method in ("c_stream", "d_stream_keep", "e_is_in_arrow", "e_is_in_pyset"):
        kept, n, first, prev_last, ordered = [], 0, None, None, True
        for chunk in walk_sorted(target):
            if first is None:
                first = time.perf_counter() - t
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
        if method != "c_stream":
            paths = pa.chunked_array(kept, type=pa.string())
            out["arrow_nbytes_mb"] = round(paths.nbytes / MB, 1)
    elif method == "verify":
        # not a measurement: the walk's order is the job's, path for path
        job = list_inputs([target], None).files
        walked = pa.chunked_array(list(walk_sorted(target)), type=pa.string()).to_pylist()
        out["files"] = len(walked)
        out["same_as_list_inputs"] = walked == job
    else:
        raise SystemExit(f"unknown method {method}")
    out["seconds"] = round(time.perf_counter() - t, 3)
    out["peak_mb"] = round(peak_mb(), 1)
    out["rss_end_mb"] = round(rss_mb(), 1)
    out["maxrss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)

    if method.startswith("e_is_in"):
        import numpy as np

        rng = np.random.default_rng(0)
        n_done = int(len(paths) * 0.9)
        done_idx = np.sort(rng.permutation(len(paths))[:n_done])
        done = paths.take(pa.array(done_idx)).combine_chunks()  # as read back from results
        del done_idx
        before_rss = rss_mb()
        out["step_peak_reset"] = reset_peak()
        t = time.perf_counter()
        if method == "e_is_in_arrow":
            mask = pc.is_in(paths, value_set=done)
            todo = paths.filter(pc.invert(mask))
            n_todo = len(todo)
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


def in_child(method: str, target: str, arg: str = "", env: dict | None = None) -> dict:
    """run_method in a fresh interpreter: its result (JSON on the last line of stdout)."""
    cmd = [sys.executable, __file__, "--child", method, "--dir", target, "--arg", arg]
    t = time.perf_counter()
    p = subprocess.run(
        cmd, capture_output=True, text=True, env={**os.environ, **(env or {})}, check=False
    )
    if p.returncode != 0:
        raise SystemExit(f"{method} failed:\n{p.stdout}\n{p.stderr}")
    res = json.loads(p.stdout.strip().splitlines()[-1])
    res["wall_with_start_s"] = round(time.perf_counter() - t, 2)
    print(f"  {method:<22} {json.dumps(res)}", flush=True)
    return res


# --------------------------------------------------------------------------- S3


def s3_bench(n: int, local_root: Path) -> dict:
    from concurrent.futures import ThreadPoolExecutor

    from tests.s3server import start

    server = start()
    try:
        env = server.env()
        client = server.client()
        client.create_bucket(Bucket="bench")
        out: dict = {"objects": n, "runs": []}
        half = n // 2

        def put(i: int) -> None:
            client.put_object(Bucket="bench", Key=f"in/{rel_name(i)}", Body=CONTENT)

        upload_s = 0.0
        for lo, hi in ((0, half), (half, n)):
            t = time.perf_counter()
            with ThreadPoolExecutor(8) as pool:
                list(pool.map(put, range(lo, hi)))
            upload_s += time.perf_counter() - t
            print(f"  uploaded {hi} objects ({upload_s:.1f}s so far)", flush=True)
            for m in ("s3_pyarrow_selector", "s3_boto3_paginator", "s3_list_inputs") * 2:
                r = in_child(m, "s3://bench/in", env=env)
                r["objects_in_bucket"] = hi
                r["keys_per_s"] = round(r["files"] / r["seconds"])
                r["extrapolated_1m_s"] = round(1_000_000 / r["keys_per_s"], 1)
                out["runs"].append(r)
        out["upload_s"] = round(upload_s, 2)
        out["upload_objects_per_s"] = round(n / upload_s)
        return out
    finally:
        server.stop()


# --------------------------------------------------------------------------- main


def table(results: dict) -> str:
    rows = [
        f"{'method':<22} {'files':>9} {'seconds':>8} {'1st chunk':>9} "
        f"{'peak MB':>8} {'base MB':>8} {'+MB':>7}  note"
    ]
    for r in results["local"]:
        note = ""
        if "arrow_nbytes_mb" in r:
            note = f"arrow buffers {r['arrow_nbytes_mb']} MB"
        if "step_seconds" in r:
            note += (
                f"; filter 900k done: {r['step_seconds']}s, +{r['step_extra_peak_mb']} MB "
                f"over {r['step_rss_before_mb']} MB (peak {r['step_peak_mb']}), "
                f"{r['step_todo']} left"
            )
        first = f"{r['first_chunk_s']:.3f}" if "first_chunk_s" in r else "-"
        rows.append(
            f"{r['method']:<22} {r['files']:>9} {r['seconds']:>8.2f} {first:>9} "
            f"{r['peak_mb']:>8.0f} {r['base_mb']:>8.0f} {r['peak_mb'] - r['base_mb']:>7.0f}  {note}"
        )
    s3 = results.get("s3")
    if s3:
        rows.append("")
        rows.append(
            f"S3 (moto on loopback): upload {s3['objects']} objects {s3['upload_s']}s "
            f"({s3['upload_objects_per_s']}/s, 8 threads)"
        )
        rows.append(
            f"{'method':<22} {'keys':>9} {'seconds':>8} {'keys/s':>9} {'peak MB':>8} "
            f"{'1M keys s (extrapolated)':>25}"
        )
        for r in s3["runs"]:
            rows.append(
                f"{r['method']:<22} {r['files']:>9} {r['seconds']:>8.2f} {r['keys_per_s']:>9} "
                f"{r['peak_mb']:>8.0f} {r['extrapolated_1m_s']:>25}"
            )
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--files", type=int, default=1_000_000)
    ap.add_argument("--dir", default="/tmp/listing-bench")
    ap.add_argument("--keep", action="store_true", help="keep the tree afterwards")
    ap.add_argument("--s3-objects", type=int, default=20_000)
    ap.add_argument("--no-s3", action="store_true")
    ap.add_argument("--only", default="", help="comma-separated local methods to run")
    ap.add_argument("--json", default="/tmp/bench_listing.json")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--arg", default="", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(run_method(a.child, a.dir, a.arg)))
        return

    root = Path(a.dir).resolve()
    results: dict = {"files": a.files, "dir": str(root), "local": []}
    results["order_check_awkward_names"] = check_order()
    print(f"walk order == sorted() on awkward names: {results['order_check_awkward_names']}")
    if tree_ok(root, a.files):
        print(f"reusing {a.files} files in {root}", flush=True)
        results["create_s"] = None
    else:
        print(f"creating {a.files} files in {root} ...", flush=True)
        results["create_s"] = round(create_tree(root, a.files), 2)
    try:
        methods = [
            ("a_list_inputs", str(root), ""),
            ("a_list_inputs_uri", f"file://{root}", ""),
            ("b_pyarrow_selector", str(root), ""),
            ("c_stream", str(root), ""),
            ("d_stream_keep", str(root), ""),
            ("e_is_in_arrow", str(root), ""),
            ("e_is_in_pyset", str(root), ""),
        ]
        only = set(filter(None, a.only.split(",")))
        for name, target, arg in methods:
            if only and name not in only:
                continue
            results["local"].append(in_child(name, target, arg))
        if not only or "verify" in only:
            results["verify"] = in_child("verify", str(root))
        if not a.no_s3:
            print(f"S3: {a.s3_objects} objects on moto", flush=True)
            results["s3"] = s3_bench(a.s3_objects, root)
    finally:
        if not a.keep:
            shutil.rmtree(root, ignore_errors=True)
            marker(root).unlink(missing_ok=True)
    from benchlib import machine  # after the children: it imports torch and ray

    results["machine"] = machine()
    print()
    print(f"{results['machine']['cpu']}, {results['machine']['cpus']} CPUs")
    if results.get("create_s"):
        print(f"created {a.files} files in {results['create_s']}s")
    if "verify" in results:
        print(f"streamed order == list_inputs order: {results['verify']['same_as_list_inputs']}")
    print(table(results))
    Path(a.json).write_text(json.dumps(results, indent=2))
    print(f"\nwritten to {a.json}")


if __name__ == "__main__":
    main()
