"""The Serve application: a deployment whose replicas load the batch job's own
:class:`~cifar.predict.predictor.Predictor` in ``__init__``, answer three FastAPI routes, and
classify the images of concurrent requests together in one ``@serve.batch`` method.

  POST /classify   raw image bytes, or multipart files (?top_k=K) -> the cifar-classify --json
                   object (+ the model's sha256); multipart: {"results": [...], "sha256"}
  GET  /model      arch, classes, input size, normalisation, precision, sha256
  GET  /healthz    {"status": "ready"} once a replica has loaded the model (no token asked)

Capacity is Serve's own: a replica holds ``max_ongoing`` requests, the proxy queues at most
``max_queued`` more and answers the rest 503 with Retry-After, at once.

(No ``from __future__ import annotations`` here: FastAPI reads the routes' annotations.)"""

import asyncio
import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from ray import serve
from ray.serve.config import BackpressureConfig

from cifar.predict.predictor import ImageResult, Predictor, PredictorSettings
from cifar.serve.config import ServeConfig, parse_replicas
from cifar.serve.http import (
    Refused,
    check_token,
    images_in,
    is_form,
    not_images,
    read_body,
    top_k_of,
)

RETRY_AFTER_S = 1  # what a refused client is told to wait: a batch takes milliseconds
DRAIN_S = 5.0  # a stopping replica's requests in flight get this long to finish


@dataclass(frozen=True)
class ReplicaSettings:
    """What a replica is built from, as it crosses to the replica's process."""

    predictor: PredictorSettings
    max_body_bytes: int
    max_batch_size: int  # images per forward pass (and per request)
    batch_wait_s: float
    token_sha256: str | None  # None: no token asked for


@dataclass(frozen=True)
class Job:
    """One request's images, decoded, on their way into a batch."""

    decoded: dict[str, np.ndarray]  # decode_bytes's {"path", "image", "error"}
    top_k: int

    @property
    def images(self) -> int:
        return len(self.decoded["path"])


def batch_images(jobs: list[Job]) -> int:
    """A batch's size for ``@serve.batch``: its images, not its requests."""
    return sum(j.images for j in jobs)


api = FastAPI(title="cifar-serve", docs_url=None, redoc_url=None, openapi_url=None)


@api.exception_handler(Refused)
async def _refused(request: Request, e: Refused) -> JSONResponse:
    return JSONResponse({"error": e.reason}, status_code=e.status, headers=e.headers)


@serve.deployment(name="Classifier")
@serve.ingress(api)
class Classifier:
    def __init__(self, settings: ReplicaSettings) -> None:
        self.settings = settings
        self.predictor = Predictor(settings.predictor)  # precision measured here, per replica
        self.sha256 = self.predictor.loaded.sha256
        self.classify_batch.set_max_batch_size(settings.max_batch_size)
        self.classify_batch.set_batch_wait_timeout_s(settings.batch_wait_s)

    @api.get("/healthz")
    async def healthz(self) -> dict[str, str]:
        return {"status": "ready"}

    @api.get("/model")
    async def model(self, request: Request) -> dict[str, Any]:
        check_token(request.headers.get("authorization"), self.settings.token_sha256)
        return self.predictor.describe()

    @api.post("/classify")
    async def classify(self, request: Request) -> dict[str, Any]:
        s = self.settings
        check_token(request.headers.get("authorization"), s.token_sha256)
        top_k = top_k_of(request.query_params.get("top_k"), len(self.predictor.classes))
        length = request.headers.get("content-length")
        body = await read_body(request.stream(), length, s.max_body_bytes)
        named = images_in(body, request.headers.get("content-type"), s.max_batch_size)
        decoded = await asyncio.to_thread(self.predictor.decode_bytes, named)
        errors = [str(e) for e in decoded["error"]]
        if all(errors):
            raise not_images(named, errors)
        results = await self.classify_batch(Job(decoded, top_k))
        if is_form(request.headers.get("content-type")):
            return {"results": [r.to_dict() for r in results], "sha256": self.sha256}
        answer = results[0].to_dict()
        del answer["path"]
        return {**answer, "sha256": self.sha256}

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005, batch_size_fn=batch_images)
    async def classify_batch(self, jobs: list[Job]) -> list[list[ImageResult]]:
        """The images of concurrent requests in one forward pass (off the event loop, which
        meanwhile reads and decodes the next requests); each request's rows back to it."""
        merged = {
            key: np.concatenate([j.decoded[key] for j in jobs])
            for key in ("path", "image", "error")
        }
        k = max(j.top_k for j in jobs)
        rows = await asyncio.to_thread(self.predictor.results, merged, k)
        out, start = [], 0
        for j in jobs:  # a shorter top_k is the longer one's head (a stable sort)
            mine = rows[start : start + j.images]
            out.append([dataclasses.replace(r, top_k=r.top_k[: j.top_k]) for r in mine])
            start += j.images
        return out


def replica_settings(cfg: ServeConfig, device: str, token_sha256: str | None) -> ReplicaSettings:
    """The replicas' settings from the job's config (``device``: "cpu" or "cuda")."""
    threads = max(1, int(cfg.cpus_per_replica)) if device == "cpu" else None
    predictor = PredictorSettings(
        cfg.model or "",
        cfg.arch,
        cfg.image_size,
        device=device,
        precision=cfg.precision,
        batch_size=cfg.max_batch_size,  # what precision "auto" is measured at
        threads=threads,
    )
    return ReplicaSettings(
        predictor, cfg.max_body_bytes, cfg.max_batch_size, cfg.batch_wait_ms / 1000, token_sha256
    )


def deployment_options(cfg: ServeConfig, gpus: float) -> dict[str, Any]:
    """Replicas, their resources, and the capacity beyond which requests are refused."""
    lo, hi = parse_replicas(cfg.replicas)
    scale: dict[str, Any] = {"num_replicas": lo}
    if hi > lo:
        target = cfg.max_batch_size  # a replica with a full batch in hand is busy enough
        auto = {"min_replicas": lo, "max_replicas": hi, "target_ongoing_requests": target}
        scale = {"autoscaling_config": auto}
    return {
        **scale,
        "ray_actor_options": {"num_cpus": cfg.cpus_per_replica, "num_gpus": gpus},
        "max_ongoing_requests": cfg.max_ongoing,
        "max_queued_requests": cfg.max_queued,
        "backpressure_config": BackpressureConfig(status_code=503, retry_after_s=RETRY_AFTER_S),
        "graceful_shutdown_timeout_s": DRAIN_S,
        "max_constructor_retry_count": 3,  # a model that does not load: fail, not retry for ever
    }


def application(cfg: ServeConfig, gpus: float, token_sha256: str | None) -> serve.Application:
    """The application ``serve.run`` deploys: ``gpus`` per replica (0: on CPUs)."""
    device = "cuda" if gpus > 0 else "cpu"
    options = deployment_options(cfg, gpus)
    return Classifier.options(**options).bind(replica_settings(cfg, device, token_sha256))


def build(args: dict[str, Any]) -> serve.Application:
    """The application builder for ``serve deploy`` (import_path ``cifar.serve.app:build``):
    ``args`` are ServeConfig's keys plus ``gpus`` (per replica) and ``token_sha256``, as
    ``cifar-serve --serve-config`` writes them."""
    from cifar.config import make_config

    extra = {k: args.get(k) for k in ("gpus", "token_sha256")}
    cfg = make_config(ServeConfig, {k: v for k, v in args.items() if k not in extra})
    return application(cfg, float(extra["gpus"] or 0), extra["token_sha256"])
