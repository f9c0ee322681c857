"""Training ingest on a local 2-node cluster (issue 33): ``--data-loading ray`` (Ray Data decodes
and augments the photos on the cluster's CPUs) against ``stream`` (the trainer's own DataLoader
processes), the trainer held to 1 CPU (``--cpus-per-worker 1``, so ``stream`` decodes in 1
loader process beside it). Both runs are ``cifar.train.driver.train``, the job's own driver.

Each "node" is pinned to its own core (``--node-cpus 1``): the head, this driver and everything
they start on core 0, the second node (a CPU-only node) and every process it starts on core 1.
So ``stream`` decodes on the trainer's core only and ``ray`` on the other node's: the case of a
GPU node whose cores cap ingest and a cluster with CPU-only nodes. Photos of ``--photo-side``
pixels (JPEG), decoded to ``--size`` with the random resized crop + flip on (done where they are
decoded: the loader process, or Ray Data's decode tasks), a small model (``--arch``). Images/s
of the last epochs (the first carries Ray Data's start).

With ``--accuracy``: the same comparison's final test accuracy on a real-pixel set (redrawn
handwritten digits, benchmarks.realpixels), same epochs and seed, cifar10_quick at 32 px.

The cluster is ``scripts/cluster-up.sh --workers 1 --num-cpus N`` (loopback, token auth) on
ports of its own, stopped at the end; ``--unpinned`` leaves both nodes on every core.

    python -m benchmarks.ingest [--photos 1500] [--photo-side 600] [--size 64] [--epochs 3]
                                [--arch shufflenet_v2_x0_5] [--node-cpus 1] [--json PATH]
    python -m benchmarks.ingest --accuracy [--digits 2000] [--epochs 5] [--seed 0] [--json PATH]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import REPO, describe, machine, parser, write_json

PORT, DASH, CLIENT = 6411, 8291, 23021  # apart from tests/test_cluster.py's and the defaults'
GCS = f"127.0.0.1:{PORT}"
CLASSES = ("a", "b", "c", "d")


def cluster_env(tmp: str) -> dict[str, str]:
    env = dict(
        os.environ,
        CIFAR_RAY_CLUSTER_TMP=tmp,
        RAY_AUTH_MODE="token",
        RAY_ADDRESS=f"http://127.0.0.1:{DASH}",
        PYTHONPATH=str(REPO),
    )
    env.pop("RAY_AUTH_TOKEN", None)
    return env


def cluster_up(tmp: str, node_cpus: int) -> dict[str, str]:
    env = cluster_env(tmp)
    up = ["scripts/cluster-up.sh", "--workers", "1", "--num-cpus", str(node_cpus)]
    ports = ["--port", str(PORT), "--dashboard-port", str(DASH), "--client-port", str(CLIENT)]
    r = subprocess.run(up + ports, cwd=REPO, env=env, capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(f"cluster-up failed:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
    return env


def cluster_down(env: dict[str, str]) -> None:
    subprocess.run(
        ["scripts/cluster-down.sh", "--port", str(PORT)],
        cwd=REPO,
        env=env,
        capture_output=True,
        timeout=120,
    )


def write_photos(folder: Path, n: int, side: int, seed: int = 0) -> None:
    """``n`` side x 3/4 side JPEGs (quality 90) of smooth random colour fields plus per-pixel
    noise (they compress and decode as photos do), one folder per class in turn (as
    benchmarks.common.write_photos, at the photo sizes people train small models from)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    for i in range(n):
        grid = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8), "RGB")
        img = np.asarray(grid.resize((side, side * 3 // 4), Image.BICUBIC), dtype=np.int16)
        img = img + rng.integers(-20, 21, img.shape)
        sub = folder / CLASSES[i % len(CLASSES)]
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(
            sub / f"photo_{i:05d}.jpg", quality=90
        )


def pin(pids: list[int], core: int) -> int:
    """Every thread of ``pids`` onto ``core`` (``taskset -a -p``): what they start later inherits
    it. Returns the threads moved."""
    moved = 0
    for pid in pids:
        try:
            for tid in os.listdir(f"/proc/{pid}/task"):
                os.sched_setaffinity(int(tid), {core})
                moved += 1
        except (FileNotFoundError, ProcessLookupError):
            pass  # gone meanwhile
    return moved


def second_node(tmp: str) -> list[int]:
    """The processes of the cluster's second node (its temp dir) and their children."""
    from jobs.local_cluster import cluster_processes

    return [p.pid for p in cluster_processes(f"{tmp}/node1", "-")]


def affinities(tmp: str) -> dict[str, list[int]]:
    """The cores each node's processes may run on (a check that the pinning held)."""
    from jobs.local_cluster import cluster_processes

    node1 = set(second_node(tmp))
    cores: dict[str, set[int]] = {"head": set(), "node1": set()}
    for p in cluster_processes(tmp, GCS):
        with contextlib.suppress(ProcessLookupError):
            cores["node1" if p.pid in node1 else "head"] |= os.sched_getaffinity(p.pid)
    return {k: sorted(v) for k, v in cores.items()}


def connect() -> None:
    """This process as the cluster's driver, as a job on it is (Ray Train's settings with it)."""
    import ray

    from cifar.train.config import TrainConfig
    from cifar.train.driver import ray_train_env

    env = {"PYTHONPATH": str(REPO), "RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS": "0"}
    env.update(ray_train_env(TrainConfig()))
    os.environ.update(env)
    ray.init(GCS, runtime_env={"env_vars": env}, logging_level="ERROR")
    ray.data.DataContext.get_current().enable_progress_bars = False


def run(
    data: Path,
    loading: str,
    epochs: int,
    work: Path,
    name: str,
    augment: bool,
    seed: int = 0,
    arch: str = "cifar10_quick",
    size: int | None = None,
) -> dict:
    """One training run as the job runs it: 1 worker of 1 CPU, ``arch`` at ``size`` px."""
    from cifar.cluster.resources import cluster_info
    from cifar.train.config import TrainConfig
    from cifar.train.driver import train

    cfg = TrainConfig(
        data_dir=str(data),
        data_loading=loading,
        arch=arch,
        image_size=size,
        epochs=epochs,
        batch_size=64,
        num_workers=1,
        cpus_per_worker=1,
        use_gpu=False,
        augment=augment,
        precision="fp32",
        storage_path=str(work),
        name=name,
        max_failures=0,
        seed=seed,
    )
    t0 = time.perf_counter()
    summary = train(cfg, cluster_info())
    history = summary["history"]
    return {
        "loading": loading,
        "images_per_s": [round(h["images_per_s"], 1) for h in history],
        "train_seconds": [round(h["train_seconds"], 2) for h in history],
        "test_accuracy": history[-1]["test_accuracy"],
        "test_images": history[-1]["test_images"],
        "run_seconds": round(time.perf_counter() - t0, 1),
    }


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__, "ingest.json (ingest_accuracy.json with --accuracy)")
    p.add_argument("--photos", type=int, default=1500, help="training photos (JPEG)")
    p.add_argument("--photo-side", type=int, default=600, help="the photos' width (3/4 high)")
    p.add_argument("--size", type=int, default=64, help="pixels a side the model sees")
    p.add_argument("--arch", default="shufflenet_v2_x0_5", help="the model (photos)")
    p.add_argument("--digits", type=int, default=2000, help="--accuracy: training digits")
    p.add_argument("--epochs", type=int, default=None, help="default: 3 (5 with --accuracy)")
    p.add_argument("--node-cpus", type=int, default=1, help="CPUs of each of the 2 nodes")
    p.add_argument("--unpinned", action="store_true", help="both nodes on every core")
    p.add_argument("--accuracy", action="store_true", help="accuracy on digits, not images/s")
    p.add_argument("--seed", type=int, default=0, help="the runs' --seed (and the digits')")
    p.add_argument("--loadings", nargs="+", default=["stream", "ray"], help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    # before Ray is imported (machine() does): the cluster's loopback address, its token
    os.environ.update(RAY_AUTH_MODE="token", RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0")
    os.environ.pop("RAY_ADDRESS", None)
    usable = sorted(os.sched_getaffinity(0))
    pinned = not a.unpinned and len(usable) >= 2
    if pinned:  # this driver, the head and all they start on one core
        os.sched_setaffinity(0, {usable[0]})
    epochs = a.epochs or (5 if a.accuracy else 3)
    info = machine()
    load = os.getloadavg()[0]  # other work on the machine: a figure's noise
    print(f"[ingest] {describe(info)}; load average {load:.1f}", flush=True)
    with tempfile.TemporaryDirectory(prefix="ingest-") as w:
        work = Path(w)
        t0 = time.perf_counter()
        if a.accuracy:
            import numpy as np

            from benchmarks.realpixels import write_digits

            data = work / "digits"
            write_digits(data, np.random.default_rng(a.seed), a.digits, a.digits // 4)
            model: dict = {}
        else:
            data = work / "photos"
            write_photos(data / "train", a.photos, a.photo_side)
            write_photos(data / "val", max(40, a.photos // 20), a.photo_side, seed=1)
            model = {"arch": a.arch, "size": a.size}
        print(f"[ingest] data written in {time.perf_counter() - t0:.0f}s", flush=True)
        tmp = f"/tmp/cifar-ingest-{os.getpid()}"
        env = cluster_up(tmp, a.node_cpus)
        try:
            if pinned:  # the second node (a CPU-only node) and all it starts on the other core
                moved = pin(second_node(tmp), usable[1])
                print(f"[ingest] second node on core {usable[1]} ({moved} threads)", flush=True)
            connect()
            runs = {}
            for loading in a.loadings:
                r = run(data, loading, epochs, work / "runs", loading, True, a.seed, **model)
                runs[loading] = r
                print(f"[ingest] {loading}: {r}", flush=True)
            cores = affinities(tmp)
        finally:
            cluster_down(env)
    s, r = runs["stream"], runs["ray"]
    results = {"nodes": 2, "node_cpus": a.node_cpus, "epochs": epochs, "seed": a.seed, "runs": runs}
    results["load_average"] = [round(load, 1), round(os.getloadavg()[0], 1)]  # start, end
    results["cores"] = cores  # what each node's processes could run on, after the runs
    if a.accuracy:
        diff = r["test_accuracy"] - s["test_accuracy"]
        results.update(set="digits", train_images=a.digits, accuracy_difference=round(diff, 4))
        print(
            f"[ingest] final test accuracy: ray {r['test_accuracy']:.4f} vs stream "
            f"{s['test_accuracy']:.4f} (difference {diff:+.4f})"
        )
    else:
        last = max(1, epochs - 1)  # the epochs after the first (Ray Data's start)
        ray_ips = sum(r["images_per_s"][-last:]) / last
        stream_ips = sum(s["images_per_s"][-last:]) / last
        ratio = ray_ips / stream_ips
        side = f"{a.photo_side}x{a.photo_side * 3 // 4}"
        results.update(
            set=f"photos {side} JPEG at {a.size} px, random resized crop + flip, {a.arch}",
            train_images=a.photos,
            pinned=pinned,
            images_per_s_after_first_epoch={
                "ray": round(ray_ips, 1),
                "stream": round(stream_ips, 1),
            },
            ratio_after_first_epoch=round(ratio, 2),
        )
        print(
            f"[ingest] training images/s after the first epoch: ray {ray_ips:.0f} vs "
            f"stream {stream_ips:.0f}: ratio {ratio:.2f}x"
        )
    write_json(a.json, info, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
