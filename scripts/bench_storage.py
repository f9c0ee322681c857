"""What a run in object storage costs: a 2-epoch training run with --storage-path on local disk
vs in an S3 server, and the checkpoint upload itself.

    .venv/bin/python scripts/bench_storage.py [--repeats 5] [--json bench/storage_cpu.json]

Starts moto's S3 server on loopback (the test server: no network latency, so the S3 figures
are the client's and the protocol's cost, a floor for real S3), then
  (a) persists one of the run's checkpoint folders (model.pt, meta.json, train_state.pt) the way
      Ray Train does (pyarrow.fs.copy_files from a local temporary folder) to local disk and to
      S3, --repeats times each: seconds per checkpoint;
  (b) runs `python -m jobs.train --epochs 2` on the same generated set with the run on local
      disk and in S3: the job's wall time and summary seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from benchlib import describe, machine  # noqa: E402


def persist_seconds(src: str, dest_uri: str, repeats: int) -> list[float]:
    import pyarrow.fs as pafs

    from cifar import storage

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
    cmd = [sys.executable, "-m", "jobs.train", "--data-dir", data, "--no-download"]
    cmd += ["--storage-path", storage_path, "--name", name, "--epochs", "2", "--num-workers", "1"]
    t = time.perf_counter()
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    wall = time.perf_counter() - t
    if r.returncode != 0:
        raise SystemExit(f"training failed:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
    from cifar import storage

    s = json.loads(storage.read_text(f"{storage_path}/{name}/summary.json"))
    return {"wall_seconds": round(wall, 1), "summary_seconds": round(s["seconds"], 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--json")
    a = p.parse_args()
    from cifar import storage
    from cifar.synthetic import write_synthetic
    from tests import s3server

    info = machine()
    print(f"machine: {describe(info)}", flush=True)
    server = s3server.start()
    os.environ.update(server.env())
    storage.reset_filesystems()
    bucket = server.create_bucket("bench")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS": "0"}
    result: dict = {"machine": info, "s3": "moto server on loopback"}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            data = Path(tmp) / "data"
            write_synthetic(data, n_train=10000, n_test=1000, seed=0)
            env["CIFAR_RAY_CACHE"] = str(Path(tmp) / "cache")
            local = train(str(data), str(Path(tmp) / "runs"), "local", env)
            s3 = train(str(data), f"{bucket}/runs", "s3", env)
            ckpt = next((Path(tmp) / "runs" / "local").glob("checkpoint_epoch_*"))
            size = sum(f.stat().st_size for f in ckpt.iterdir())
            to_disk = persist_seconds(str(ckpt), str(Path(tmp) / "persist"), a.repeats)
            to_s3 = persist_seconds(str(ckpt), f"{bucket}/persist", a.repeats)
        result["checkpoint_bytes"] = size
        result["persist_seconds"] = {
            "local_median": round(statistics.median(to_disk), 4),
            "s3_median": round(statistics.median(to_s3), 4),
        }
        result["two_epoch_run"] = {"local": local, "s3": s3}
        print(json.dumps(result["persist_seconds"]), json.dumps(result["two_epoch_run"]))
        print(f"checkpoint {size / 2**20:.2f} MiB")
    finally:
        server.stop()
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
