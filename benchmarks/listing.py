"""Listing a prediction job's inputs on the driver: time and peak memory at scale.

    python -m benchmarks.listing [--files 1000000] [--dir /tmp/listing-bench] [--keep]
        [--s3-objects 20000] [--no-s3] [--only a_list_inputs,c_stream]
        [--json benchmarks/results/listing_cpu.json]

Creates ``--files`` tiny files (100 bytes each, ``d0001/img_000001.png``, 1000 per folder) under
``--dir`` (reused when it already holds exactly that tree), then runs each method in a fresh
subprocess (benchmarks.listing_methods), so that each peak RSS is that method's own:

  a_list_inputs        the job's code path: cifar.predict.inputs.list_inputs([dir], None) (the
                       sorted walk, which replaced rglob + resolve)
  a_list_inputs_uri    the same for file://dir, which goes through storage.list_files (pyarrow)
  b_pyarrow_selector   pyarrow LocalFileSystem + FileSelector(recursive=True), paths only
  c_stream             os.scandir depth-first walk, entries in sorted order, chunks of 10,000
                       paths as pyarrow string arrays, each dropped after use (time to first)
  d_stream_keep        the same, every chunk kept as one pyarrow ChunkedArray (a driver's hold)
  e_is_in_arrow        after d: pyarrow.compute.is_in of all paths against 90% of them "done"
  e_is_in_pyset        the same with Python objects: a set of the done paths, a list filter

The streamed order is checked against sorted() of the paths (Python's order, which is the job's):
folders sort by ``name + "/"`` so the walk's order equals that of the full path strings.

With S3 (moto's server on loopback, tests.helpers.s3server): uploads ``--s3-objects`` tiny
objects (boto3, 8 threads), then lists the prefix with pyarrow's FileSelector(recursive=True),
with boto3's list_objects_v2 paginator (1000 keys a page) and with list_inputs, at half and at
the full count (does the rate hold?), each in a fresh subprocess; 1M keys is extrapolated from
those rates.

The local listings run on a warm page cache (the tree was just written or listed): a cold cache,
a network filesystem or a slower disk takes longer.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from benchmarks.common import job_env, machine, parser, run_module, write_json
from benchmarks.listing_methods import walk_sorted

PER_DIR = 1000
CONTENT = b"x" * 100
LOCAL_METHODS = (
    "a_list_inputs",
    "a_list_inputs_uri",
    "b_pyarrow_selector",
    "c_stream",
    "d_stream_keep",
    "e_is_in_arrow",
    "e_is_in_pyset",
)
S3_METHODS = ("s3_pyarrow_selector", "s3_boto3_paginator", "s3_list_inputs")


def rel_name(i: int) -> str:
    return f"d{i // PER_DIR + 1:04d}/img_{i + 1:06d}.png"


# --------------------------------------------------------------------------- the tree


def marker(root: Path) -> Path:
    """Beside the tree, not in it: the job lists hidden files too."""
    return root.with_name(root.name + ".bench-tree")


def tree_ok(root: Path, n: int) -> bool:
    return marker(root).is_file() and marker(root).read_text() == str(n)


def create_tree(root: Path, n: int) -> float:
    """n files of 100 bytes under root; seconds taken. One process, raw os.open/write/close
    (not images: a listing never opens them, and a million of them are written in seconds)."""
    if root.exists():
        shutil.rmtree(root)
    t = time.perf_counter()
    root.mkdir(parents=True)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
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


def check_order() -> bool:
    """On a small tree of awkward names, walk_sorted's order is sorted() of the full paths."""
    from cifar.predict.inputs import list_inputs

    with tempfile.TemporaryDirectory() as tmp:
        names = ["a.txt", "a/b", "a/c/d", "a-b/x", "a b/y", "A/z", "a0", "ab/q", "é/e", "a/.h"]
        names += ["b/_/1", "b/1", "b/01", "b.png", ".hidden/x", "z"]
        for n in names:
            (Path(tmp) / n).parent.mkdir(parents=True, exist_ok=True)
            (Path(tmp) / n).write_bytes(b"")
        want = sorted(f"{tmp}/{n}" for n in names)
        got = [p for c in walk_sorted(tmp, chunk=3) for p in c.to_pylist()]
        return got == want == list_inputs([tmp], None).files.to_pylist()


# --------------------------------------------------------------------------- measuring


def in_child(method: str, target: str, env: dict | None = None) -> dict:
    """One method in a fresh interpreter: its result (JSON on the last line of stdout)."""
    stdout, wall = run_module(
        "benchmarks.listing_methods", method, target, env=job_env(**(env or {}))
    )
    res = json.loads(stdout.strip().splitlines()[-1])
    res["wall_with_start_s"] = round(wall, 2)
    print(f"  {method:<22} {json.dumps(res)}", flush=True)
    return res


def s3_bench(n: int) -> dict:
    from concurrent.futures import ThreadPoolExecutor

    from tests.helpers.s3server import start

    server = start()
    try:
        client = server.client()
        client.create_bucket(Bucket="bench")
        out: dict = {"objects": n, "runs": []}

        def put(i: int) -> None:
            client.put_object(Bucket="bench", Key=f"in/{rel_name(i)}", Body=CONTENT)

        upload_s = 0.0
        for lo, hi in ((0, n // 2), (n // 2, n)):
            t = time.perf_counter()
            with ThreadPoolExecutor(8) as pool:
                list(pool.map(put, range(lo, hi)))
            upload_s += time.perf_counter() - t
            print(f"  uploaded {hi} objects ({upload_s:.1f}s so far)", flush=True)
            for m in S3_METHODS * 2:
                r = in_child(m, "s3://bench/in", env=server.env())
                r["objects_in_bucket"] = hi
                r["keys_per_s"] = round(r["files"] / r["seconds"])
                r["extrapolated_1m_s"] = round(1_000_000 / r["keys_per_s"], 1)
                out["runs"].append(r)
        out["upload_s"] = round(upload_s, 2)
        out["upload_objects_per_s"] = round(n / upload_s)
        return out
    finally:
        server.stop()


def measure(a) -> dict:
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
    only = set(filter(None, a.only.split(",")))
    try:
        for name in LOCAL_METHODS:
            if not only or name in only:
                target = f"file://{root}" if name.endswith("_uri") else str(root)
                results["local"].append(in_child(name, target))
        if not only or "verify" in only:
            results["verify"] = in_child("verify", str(root))
        if not a.no_s3:
            print(f"S3: {a.s3_objects} objects on moto", flush=True)
            results["s3"] = s3_bench(a.s3_objects)
    finally:
        if not a.keep:
            shutil.rmtree(root, ignore_errors=True)
            marker(root).unlink(missing_ok=True)
    return results


# --------------------------------------------------------------------------- report


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
                f"; filter {r['step_done']} done: {r['step_seconds']}s, "
                f"+{r['step_extra_peak_mb']} MB over {r['step_rss_before_mb']} MB "
                f"(peak {r['step_peak_mb']}), {r['step_todo']} left"
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
    p = parser(__doc__, "listing_cpu.json")
    p.add_argument("--files", type=int, default=1_000_000)
    p.add_argument("--dir", default="/tmp/listing-bench")
    p.add_argument("--keep", action="store_true", help="keep the tree afterwards")
    p.add_argument("--s3-objects", type=int, default=20_000)
    p.add_argument("--no-s3", action="store_true")
    p.add_argument("--only", default="", help="comma-separated local methods to run (or verify)")
    a = p.parse_args()
    results = measure(a)
    # only now that the children are done: it imports torch and ray, and a child's ru_maxrss
    # counts what this process held when it forked
    info = machine()
    print(f"\n{info['cpu']}, {info['cpus']} CPUs")
    if results.get("create_s"):
        print(f"created {a.files} files in {results['create_s']}s")
    if "verify" in results:
        print(f"streamed order == list_inputs order: {results['verify']['same_as_list_inputs']}")
    print(table(results))
    write_json(a.json, info, results)


if __name__ == "__main__":
    main()
