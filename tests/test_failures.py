"""When the world fails around a job: every failure outside the program ends it with one line
that names what failed and what to do, its own exit status, no traceback, in bounded time; what
was committed stays, and the command the line gives finishes the work with every file exactly
once. Real things only: the S3 server (behind a proxy that can go away or refuse), a refused
port, a host that does not resolve, a small tmpfs, signals sent to running jobs, two jobs on one
output folder."""

from __future__ import annotations

import json
import os
import pickle
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.dataset as pds
import pytest

from cifar.cluster.resources import RayConnectError
from cifar.cluster.watchdog import StallError
from cifar.failures import BUSY, DISK, INTERRUPTED, RAY, STORAGE, explain
from cifar.io.faults import StorageError
from cifar.io.lock import LOCK_FILE, OutputBusy
from tests.helpers.faultproxy import FaultProxy, Rule
from tests.helpers.images import write_pngs
from tests.helpers.models import save_untrained
from tests.helpers.processes import wait_until
from tests.helpers.s3server import free_port
from tests.paths import ROOT

BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A model and 1,200 small images, and the environment jobs run in."""
    root = tmp_path_factory.mktemp("world")
    model = save_untrained(root / "model")
    images = write_pngs(root / "imgs", 1200)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "AWS_"))}
    env.update(CIFAR_RAY_CACHE=str(root / "cache"), PYTHONPATH=str(ROOT))
    env["RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS"] = "0"
    return {"root": root, "model": model, "images": images, "env": env}


def run(args: list[str], env: dict[str, str], cwd: Path, timeout: float = 300):
    """(the finished command, its seconds)."""
    t0 = time.monotonic()
    r = subprocess.run(
        [str(BIN / args[0]), *args[1:]],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return r, time.monotonic() - t0


def start(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [str(BIN / args[0]), *args[1:]],
        env=env,
        cwd=cwd,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def end(job: subprocess.Popen, timeout: float = 90) -> subprocess.CompletedProcess:
    stdout, stderr = job.communicate(timeout=timeout)
    return subprocess.CompletedProcess(job.args, job.returncode, stdout, stderr)


def continued(line: str) -> list[str]:
    """The command a failure's line says continues the work."""
    return shlex.split(line.split("continue with: ", 1)[1])


def ended_with(r, code: int, pattern: str) -> str:
    """The job ended with ``code`` and one line on stderr matching ``pattern``, and printed no
    traceback anywhere; returns the line."""
    log = r.stdout + r.stderr
    assert r.returncode == code, log[-3000:]
    assert "Traceback" not in log, log[-3000:]
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith(("error:", "interrupted"))]
    assert len(lines) == 1, r.stderr[-3000:]
    import re

    assert re.search(pattern, lines[0]), lines[0]
    return lines[0]


def predict_args(world, inputs: str, out: Path, *more: str) -> list[str]:
    return [
        "cifar-predict",
        "--model",
        str(world["model"]),
        "--input",
        inputs,
        "--output",
        str(out),
        "--num-actors",
        "1",
        "--rows-per-file",
        "100",
        "--files-per-block",
        "100",
        "--batch-size",
        "50",
        *more,
    ]


def paths_in(out: Path) -> list[str]:
    return pds.dataset(out, format="parquet").to_table(columns=["path"])["path"].to_pylist()


# --------------------------------------------------------------------------- the exceptions


@pytest.mark.parametrize(
    "error",
    [
        StorageError("unreachable", "writing s3://b/k: cannot connect to http://127.0.0.1:1"),
        RayConnectError("no Ray cluster answers at RAY_ADDRESS=127.0.0.1:1"),
        OutputBusy("another job is writing /out"),
        StallError("no progress for 60 s"),
        OSError(28, "No space left on device", "/out/part-0.parquet"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_a_failure_raised_inside_a_ray_task_reaches_the_job_as_itself(error):
    """Ray pickles what a task raises: each failure must come back with its type and message,
    or the job shows a traceback and exits 1 (CI saw this for a store gone mid-write)."""
    back = pickle.loads(pickle.dumps(error))
    assert type(back) is type(error) and str(back) == str(error)
    assert explain(back) == explain(error) is not None


# --------------------------------------------------------------------------- before any work


@pytest.mark.parametrize(
    ("case", "code", "pattern", "bound"),
    [
        ("unresolvable host", STORAGE, r"cannot resolve the host of http://no-such-host", 40),
        ("refused port", STORAGE, r"cannot connect to http://127\.0\.0\.1:\d+, still failing", 60),
        ("no such bucket", STORAGE, r"the bucket 'no-such-bucket' does not exist", 30),
        ("access denied", STORAGE, r"access to '[\w-]+' was refused", 30),
        ("no Ray cluster", RAY, r"no Ray cluster answers at RAY_ADDRESS=127\.0\.0\.1:\d+", 30),
    ],
)
def test_what_cannot_be_reached_is_said_in_one_line_in_seconds(
    case, code, pattern, bound, world, s3, tmp_path
):
    server, bucket = s3
    env = {**world["env"], **server.env()}
    args = [
        "cifar-train",
        "--data-dir",
        f"{bucket}/pets",
        "--storage-path",
        f"{bucket}/runs",
        "--name",
        "pets",
        "--dry-run",
    ]
    proxy = None
    if case == "unresolvable host":
        env["AWS_ENDPOINT_URL"] = "http://no-such-host.invalid:9000"
    elif case == "refused port":
        env["AWS_ENDPOINT_URL"] = f"http://127.0.0.1:{free_port()}"
        args = predict_args(world, f"{bucket}/imgs", tmp_path / "out")
    elif case == "no such bucket":
        args = predict_args(world, "s3://no-such-bucket/imgs", tmp_path / "out")
    elif case == "access denied":
        proxy = FaultProxy(server.endpoint, [Rule(".", always=True, mode="403")]).start()
        env["AWS_ENDPOINT_URL"] = proxy.endpoint
    else:
        env["RAY_ADDRESS"] = f"127.0.0.1:{free_port()}"
        args = ["cifar-train", "--smoke-test", "--storage-path", str(tmp_path / "runs")]
    try:
        r, took = run(args, env, tmp_path)
    finally:
        if proxy is not None:
            proxy.stop()
    line = ended_with(r, code, pattern)
    assert "To fix:" in line and took < bound, (took, line)


# --------------------------------------------------------------------------- during the work


@pytest.mark.ray
def test_sigterm_busy_output_resume_and_nothing_left(world, tmp_path):
    """A prediction job SIGTERMed part-way (as `ray job stop` stops one) keeps what it
    committed and says how to continue; while it runs, a second job on its output is refused
    with who holds it; the command it gave finishes with every file once; run once more, it has
    nothing left to do and starts no Ray."""
    out = tmp_path / "out"
    images = write_pngs(tmp_path / "many", 4000)  # enough to be part-way when the signal comes
    args = predict_args(world, str(tmp_path / "many"), out, "--batch-size", "20")
    job = start(args, world["env"], tmp_path)
    wait_until(lambda: list(out.glob("part-*.parquet")), 120, "a result file", job)
    holder = json.loads((out / LOCK_FILE).read_text())
    second, took = run([*args, "--resume"], world["env"], tmp_path)
    ended_with(second, BUSY, rf"being written by another job: pid {job.pid} on ")
    assert took < 30 and holder["pid"] == job.pid

    job.send_signal(signal.SIGTERM)
    line = ended_with(end(job), INTERRUPTED, r"^interrupted \(SIGTERM\)\. \d+ result rows")
    kept = paths_in(out)
    assert f"{len(kept)} result rows committed in {out} are kept" in line
    assert 0 < len(kept) < len(images) and not (out / LOCK_FILE).exists()
    again = continued(line)
    assert again[-1] == "--resume"

    resumed, _ = run(again, world["env"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"({len(kept)} of them kept from the stopped run)" in resumed.stdout
    assert sorted(paths_in(out)) == images  # each exactly once

    nothing, took = run(again, world["env"], tmp_path)
    assert nothing.returncode == 0 and "Traceback" not in nothing.stderr
    assert "nothing left to do: all 4000 files already have their row" in nothing.stdout
    assert "Ray not started" in nothing.stdout and "ray" not in nothing.stderr.lower()
    assert took < 20 and sorted(paths_in(out)) == images


@pytest.mark.ray
def test_a_full_disk_keeps_what_was_committed(world, tmp_path):
    """The output on a 48 KiB tmpfs: the job stops when it is full, with how many rows are safe
    and the command to continue; with room again, that command finishes the job."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mount = ["mount", "-t", "tmpfs", "-o", "size=48k", "tmpfs", str(disk)]
    if subprocess.run(mount, capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        out = disk / "out"
        full, _ = run(predict_args(world, str(world["root"] / "imgs"), out), world["env"], tmp_path)
        line = ended_with(full, DISK, r"the disk is full\. To fix: free some space")
        kept = paths_in(out)
        assert 0 < len(kept) < 1200 and f"{len(kept)} result rows committed" in line
        subprocess.run(["mount", "-o", "remount,size=8m", str(disk)], check=True)
        resumed, _ = run(continued(line), world["env"], tmp_path)
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        assert sorted(paths_in(out)) == sorted(world["images"])
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)


@pytest.mark.ray
def test_a_store_that_goes_away_mid_job_ends_it_and_the_rows_stay(world, s3, tmp_path):
    """Results written to S3 through an endpoint that goes away once the first result files are
    committed: the job ends within a minute naming the endpoint; back again, the command it gave
    finishes with every file once."""
    server, bucket = s3
    proxy = FaultProxy(server.endpoint, delay_s=0.1).start()  # a slow store: time to go away
    port = int(proxy.endpoint.rsplit(":", 1)[1])
    env = {**world["env"], **server.env(proxy.endpoint)}
    out = f"{bucket}/preds"
    args = predict_args(world, str(world["root"] / "imgs"), out)  # type: ignore[arg-type]
    job = start(args, env, tmp_path)
    try:
        wait_until(
            lambda: [k for k in server.keys(out) if k.startswith("part-")],
            120,
            "a result file",
            job,
        )
        proxy.stop()
        gone = time.monotonic()
        line = ended_with(end(job, 120), STORAGE, rf"cannot connect to http://127\.0\.0\.1:{port}")
        took = time.monotonic() - gone
        kept = [k for k in server.keys(out) if k.startswith("part-")]
        assert took < 90 and f"files committed in {out} are kept" in line, (took, line)
        proxy.start(port)
        resumed, _ = run(continued(line), env, tmp_path)
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        assert set(kept) <= set(server.keys(out))  # what was committed stayed
        assert sorted(paths_in_s3(out, env)) == world["images"]  # each file exactly once
    finally:
        proxy.stop()


def paths_in_s3(uri: str, env: dict[str, str]) -> list[str]:
    r = subprocess.run(
        [
            sys.executable,
            "-c",
            f"import sys, pandas as pd; print('\\n'.join(pd.read_parquet({uri!r}).path))",
        ],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return r.stdout.split()


@pytest.mark.ray
def test_an_interrupted_training_run_names_its_last_checkpoint(world, tmp_path, ray_session):
    """Ctrl-C (SIGINT) part-way through training: exit 130, the last checkpoint named, and the
    command that continues the run, which names it. Another Ray runs on this machine meanwhile
    (``ray_session``, as another job's would): Ray Train's clean-up must still find its own."""
    from cifar.data.synthetic import write_folders

    write_folders(tmp_path / "pets", 300, 60, num_classes=3, seed=1)
    args = [
        "cifar-train",
        "--data-dir",
        "pets",
        "--epochs",
        "40",
        "--storage-path",
        "runs",
        "--name",
        "p",
        "--batch-size",
        "32",
    ]
    job = start(args, world["env"], tmp_path)
    wait_until(
        lambda: list((tmp_path / "runs/p").glob("checkpoint_epoch_*/model.pt")),
        180,
        "a checkpoint",
        job,
    )
    job.send_signal(signal.SIGINT)
    line = ended_with(end(job), INTERRUPTED, r"^interrupted \(SIGINT\)\. Run 'p': its last ")
    last = line.split("its last checkpoint is ", 1)[1].split(";")[0]
    assert Path(last, "model.pt").is_file() and Path(last, "train_state.pt").is_file()
    assert line.endswith("continue it with: cifar-train " + shlex.join([*args[1:], "--resume"]))
