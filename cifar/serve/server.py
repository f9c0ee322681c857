"""Starting and stopping the application on a Ray that is up: Serve's HTTP proxy on the asked
address, the deployment, the wait until it answers; the lines a user reads; a config file for
``serve deploy``."""

from __future__ import annotations

import errno
import logging
import socket
import threading
import time
import urllib.error
import urllib.request
from typing import Any

from cifar.config import ConfigError
from cifar.models.loading import LoadedModel
from cifar.serve.config import ServeConfig, parse_replicas

log = logging.getLogger(__name__)
READY_TIMEOUT_S = 60.0  # after serve.run: the proxy's first answer
STOP_TIMEOUT_S = 30.0  # draining included (DRAIN_S)
WILDCARD = ("0.0.0.0", "::", "")


def check_port(host: str, port: int) -> None:
    """The address is free on this machine (where a Ray started here runs the proxy): a clash
    fails here in a line, not inside Serve's proxy."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as s:
        try:
            s.bind((host, port))
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise ConfigError(
                    f"--port {port}: something on this machine listens on {host}:{port} "
                    "already (another cifar-serve?). Pick another --port, or stop it"
                ) from None
            raise ConfigError(f"--host {host} --port {port}: cannot listen there ({e})") from None


def start(cfg: ServeConfig, gpus: float, token_sha256: str | None) -> str:
    """Serve's proxy on ``cfg.host:cfg.port``, the application deployed and answering; returns
    its URL."""
    from ray import serve

    from cifar.serve.app import application

    timeout = cfg.request_timeout or None
    http = {"host": cfg.host, "port": cfg.port, "request_timeout_s": timeout}
    # quiet unless --verbose: an access line per request, a proxy warning per 503
    proxy_logs = {"log_level": "INFO" if cfg.verbose else "ERROR", "enable_access_log": False}
    serve.start(http_options=http, logging_config=proxy_logs)
    replica_logs = {"log_level": "INFO" if cfg.verbose else "WARNING"}
    replica_logs["enable_access_log"] = cfg.verbose
    app = serve.RunTarget(
        application(cfg, gpus, token_sha256),
        cfg.app_name,
        route_prefix="/",
        logging_config=replica_logs,
    )
    serve.run_many([app], wait_for_applications_running=False)
    wait_running(cfg.app_name, cfg.start_timeout)
    url = local_url(cfg)
    if not answers(f"{url}/healthz", READY_TIMEOUT_S):
        log.warning("the application runs, but %s/healthz did not answer from here", url)
    return url


class DeployFailed(RuntimeError):
    """The application's replicas could not start (Serve's reason in the message)."""


def wait_running(app_name: str, seconds: float) -> None:
    """Until the application runs: a failure to start is a :class:`DeployFailed`, replicas
    still waiting after ``seconds`` (for resources the cluster lacks) a StallError."""
    from ray import serve
    from ray.serve.schema import ApplicationStatus

    from cifar.cluster.watchdog import StallError

    deadline = time.monotonic() + (seconds or float("inf"))
    while True:
        app = serve.status().applications.get(app_name)
        if app is not None and app.status == ApplicationStatus.RUNNING:
            return
        if app is not None and app.status == ApplicationStatus.DEPLOY_FAILED:
            raise DeployFailed(f"the replicas could not start: {app.message}")
        if time.monotonic() > deadline:
            said = f" ({app.message})" if app is not None and app.message else ""
            raise StallError(
                f"the replicas did not start in {seconds:.0f} s{said}. Ask for what the cluster "
                "has (--replicas, --cpus-per-replica, --no-gpu), or wait longer (--start-timeout)"
            )
        time.sleep(0.5)


def answers(url: str, seconds: float) -> bool:
    """``url`` answered 200 within ``seconds``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                if r.status == 200:
                    return True
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    return False


def stop(app_name: str, seconds: float = STOP_TIMEOUT_S) -> bool:
    """The application deleted: its replicas finish what they hold (for up to DRAIN_S). Serve's
    proxy and controller stay for the cluster's other applications (a Ray started here takes
    them down with it). False when that took over ``seconds`` (Ray itself gone: a signal to the
    whole process group reached it too)."""
    from ray import serve

    worker = threading.Thread(target=serve.delete, args=(app_name,), daemon=True)
    worker.start()
    worker.join(seconds)
    return not worker.is_alive()


def local_url(cfg: ServeConfig) -> str:
    """Where a client on this machine reaches the application."""
    host = "127.0.0.1" if cfg.host in WILDCARD else cfg.host
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{cfg.port}"


def plan_lines(cfg: ServeConfig, model: LoadedModel, gpus: float, token: bool) -> list[str]:
    """What will be served, how and where (``--dry-run`` prints it; the job logs it)."""
    lo, hi = parse_replicas(cfg.replicas)
    replicas = f"{lo}" if lo == hi else f"{lo} to {hi} (autoscaled)"
    per = f"{gpus:g} GPU" if gpus else f"{cfg.cpus_per_replica:g} CPU"
    return [
        f"[cifar] model: {cfg.model} ({model.spec.arch}, {len(model.classes)} classes, "
        f"{model.spec.input_size} px, sha256 {model.sha256[:12]})",
        f"[cifar] replicas: {replicas}, {per} each; batches of up to {cfg.max_batch_size} "
        f"images, {cfg.batch_wait_ms:g} ms wait; precision {cfg.precision}",
        f"[cifar] capacity: {cfg.max_ongoing} requests per replica, {cfg.max_queued} queued, "
        f"the rest 503; bodies up to {cfg.max_body_mb:g} MB",
        f"[cifar] listening on {cfg.host}:{cfg.port}; "
        + ("a bearer token is required" if token else "no token"),
    ]


def usage_lines(url: str, token: bool) -> list[str]:
    """The URL and a request to try."""
    auth = ' -H "Authorization: Bearer $CIFAR_SERVE_TOKEN"' if token else ""
    return [
        f"[cifar] serving at {url} (Ctrl-C stops it)",
        f"  curl{auth} --data-binary @cat.png '{url}/classify?top_k=3'",
        f"  curl{auth} -F a=@cat.png -F b=@dog.jpg {url}/classify",
        f"  curl{auth} {url}/model",
    ]


def exposure_warning(cfg: ServeConfig, token: bool) -> str | None:
    """A non-loopback address without a token: anyone who reaches it may use the model."""
    loopback = cfg.host in ("localhost", "::1") or cfg.host.startswith("127.")
    if loopback or token:
        return None
    return (
        f"warning: --host {cfg.host} without a token: anyone who can reach this machine's port "
        f"{cfg.port} can classify with this model, read what it is (/model) and use its CPUs "
        "or GPUs. Set CIFAR_SERVE_TOKEN or --token-file, or listen on 127.0.0.1."
    )


def deploy_config(cfg: ServeConfig, gpus: float, token_sha256: str | None) -> dict[str, Any]:
    """A config file for ``serve deploy`` on a cluster: the same application, built there by
    ``cifar.serve.app:build`` (the token as its SHA-256 only)."""
    args = {**cfg.to_dict(), "gpus": gpus, "token_sha256": token_sha256}
    for local in ("token_file", "verbose", "print_serve_config"):  # this process's, not theirs
        args.pop(local)
    timeout = cfg.request_timeout or None
    return {
        "http_options": {"host": cfg.host, "port": cfg.port, "request_timeout_s": timeout},
        "applications": [
            {
                "name": cfg.app_name,
                "route_prefix": "/",
                "import_path": "cifar.serve.app:build",
                "args": args,
            }
        ],
    }
