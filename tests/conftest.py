from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.paths import ROOT


@pytest.fixture(scope="session")
def synthetic_dir(tmp_path_factory) -> Path:
    """A small learnable CIFAR-format set (data_dir holding cifar-10-batches-py)."""
    from cifar.data.synthetic import write_synthetic

    d = tmp_path_factory.mktemp("synthetic")
    write_synthetic(d, n_train=2000, n_test=600, seed=3)
    return d


@pytest.fixture(scope="session")
def ray_session(tmp_path_factory, s3_server):
    """One embedded Ray runtime (loopback only) for the in-process Ray tests. Its workers reach
    the session's S3 server as a cluster's nodes reach their store: through the standard AWS
    environment, set for them (a test's monkeypatched environment reaches only this process,
    and a library call that fans out to Ray tasks would otherwise look for the real AWS)."""
    import ray

    os.environ.setdefault("RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS", "0")
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        configure_logging=False,
        runtime_env={"env_vars": s3_server.env()},
        _temp_dir=str(tmp_path_factory.mktemp("ray")),
    )
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield ray
    ray.shutdown()


@pytest.fixture()
def job_env(tmp_path) -> dict[str, str]:
    """Environment for running jobs as subprocesses, from the repo root."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT)
    env["CIFAR_RAY_CACHE"] = str(tmp_path / "cache")
    env["RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS"] = "0"
    env.pop("RAY_ADDRESS", None)
    return env


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A real S3-protocol server (moto) on loopback for the whole session."""
    from tests.helpers import s3server

    server = s3server.start(tmp_path_factory.mktemp("moto") / "moto.log")
    yield server
    server.stop()


@pytest.fixture()
def s3(s3_server, monkeypatch, request):
    """This process pointed at the S3 server through the standard AWS environment, and a fresh
    bucket for the test: yields ``(server, "s3://<bucket>")``."""
    import re

    from cifar.io import storage

    for k, v in s3_server.env().items():
        monkeypatch.setenv(k, v)
    storage.reset_filesystems()  # filesystems are cached per bucket: none from another endpoint
    name = re.sub(r"[^a-z0-9-]", "-", request.node.name.lower())[:50].strip("-")
    bucket = s3_server.create_bucket(f"t-{name}")
    yield s3_server, bucket
    storage.reset_filesystems()
