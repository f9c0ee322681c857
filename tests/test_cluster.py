"""End to end on a real 2-node Ray cluster started with scripts/cluster-up.sh (loopback only,
token auth), jobs submitted with scripts/submit.sh, failures injected with real SIGKILLs."""

from __future__ import annotations

import csv
import ipaddress
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from tests.helpers.processes import wait_until
from tests.paths import ROOT

pytestmark = [pytest.mark.ray, pytest.mark.cluster]

PORT, DASH, CLIENT = 6397, 8277, 23007
GCS = f"127.0.0.1:{PORT}"
RAY = str(Path(sys.executable).with_name("ray"))


def _run(cmd, env, timeout=600, check=False):
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise AssertionError(f"{cmd} -> {r.returncode}\n{r.stdout[-4000:]}\n{r.stderr[-4000:]}")
    return r


def _cluster_env(tmp: str, dash: int, **extra: str) -> dict[str, str]:
    """The environment of a local test cluster's scripts and nodes (token auth, its temp dir)."""
    env = dict(
        os.environ,
        CIFAR_RAY_CLUSTER_TMP=tmp,
        RAY_AUTH_MODE="token",
        RAY_ADDRESS=f"http://127.0.0.1:{dash}",
        PYTHONUNBUFFERED="1",
        **extra,
    )
    env.pop("CIFAR_RAY_CACHE", None)  # each node its own cache (cluster-up.sh)
    env.pop("RAY_AUTH_TOKEN", None)
    return env


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, s3_server):
    tmp = f"/tmp/cifar-ray-test-{os.getpid()}"  # short: Ray's unix sockets live under it
    # every node reaches the S3 server, as through an instance profile
    env = _cluster_env(tmp, DASH, **s3_server.env())
    up = [
        "scripts/cluster-up.sh",
        "--workers",
        "1",
        "--num-cpus",
        "2",
        "--port",
        str(PORT),
        "--dashboard-port",
        str(DASH),
        "--client-port",
        str(CLIENT),
    ]
    try:
        out = _run(up, env, timeout=300, check=True).stdout
        assert "token authentication on" in out and "127.0.0.1 only" in out
        again = _run(up, env, timeout=120, check=True).stdout  # idempotent
        assert "already running" in again
        work = tmp_path_factory.mktemp("cluster")
        yield {"env": env, "tmp": tmp, "work": work, "up": out, "s3": s3_server}
    finally:
        _run(["scripts/cluster-down.sh", "--port", str(PORT)], env, timeout=120)
        left = _run(
            [
                sys.executable,
                "-m",
                "jobs.local_cluster",
                "count",
                "--temp-dir",
                tmp,
                "--address",
                GCS,
            ],
            env,
            timeout=60,
        ).stdout.strip()
        assert left == "0", f"{left} Ray processes left behind"


def _submit(cluster, *args, timeout=600):
    return _run(["scripts/submit.sh", *args], cluster["env"], timeout=timeout)


def _actors(cluster, class_name):
    """Actors (alive or dead) whose class name contains ``class_name``."""
    r = _run(
        [
            RAY,
            "list",
            "actors",
            "--address",
            cluster["env"]["RAY_ADDRESS"],
            "--detail",
            "--format",
            "json",
            "--limit",
            "10000",
        ],
        cluster["env"],
        timeout=60,
        check=True,
    )
    return [a for a in json.loads(r.stdout) if class_name in a["class_name"]]


def _job_status(cluster, job_id):
    code = (
        "import sys; from ray.job_submission import JobSubmissionClient as C; "
        "print(C(sys.argv[1]).get_job_status(sys.argv[2]).value)"
    )
    r = _run(
        [sys.executable, "-c", code, cluster["env"]["RAY_ADDRESS"], job_id],
        cluster["env"],
        timeout=60,
    )
    lines = r.stdout.strip().splitlines()
    return lines[-1] if r.returncode == 0 and lines else "UNKNOWN"


def _wait_job(cluster, job_id, timeout=420, states=("SUCCEEDED", "FAILED", "STOPPED")):
    t = time.time()
    while time.time() - t < timeout:
        s = _job_status(cluster, job_id)
        if s in states:
            return s
        time.sleep(2)
    raise AssertionError(f"job {job_id} still {s} after {timeout}s")


def _job_logs(cluster, job_id):
    return _run([RAY, "job", "logs", job_id], cluster["env"], timeout=60).stdout


def _registered(run: Path, epoch: int) -> bool:
    """Ray Train has registered the checkpoint of ``epoch`` (its folder appears earlier)."""
    snap = run / "checkpoint_manager_snapshot.json"
    try:
        return f"checkpoint_epoch_{epoch:04d}" in snap.read_text()
    except OSError:
        return False


def _worker_processes(cluster, title: str):
    """Live processes of this cluster whose process title (ray::Class.method) names ``title``."""
    from jobs.local_cluster import cluster_processes

    found = []
    for p in cluster_processes(cluster["tmp"], GCS):
        try:
            if title in " ".join(p.cmdline()) and p.status() != "zombie":
                found.append(p)
        except Exception:
            continue
    return sorted(found, key=lambda p: p.pid)


def _last_on_disk(run: Path) -> int:
    """The epoch of the newest checkpoint folder (older ones are deleted: --keep-checkpoints)."""
    return max(int(p.name.rsplit("_", 1)[1]) for p in run.glob("checkpoint_epoch_*"))


def _said_restored(cluster, k: int, restart: int, epochs: int, also: str = "") -> None:
    """The worker's line saying restart ``restart`` continued from epoch ``k`` is in the job's
    output ``also`` or the cluster's log files (Ray may not forward a restarted worker's output
    to the job log before the job ends)."""
    line = f"restored from checkpoint of epoch {k} (restart #{restart}); continuing at epoch "
    line += f"{k + 1}/{epochs}"
    if line in also:
        return
    hits = subprocess.run(["grep", "-rlF", line, cluster["tmp"]], capture_output=True, text=True)
    assert hits.stdout.strip(), f"no log file of the cluster says: {line}"


@pytest.fixture(scope="module")
def train_data(cluster):
    from cifar.data.synthetic import write_synthetic

    d = cluster["work"] / "data"
    write_synthetic(d, n_train=8000, n_test=500, seed=1)  # epochs of a few seconds
    return d


def _train_args(cluster, data, name, *extra):
    return [
        "train",
        "--data-dir",
        str(data),
        "--no-download",
        "--epochs",
        "3",
        "--batch-size",
        "64",
        "--num-workers",
        "2",
        "--cpus-per-worker",
        "1",
        "--placement",
        "STRICT_SPREAD",
        "--storage-path",
        str(cluster["work"] / "runs"),
        "--name",
        name,
        "--log-every",
        "10",
        *extra,
    ]


def _images(folder: Path, n: int, bad: int = 0) -> list[Path]:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    files = []
    for i in range(n):
        p = folder / f"sub{i % 3}" / f"img {i}.png"
        p.parent.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(p)
        files.append(p)
    for i in range(bad):
        p = folder / f"broken{i}.jpg"
        p.write_bytes(b"not an image")
        files.append(p)
    return files


def test_every_server_listens_on_loopback_only(cluster):
    import psutil

    from jobs.local_cluster import cluster_processes

    pids = {p.pid for p in cluster_processes(cluster["tmp"], GCS)}
    assert len(pids) > 5
    listening = [
        c
        for c in psutil.net_connections("inet")
        if c.status == psutil.CONN_LISTEN and c.pid in pids
    ]
    assert listening, "found no listening sockets of the cluster"
    for c in listening:
        ip = ipaddress.ip_address(c.laddr.ip)
        ip = getattr(ip, "ipv4_mapped", None) or ip  # ::ffff:127.0.0.1
        assert ip.is_loopback, c


def test_the_printed_connect_line_connects_as_printed(cluster):
    line = next(s for s in cluster["up"].splitlines() if s.strip().startswith("connect:"))
    command = line.split("connect:", 1)[1].strip()
    env = {k: v for k, v in cluster["env"].items() if not k.startswith("RAY_")}
    r = subprocess.run(
        ["bash", "-c", command], cwd="/", env=env, capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "'CPU': 4.0" in r.stdout  # both nodes' CPUs: it reached this cluster


def test_connections_without_the_token_are_refused(cluster, tmp_path):
    ok = _run([RAY, "job", "list"], cluster["env"], timeout=60)
    assert ok.returncode == 0, ok.stderr
    stranger = dict(cluster["env"], HOME=str(tmp_path), RAY_AUTH_TOKEN="not-the-token")
    r = _run([RAY, "job", "list"], stranger, timeout=60)
    assert r.returncode != 0 and re.search(r"(?i)unauthori[sz]ed|authentication", r.stderr)
    r = _run(["scripts/submit.sh", "train", "--smoke-test"], stranger, timeout=60)
    assert r.returncode != 0 and re.search(r"(?i)unauthori[sz]ed|authentication", r.stderr)
    probe = f"import ray; ray.init(address='{GCS}'); print('CONNECTED')"
    r = _run(
        [sys.executable, "-c", probe],
        dict(stranger, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0"),
        timeout=90,
    )
    assert "CONNECTED" not in r.stdout and r.returncode != 0
    r = _run(
        [sys.executable, "-c", probe],
        dict(cluster["env"], RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0"),
        timeout=90,
    )
    assert "CONNECTED" in r.stdout, r.stderr[-2000:]


@pytest.fixture(scope="module")
def smoke_run(cluster) -> dict:
    """``train --smoke-test`` with its workers on both nodes (STRICT_SPREAD): its summary and
    the nodes its Ray Train workers ran on."""
    runs = cluster["work"] / "runs"
    before = {a["actor_id"] for a in _actors(cluster, "RayTrainWorker")}
    r = _submit(
        cluster,
        "train",
        "--smoke-test",
        "--placement",
        "STRICT_SPREAD",
        "--storage-path",
        str(runs),
        "--name",
        "smoke",
    )
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert "succeeded" in (r.stdout + r.stderr)
    workers = [a for a in _actors(cluster, "RayTrainWorker") if a["actor_id"] not in before]
    summary = json.loads((runs / "smoke" / "summary.json").read_text())
    return {"summary": summary, "nodes": {a["node_id"] for a in workers}, "run": runs / "smoke"}


def test_smoke_training_and_prediction_across_two_nodes(cluster, smoke_run):
    assert smoke_run["summary"]["epochs_completed"] == 1
    assert smoke_run["summary"]["dataset"] == "synthetic"
    assert (smoke_run["run"] / "checkpoint_epoch_0001" / "model.pt").is_file()
    assert len(smoke_run["nodes"]) == 2, "STRICT_SPREAD put both workers on one node"

    files = _images(cluster["work"] / "imgs", 60, bad=2)
    out = cluster["work"] / "preds"
    before = {a["actor_id"] for a in _actors(cluster, "BatchPredictor")}
    r = _submit(
        cluster,
        "predict",
        "--model",
        str(smoke_run["run"]),
        "--input",
        str(cluster["work"] / "imgs"),
        "--output",
        str(out),
        "--num-actors",
        "2",
        "--batch-size",
        "8",
        "--files-per-block",
        "8",
    )
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    table = pq.read_table(sorted(out.glob("*.parquet")))
    assert sorted(table.column("path").to_pylist()) == sorted(str(p) for p in files)
    assert table.column("error").null_count == 60
    actors = [a for a in _actors(cluster, "BatchPredictor") if a["actor_id"] not in before]
    assert len({a["node_id"] for a in actors}) == 2, "inference actors did not use both nodes"


def test_spread_run_equals_single_node_run(cluster, smoke_run):
    """The smoke run again with both workers on one node (PACK), at the precision the spread
    run chose: the same losses and test accuracy, to the bit."""
    spread = smoke_run["summary"]
    runs, compute = cluster["work"] / "runs", spread["compute"]
    layout = "--channels-last" if compute["channels_last"] else "--no-channels-last"
    r = _submit(
        cluster,
        "train",
        "--smoke-test",
        "--placement",
        "PACK",
        "--storage-path",
        str(runs),
        "--name",
        "packed",
        "--precision",
        compute["precision"],
        layout,
    )
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    packed = json.loads((runs / "packed" / "summary.json").read_text())
    keys = ("train_loss", "test_loss", "test_accuracy")
    assert [[h[k] for k in keys] for h in packed["history"]] == [
        [h[k] for k in keys] for h in spread["history"]
    ]


def test_a_sweep_through_submit_packs_trials_across_two_nodes(cluster):
    """`scripts/submit.sh tune` on the 2-node cluster: every trial's run and best/ in the
    shared storage path, trials.csv one row each; the default recipe's trial first and alone
    (as cifar-train would run it), then the other two at once."""
    runs = cluster["work"] / "runs"
    r = _submit(
        cluster,
        "tune",
        "--smoke-test",
        "--trials",
        "3",
        "--cpus-per-trial",
        "1",
        "--storage-path",
        str(runs),
        "--name",
        "sweep",
    )
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    with open(runs / "sweep" / "trials.csv") as f:
        trials = list(csv.DictReader(f))
    assert len(trials) == 3 and (runs / "sweep" / "best" / "model" / "model.pt").is_file()
    assert [t["default_recipe"] for t in trials].count("True") == 1
    results = json.loads((runs / "sweep" / "sweep.json").read_text())["results"]
    assert results["peak_trials_at_once"] == 2


def test_a_killed_worker_restarts_and_a_stopped_run_resumes_with_the_same_name(cluster, train_data):
    """A training worker SIGKILLed in epoch 2 (--max-failures 2): the run restores from its
    last checkpoint by itself. Then `ray job stop`, and the same command with --resume through
    scripts/submit.sh: it continues from its latest registered checkpoint, every epoch once."""
    job, epochs = f"ft-{uuid.uuid4().hex[:8]}", 5
    args = _train_args(cluster, train_data, "ft", "--epochs", str(epochs), "--max-failures", "2")
    args += ["--precision", "fp32"]
    r = _submit(cluster, "--no-wait", "--submission-id", job, *args, timeout=120)
    assert r.returncode == 0, r.stderr
    run = cluster["work"] / "runs" / "ft"
    wait_until(lambda: _registered(run, 1), 300, "epoch 1's checkpoint registered")
    workers = _worker_processes(cluster, "RayTrainWorker")
    assert len(workers) == 2, "expected 2 live training worker processes"
    workers[-1].send_signal(signal.SIGKILL)  # during epoch 2 (an epoch takes seconds)
    at_kill = _last_on_disk(run)
    wait_until(lambda: _registered(run, 3), 300, "epoch 3's checkpoint registered")
    _run([RAY, "job", "stop", job], cluster["env"], timeout=120, check=True)
    assert _wait_job(cluster, job) == "STOPPED", _job_logs(cluster, job)[-4000:]
    assert not (run / "summary.json").exists()
    at_stop = _last_on_disk(run)

    r = _submit(cluster, "--submission-id", f"resume-{uuid.uuid4().hex[:8]}", *args, "--resume")
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["restarts"] == 2 and summary["epochs_completed"] == epochs
    assert [h["epoch"] for h in summary["history"]] == list(range(1, epochs + 1))
    failed, stopped = summary["restored_from_epochs"]
    assert 1 <= failed <= at_kill  # the failure: not from scratch
    # the stop: the latest checkpoint Ray had registered (a stop while reporting epoch k can
    # leave checkpoint k's folder written but not registered)
    assert 3 <= stopped <= at_stop
    _said_restored(cluster, failed, 1, epochs)
    _said_restored(cluster, stopped, 2, epochs, r.stdout + r.stderr)
    assert summary["best_test_accuracy"] > 0.5


@pytest.fixture(scope="module")
def untrained_model(cluster) -> Path:
    """A model directory to predict with (the job does not care whether it learned)."""
    from tests.helpers.models import save_untrained

    d = cluster["work"] / "untrained-model"
    save_untrained(d)
    return d


def test_a_killed_inference_actor_and_a_stopped_job_lose_and_duplicate_no_rows(
    cluster, untrained_model
):
    """An inference actor SIGKILLed mid-job: Ray Data starts another and the job goes on. Then
    `ray job stop` part-way, and the same command with --resume through scripts/submit.sh:
    every file exactly once, what the stopped job committed kept."""
    files = _images(cluster["work"] / "resume-in", 4000)
    out = cluster["work"] / "resume-preds"
    args = ["predict", "--model", str(untrained_model), "--input"]
    args += [str(cluster["work"] / "resume-in"), "--output", str(out), "--rows-per-file", "250"]
    args += ["--files-per-block", "50", "--num-actors", "2", "--batch-size", "32"]
    job = f"pstop-{uuid.uuid4().hex[:8]}"
    r = _submit(cluster, "--no-wait", "--submission-id", job, *args, timeout=120)
    assert r.returncode == 0, r.stderr
    # Ray Data's actor pool workers have "MapWorker" process titles (decode tasks do not)
    victims = wait_until(lambda: _worker_processes(cluster, "MapWorker"), 300, "inference actor")
    time.sleep(1.0)  # let it take batches
    victims[0].send_signal(signal.SIGKILL)
    assert _job_status(cluster, job) == "RUNNING"  # the kill landed mid-job
    wait_until(lambda: len(list(out.glob("part-*.parquet"))) >= 2, 300, "2 result files")
    _run([RAY, "job", "stop", job], cluster["env"], timeout=120, check=True)
    assert _wait_job(cluster, job) == "STOPPED"
    assert not (out / "_summary.json").exists()
    kept = pq.read_table(sorted(out.glob("part-*.parquet")), columns=["path"]).num_rows
    assert 0 < kept < len(files)

    again = f"presume-{uuid.uuid4().hex[:8]}"
    r = _submit(cluster, "--submission-id", again, *args, "--resume")
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    paths = pq.read_table(sorted(out.glob("part-*.parquet")), columns=["path"])["path"]
    assert sorted(paths.to_pylist()) == sorted(str(p) for p in files)  # each exactly once
    summary = json.loads((out / "_summary.json").read_text())
    assert summary["already_done"] >= kept  # files committed after the count above count too
    assert summary["classified"] == len(files) - summary["already_done"] > 0
    assert summary["errors"] == 0
    assert summary["ray_start_seconds"] > 0 and summary["preflight_seconds"] > 0


def _predict_args(model: Path, folder: Path, out: Path, *extra) -> list[str]:
    return ["predict", "--model", str(model), "--input", str(folder), "--output", str(out), *extra]


def _no_wait(cluster, job_id: str, *args):
    r = _submit(cluster, "--no-wait", "--submission-id", job_id, *args, timeout=120)
    assert r.returncode == 0, r.stderr


def _paths_once(out: Path, files: list[Path]) -> None:
    paths = pq.read_table(sorted(out.glob("*.parquet"))).column("path").to_pylist()
    assert sorted(paths) == sorted(str(p) for p in files)  # every file, each exactly once


def _alive_job_actors(cluster, job_id: str, class_name: str) -> list[dict]:
    code = (
        "import sys; from ray.job_submission import JobSubmissionClient as C; "
        "print(C(sys.argv[1]).get_job_info(sys.argv[2]).job_id)"
    )
    r = _run([sys.executable, "-c", code, cluster["env"]["RAY_ADDRESS"], job_id], cluster["env"])
    ray_job = r.stdout.strip().splitlines()[-1]
    return [
        a for a in _actors(cluster, class_name) if a["job_id"] == ray_job and a["state"] != "DEAD"
    ]


def test_three_prediction_jobs_at_once_all_finish(cluster, untrained_model):
    """The deadlock this replaces: every job planned its actors from the cluster's total CPUs
    and its decode tasks waited for CPUs that the actors of all jobs held."""
    jobs = {}
    for k in range(3):
        folder = cluster["work"] / f"shared{k}"
        jobs[f"p{k}-{uuid.uuid4().hex[:8]}"] = (folder, _images(folder, 800))
    for job, (folder, _) in jobs.items():
        out = cluster["work"] / f"out-{job}"
        _no_wait(
            cluster, job, *_predict_args(untrained_model, folder, out, "--stall-timeout", "240")
        )
    for job, (_, files) in jobs.items():
        assert _wait_job(cluster, job, timeout=300) == "SUCCEEDED", _job_logs(cluster, job)[-4000:]
        _paths_once(cluster["work"] / f"out-{job}", files)


def test_prediction_waits_for_training_then_both_finish(cluster, train_data, untrained_model):
    """Training takes every CPU (2 workers x 2 CPUs); a prediction job submitted next waits,
    says what for and who holds it, and runs once the training is done."""
    runs = cluster["work"] / "runs"
    train_job, predict_job = f"tw-{uuid.uuid4().hex[:8]}", f"pw-{uuid.uuid4().hex[:8]}"
    args = _train_args(cluster, train_data, "busy", "--epochs", "2")
    args[args.index("--cpus-per-worker") + 1] = "2"
    _no_wait(cluster, train_job, *args)
    wait_until(lambda: (runs / "busy" / "heartbeat.json").exists(), 300, "training workers up")

    folder = cluster["work"] / "after-training"
    files = _images(folder, 300)
    out = cluster["work"] / "after-training-out"
    _no_wait(cluster, predict_job, *_predict_args(untrained_model, folder, out))
    assert _wait_job(cluster, train_job) == "SUCCEEDED", _job_logs(cluster, train_job)[-4000:]
    assert _wait_job(cluster, predict_job) == "SUCCEEDED", _job_logs(cluster, predict_job)[-4000:]
    log = _job_logs(cluster, predict_job)
    waited = re.search(
        r"\[cifar\] the prediction job has waited \d+s for an inference actor of "
        r"1 CPU: 0 of 4 CPUs free; held by: (.*)",
        log,
    )
    assert waited, log[-4000:]
    holder = waited.group(1)
    assert holder.startswith(f"{train_job} (python -m jobs.train") and "4 CPUs" in holder
    summary = json.loads((out / "_summary.json").read_text())
    assert summary["waited_seconds"] >= 5, summary
    assert f"{summary['waited_seconds']:.0f}s of it waiting for resources" in log
    _paths_once(out, files)


@pytest.fixture()
def blocker(cluster):
    """A job that holds all 4 CPUs of the cluster (one placement group) until stopped."""
    job = f"blocker-{uuid.uuid4().hex[:8]}"
    code = (
        "import ray, time; ray.init(); "
        "pg = ray.util.placement_group([{'CPU': 2}, {'CPU': 2}], strategy='STRICT_SPREAD'); "
        "ray.get(pg.ready()); print('HOLDING', flush=True); time.sleep(900)"
    )
    _run(
        [RAY, "job", "submit", "--no-wait", "--submission-id", job, "--", "python", "-c", code],
        cluster["env"],
        timeout=120,
        check=True,
    )
    try:
        wait_until(lambda: "HOLDING" in _job_logs(cluster, job), 120, "blocker")
        yield job
    finally:
        _run([RAY, "job", "stop", job], cluster["env"], timeout=120)
        _wait_job(cluster, job, timeout=120)


def test_jobs_that_cannot_get_resources_end_with_what_they_waited_for(
    cluster, blocker, untrained_model, train_data
):
    folder = cluster["work"] / "starved"
    _images(folder, 50)
    job = f"ps-{uuid.uuid4().hex[:8]}"
    args = _predict_args(untrained_model, folder, cluster["work"] / "starved-out")
    _no_wait(cluster, job, *args, "--stall-timeout", "20")
    train_job = f"ts-{uuid.uuid4().hex[:8]}"  # starved at the same time: they wait side by side
    _no_wait(
        cluster, train_job, *_train_args(cluster, train_data, "starved", "--stall-timeout", "20")
    )
    assert _wait_job(cluster, job, timeout=180) == "FAILED"
    log = _job_logs(cluster, job)
    assert re.search(
        r"the prediction job made no progress for 20s \(waiting for an inference actor of 1 "
        rf"CPU\): 0 of 4 CPUs free; held by: {blocker} \(python -c .*\): 4 CPUs\. Free those",
        log,
    ), log[-4000:]
    assert "Traceback" not in log, log[-4000:]  # the message, not a stack
    assert wait_until(
        lambda: not _alive_job_actors(cluster, job, "BatchPredictor"),
        60,
        "no inference actor of the ended job left",
    )

    job = train_job
    assert _wait_job(cluster, job, timeout=180) == "FAILED"
    log = _job_logs(cluster, job)
    assert "training run 'starved' has waited" in log, log[-4000:]  # said so while it waited
    assert re.search(
        r"training run 'starved' made no progress for 20s \(waiting for 2 worker\(s\) x 1 CPU\): "
        rf"0 of 4 CPUs free; held by: {blocker} ",
        log,
    ), log[-4000:]
    assert "Traceback" not in log, log[-4000:]
    assert wait_until(
        lambda: not _alive_job_actors(cluster, job, "RayTrainWorker"),
        60,
        "no training worker of the ended job left",
    )


# ----------------------------------------------------------------- elastic training

ELASTIC_PORT, ELASTIC_DASH, ELASTIC_CLIENT = 6398, 8278, 23008  # a cluster of its own
EPOCHS = 40
RAY_EPOCHS = 15  # through Ray Data an epoch takes ~3 s: 15 outlast the join (resized at epoch 4-5)


@pytest.fixture()
def one_node_cluster(tmp_path, request):
    """A cluster of one node (head only) of 1 CPU (or ``request.param``) that a test grows with
    :func:`_add_node`; stopped, every node with it, however the test ends."""
    tmp = f"/tmp/cifar-ray-elastic-{os.getpid()}"
    gcs = f"127.0.0.1:{ELASTIC_PORT}"
    env = _cluster_env(tmp, ELASTIC_DASH)
    cpus = str(getattr(request, "param", 1))
    up = ["scripts/cluster-up.sh", "--workers", "0", "--num-cpus", cpus, "--port"]
    up += [str(ELASTIC_PORT), "--dashboard-port", str(ELASTIC_DASH)]
    up += ["--client-port", str(ELASTIC_CLIENT)]
    try:
        _run(up, env, timeout=300, check=True)
        yield {"env": env, "tmp": tmp, "gcs": gcs, "work": tmp_path, "cpus": int(cpus)}
    finally:
        _run(["scripts/cluster-down.sh", "--port", str(ELASTIC_PORT)], env, timeout=120)
        count = [sys.executable, "-m", "jobs.local_cluster", "count", "--temp-dir", tmp]
        left = _run([*count, "--address", gcs], env, timeout=60).stdout.strip()
        assert left == "0", f"{left} Ray processes left behind"
        shutil.rmtree(tmp, ignore_errors=True)  # its logs: the test has read them


def _add_node(cluster, num_cpus: int) -> None:
    """Another node joins the running cluster, as scripts/cluster-up.sh starts its workers."""
    node = f"{cluster['tmp']}/node{uuid.uuid4().hex[:6]}"
    worker = [sys.executable, "-m", "jobs.local_cluster", "worker", "--address", cluster["gcs"]]
    env = {"CIFAR_RAY_CACHE": f"{node}/cache", **cluster["env"]}  # its own cache, as a machine
    _run([*worker, "--temp-dir", node, "--num-cpus", str(num_cpus)], env, 120, True)


def _epochs_with(run: Path, workers: int) -> list[int]:
    """Epochs that metrics.csv says ``workers`` workers trained."""
    try:
        rows = list(csv.DictReader((run / "metrics.csv").open()))
    except OSError:
        return []
    return [int(r["epoch"]) for r in rows if r.get("workers") == str(workers)]


@pytest.mark.parametrize(
    "one_node_cluster, loading",
    [(1, "stream"), (3, "ray")],
    ids=["stream", "ray-data"],
    indirect=["one_node_cluster"],
)
def test_elastic_run_grows_when_a_node_joins_and_evaluates_exactly(one_node_cluster, loading):
    """--num-workers 1-2 on one node: it starts with 1 worker; a second node joins after the
    first epoch, the run resizes to 2 workers from its latest checkpoint and finishes, every
    epoch evaluated on the whole test set exactly once. Ray Train sees a new node within 20 s
    (its autoscaling coordinator's tick) and --resize-interval 1 s: the epochs (about 1 s each,
    3 s through Ray Data) outlast that. ``stream``: CIFAR-format files, workers of 1 CPU on
    1-CPU nodes; ``ray``: an image folder decoded by Ray Data's tasks, workers of 2 CPUs on a
    3-CPU node joined by a 2-CPU one (one CPU left to the decode at either size)."""
    from cifar.data.synthetic import write_folders, write_synthetic

    cluster, n_test = one_node_cluster, 300
    data = cluster["work"] / "data"
    if loading == "stream":
        write_synthetic(data, n_train=1600, n_test=n_test, seed=2)
        source, epochs, node, each = ["--no-download"], EPOCHS, 1, 1
    else:
        write_folders(data, n_train=1200, n_val=n_test, num_classes=3, seed=2)
        source, epochs, node, each = ["--data-loading", "ray"], RAY_EPOCHS, 2, 2
    run, job = cluster["work"] / "runs" / "elastic", f"el-{uuid.uuid4().hex[:8]}"
    args = [
        "train",
        *("--data-dir", str(data), *source, "--epochs", str(epochs), "--batch-size", "64"),
        *("--num-workers", "1-2", "--cpus-per-worker", str(each), "--resize-interval", "1"),
        *("--max-failures", "1", "--precision", "fp32", "--name", "elastic"),
        *("--storage-path", str(run.parent)),
    ]
    t0 = time.time()
    r = _submit(cluster, "--no-wait", "--submission-id", job, *args, timeout=120)
    assert r.returncode == 0, r.stderr
    try:
        wait_until(lambda: _registered(run, 1), 180, "epoch 1's checkpoint registered")
    except AssertionError as e:
        raise AssertionError(f"{e}\n{_job_logs(cluster, job)[-4000:]}") from None
    t_join = time.time()
    _add_node(cluster, num_cpus=node)
    wait_until(lambda: _epochs_with(run, 2), 120, "an epoch trained by 2 workers")
    t_grown = time.time()
    assert _wait_job(cluster, job, timeout=240) == "SUCCEEDED", _job_logs(cluster, job)[-4000:]
    t_end = time.time()

    summary = json.loads((run / "summary.json").read_text())
    history = summary["history"]
    assert summary["num_workers"] == [1, 2] and summary["epochs_completed"] == epochs
    sizes = summary["world_sizes"]
    assert [s["workers"] for s in sizes] == [1, 2], sizes
    assert sizes[0]["epochs"][0] == 1 and sizes[-1]["epochs"][1] == epochs
    assert [h["epoch"] for h in history] == list(range(1, epochs + 1))  # none lost, none twice
    for h in history:  # the whole test set, each image once, at either size
        assert h["test_images"] == n_test
        assert h["test_accuracy"] * n_test == pytest.approx(round(h["test_accuracy"] * n_test))
    assert summary["best_test_accuracy"] > 0.5
    assert summary["restarts"] >= 1  # the resize: a restart from the latest checkpoint
    line = "with 2 workers (was 1)"
    hits = subprocess.run(["grep", "-rlF", line, cluster["tmp"]], capture_output=True, text=True)
    assert hits.stdout.strip(), f"no log file of the cluster says: {line}"
    grown = sizes[-1]["epochs"][0]
    print(
        f"elastic: node joined {t_join - t0:.1f}s after submit; first epoch of 2 workers done "
        f"{t_grown - t_join:.1f}s later; job done {t_end - t_join:.1f}s after the join; epochs "
        f"1-{grown - 1} on 1 worker, {grown}-{epochs} on 2 ({loading})"
    )


def test_object_storage_is_the_only_place_the_nodes_share(cluster, tmp_path, monkeypatch):
    """Data, run and results in the S3 server, each node its own cache: training on both nodes
    and prediction read and write only the bucket."""
    import pandas as pd

    from cifar.data.synthetic import write_folders
    from cifar.io import storage
    from tests.helpers.s3server import SECRET_KEY

    server = cluster["s3"]
    bucket = server.create_bucket("cluster-s3")
    data = write_folders(tmp_path / "pets", 240, 60, num_classes=3, seed=5)
    server.upload_dir(data, f"{bucket}/pets")
    train = ["train", "--data-dir", f"{bucket}/pets", "--storage-path", f"{bucket}/runs"]
    train += ["--name", "c1", "--epochs", "2", "--num-workers", "2", "--cpus-per-worker", "1"]
    train += ["--placement", "STRICT_SPREAD", "--batch-size", "16"]
    r = _submit(cluster, *train)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    log = r.stdout + r.stderr
    predict = ["predict", "--model", f"{bucket}/runs/c1", "--input", f"{bucket}/pets/val"]
    predict += ["--output", f"{bucket}/preds", "--num-actors", "2", "--labels-from-dirs"]
    r = _submit(cluster, *predict)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    log += r.stdout + r.stderr

    for k, v in server.env().items():
        monkeypatch.setenv(k, v)
    storage.reset_filesystems()
    summary = json.loads(storage.read_text(f"{bucket}/runs/c1/summary.json"))
    assert summary["epochs_completed"] == 2 and summary["world_sizes"][0]["workers"] == 2
    assert summary["data"]["classes"] == ["airplane", "automobile", "bird"]
    df = pd.read_parquet(f"{bucket}/preds")
    found = [p for p in (data / "val").rglob("*") if p.is_file()]
    val = sorted(f"{bucket}/pets/{p.relative_to(data).as_posix()}" for p in found)
    assert sorted(df["path"]) == val  # one row per file
    out = json.loads(storage.read_text(f"{bucket}/preds/_summary.json"))
    assert out["labelled"] == len(val) and out["errors"] == 0
    # each node fetched the model into its own cache; no node read another's
    tmp = Path(cluster["tmp"])
    copies = {
        d: list((d / "cifar-ray" / "objects").glob("*/model.pt"))
        for d in (tmp / "cache", tmp / "node1" / "cache")
    }
    assert any(copies.values()), copies
    assert not (Path.home() / "ray_results" / "c1").exists()
    assert SECRET_KEY not in log
