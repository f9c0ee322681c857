"""cifar-serve under load on loopback: requests/s and latency by concurrent clients, against
what the model alone classifies in batches, in the same run; then a burst beyond capacity.

    python -m benchmarks.serve [--seconds 10] [--clients 1,8,32,128] [--burst 150]
        [--replicas 1] [--max-batch-size 32] [--json benchmarks/results/serve_cpu.json]

An untrained CIFAR10-quick (what it computes costs the same whatever its weights) is served by
the job's own application (cifar.serve.server.start, the code ``cifar-serve`` runs) on a Ray
runtime started here, every replica with 1 CPU (the job's default), precision auto (measured per
replica, as the job does). Each level runs C clients for --seconds, each sending one 32x32 PNG
(a CIFAR image's size) per request as soon as its last one was answered, or after the
Retry-After a 503 names (keep-alive connections, asyncio + aiohttp in this process: the load
generator shares the machine's CPUs with the server, as a client on the same host would).
The model alone: Predictor.probabilities on one decoded batch of --max-batch-size images with
1 torch thread, best of 20. The burst: --burst clients send one request each at once (30 s
timeout each); counted by answer.
"""

from __future__ import annotations

import asyncio
import io
import os
import tempfile
import time
from pathlib import Path

from benchmarks.common import describe, machine, parser, untrained_model, write_json

REQUEST_TIMEOUT_S = 30.0


def pngs(n: int) -> list[bytes]:
    """``n`` different 32x32 RGB PNGs of noise."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buf, "PNG")
        out.append(buf.getvalue())
    return out


def model_alone(model: Path, batch: int) -> float:
    """images/s of the predictor on one decoded batch, 1 thread (a 1-CPU replica's)."""
    import numpy as np
    import torch

    from cifar.predict.predictor import Predictor, PredictorSettings

    torch.set_num_threads(1)
    p = Predictor(PredictorSettings(str(model), batch_size=batch, threads=1))
    pixels = np.random.default_rng(0).integers(0, 256, (batch, 3, 32, 32), dtype=np.uint8)
    p.probabilities(pixels)
    best = float("inf")
    for _ in range(20):
        t = time.perf_counter()
        p.probabilities(pixels)
        best = min(best, time.perf_counter() - t)
    return batch / best


async def load(url: str, clients: int, seconds: float, bodies: list[bytes]) -> dict:
    """``clients`` closed-loop clients for ``seconds``: requests/s, latency percentiles (of
    the 200s), and how many of each status."""
    import aiohttp

    latencies: list[float] = []
    statuses: dict[str, int] = {}
    deadline = time.perf_counter() + seconds
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)

    async def client(session: aiohttp.ClientSession, i: int) -> None:
        n = i
        while time.perf_counter() < deadline:
            t = time.perf_counter()
            try:
                async with session.post(url, data=bodies[n % len(bodies)]) as r:
                    await r.read()
                    status, wait = str(r.status), r.headers.get("Retry-After")
            except (aiohttp.ClientError, asyncio.TimeoutError) as e:
                status, wait = type(e).__name__, None
            statuses[status] = statuses.get(status, 0) + 1
            if status == "200":
                latencies.append(time.perf_counter() - t)
            elif wait is not None:  # refused: back off as the server asks
                await asyncio.sleep(float(wait))
            n += clients

    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        t0 = time.perf_counter()
        await asyncio.gather(*(client(session, i) for i in range(clients)))
        wall = time.perf_counter() - t0
    latencies.sort()

    def pct(q: float) -> float | None:
        return round(1000 * latencies[int(q * (len(latencies) - 1))], 2) if latencies else None

    return {
        "clients": clients,
        "requests_per_s": round(statuses.get("200", 0) / wall, 1),
        "p50_ms": pct(0.50),
        "p99_ms": pct(0.99),
        "statuses": statuses,
    }


async def burst(url: str, clients: int, body: bytes) -> dict[str, int]:
    """``clients`` requests at once, one each, each on its own connection: answers counted."""
    import aiohttp

    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
    start = asyncio.Event()

    async def one() -> str:
        async with aiohttp.ClientSession(timeout=timeout) as session:
            await start.wait()
            try:
                async with session.post(url, data=body) as r:
                    await r.read()
                    return str(r.status)
            except (aiohttp.ClientError, asyncio.TimeoutError) as e:
                return type(e).__name__

    tasks = [asyncio.create_task(one()) for _ in range(clients)]
    await asyncio.sleep(0.5)  # every session made, then all at once
    start.set()
    counted: dict[str, int] = {}
    for status in await asyncio.gather(*tasks):
        counted[status] = counted.get(status, 0) + 1
    return counted


def serve_app(model: Path, args, port: int) -> str:
    """The job's application on a Ray started here; its URL."""
    import ray

    from cifar.serve.config import ServeConfig
    from cifar.serve.server import start

    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, configure_logging=False)
    cfg = ServeConfig(
        model=str(model),
        port=port,
        replicas=str(args.replicas),
        max_batch_size=args.max_batch_size,
        batch_wait_ms=args.batch_wait_ms,
    )
    return start(cfg, gpus=0.0, token_sha256=None)


def main() -> None:
    p = parser(__doc__, "serve_cpu.json")
    p.add_argument("--seconds", type=float, default=10.0, help="per level")
    p.add_argument("--clients", default="1,8,32,128", help="the levels of concurrent clients")
    p.add_argument("--burst", type=int, default=150)
    p.add_argument("--replicas", type=int, default=1)
    p.add_argument("--max-batch-size", type=int, default=32)
    p.add_argument("--batch-wait-ms", type=float, default=5.0)
    p.add_argument("--port", type=int, default=18000)
    args = p.parse_args()
    info = machine()
    bodies = pngs(64)
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        model = untrained_model(Path(tmp))
        alone = model_alone(model, args.max_batch_size)
        print(f"model alone, batch {args.max_batch_size}, 1 thread: {alone:.0f} img/s", flush=True)
        url = serve_app(model, args, args.port) + "/classify"
        asyncio.run(load(url, 8, 2.0, bodies))  # warm: connections, batches, caches
        levels = []
        for c in [int(x) for x in args.clients.split(",")]:
            r = asyncio.run(load(url, c, args.seconds, bodies))
            levels.append(r)
            print(
                f"{c:4d} clients: {r['requests_per_s']:7.1f} req/s  p50 {r['p50_ms']} ms  "
                f"p99 {r['p99_ms']} ms  {r['statuses']}",
                flush=True,
            )
        flood = asyncio.run(burst(url, args.burst, bodies[0]))
        print(f"burst of {args.burst}: {flood}", flush=True)
    one = levels[0]["requests_per_s"] or float("nan")
    by = {r["clients"]: r["requests_per_s"] / one for r in levels}
    print(
        "speed-up over 1 client: "
        + ", ".join(f"{c}: {x:.1f}x" for c, x in by.items())
        + f"  [{describe(info)}]"
    )
    write_json(
        args.json,
        info,
        {
            "replicas": args.replicas,
            "cpus_per_replica": 1,
            "max_batch_size": args.max_batch_size,
            "batch_wait_ms": args.batch_wait_ms,
            "seconds_per_level": args.seconds,
            "model_alone_img_s": round(alone, 1),
            "levels": levels,
            "speedup_over_1_client": {str(c): round(x, 2) for c, x in by.items()},
            "burst": {"clients": args.burst, "answers": flood},
        },
    )


if __name__ == "__main__":
    main()
