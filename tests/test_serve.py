"""cifar-serve: a real Serve application on loopback and a real HTTP client. One application
(two replicas, a token, small limits) is shared by the Ray tests of this module; the command
line is tested as a process of its own, with its own Ray."""

from __future__ import annotations

import http.client
import json
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml
from urllib3 import encode_multipart_formdata

from cifar.predict.predictor import Predictor, PredictorSettings
from cifar.serve.config import ServeConfig
from cifar.serve.http import Refused, check_token, images_in, token_digest
from tests.helpers.images import make_image_tree
from tests.helpers.models import save_untrained
from tests.helpers.processes import kill_group, wait_until
from tests.paths import ROOT

TOKEN = "correct horse battery staple"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
APP = "cifar-test"
TIMEOUT_S = 30  # no request of these tests may take longer: none hangs


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def call(port, method, path, body=None, headers=None, timeout=TIMEOUT_S):
    """One request: (status, headers, parsed JSON or the raw body)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        data = r.read()
    finally:
        conn.close()
    try:
        return r.status, dict(r.headers), json.loads(data)
    except ValueError:
        return r.status, dict(r.headers), data


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return save_untrained(tmp_path_factory.mktemp("serve") / "model")


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return make_image_tree(tmp_path_factory.mktemp("images"))  # (good files, broken files)


@pytest.fixture(scope="module")
def app(ray_session, model):
    """The shared application: 2 replicas, batches of 4 images (8 requests each), 4 queued."""
    from ray import serve

    from cifar.serve import server

    cfg = ServeConfig(
        model=str(model),
        port=free_port(),
        replicas="2",
        cpus_per_replica=0.5,
        max_batch_size=4,
        max_queued=4,
        max_body_mb=1.0,
        precision="fp32",  # what the reference predictor computes in, to the bit
        app_name=APP,
    )
    server.start(cfg, gpus=0.0, token_sha256=token_digest(TOKEN))
    yield cfg
    server.stop(APP)
    serve.shutdown()


# --------------------------------------------------------------------------- without Ray


def test_multipart_parts_and_names_round_trip_any_bytes():
    data = bytes(range(256)) * 3 + b"\r\n--\r\n"
    files = {f"f{i}": (f"名 {i}.png", data, "image/png") for i in range(3)}
    body, ctype = encode_multipart_formdata(files)
    assert images_in(body, ctype, 8) == [(name, data) for name, data, _ in files.values()]
    with pytest.raises(Refused) as e:
        images_in(body, ctype, 2)
    assert e.value.status == 413 and "at most 2" in e.value.reason
    assert images_in(b"raw", "application/octet-stream", 1) == [("", b"raw")]


def test_token_is_asked_for_and_compared():
    digest = token_digest(TOKEN)
    check_token(f"Bearer {TOKEN}", digest)
    check_token(None, None)  # no token configured: open
    for header in (None, "", "Basic abc", f"Bearer {TOKEN}x", "Bearer "):
        with pytest.raises(Refused) as e:
            check_token(header, digest)
        assert e.value.status == 401 and e.value.headers["WWW-Authenticate"] == "Bearer"


def test_dry_run_checks_the_model_and_warns_about_an_open_address(model, job_env):
    run = [sys.executable, "-m", "jobs.serve", "--model", str(model), "--host", "0.0.0.0"]
    r = subprocess.run([*run, "--dry-run"], cwd=ROOT, env=job_env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "without a token: anyone who can reach" in r.stderr
    assert "[cifar] replicas: 1" in r.stdout and "no token" in r.stdout


def test_the_serve_deploy_config_builds_the_same_application(model):
    from ray import serve

    from cifar.serve.app import build
    from cifar.serve.server import deploy_config, exposure_warning

    cfg = ServeConfig(model=str(model), host="0.0.0.0", token_file="/secret/token")
    assert exposure_warning(cfg, token=True) is None
    deploy = yaml.safe_load(yaml.safe_dump(deploy_config(cfg, 0.0, token_digest(TOKEN))))
    (application,) = deploy["applications"]
    assert application["import_path"] == "cifar.serve.app:build"
    assert application["args"]["token_sha256"] == token_digest(TOKEN)
    assert "token_file" not in application["args"]
    assert isinstance(build(application["args"]), serve.Application)


# --------------------------------------------------------------------------- the application


@pytest.mark.ray
def test_answers_equal_the_batch_jobs_for_the_same_files(app, model, tree):
    good, bad = tree
    reference = Predictor(PredictorSettings(str(model), precision="fp32", top_k=3))
    answers = reference.classify_files([str(p) for p in good])
    expected = {str(p): r for p, r in zip(good, answers, strict=True)}
    for p in good:
        status, _, got = call(app.port, "POST", "/classify?top_k=3", p.read_bytes(), AUTH)
        assert status == 200, got
        want = expected[str(p)]
        assert got["class_name"] == want.class_name and got["error"] is None
        assert abs(got["confidence"] - want.confidence) < 1e-4
        assert [t["class_index"] for t in got["top_k"]] == [t["class_index"] for t in want.top_k]
        for a, b in zip(got["top_k"], want.top_k, strict=True):
            assert abs(a["prob"] - b["prob"]) < 1e-4
        assert got["sha256"] == reference.loaded.sha256
    # several files in one request, one of them broken: a row each, the error where it failed
    some = [*good[:3], bad[0]]
    files = {f"f{i}": (p.name, p.read_bytes()) for i, p in enumerate(some)}
    body, ctype = encode_multipart_formdata(files)
    status, _, got = call(app.port, "POST", "/classify", body, {**AUTH, "Content-Type": ctype})
    assert status == 200, got
    rows = got["results"]
    assert [r["path"] for r in rows] == [p.name for p in some]
    for row, p in zip(rows[:3], good[:3], strict=True):
        assert row["class_index"] == expected[str(p)].class_index and len(row["top_k"]) == 1
    assert rows[3]["class_index"] is None and rows[3]["error"]


@pytest.mark.ray
def test_bad_bodies_are_refused_with_a_reason(app, tree):
    _, bad = tree
    for p in bad:
        status, _, got = call(app.port, "POST", "/classify", p.read_bytes(), AUTH)
        assert status == 400 and got["error"], (p, got)
    status, _, got = call(app.port, "POST", "/classify", b"", AUTH)
    assert status == 400 and "empty" in got["error"]
    status, _, got = call(app.port, "POST", "/classify?top_k=0", bad[0].read_bytes(), AUTH)
    assert status == 400 and "top_k" in got["error"]
    big = b"\0" * (app.max_body_bytes + 1)
    status, _, got = call(app.port, "POST", "/classify", big, AUTH)
    assert status == 413 and "--max-body-mb" in got["error"]


@pytest.mark.ray
def test_every_route_but_healthz_asks_for_the_token(app, tree):
    good, _ = tree
    assert call(app.port, "GET", "/healthz")[:3:2] == (200, {"status": "ready"})
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        status, got_headers, got = call(app.port, "GET", "/model", headers=headers)
        assert status == 401 and got["error"] and got_headers["www-authenticate"] == "Bearer"
        status, _, _ = call(app.port, "POST", "/classify", good[0].read_bytes(), headers)
        assert status == 401
    status, _, described = call(app.port, "GET", "/model", headers=AUTH)
    assert status == 200 and described["input_size"] == 32 and len(described["classes"]) == 10
    assert described["precision"]["precision"] == "fp32"


@pytest.mark.ray
def test_a_burst_beyond_capacity_gets_503_with_retry_after_and_nothing_hangs(app, tree):
    """Uploads that send their headers and half their body hold every place there is (2
    replicas x 8 requests, 4 queued); a burst then is refused at once; the held requests are
    answered once their bodies are complete."""
    body = tree[0][0].read_bytes()
    held = []
    for _ in range(2 * app.max_ongoing + app.max_queued):
        conn = http.client.HTTPConnection("127.0.0.1", app.port, timeout=TIMEOUT_S)
        conn.putrequest("POST", "/classify")
        for k, v in {**AUTH, "Content-Length": str(len(body))}.items():
            conn.putheader(k, v)
        conn.endheaders(body[: len(body) // 2])
        held.append(conn)
    time.sleep(2)  # routed to the replicas, or queued
    t0 = time.monotonic()
    pool = ThreadPoolExecutor(16)
    burst = [pool.submit(call, app.port, "POST", "/classify", body, AUTH) for _ in range(16)]
    # refusals come back while the held requests still hold their places (their bodies are
    # sent only after): a refused request did not wait for a place
    wait_until(lambda: any(f.done() and f.result()[0] == 503 for f in burst), 20, "a 503")
    print(f"burst: the first 503 after {time.monotonic() - t0:.1f} s")  # a timing: not asserted
    answers = []
    for conn in held:
        conn.send(body[len(body) // 2 :])
        answers.append(conn.getresponse().status)
        conn.close()
    got = [f.result() for f in burst]  # any request that hung raises its timeout here
    pool.shutdown()
    refused = [h for status, h, _ in got if status == 503]
    assert {status for status, _, _ in got} <= {200, 503}
    assert refused and all(h["retry-after"] == "1" for h in refused), got
    # Serve may refuse a few more than its limits ask: it counts a queue it is still emptying
    assert set(answers) <= {200, 503} and answers.count(200) >= app.max_ongoing, answers
    assert call(app.port, "POST", "/classify", body, AUTH)[0] == 200


def replica_actors(ray) -> list:
    names = ray.util.list_named_actors(all_namespaces=True)
    return [a for a in names if a["name"].startswith("SERVE_REPLICA::") and APP in a["name"]]


@pytest.mark.ray
def test_a_replica_killed_under_load_is_replaced(app, tree, ray_session):
    """Clients keep sending while one replica is killed: the requests it held fail (500), the
    others go to the other replica, and Serve starts a replacement."""
    from ray import serve

    ray = ray_session
    body = tree[0][0].read_bytes()
    statuses: list[int] = []
    stop = threading.Event()

    def client() -> None:
        while not stop.is_set():
            statuses.append(call(app.port, "POST", "/classify", body, AUTH)[0])

    before = replica_actors(ray)
    assert len(before) == 2
    clients = [threading.Thread(target=client) for _ in range(4)]
    for c in clients:
        c.start()
    wait_until(lambda: len(statuses) >= 20, 60, "requests before the kill")
    victim = before[0]
    ray.kill(ray.get_actor(victim["name"], namespace=victim["namespace"]), no_restart=True)
    at_kill = len(statuses)

    def replaced() -> bool:
        names = {a["name"] for a in replica_actors(ray)}
        running = serve.status().applications[APP].deployments["Classifier"].replica_states
        return victim["name"] not in names and running.get("RUNNING") == 2

    wait_until(replaced, 90, "a replacement replica")
    # served again: the router learns of the new replica a moment after it runs (meanwhile four
    # clients on one replica may be told 503), not within a fixed second
    wait_until(lambda: statuses[-4:] == [200] * 4, 60, "four answers of 200 in a row")
    stop.set()
    for c in clients:
        c.join(TIMEOUT_S + 5)
        assert not c.is_alive(), "a client hangs"
    print(f"statuses after the kill: { {s: statuses[at_kill:].count(s) for s in set(statuses)} }")
    assert set(statuses) <= {200, 500, 503}, set(statuses)
    assert statuses[-4:] == [200] * 4  # clients served again
    for _ in range(8):
        assert call(app.port, "POST", "/classify", body, AUTH)[0] == 200


# --------------------------------------------------------------------------- the command


@pytest.mark.ray
def test_the_command_serves_until_sigterm_then_exits_0(model, tree, job_env, tmp_path):
    port = free_port()
    job_env["CIFAR_SERVE_TOKEN"] = TOKEN
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        job = subprocess.Popen(
            [sys.executable, "-m", "jobs.serve", "--model", str(model), "--port", str(port)],
            cwd=ROOT,
            env=job_env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_until(lambda: "serving at" in log.read_text(), 180, "serving", job, log)
        assert call(port, "GET", "/healthz")[0] == 200
        assert call(port, "GET", "/model")[0] == 401
        status, _, got = call(port, "POST", "/classify", tree[0][0].read_bytes(), AUTH)
        assert status == 200 and got["class_name"], got
        job.send_signal(signal.SIGTERM)
        assert job.wait(60) == 0, log.read_text()[-3000:]
    finally:
        if job.poll() is None:
            kill_group(job)
    text = log.read_text()
    assert "Authorization: Bearer $CIFAR_SERVE_TOKEN" in text and "[cifar] stopped" in text
    assert "Traceback" not in text, text[-3000:]
