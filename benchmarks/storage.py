"""What a run in object storage costs: a 2-epoch training run with --storage-path on local disk
vs in an S3 server, and the checkpoint upload itself.

    python -m benchmarks.storage [--repeats 5] [--train 10000] [--test 1000]
        [--json benchmarks/results/storage_cpu.json]

Starts moto's S3 server on loopback (the test server: no network latency, so the S3 figures
are the client's and the protocol's cost, a floor for real S3), then
  (a) persists one of the run's checkpoint folders (model.pt, meta.json, train_state.pt) the way
      Ray Train does (pyarrow.fs.copy_files from a local temporary folder) to local disk and to
      S3, --repeats times each: seconds per checkpoint;
  (b) runs `python -m jobs.train --epochs 2` on the same generated set (--train / --test
      images) with the run on local disk and in S3: the job's wall time and summary seconds.
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks.common import describe, job_env, machine, parser, run_module, write_json
from cifar.io import storage


def persist_seconds(src: str, dest_uri: str, repeats: int) -> list[float]:
    import pyarrow.fs as pafs

    fs, base = storage.fs_path(dest_uri)
    fs.create_dir(base, recursive=True)
    out = []
    for i in range(repeats):
        t = time.perf_counter()
        fs.create_dir(f"{base}/checkpoint_{i:04d}", recursive=True)
        pafs.copy_files(src, f"{base}/checkpoint_{i:04d}", destination_filesystem=fs)
        out.append(time.perf_counter() - t)
    return out


def train(data: str, storage_path: str, name: str, env: dict) -> dict:
    args = ["--data-dir", data, "--no-download", "--storage-path", storage_path, "--name", name]
    args += ["--epochs", "2", "--num-workers", "1"]
    _, wall = run_module("jobs.train", *args, env=env, timeout=900)
    s = json.loads(storage.read_text(f"{storage_path}/{name}/summary.json"))
    return {"wall_seconds": round(wall, 1), "summary_seconds": round(s["seconds"], 1)}


def measure(bucket: str, tmp: Path, n_train: int, n_test: int, repeats: int) -> dict:
    from cifar.data.synthetic import write_synthetic

    data = tmp / "data"
    write_synthetic(data, n_train=n_train, n_test=n_test, seed=0)
    env = job_env(CIFAR_RAY_CACHE=str(tmp / "cache"))
    local = train(str(data), str(tmp / "runs"), "local", env)
    s3 = train(str(data), f"{bucket}/runs", "s3", env)
    ckpt = next((tmp / "runs" / "local").glob("checkpoint_epoch_*"))
    to_disk = persist_seconds(str(ckpt), str(tmp / "persist"), repeats)
    to_s3 = persist_seconds(str(ckpt), f"{bucket}/persist", repeats)
    return {
        "checkpoint_bytes": sum(f.stat().st_size for f in ckpt.iterdir()),
        "persist_seconds": {
            "local_median": round(statistics.median(to_disk), 4),
            "s3_median": round(statistics.median(to_s3), 4),
        },
        "two_epoch_run": {"local": local, "s3": s3},
    }


def main() -> None:
    p = parser(__doc__, "storage_cpu.json")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--train", type=int, default=10000, help="generated training images")
    p.add_argument("--test", type=int, default=1000, help="generated test images")
    a = p.parse_args()
    from tests.helpers import s3server

    info = machine()
    print(f"machine: {describe(info)}", flush=True)
    server = s3server.start()
    os.environ.update(server.env())  # for this process's persist_seconds and the jobs' env
    storage.reset_filesystems()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            figures = measure(server.create_bucket("bench"), Path(tmp), a.train, a.test, a.repeats)
    finally:
        server.stop()
    result = {"s3": "moto server on loopback", **figures}
    print(json.dumps(result["persist_seconds"]), json.dumps(result["two_epoch_run"]))
    print(f"checkpoint {result['checkpoint_bytes'] / 2**20:.2f} MiB")
    write_json(a.json, info, result)


if __name__ == "__main__":
    main()
