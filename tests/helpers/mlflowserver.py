"""A real MLflow tracking server on loopback for the tests: ``mlflow server`` in a subprocess,
its runs in a SQLite file and its artifacts in a folder (served through it, as a team's server
serves them), both under ``root``."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tests.helpers.s3server import free_port


@dataclass
class MlflowServer:
    uri: str
    process: subprocess.Popen
    log: Path

    def client(self):
        """MLflow's client for this server, as a user would read it."""
        from mlflow import MlflowClient

        return MlflowClient(tracking_uri=self.uri)

    def wait(self, timeout: float = 120.0) -> MlflowServer:
        """This server once it answers ``/health``."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as r:
                    if r.status == 200:
                        return self
            except OSError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                tail = self.log.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"mlflow server did not start at {self.uri}:\n{tail}")
            time.sleep(0.2)

    def stop(self) -> None:
        """The server and the processes it started (a process group of their own) ended: at
        once, a test's server keeps nothing worth a graceful shutdown (seconds)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(10)


def start(root: Path) -> MlflowServer:
    """``mlflow server`` on a free loopback port, answering when this returns."""
    return launch(root).wait()


def launch(root: Path) -> MlflowServer:
    """``mlflow server`` starting on a free loopback port (:meth:`MlflowServer.wait` for it):
    a test starts Ray meanwhile."""
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = root / "mlflow-server.log"
    command = [
        str(Path(sys.executable).with_name("mlflow")),
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
        "--backend-store-uri",
        f"sqlite:///{root / 'mlflow.db'}",
        "--artifacts-destination",
        str(root / "artifacts"),
    ]
    # the server's job runner (a dozen huey processes, for GenAI jobs) is not needed here
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    return MlflowServer(f"http://127.0.0.1:{port}", proc, log)
