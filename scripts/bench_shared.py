"""Jobs sharing one cluster: K prediction jobs one after another vs the same K submitted at once.

    scripts/cluster-up.sh --workers 1 --num-cpus 2      # or any cluster: RAY_ADDRESS
    .venv/bin/python scripts/bench_shared.py [--jobs 3] [--files 5000] [--json out.json]

Writes K folders of small PNGs and an (untrained) model, then submits K `scripts/submit.sh
predict` jobs (a) one after another, each alone on the cluster, and (b) all at once. For every
job it prints the pipeline's images/s from the job's own _summary.json, and for each way the
images/s of all K jobs together over the span from the first job's start to the last job's end
(Ray's job start/end times: submission, start-up and waiting included). Prints (b)/(a).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from benchlib import describe, machine  # noqa: E402

from cifar.checkpoint import model_meta, save_checkpoint  # noqa: E402
from cifar.model import CIFAR10_CLASSES, build_model  # noqa: E402


def write_images(folder: Path, n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / f"{i}.png")


def submit(job: str, model: Path, folder: Path, out: Path) -> None:
    args = ["scripts/submit.sh", "--no-wait", "--submission-id", job, "predict"]
    args += ["--model", str(model), "--input", str(folder), "--output", str(out)]
    subprocess.run(args, cwd=ROOT, check=True, capture_output=True, timeout=300)


def wait(client, jobs: list[str], timeout: float = 1800) -> list:
    t = time.time()
    while time.time() - t < timeout:
        infos = [client.get_job_info(j) for j in jobs]
        if all(i.status.is_terminal() for i in infos):
            bad = [j for j, i in zip(jobs, infos, strict=True) if i.status.value != "SUCCEEDED"]
            if bad:
                raise SystemExit(f"jobs failed: {bad}; see `ray job logs {bad[0]}`")
            return infos
        time.sleep(1)
    raise SystemExit(f"jobs still running after {timeout:.0f}s: {jobs}")


def measure(client, work: Path, model: Path, folders: list[Path], at_once: bool) -> dict:
    way = "at once" if at_once else "one after another"
    jobs, infos = [], []
    for k, folder in enumerate(folders):
        job = f"bench-{'once' if at_once else 'seq'}{k}-{uuid.uuid4().hex[:6]}"
        submit(job, model, folder, work / job)
        jobs.append(job)
        if not at_once:
            infos += wait(client, [job])
    if at_once:
        infos = wait(client, jobs)
    per_job = []
    for job in jobs:
        s = json.loads((work / job / "_summary.json").read_text())
        per_job.append({"job": job, "rows": s["rows"], "pipeline_images_per_s": s["images_per_s"]})
    span = (max(i.end_time for i in infos) - min(i.start_time for i in infos)) / 1000
    total = sum(j["rows"] for j in per_job)
    print(f"{way}: {len(jobs)} jobs, {total} images in {span:.1f} s = {total / span:.0f} img/s")
    for j in per_job:
        print(f"  {j['job']}: pipeline {j['pipeline_images_per_s']:.0f} img/s")
    return {"jobs": per_job, "span_s": span, "images_per_s": total / span}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--jobs", type=int, default=3)
    p.add_argument("--files", type=int, default=5000, help="PNGs per job")
    p.add_argument("--json", help="write the figures here")
    args = p.parse_args()
    os.environ.setdefault("RAY_ADDRESS", "http://127.0.0.1:8265")
    os.environ.setdefault("RAY_AUTH_MODE", "token")
    from ray.job_submission import JobSubmissionClient

    client = JobSubmissionClient(os.environ["RAY_ADDRESS"])
    info = machine()
    print(describe(info))
    with tempfile.TemporaryDirectory(prefix="bench-shared-") as tmp:
        work = Path(tmp)
        model = work / "model"
        save_checkpoint(model, build_model(), model_meta(CIFAR10_CLASSES))
        folders = [work / f"in{k}" for k in range(args.jobs)]
        for k, folder in enumerate(folders):
            write_images(folder, args.files, seed=k)
        alone = measure(client, work, model, folders, at_once=False)
        together = measure(client, work, model, folders, at_once=True)
    ratio = together["images_per_s"] / alone["images_per_s"]
    print(f"all at once / one after another, images/s of all jobs: {ratio:.2f}x")
    result = {"machine": info, "files_per_job": args.files, "alone": alone, "together": together}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
