"""The serving job's config: every setting on one line. The command line (``cifar-serve
--help``) is generated from it."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

from cifar.config import STALL_TIMEOUT_S, Config, opt
from cifar.device import PRECISIONS

model_opt, http_opt, scale_opt = (partial(opt, group=g) for g in ("model", "http", "scale"))


@dataclass
class ServeConfig(Config):
    # fmt: off
    model: str | None = model_opt(None, "run dir, checkpoint dir, model/ dir, .pt/.pth file, or an .onnx file from cifar-export (classified by onnxruntime)")  # noqa: E501
    arch: str | None = model_opt(None, "what a bare .pt/.pth state_dict is: cifar10_quick (recognised by itself) or a torchvision name such as vgg16, resnet18; a run's model says it itself", metavar="NAME")  # noqa: E501
    image_size: int | None = model_opt(None, "classify at this size instead of the model's own", metavar="PIXELS")  # noqa: E501
    precision: str = model_opt("auto", "auto: bf16 on GPUs that have it, else fp16; on CPUs the faster of fp32 and bf16, measured by each replica at --max-batch-size; fp32: exactly the tutorial's arithmetic", choices=PRECISIONS)  # noqa: E501
    host: str = http_opt("127.0.0.1", "address to listen on (another than loopback: set a token, CIFAR_SERVE_TOKEN or --token-file)")  # noqa: E501
    port: int = http_opt(8000, "HTTP port")
    token_file: str | None = http_opt(None, "a file holding the bearer token every route but /healthz asks for (CIFAR_SERVE_TOKEN does the same)", metavar="FILE")  # noqa: E501
    max_body_mb: float = http_opt(10.0, "larger request bodies are refused (413)")
    request_timeout: float = http_opt(30.0, "seconds a request may take before it is answered 408 (0: no limit)")  # noqa: E501
    app_name: str = http_opt("cifar", "the Serve application's name (`serve status` shows it)")
    replicas: str = scale_opt("1", "replicas: N, or MIN-MAX to autoscale on the requests they hold")
    max_batch_size: int = scale_opt(32, "images per forward pass: requests that arrive together are classified together")  # noqa: E501
    batch_wait_ms: float = scale_opt(5.0, "how long a replica waits for more requests to fill a batch")  # noqa: E501
    max_queued: int = scale_opt(64, "requests waiting for a replica beyond which new ones are refused at once (503 with Retry-After)")  # noqa: E501
    use_gpu: bool | None = scale_opt(None, "replicas on GPUs (default: if the cluster has GPUs)", flag="--gpu")  # noqa: E501
    gpus_per_replica: float = scale_opt(1.0, "GPUs per replica with --gpu; a fraction (0.25) shares one GPU among replicas")  # noqa: E501
    cpus_per_replica: float = scale_opt(1.0, "CPUs per replica = its torch threads on a CPU")
    start_timeout: float = scale_opt(STALL_TIMEOUT_S, "end the job, saying why, when the replicas have not started after this many seconds (0: wait for ever)")  # noqa: E501
    verbose: bool = opt(False, "also Ray's and Serve's INFO lines")
    print_serve_config: bool = opt(False, "print a config file for `serve deploy` on a cluster (these settings; the token as its SHA-256) and exit")  # noqa: E501
    # fmt: on

    def checks(self) -> list[tuple[bool, str]]:
        try:
            parse_replicas(self.replicas)
            replicas_error = ""
        except ValueError as e:
            replicas_error = str(e)
        return [
            (bool(self.model), "--model is required"),
            (0 < self.port < 65536, f"--port must be 1..65535 (got {self.port})"),
            (self.max_body_mb > 0, "--max-body-mb must be > 0"),
            (self.request_timeout >= 0, "--request-timeout must be >= 0"),
            (self.max_batch_size >= 1, "--max-batch-size must be at least 1"),
            (self.batch_wait_ms >= 0, "--batch-wait-ms must be >= 0"),
            (self.max_queued >= 1, "--max-queued must be at least 1"),
            (self.gpus_per_replica > 0, "--gpus-per-replica must be > 0 (--no-gpu for none)"),
            (self.cpus_per_replica > 0, "--cpus-per-replica must be > 0"),
            (self.start_timeout >= 0, "--start-timeout must be >= 0"),
            (not replicas_error, replicas_error),
        ]

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * 2**20)

    @property
    def max_ongoing(self) -> int:
        """Requests a replica holds at once: a batch computing and the next one filling."""
        return 2 * self.max_batch_size


def parse_replicas(spec: str) -> tuple[int, int]:
    """'N' -> (N, N), 'MIN-MAX' -> (MIN, MAX)."""
    try:
        lo, _, hi = str(spec).partition("-")
        lo_i, hi_i = int(lo), int(hi or lo)
    except ValueError:
        raise ValueError(f"--replicas must be N or MIN-MAX (got {spec!r})") from None
    if lo_i < 1 or hi_i < lo_i:
        raise ValueError(f"--replicas {spec!r}: need 1 <= MIN <= MAX")
    return lo_i, hi_i
