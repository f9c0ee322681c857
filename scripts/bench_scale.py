"""A prediction job at scale, and the same job killed half-way and resumed.

    .venv/bin/python scripts/bench_scale.py [--files 1000000] [--dir /tmp/scale] [--keep]
                                            [--json bench/scale_cpu.json]

Generates ``--files`` small PNGs (16 distinct 32x32 images, in folders of 1,000), then runs
``python -m jobs.predict`` on them as a user would, each run in its own process with its own
Ray:
  (a) the whole job: listing + model load (``preflight_seconds``), Ray start-up, time to the
      first committed result file, images/s of the pipeline, wall time, the driver's peak
      memory (VmHWM of the driver process), number and size of the result files;
  (b) the same command SIGKILLed (the driver and the Ray it started) once half the rows are
      committed, then rerun with ``--resume``: rows kept, time of the resumed run, and every
      path exactly once (counted with Arrow over the output).
The generated files and outputs are deleted afterwards unless ``--keep``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from benchlib import describe, machine  # noqa: E402


def generate(root: Path, n: int) -> float:
    rng = np.random.default_rng(0)
    blobs = []
    for _ in range(16):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buf, "PNG")
        blobs.append(buf.getvalue())
    t = time.perf_counter()
    for d in range(0, n, 1000):
        folder = root / f"d{d // 1000:05d}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(d, min(n, d + 1000)):
            (folder / f"img{i:07d}.png").write_bytes(blobs[i % 16])
    return time.perf_counter() - t


class Job:
    """``python -m jobs.predict ...`` in its own process group, watched: peak memory of the
    driver, when the first result file appeared."""

    def __init__(self, args: list[str], out: Path, log: Path):
        env = {**os.environ, "PYTHONPATH": str(ROOT), "CIFAR_RAY_PROGRESS": "0"}
        self.out, self.t0 = out, time.perf_counter()
        self.log = open(log, "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "jobs.predict", *args],
            cwd=ROOT,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.peak_kb, self.first_file_s = 0, None
        self.watch = threading.Thread(target=self._watch, daemon=True)
        self.watch.start()

    def committed(self) -> int:
        return len(list(self.out.glob("part-*.parquet"))) if self.out.is_dir() else 0

    def _watch(self) -> None:
        status = Path(f"/proc/{self.proc.pid}/status")
        while self.proc.poll() is None:
            try:
                for line in status.read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        self.peak_kb = max(self.peak_kb, int(line.split()[1]))
            except OSError:
                pass
            if self.first_file_s is None and self.committed():
                self.first_file_s = time.perf_counter() - self.t0
            time.sleep(0.5)

    def wait(self) -> float:
        rc = self.proc.wait()
        self.watch.join()
        self.log.close()
        if rc != 0:
            raise SystemExit(f"the job failed (rc {rc}): see {self.log.name}")
        return time.perf_counter() - self.t0

    def kill(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self.watch.join()
        self.log.close()


def output_files(out: Path) -> dict:
    import pyarrow.parquet as pq

    parts = sorted(out.glob("part-*.parquet"))
    rows = [pq.read_metadata(p).num_rows for p in parts]
    return {
        "files": len(parts),
        "rows_per_file": [min(rows), max(rows)] if rows else None,
        "mb_per_file": round(sum(p.stat().st_size for p in parts) / max(1, len(parts)) / 2**20, 2),
    }


def distinct_paths(out: Path) -> tuple[int, int]:
    import pyarrow.compute as pc
    import pyarrow.dataset as pds

    paths = pds.dataset(out, format="parquet").to_table(columns=["path"]).column("path")
    return len(paths), pc.count_distinct(paths).as_py()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--files", type=int, default=1_000_000)
    p.add_argument("--dir", default="/tmp/cifar-ray-scale")
    p.add_argument("--rows-per-file", type=int, default=100_000, help="the job's option")
    p.add_argument("--keep", action="store_true")
    p.add_argument("--json")
    a = p.parse_args()
    root = Path(a.dir)
    if root.exists():
        shutil.rmtree(root)
    images, model = root / "images", root / "model"
    from cifar.checkpoint import model_meta, save_checkpoint
    from cifar.model import CIFAR10_CLASSES, build_model

    save_checkpoint(model, build_model(), model_meta(CIFAR10_CLASSES))
    info = machine()
    print(f"machine: {describe(info)}", flush=True)
    gen = generate(images, a.files)
    print(f"generated {a.files} files in {gen:.0f}s", flush=True)
    result: dict = {"machine": info, "files": a.files, "generate_seconds": round(gen, 1)}
    try:
        out = root / "full"
        common = ["--model", str(model), "--input", str(images)]
        common += ["--rows-per-file", str(a.rows_per_file)]
        args = [*common, "--output", str(out)]
        job = Job(args, out, root / "full.log")
        wall = job.wait()
        s = json.loads((out / "_summary.json").read_text())
        result["full"] = {
            "wall_seconds": round(wall, 1),
            "preflight_seconds": round(s["preflight_seconds"], 1),
            "ray_start_seconds": round(s["ray_start_seconds"], 1),
            "first_file_seconds": round(job.first_file_s or 0, 1),
            "pipeline_seconds": round(s["seconds"], 1),
            "images_per_s": round(s["images_per_s"]),
            "driver_peak_mb": round(job.peak_kb / 1024),
            "output": output_files(out),
            "rows_distinct": distinct_paths(out),
        }
        print("full:", json.dumps(result["full"]), flush=True)

        out = root / "killed"
        args = [*common, "--output", str(out)]
        half = max(1, a.files // a.rows_per_file // 2)
        job = Job(args, out, root / "killed.log")
        while job.committed() < half:
            if job.proc.poll() is not None:
                raise SystemExit("the job ended before it was killed")
            time.sleep(0.2)
        killed_at = time.perf_counter() - job.t0
        job.kill()
        kept = distinct_paths(out)[1]
        job = Job([*args, "--resume"], out, root / "resumed.log")
        wall = job.wait()
        s = json.loads((out / "_summary.json").read_text())
        result["killed_and_resumed"] = {
            "killed_after_seconds": round(killed_at, 1),
            "rows_committed_when_killed": kept,
            "resume_wall_seconds": round(wall, 1),
            "already_done": s["already_done"],
            "classified": s["classified"],
            "resume_pipeline_seconds": round(s["seconds"], 1),
            "resume_driver_peak_mb": round(job.peak_kb / 1024),
            "rows_distinct": distinct_paths(out),
        }
        print("killed and resumed:", json.dumps(result["killed_and_resumed"]), flush=True)
    finally:
        if not a.keep:
            shutil.rmtree(root, ignore_errors=True)
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
