"""End to end on a real 2-node Ray cluster started with scripts/cluster-up.sh (loopback only,
token auth), jobs submitted with scripts/submit.sh, failures injected with real SIGKILLs."""

from __future__ import annotations

import ipaddress
import json
import os
import re
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


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    tmp = f"/tmp/cifar-ray-test-{os.getpid()}"  # short: Ray's unix sockets live under it
    env = dict(
        os.environ,
        CIFAR_RAY_CLUSTER_TMP=tmp,
        RAY_AUTH_MODE="token",
        RAY_ADDRESS=f"http://127.0.0.1:{DASH}",
        PYTHONUNBUFFERED="1",
    )
    env.pop("RAY_AUTH_TOKEN", None)
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
        yield {"env": env, "tmp": tmp, "work": tmp_path_factory.mktemp("cluster"), "up": out}
    finally:
        _run(["scripts/cluster-down.sh", "--port", str(PORT)], env, timeout=120)
        left = _run(
            [
                sys.executable,
                "scripts/localcluster.py",
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
    sys.path.insert(0, str(ROOT / "scripts"))
    from localcluster import cluster_processes

    found = []
    for p in cluster_processes(cluster["tmp"], GCS):
        try:
            if title in " ".join(p.cmdline()) and p.status() != "zombie":
                found.append(p)
        except Exception:
            continue
    return sorted(found, key=lambda p: p.pid)


def _restored_epoch(cluster, summary: dict) -> int:
    """The epoch a single restart continued from, as summary.json records it; the worker's
    log line saying so must be in the cluster's log files (Ray may not forward a restarted
    worker's output to the job log before the job ends)."""
    assert summary["restarts"] == 1 and len(summary["restored_from_epochs"]) == 1
    k = summary["restored_from_epochs"][0]
    line = f"restored from checkpoint of epoch {k} (restart #1); continuing at epoch {k + 1}/3"
    hits = subprocess.run(["grep", "-rlF", line, cluster["tmp"]], capture_output=True, text=True)
    assert hits.stdout.strip(), f"no log file of the cluster says: {line}"
    return k


def _wait_for(pred, timeout=300, what="condition"):
    t = time.time()
    while time.time() - t < timeout:
        v = pred()
        if v:
            return v
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def train_data(cluster):
    from cifar.synthetic import write_synthetic

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

    sys.path.insert(0, str(ROOT / "scripts"))
    from localcluster import cluster_processes

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


def test_smoke_training_and_prediction_across_two_nodes(cluster):
    runs = cluster["work"] / "runs"
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
    summary = json.loads((runs / "smoke" / "summary.json").read_text())
    assert summary["epochs_completed"] == 1 and summary["dataset"] == "synthetic"
    assert (runs / "smoke" / "checkpoint_epoch_0001" / "model.pt").is_file()
    workers = [a for a in _actors(cluster, "RayTrainWorker") if a["job_id"]]
    smoke_workers = {a["node_id"] for a in workers}
    assert len(smoke_workers) == 2, "STRICT_SPREAD put both workers on one node"

    files = _images(cluster["work"] / "imgs", 60, bad=2)
    out = cluster["work"] / "preds"
    r = _submit(
        cluster,
        "predict",
        "--model",
        str(runs / "smoke"),
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
    nodes = {a["node_id"] for a in _actors(cluster, "BatchPredictor")}
    assert len(nodes) == 2, "inference actors did not use both nodes"


def test_killed_training_worker_restores_from_last_checkpoint(cluster, train_data):
    job = f"ft-{uuid.uuid4().hex[:8]}"
    r = _submit(
        cluster,
        "--no-wait",
        "--submission-id",
        job,
        *_train_args(cluster, train_data, "ft", "--max-failures", "2", "--amp", "off"),
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    run = cluster["work"] / "runs" / "ft"
    _wait_for(lambda: _registered(run, 1), what="epoch 1's checkpoint registered")
    workers = _worker_processes(cluster, "RayTrainWorker")
    assert len(workers) == 2, "expected 2 live training worker processes"
    workers[-1].send_signal(signal.SIGKILL)  # during epoch 2 (an epoch takes seconds)
    on_disk = len(list(run.glob("checkpoint_epoch_*")))
    assert _wait_job(cluster, job) == "SUCCEEDED", _job_logs(cluster, job)[-4000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["restarts"] == 1, _job_logs(cluster, job)[-3000:]
    assert 1 <= _restored_epoch(cluster, summary) <= on_disk  # not from scratch
    assert summary["restarts"] == 1 and summary["epochs_completed"] == 3
    assert [h["epoch"] for h in summary["history"]] == [1, 2, 3]
    assert summary["best_test_accuracy"] > 0.5


def test_stopped_job_resumes_with_same_name(cluster, train_data):
    job = f"stop-{uuid.uuid4().hex[:8]}"
    args = _train_args(cluster, train_data, "stopped")
    r = _submit(cluster, "--no-wait", "--submission-id", job, *args, timeout=120)
    assert r.returncode == 0, r.stderr
    run = cluster["work"] / "runs" / "stopped"
    _wait_for(lambda: _registered(run, 1), what="epoch 1's checkpoint registered")
    _run([RAY, "job", "stop", job], cluster["env"], timeout=120, check=True)
    assert _wait_job(cluster, job) == "STOPPED"
    assert not (run / "summary.json").exists()
    on_disk = len(list(run.glob("checkpoint_epoch_*")))

    again = f"resume-{uuid.uuid4().hex[:8]}"
    r = _submit(cluster, "--submission-id", again, *args, "--resume")
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["restarts"] == 1 and [h["epoch"] for h in summary["history"]] == [1, 2, 3]
    # the latest checkpoint Ray had registered: a stop in the middle of reporting epoch k
    # can leave checkpoint k's folder written but not registered
    assert 1 <= _restored_epoch(cluster, summary) <= on_disk


@pytest.fixture(scope="module")
def untrained_model(cluster) -> Path:
    """A model directory to predict with (the job does not care whether it learned)."""
    from cifar.checkpoint import model_meta, save_checkpoint
    from cifar.model import CIFAR10_CLASSES, build_model

    d = cluster["work"] / "untrained-model"
    save_checkpoint(d, build_model(), model_meta(CIFAR10_CLASSES))
    return d


def test_killed_inference_actor_loses_and_duplicates_no_rows(cluster, untrained_model):
    files = _images(cluster["work"] / "many", 3000)
    out = cluster["work"] / "killed-preds"
    job = f"pk-{uuid.uuid4().hex[:8]}"
    r = _submit(
        cluster,
        "--no-wait",
        "--submission-id",
        job,
        "predict",
        "--model",
        str(untrained_model),
        "--input",
        str(cluster["work"] / "many"),
        "--output",
        str(out),
        "--num-actors",
        "2",
        "--batch-size",
        "16",
        "--files-per-block",
        "32",
        timeout=120,
    )
    assert r.returncode == 0, r.stderr

    # Ray Data's actor pool workers have "MapWorker" process titles (decode tasks do not)
    victims = _wait_for(lambda: _worker_processes(cluster, "MapWorker"), what="inference actor")
    time.sleep(1.0)  # let it take batches
    victims[0].send_signal(signal.SIGKILL)
    assert _job_status(cluster, job) == "RUNNING"  # the kill landed mid-job
    assert _wait_job(cluster, job) == "SUCCEEDED", _job_logs(cluster, job)[-4000:]
    paths = pq.read_table(sorted(out.glob("*.parquet"))).column("path").to_pylist()
    assert len(paths) == len(files) and set(paths) == {str(p) for p in files}
    summary = json.loads((out / "_summary.json").read_text())
    assert summary["rows"] == summary["files"] == 3000 and summary["errors"] == 0
    assert summary["ray_start_seconds"] > 0 and summary["preflight_seconds"] > 0


def test_spread_run_equals_single_node_run(cluster, train_data):
    """Workers on two nodes (STRICT_SPREAD) vs both on one node (PACK), same recipe and seed:
    the same test accuracy after every epoch."""
    runs = cluster["work"] / "runs"
    for name, placement in (("spread", "STRICT_SPREAD"), ("packed", "PACK")):
        args = _train_args(cluster, train_data, name)
        args[args.index("STRICT_SPREAD")] = placement
        r = _submit(cluster, *args)
        assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    packed = json.loads((runs / "packed" / "summary.json").read_text())
    spread_hist = json.loads((runs / "spread" / "summary.json").read_text())["history"]
    assert [h["test_accuracy"] for h in packed["history"]] == [
        h["test_accuracy"] for h in spread_hist
    ]
