"""Classify images over HTTP with Ray Serve: ``cifar-serve --model M`` (or ``python -m
jobs.serve`` for ``ray job submit``). Runs until Ctrl-C or SIGTERM, then lets the requests in
flight finish and takes the application down (exit 0; a second Ctrl-C: 130).

Examples:
  cifar-serve --model ~/ray_results/run1
  cifar-serve --model model.onnx --replicas 1-4 --port 8080
  CIFAR_SERVE_TOKEN=$(cat secret) cifar-serve --model run1 --host 0.0.0.0
  cifar-serve --model run1 --print-serve-config > serve.yaml && serve deploy serve.yaml

  curl --data-binary @cat.png 'http://127.0.0.1:8000/classify?top_k=3'
  curl -F a=@cat.png -F b=@dog.jpg http://127.0.0.1:8000/classify
  curl http://127.0.0.1:8000/model; curl http://127.0.0.1:8000/healthz

A token (CIFAR_SERVE_TOKEN, or the first line of --token-file) makes every route but /healthz
ask for ``Authorization: Bearer <token>``. Answers: 400 not an image, 401 no or wrong token, 413
too large, 503 (with Retry-After) over capacity, 408 over --request-timeout.
"""

from __future__ import annotations

import logging
import os
import sys
import time

import yaml

from cifar.config import ConfigError, config_yaml, make_config
from cifar.failures import Interrupted
from cifar.models.checkpoint import CheckpointError
from cifar.serve.config import ServeConfig
from cifar.serve.http import token_digest

from .common import Boundary, configure_logging, handle_signals, parse

PROGRAM = "cifar-serve"
TOKEN_ENV = "CIFAR_SERVE_TOKEN"


def main(boundary: Boundary, argv: list[str]) -> int:
    asked = parse(
        ServeConfig,
        PROGRAM,
        "Classify images over HTTP with Ray Serve.",
        __doc__,
        argv,
        lambda typed, saved: make_config(ServeConfig, saved, typed),
    )
    cfg = asked.cfg
    if asked.print_config:
        print(config_yaml(cfg, leave_out=("print_serve_config",)), end="")
        return 0
    configure_logging(cfg.verbose)
    boundary.verbose = cfg.verbose
    from cifar.predict.predictor import load_for_prediction
    from cifar.serve import server

    token = read_token(cfg.token_file)
    digest = token_digest(token) if token else None
    model = load_for_prediction(cfg.model or "", "cpu", cfg.arch, cfg.image_size)  # before Ray
    warning = server.exposure_warning(cfg, token is not None)
    if warning:
        print(warning, file=sys.stderr, flush=True)
    if asked.dry_run or cfg.print_serve_config:
        gpus = gpus_per_replica(cfg, local_gpus())
        if cfg.print_serve_config:
            print(yaml.safe_dump(server.deploy_config(cfg, gpus, digest), sort_keys=False), end="")
        else:
            print("\n".join(server.plan_lines(cfg, model, gpus, token is not None)))
        return 0
    return serve(cfg, model, digest)


def serve(cfg: ServeConfig, model, digest: str | None) -> int:
    """Start or join Ray, deploy, answer until a signal, then take the application down."""
    from cifar.cluster.resources import cluster_info, connect
    from cifar.serve import server

    if not os.environ.get("RAY_ADDRESS"):
        server.check_port(cfg.host, cfg.port)  # the proxy will listen on this machine
    connect(configure_logging=False)
    quiet_serve(cfg.verbose)
    handle_signals()  # again: ray.init installs a SIGTERM handler of its own
    gpus = gpus_per_replica(cfg, cluster_info().gpus)
    print("\n".join(server.plan_lines(cfg, model, gpus, digest is not None)), flush=True)
    url = server.start(cfg, gpus, digest)
    print("\n".join(server.usage_lines(url, digest is not None)), flush=True)
    try:
        while True:
            time.sleep(3600)
    except Interrupted as e:
        print(f"[cifar] {e}: draining the requests in flight, then stopping", flush=True)
    if server.stop(cfg.app_name):  # a second signal while it stops: exit 130
        print("[cifar] stopped", flush=True)
    else:
        print("[cifar] Ray did not answer while stopping: left to Ray's own shutdown", flush=True)
    return 0


def quiet_serve(verbose: bool) -> None:
    """Serve's INFO lines in this process (it starts, deploys, deletes) only with --verbose."""
    import ray.serve  # noqa: F401 (sets its logger up when imported)

    logging.getLogger("ray.serve").setLevel(logging.INFO if verbose else logging.WARNING)


def read_token(token_file: str | None) -> str | None:
    """The bearer token: --token-file's first line, else CIFAR_SERVE_TOKEN; None: no token."""
    if token_file:
        try:
            with open(token_file) as f:
                token = f.readline().strip()
        except OSError as e:
            raise ConfigError(f"--token-file {token_file}: {e.strerror or e}") from None
        if not token:
            raise ConfigError(
                f"--token-file {token_file} is empty: put the token on its first line"
            )
        return token
    return os.environ.get(TOKEN_ENV, "").strip() or None


def local_gpus() -> int:
    import torch

    return torch.cuda.device_count()


def gpus_per_replica(cfg: ServeConfig, cluster_gpus: float) -> float:
    """GPUs each replica asks for: --gpus-per-replica with --gpu (or by default where the
    cluster has GPUs), else none."""
    use = cfg.use_gpu if cfg.use_gpu is not None else cluster_gpus > 0
    if use and cluster_gpus <= 0:
        raise ConfigError("--gpu: the cluster has no GPUs (nor can it start any): use --no-gpu")
    return cfg.gpus_per_replica if use else 0.0


def cli() -> None:
    """The installed ``cifar-serve`` command."""
    from cifar.serve.server import DeployFailed

    Boundary((ConfigError, CheckpointError, DeployFailed)).run(lambda b: main(b, sys.argv[1:]))


if __name__ == "__main__":
    cli()
