"""A real S3-protocol server on loopback for the tests: moto's server in a subprocess.

Clients reach it through the standard AWS environment (``AWS_ENDPOINT_URL`` and dummy
credentials), exactly as they reach AWS: nothing in the project knows it is a test server.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass

SECRET_KEY = "testing-secret-key-4b1d"  # a marker: must never appear in outputs or logs


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"nothing listens on 127.0.0.1:{port} after {timeout}s"
                ) from None
            time.sleep(0.1)


@dataclass
class S3Server:
    endpoint: str
    process: subprocess.Popen

    def env(self, endpoint: str | None = None) -> dict[str, str]:
        """The environment a client needs: endpoint, region and (dummy) credentials."""
        return {
            "AWS_ENDPOINT_URL": endpoint or self.endpoint,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",  # no instance-profile lookups on loopback
        }

    def client(self):
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id="testing",
            aws_secret_access_key=SECRET_KEY,
            region_name="us-east-1",
        )

    def create_bucket(self, name: str) -> str:
        self.client().create_bucket(Bucket=name)
        return f"s3://{name}"

    def upload_dir(self, local, uri: str) -> None:
        """Copy the local folder ``local`` to ``s3://bucket/prefix`` (``uri``), recursively."""
        from pathlib import Path

        bucket, _, prefix = uri.removeprefix("s3://").partition("/")
        c = self.client()
        for p in sorted(Path(local).rglob("*")):
            if p.is_file():
                key = f"{prefix.rstrip('/')}/{p.relative_to(local).as_posix()}".lstrip("/")
                c.upload_file(str(p), bucket, key)

    def keys(self, uri: str) -> list[str]:
        """Every key under ``s3://bucket/prefix``, relative to the prefix, sorted."""
        bucket, _, prefix = uri.removeprefix("s3://").partition("/")
        prefix = prefix.rstrip("/") + "/" if prefix else ""
        out = []
        for page in (
            self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        ):
            out += [o["Key"][len(prefix) :] for o in page.get("Contents", [])]
        return sorted(out)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()


def start(log_path=None) -> S3Server:
    port = free_port()
    log = open(log_path, "wb") if log_path else subprocess.DEVNULL  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "MOTO_ALLOW_NONEXISTENT_REGION": "true"},
    )
    wait_port(port)
    return S3Server(f"http://127.0.0.1:{port}", proc)
