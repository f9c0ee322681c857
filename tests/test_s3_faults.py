"""Transient S3 faults: throttling (503 SlowDown), 5xx and dropped, reset or stalled connections,
injected by a proxy on loopback (tests/faultproxy.py) between our clients and the S3 server.

Reads, writes and listings get through faults that stop after a few tries; a key that keeps
failing becomes an error that names the path and the attempts, in bounded time, never a hang.
The fast tests lower the AWS SDK's tries (faults.SDK_ATTEMPTS) so that a fault outlasting
them reaches our own retries (faults.retrying) within seconds; the job test runs as shipped.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from cifar.io import faults, storage
from tests.helpers.faultproxy import FaultProxy, Rule


@pytest.fixture()
def proxy(s3, monkeypatch):
    """This process's S3 clients pointed at a fault proxy in front of the test's server:
    yields (proxy, bucket name, "s3://bucket"); add rules with ``proxy.rules.append``."""
    server, bucket = s3
    with FaultProxy(server.endpoint) as p:
        monkeypatch.setenv("AWS_ENDPOINT_URL", p.endpoint)
        storage.reset_filesystems()
        yield p, bucket.removeprefix("s3://"), bucket
    storage.reset_filesystems()


@pytest.fixture()
def sdk_tries(monkeypatch):
    """Two tries per request in the AWS SDK (its backoff then stays under a second), so a
    fault on 3 tries in a row outlasts the SDK and is retried by faults.retrying."""
    monkeypatch.setattr(faults, "SDK_ATTEMPTS", 2)
    storage.reset_filesystems()
    return 2


def _key(bucket: str, key: str, method: str = "GET") -> str:
    return f"^{method} /{re.escape(bucket)}/{re.escape(key)}(\\?|$)"


@pytest.mark.parametrize("mode", ["503", "drop"])
def test_reads_writes_listings_get_through_faults_on_the_first_tries(
    proxy, sdk_tries, mode, s3, tmp_path, monkeypatch, caplog
):
    p, name, bucket = proxy
    server = s3[0]
    monkeypatch.setenv("CIFAR_RAY_CACHE", str(tmp_path / "cache"))
    beyond = sdk_tries + 1  # more failures in a row than the SDK tries: ours must retry
    rules = {
        "put": Rule(_key(name, "d/w.bin", "PUT"), fail_first=beyond, mode=mode),
        "get": Rule(_key(name, "d/r.bin"), fail_first=beyond, mode=mode),
        "list": Rule(f"^GET /{re.escape(name)}\\?.*list-type=2", fail_first=beyond, mode=mode),
        "head": Rule(_key(name, "d/c.bin", "HEAD"), fail_first=1, mode=mode),
        "copy": Rule(_key(name, "d/c.bin"), fail_first=1, mode=mode),
    }
    p.rules.extend(rules.values())
    c = server.client()
    c.put_object(Bucket=name, Key="d/r.bin", Body=b"r" * 5000)
    c.put_object(Bucket=name, Key="d/c.bin", Body=b"c" * 7000)
    caplog.set_level("INFO", logger="cifar.io.faults")

    storage.write_bytes(f"{bucket}/d/w.bin", b"w" * 3000)
    assert c.get_object(Bucket=name, Key="d/w.bin")["Body"].read() == b"w" * 3000
    assert storage.read_bytes(f"{bucket}/d/r.bin") == b"r" * 5000
    assert [(e.rel, e.size) for e in storage.list_files(f"{bucket}/d")] == [
        ("c.bin", 7000),
        ("r.bin", 5000),
        ("w.bin", 3000),
    ]
    assert storage.local_copy(f"{bucket}/d/c.bin").read_bytes() == b"c" * 7000

    counts = {k: (r.injected, r.passed) for k, r in rules.items()}
    print(mode, counts)
    for k, r in rules.items():  # every fault happened, then the request went through
        assert r.injected == r.fail_first and r.passed >= 1, (k, r)
    again = [m for m in caplog.messages if " again in " in m]
    assert any(m.startswith(f"reading {bucket}/d/r.bin") for m in again), again
    assert any(m.startswith(f"listing {bucket}/d") for m in again), again


@pytest.mark.parametrize("mode", ["500", "reset", "truncate"])
def test_reads_get_through_5xx_resets_and_cut_bodies(proxy, sdk_tries, mode, s3):
    p, name, bucket = proxy
    s3[0].client().put_object(Bucket=name, Key="k.bin", Body=bytes(range(256)) * 40)
    rule = Rule(_key(name, "k.bin"), fail_first=sdk_tries + 1, mode=mode)
    p.rules.append(rule)
    assert storage.read_bytes(f"{bucket}/k.bin") == bytes(range(256)) * 40
    assert rule.injected == sdk_tries + 1 and rule.passed == 1


def test_a_stalled_response_fails_after_the_request_timeout_and_is_retried(
    proxy, sdk_tries, s3, monkeypatch
):
    p, name, bucket = proxy
    monkeypatch.setattr(faults, "REQUEST_TIMEOUT_S", 1.0)
    storage.reset_filesystems()
    s3[0].client().put_object(Bucket=name, Key="slow.bin", Body=b"s" * 100)
    rule = Rule(_key(name, "slow.bin"), fail_first=1, mode="stall", stall_s=30)
    p.rules.append(rule)
    t = time.monotonic()
    assert storage.read_bytes(f"{bucket}/slow.bin") == b"s" * 100
    assert time.monotonic() - t < 10 and rule.injected == 1 and rule.passed == 1


def test_a_key_that_keeps_failing_is_an_error_naming_path_and_attempts_in_bounded_time(
    proxy, sdk_tries, s3, monkeypatch
):
    """Every try counted: SDK_ATTEMPTS requests per attempt, RETRY_ATTEMPTS attempts, then an
    OSError; the decode stage of the prediction job turns it into the file's error row."""
    from cifar.io.images import decode_batch

    p, name, bucket = proxy
    s3[0].client().put_object(Bucket=name, Key="bad.png", Body=b"x" * 1000)
    s3[0].client().put_object(Bucket=name, Key="ok.png", Body=_png())
    read = Rule(_key(name, "bad.png"), always=True, mode="503")
    write = Rule(_key(name, "w.bin", "PUT"), always=True, mode="drop")
    p.rules.extend([read, write])
    bound = 30.0

    t = time.monotonic()
    with pytest.raises(OSError, match="attempts") as e:
        storage.read_bytes(f"{bucket}/bad.png")
    took = time.monotonic() - t
    print(f"read: {took:.1f}s, {read.injected} requests: {e.value}")
    assert f"reading {bucket}/bad.png: still failing after {faults.RETRY_ATTEMPTS}" in str(e.value)
    assert re.search("SLOW_DOWN|SERVICE_UNAVAILABLE", str(e.value)) and took < bound
    assert read.injected == faults.RETRY_ATTEMPTS * sdk_tries  # exactly: bounded in count

    monkeypatch.setattr(faults, "RETRY_ATTEMPTS", 2)  # the same, sooner
    t = time.monotonic()
    with pytest.raises(OSError, match="attempts") as e:
        storage.write_bytes(f"{bucket}/w.bin", b"w")
    took = time.monotonic() - t
    print(f"write: {took:.1f}s, {write.injected} requests: {e.value}")
    assert f"writing {bucket}/w.bin: still failing after 2 attempts" in str(e.value)
    assert "Empty reply from server" in str(e.value) and took < bound
    # curl tries a request once more on a fresh connection when a reused one was dropped
    assert 2 * sdk_tries <= write.injected <= 2 * 2 * sdk_tries
    assert "w.bin" not in s3[0].keys(bucket)  # nothing half-written

    monkeypatch.setattr(faults, "RETRY_ATTEMPTS", 1)
    out = decode_batch({"path": np.array([f"{bucket}/ok.png", f"{bucket}/bad.png"], object)}, 32)
    assert list(out["error"][:1]) == [""]
    assert out["error"][1].startswith(f"cannot read file: reading {bucket}/bad.png: still failing")
    assert re.search("SLOW_DOWN|SERVICE_UNAVAILABLE", out["error"][1]), out["error"][1]


def test_a_store_that_cannot_be_reached_is_no_file_s_fault(s3, monkeypatch, sdk_tries):
    """A refused endpoint is not an error row of every file read meanwhile (a --resume would
    keep those rows): the read fails as a StorageError naming the endpoint, and the job ends."""
    from cifar.io.faults import StorageError
    from cifar.io.images import decode_batch
    from tests.helpers.s3server import free_port

    monkeypatch.setattr(faults, "RETRY_ATTEMPTS", 1)
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    storage.reset_filesystems()
    _, bucket = s3
    with pytest.raises(StorageError, match=r"cannot connect to http://127\.0\.0\.1:\d+") as e:
        decode_batch({"path": np.array([f"{bucket}/a.png"], object)}, 32)
    assert e.value.kind == "unreachable" and "To fix: check that the endpoint is up" in str(e.value)


def test_the_retry_deadline_ends_retries_before_the_attempts_run_out(proxy, s3, monkeypatch):
    p, name, bucket = proxy
    monkeypatch.setattr(faults, "SDK_ATTEMPTS", 1)
    monkeypatch.setattr(faults, "RETRY_ATTEMPTS", 1000)
    monkeypatch.setattr(faults, "RETRY_DEADLINE_S", 1.0)
    storage.reset_filesystems()
    s3[0].client().put_object(Bucket=name, Key="k.bin", Body=b"k")
    rule = Rule(_key(name, "k.bin"), always=True, mode="500")
    p.rules.append(rule)
    t = time.monotonic()
    with pytest.raises(OSError, match=r"reading .*k\.bin: still failing after \d+ attempts"):
        storage.read_bytes(f"{bucket}/k.bin")
    assert time.monotonic() - t < 1.0 + 8 + 2  # the deadline, one backoff, one request
    assert 2 <= rule.injected < 10


# Messages pyarrow 26 (AWS SDK + curl) gave for each fault through the proxy
OBSERVED = [
    "AWS Error SLOW_DOWN during GetObject operation: Please reduce your request rate. "
    "(Request ID: FAULTPROXY4)",
    "When listing objects under key 'k/' in bucket 'b': AWS Error SLOW_DOWN during "
    "ListObjectsV2 operation: Please reduce your request rate. (Request ID: FAULTPROXY4)",
    "When initiating multiple part upload for key 'k/big.bin' in bucket 'b': AWS Error "
    "SLOW_DOWN during CreateMultipartUpload operation: Please reduce your request rate.",
    "When getting information for key 'k/a.bin' in bucket 'b': AWS Error UNKNOWN (HTTP status "
    "503) during HeadObject operation: No response body.",
    "AWS Error INTERNAL_FAILURE during GetObject operation: We encountered an internal error. "
    "(Request ID: FAULTPROXY4)",
    # the same 503 SlowDown, at times (its body not read?)
    "AWS Error SERVICE_UNAVAILABLE during GetObject operation: ",
    # a 503 for an object smaller than S3's error body (pyarrow reads into a buffer its size)
    "AWS Error INTERNAL_FAILURE during GetObject operation: Failed to flush response stream "
    "(eof: 0, bad: 1)",
    "AWS Error NETWORK_CONNECTION during GetObject operation: curlCode: 52, Server returned "
    "nothing (no headers, no data); Details: Empty reply from server",
    "AWS Error NETWORK_CONNECTION during GetObject operation: curlCode: 56, Failure when "
    "receiving data from the peer; Details: Recv failure: Connection reset by peer",
    "AWS Error NETWORK_CONNECTION during GetObject operation: curlCode: 18, Transferred a "
    "partial file; Details: end of response with 500 bytes missing",
    "AWS Error NETWORK_CONNECTION during GetObject operation: curlCode: 28, Timeout was "
    "reached; Details: Operation too slow. Less than 1 bytes/sec transferred the last 1 seconds",
]


def test_a_proxy_that_goes_away_cuts_the_connections_clients_keep_alive(s3):
    """What the store-gone job tests rely on: a pooled connection that worked a moment ago
    fails once the proxy stops, as when a host goes down (it did not: a job finished its
    writes through connections opened before, and passed a test that expected exit 4)."""
    import http.client

    server, bucket = s3
    proxy = FaultProxy(server.endpoint).start()
    conn = http.client.HTTPConnection("127.0.0.1", int(proxy.endpoint.rsplit(":", 1)[1]), 10)
    try:
        conn.request("HEAD", f"/{bucket.removeprefix('s3://')}")
        assert conn.getresponse().read() == b""  # kept alive (HTTP/1.1)
        proxy.stop()
        with pytest.raises((OSError, http.client.HTTPException)):
            conn.request("HEAD", f"/{bucket.removeprefix('s3://')}")
            conn.getresponse()
    finally:
        conn.close()
        proxy.stop()


@pytest.mark.parametrize("message", OBSERVED)
def test_every_observed_fault_message_is_transient(message):
    assert faults.is_transient(OSError(message))


def test_missing_keys_and_refusals_are_not_retried():
    for e in (
        FileNotFoundError("Path does not exist 'b/k'"),
        PermissionError("AWS Error ACCESS_DENIED during GetObject operation: Access Denied"),
        OSError("AWS Error NO_SUCH_BUCKET during HeadObject operation"),
    ):
        assert not faults.is_transient(e)


# --------------------------------------------------------------------------- the job


def _png(seed: int = 0) -> bytes:
    import io

    buf = io.BytesIO()
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


@pytest.mark.ray
def test_prediction_job_s3_to_s3_through_faults(s3, tmp_path, job_env):
    """200 images in a bucket; the proxy throttles the listing, several image reads and the
    first result writes, and fails one image always: every image gets exactly one row, the
    always-failing one an error row after the retries, the others none; no hang."""
    from concurrent.futures import ThreadPoolExecutor

    import pyarrow.dataset as pds

    from tests.helpers.models import save_untrained

    server, bucket = s3
    name = bucket.removeprefix("s3://")
    keys = [f"images/{i // 50}/img{i:03d}.png" for i in range(200)]
    c = server.client()
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda k: c.put_object(Bucket=name, Key=k, Body=_png(len(k))), keys))
    model = save_untrained(tmp_path / "model")

    bad = keys[123]
    flaky = {keys[3]: ("503", 2), keys[150]: ("503", 2), keys[10]: ("drop", 2)}  # SDK retries
    flaky |= {keys[40]: ("503", 5), keys[199]: ("drop", 5)}  # outlast the SDK's: ours retry
    rules = {f"{bad} always 503": Rule(_key(name, bad), always=True, mode="503")}
    for k, (m, n) in flaky.items():
        rules[f"{k} {m} x{n}"] = Rule(_key(name, k), fail_first=n, mode=m)
    rules["listing 503 x1"] = Rule(f"^GET /{re.escape(name)}\\?.*list-type=2.*prefix=images")
    rules["result writes 503 x1"] = Rule(f"^(PUT|POST) /{re.escape(name)}/preds/[^_]")

    with FaultProxy(server.endpoint, list(rules.values())) as p:
        env = {**job_env, **server.env(p.endpoint)}
        cmd = [sys.executable, "-m", "jobs.predict", "--model", str(model)]
        cmd += ["--input", f"{bucket}/images", "--output", f"{bucket}/preds"]
        cmd += ["--num-actors", "1", "--batch-size", "64", "--files-per-block", "50"]
        t = time.monotonic()
        with open(tmp_path / "job.log", "wb") as out:
            job = subprocess.Popen(
                cmd,
                cwd=tmp_path,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: the driver and its Ray
            )
            try:
                rc = job.wait(timeout=240)
            except subprocess.TimeoutExpired:
                os.killpg(job.pid, signal.SIGKILL)
                job.wait(30)
                rc = None
        took = time.monotonic() - t
        counts = {k: (f.injected, f.passed) for k, f in rules.items()}
    log = (tmp_path / "job.log").read_text(errors="replace")
    print(f"job: {took:.1f}s, rc {rc}; faults (injected, passed): {counts}")
    assert rc is not None, f"the job hung: no end in 240s\n{log[-4000:]}"
    assert rc == 0, log[-4000:]

    # read back from the bucket directly (no proxy), as a user would
    table = pds.dataset(f"{bucket}/preds", format="parquet").to_table()
    rows = table.to_pylist()
    paths = [row["path"] for row in rows]
    assert sorted(paths) == sorted(f"{bucket}/{k}" for k in keys)  # each exactly once
    errors = {row["path"]: row["error"] for row in rows if row["error"]}
    assert list(errors) == [f"{bucket}/{bad}"], errors
    print("error row:", errors[f"{bucket}/{bad}"])
    assert "still failing after" in errors[f"{bucket}/{bad}"]
    assert re.search("SLOW_DOWN|SERVICE_UNAVAILABLE", errors[f"{bucket}/{bad}"])
    summary = json.loads(storage.read_text(f"{bucket}/preds/_summary.json"))
    print({k: summary[k] for k in ("seconds", "preflight_seconds", "ray_start_seconds")})
    assert (summary["files"], summary["rows"], summary["errors"]) == (200, 200, 1)

    for rule in rules.values():  # the faults really happened
        assert rule.injected >= (1 if rule.always else rule.fail_first), rule
    always = rules[f"{bad} always 503"]
    assert always.injected == faults.RETRY_ATTEMPTS * faults.SDK_ATTEMPTS  # as shipped
