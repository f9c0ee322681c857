"""A prediction job at scale, and the same job killed half-way and resumed.

    python -m benchmarks.scale [--files 1000000] [--dir /tmp/cifar-ray-scale] [--keep]
        [--rows-per-file 100000] [--json benchmarks/results/scale_cpu.json]

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

import json
import os
import shutil
import signal
import threading
import time
from pathlib import Path

from benchmarks.common import (
    describe,
    machine,
    parser,
    start_module,
    untrained_model,
    write_images,
    write_json,
)


class Job:
    """``python -m jobs.predict ...`` in its own process group, watched: peak memory of the
    driver, when the first result file appeared."""

    def __init__(self, args: list[str], out: Path, log: Path):
        self.out, self.log, self.t0 = out, log, time.perf_counter()
        self.proc = start_module("jobs.predict", *args, log=log)
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
        if rc != 0:
            raise SystemExit(f"the job failed (rc {rc}): see {self.log}")
        return time.perf_counter() - self.t0

    def kill(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self.watch.join()


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


def full_run(root: Path, common: list[str]) -> dict:
    """(a): the whole job, watched."""
    out = root / "full"
    job = Job([*common, "--output", str(out)], out, root / "full.log")
    wall = job.wait()
    s = json.loads((out / "_summary.json").read_text())
    return {
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


def killed_and_resumed(root: Path, common: list[str], half: int) -> dict:
    """(b): SIGKILL once ``half`` result files are committed, then ``--resume``."""
    out = root / "killed"
    args = [*common, "--output", str(out)]
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
    return {
        "killed_after_seconds": round(killed_at, 1),
        "rows_committed_when_killed": kept,
        "resume_wall_seconds": round(wall, 1),
        "already_done": s["already_done"],
        "classified": s["classified"],
        "resume_pipeline_seconds": round(s["seconds"], 1),
        "resume_driver_peak_mb": round(job.peak_kb / 1024),
        "rows_distinct": distinct_paths(out),
    }


def main() -> None:
    p = parser(__doc__, "scale_cpu.json")
    p.add_argument("--files", type=int, default=1_000_000)
    p.add_argument("--dir", default="/tmp/cifar-ray-scale")
    p.add_argument("--rows-per-file", type=int, default=100_000, help="the job's option")
    p.add_argument("--keep", action="store_true")
    a = p.parse_args()
    root = Path(a.dir)
    if root.exists():
        shutil.rmtree(root)
    model = untrained_model(root)
    info = machine()
    print(f"machine: {describe(info)}", flush=True)
    t = time.perf_counter()
    images = write_images(root / "images", a.files, distinct=16)
    gen = time.perf_counter() - t
    print(f"generated {a.files} files in {gen:.0f}s", flush=True)
    result: dict = {"files": a.files, "generate_seconds": round(gen, 1)}
    common = ["--model", str(model), "--input", str(images)]
    common += ["--rows-per-file", str(a.rows_per_file)]
    try:
        result["full"] = full_run(root, common)
        print("full:", json.dumps(result["full"]), flush=True)
        half = max(1, a.files // a.rows_per_file // 2)
        result["killed_and_resumed"] = killed_and_resumed(root, common, half)
        print("killed and resumed:", json.dumps(result["killed_and_resumed"]), flush=True)
    finally:
        if not a.keep:
            shutil.rmtree(root, ignore_errors=True)
    write_json(a.json, info, result)


if __name__ == "__main__":
    main()
