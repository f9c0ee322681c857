"""What every benchmark shares: the machine it ran on, the images and the untrained model it
measures with, a job run as a user runs it (``python -m jobs.X``), and the JSON it writes.

Only the standard library is imported here at first: ``benchmarks.listing`` records its
children's ``ru_maxrss``, which counts what the parent held when it forked them, so torch or Ray
imported with this module would be in every figure.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cifar.cluster.resources import ClusterInfo
    from cifar.train.config import TrainConfig

REPO = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results"  # the recorded figures, one JSON each


# --------------------------------------------------------------------------- the machine


def machine() -> dict:
    """CPU model and the flags that decide CPU kernels, cores, memory, GPU, library versions."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    model = value.strip()
                elif key.strip() == "flags":
                    flags = set(value.split())
    except OSError:
        pass
    wanted = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "avx512_vnni")
    info = {
        "cpu": model,
        "cpu_flags": [f for f in wanted if f in flags],
        "cpus": os.cpu_count(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "python": platform.python_version(),
    }
    try:
        import torch

        info["torch"] = torch.__version__
        info["gpu"] = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    except ImportError:
        pass
    try:
        import ray

        info["ray"] = ray.__version__
    except ImportError:
        pass
    return info


def describe(info: dict) -> str:
    """One line for a table header: CPU model (its kernel flags), CPUs, GPU, torch version."""
    flags = f" ({', '.join(info['cpu_flags'])})" if info.get("cpu_flags") else ""
    gpu = info.get("gpu") or "no GPU"
    return f"{info['cpu']}{flags}, {info['cpus']} CPUs, {gpu}, torch {info.get('torch')}"


# --------------------------------------------------------------------------- what is measured


def write_images(
    folder: Path,
    n: int,
    sides: tuple[int, int] = (32, 32),
    per_folder: int = 1000,
    distinct: int = 0,
    seed: int = 0,
) -> Path:
    """``n`` PNGs of uniform random noise, each side drawn from ``sides`` (both included), in
    subfolders of ``per_folder`` (``d00000/img0000000.png``). Noise does not compress, so every
    file costs a PNG decoder its most. ``distinct > 0`` encodes only that many images and writes
    their bytes in turn: a million files is then a matter of the disk, not of the encoder."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)

    def png() -> bytes:
        side = int(rng.integers(sides[0], sides[1] + 1))
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(buf, "PNG")
        return buf.getvalue()

    blobs = [png() for _ in range(distinct)]
    for i in range(n):
        sub = folder / f"d{i // per_folder:05d}"
        if i % per_folder == 0:
            sub.mkdir(parents=True, exist_ok=True)
        (sub / f"img{i:07d}.png").write_bytes(blobs[i % distinct] if distinct else png())
    return folder


def write_photos(
    folder: Path,
    n: int,
    classes: Sequence[str] = (),
    coarse: tuple[int, int] = (6, 8),
    noise: int = 20,
    seed: int = 0,
) -> Path:
    """``n`` 1024x768 JPEGs (quality 90) of smooth random colour fields, a ``coarse`` grid
    upscaled, plus per-pixel noise of up to +-``noise``: content that compresses and decodes as
    a photo does (random noise would not). With ``classes``, one folder per class, in turn."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    for i in range(n):
        grid = Image.fromarray(rng.integers(0, 256, (*coarse, 3), dtype=np.uint8), "RGB")
        img = np.asarray(grid.resize((1024, 768), Image.BICUBIC), dtype=np.int16)
        if noise:
            img = img + rng.integers(-noise, noise + 1, img.shape)
        sub = folder / classes[i % len(classes)] if classes else folder
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(
            sub / f"photo_{i:05d}.jpg", quality=90
        )
    return folder


def untrained_model(work: Path) -> Path:
    """An untrained CIFAR10-quick saved as a run saves its model, in ``work/model``: prediction
    costs the same whatever the weights."""
    from tests.helpers.models import save_untrained

    return save_untrained(work / "model")


# --------------------------------------------------------------------------- jobs as users run them


def job_env(**extra: str) -> dict[str, str]:
    """The environment of a process a benchmark starts: this checkout importable from any
    working directory (by Ray's workers too), Ray Data's progress bars off (they would fill the
    captured output), plus ``extra``."""
    path = os.pathsep.join(filter(None, (str(REPO), os.environ.get("PYTHONPATH"))))
    return {**os.environ, "PYTHONPATH": path, "CIFAR_RAY_PROGRESS": "0", **extra}


def python_m(module: str, *args: object) -> list[str]:
    return [sys.executable, "-m", module, *map(str, args)]


def run_module(
    module: str, *args: object, env: dict | None = None, timeout: float | None = None
) -> tuple[str, float]:
    """``python -m module args`` from the repository root, to its end: (stdout, wall seconds).
    A failure ends the benchmark with the tail of what the process printed."""
    t = time.perf_counter()
    r = subprocess.run(
        python_m(module, *args),
        cwd=REPO,
        env=env or job_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    wall = time.perf_counter() - t
    if r.returncode != 0:
        raise SystemExit(
            f"{module} failed (rc {r.returncode}):\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}"
        )
    return r.stdout, wall


def start_module(
    module: str, *args: object, log: Path, env: dict | None = None
) -> subprocess.Popen:
    """``python -m module args`` started in its own session (so that a SIGKILL of its process
    group takes the Ray it started too), its output to ``log``; the ``subprocess.Popen``."""
    with open(log, "wb") as out:  # the child holds its own copy of the file
        return subprocess.Popen(
            python_m(module, *args),
            cwd=REPO,
            env=env or job_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def use_job_train_env(cfg: TrainConfig | None = None) -> None:
    """Set what ``jobs.train`` sets for Ray Train before ``ray.init`` (its controller, a Ray
    actor, reads them from Ray's environment), so a run in this process is a run of the job."""
    from cifar.train.config import TrainConfig
    from cifar.train.driver import ray_train_env

    settings = {"RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS": "0"}
    settings.update(ray_train_env(cfg or TrainConfig()))
    for k, v in settings.items():
        os.environ.setdefault(k, v)


def local_cluster() -> ClusterInfo:
    """This machine as a one-node cluster, as a job started on it sees it (nothing held)."""
    import torch

    from cifar.cluster.resources import ClusterInfo

    return ClusterInfo(cpus=float(os.cpu_count() or 1), gpus=float(torch.cuda.device_count()))


# --------------------------------------------------------------------------- command line and JSON


def parser(doc: str, results: str) -> argparse.ArgumentParser:
    """A benchmark's parser: its docstring as help, and ``--json`` (``results``: the file under
    benchmarks/results/ that holds its recorded figures)."""
    p = argparse.ArgumentParser(
        prog=f"python -m {main_module()}",
        description=doc,
        formatter_class=argparse.RawTextHelpFormatter,
    )
    p.add_argument(
        "--json",
        metavar="PATH",
        help=f"write the figures here (recorded ones: {RESULTS.relative_to(REPO) / results})",
    )
    return p


def main_module() -> str:
    """The module this process runs as ``python -m`` (``benchmarks.train``)."""
    spec = getattr(sys.modules["__main__"], "__spec__", None)
    return spec.name if spec else Path(sys.argv[0]).stem


def command_line() -> str:
    """How this benchmark was started, as one would type it again."""
    return shlex.join(["python", "-m", main_module(), *sys.argv[1:]])


def write_json(path: str | None, info: dict, results: dict) -> None:
    """Write ``{machine, command, date, **results}`` to ``path`` (nothing when None). The
    benchmark's own fields stay at the top level, where the recorded files have them."""
    if not path:
        return
    import json

    record = {
        "machine": info,
        "command": command_line(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    clash = set(record) & set(results)
    if clash:
        raise ValueError(f"a benchmark's figures may not be named {sorted(clash)}")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps({**record, **results}, indent=2) + "\n")
