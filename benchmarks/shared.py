"""Jobs sharing one cluster: K prediction jobs one after another vs the same K submitted at once.

    scripts/cluster-up.sh --workers 1 --num-cpus 2      # or any cluster: RAY_ADDRESS
    python -m benchmarks.shared [--jobs 3] [--files 5000]
        [--json benchmarks/results/shared_cpu.json]

Writes K folders of small PNGs and an (untrained) model, then submits K `scripts/submit.sh
predict` jobs (a) one after another, each alone on the cluster, and (b) all at once. For every
job it prints the pipeline's images/s from the job's own _summary.json, and for each way the
images/s of all K jobs together over the span from the first job's start to the last job's end
(Ray's job start/end times: submission, start-up and waiting included). Prints (b)/(a).
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

from benchmarks.common import (
    REPO,
    describe,
    machine,
    parser,
    untrained_model,
    write_images,
    write_json,
)


def submit(job: str, model: Path, folder: Path, out: Path) -> None:
    args = ["scripts/submit.sh", "--no-wait", "--submission-id", job, "predict"]
    args += ["--model", str(model), "--input", str(folder), "--output", str(out)]
    subprocess.run(args, cwd=REPO, check=True, capture_output=True, timeout=300)


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
    p = parser(__doc__, "shared_cpu.json")
    p.add_argument("--jobs", type=int, default=3)
    p.add_argument("--files", type=int, default=5000, help="PNGs per job")
    args = p.parse_args()
    os.environ.setdefault("RAY_ADDRESS", "http://127.0.0.1:8265")
    os.environ.setdefault("RAY_AUTH_MODE", "token")
    from ray.job_submission import JobSubmissionClient

    client = JobSubmissionClient(os.environ["RAY_ADDRESS"])
    info = machine()
    print(describe(info))
    with tempfile.TemporaryDirectory(prefix="bench-shared-") as tmp:
        work = Path(tmp)
        model = untrained_model(work)
        folders = [write_images(work / f"in{k}", args.files, seed=k) for k in range(args.jobs)]
        alone = measure(client, work, model, folders, at_once=False)
        together = measure(client, work, model, folders, at_once=True)
    ratio = together["images_per_s"] / alone["images_per_s"]
    print(f"all at once / one after another, images/s of all jobs: {ratio:.2f}x")
    result = {"files_per_job": args.files, "alone": alone, "together": together}
    write_json(args.json, info, result)


if __name__ == "__main__":
    main()
