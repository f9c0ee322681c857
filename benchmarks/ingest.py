"""Training ingest on a local 2-node cluster (issue 33): ``--data-loading ray`` (Ray Data decodes
the photos on both nodes' CPUs) against ``stream`` (the trainer's own DataLoader processes), the
trainer held to 1 CPU on its node (``--cpus-per-worker 1``, so ``stream`` decodes in 1 loader
process). Both runs are ``cifar.train.driver.train``, the job's own driver, on the same 1024x768
JPEG photo tree, without augmentation (it would run loader-side in one and on the device in the
other: this measures ingest). Images/s of the last epoch (the first carries Ray Data's start).

With ``--accuracy``: the same comparison's final test accuracy on a real-pixel set (redrawn
handwritten digits, benchmarks.realpixels), same epochs and seed.

The cluster is ``scripts/cluster-up.sh --workers 1 --num-cpus N`` (loopback, token auth) on
ports of its own, stopped at the end.

    python -m benchmarks.ingest [--photos 1000] [--epochs 3] [--node-cpus 2] [--json PATH]
    python -m benchmarks.ingest --accuracy [--digits 2000] [--epochs 5] [--seed 0] [--json PATH]
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import REPO, describe, machine, parser, write_json, write_photos

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
    data: Path, loading: str, epochs: int, work: Path, name: str, augment: bool, seed: int = 0
) -> dict:
    """One training run as the job runs it: 1 worker of 1 CPU, cifar10_quick at 32 px."""
    from cifar.cluster.resources import cluster_info
    from cifar.train.config import TrainConfig
    from cifar.train.driver import train

    cfg = TrainConfig(
        data_dir=str(data),
        data_loading=loading,
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
    p.add_argument("--photos", type=int, default=1000, help="training photos (1024x768 JPEG)")
    p.add_argument("--digits", type=int, default=2000, help="--accuracy: training digits")
    p.add_argument("--epochs", type=int, default=None, help="default: 3 (5 with --accuracy)")
    p.add_argument("--node-cpus", type=int, default=2, help="CPUs of each of the 2 nodes")
    p.add_argument("--accuracy", action="store_true", help="accuracy on digits, not images/s")
    p.add_argument("--seed", type=int, default=0, help="the runs' --seed (and the digits')")
    a = p.parse_args(argv)
    # before Ray is imported (machine() does): the cluster's loopback address, its token
    os.environ.update(RAY_AUTH_MODE="token", RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0")
    os.environ.pop("RAY_ADDRESS", None)
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
        else:
            data = work / "photos"
            write_photos(data / "train", a.photos, CLASSES)
            write_photos(data / "val", max(40, a.photos // 20), CLASSES, seed=1)
        print(f"[ingest] data written in {time.perf_counter() - t0:.0f}s", flush=True)
        env = cluster_up(f"/tmp/cifar-ingest-{os.getpid()}", a.node_cpus)
        try:
            connect()
            runs = {}
            for loading in ("stream", "ray"):
                r = run(data, loading, epochs, work / "runs", loading, a.accuracy, a.seed)
                runs[loading] = r
                print(f"[ingest] {loading}: {r}", flush=True)
        finally:
            cluster_down(env)
    s, r = runs["stream"], runs["ray"]
    results = {"nodes": 2, "node_cpus": a.node_cpus, "epochs": epochs, "seed": a.seed, "runs": runs}
    results["load_average"] = [round(load, 1), round(os.getloadavg()[0], 1)]  # start, end
    if a.accuracy:
        diff = r["test_accuracy"] - s["test_accuracy"]
        results.update(set="digits", train_images=a.digits, accuracy_difference=round(diff, 4))
        print(
            f"[ingest] final test accuracy: ray {r['test_accuracy']:.4f} vs stream "
            f"{s['test_accuracy']:.4f} (difference {diff:+.4f})"
        )
    else:
        ratio = r["images_per_s"][-1] / s["images_per_s"][-1]
        results.update(
            set="photos 1024x768 JPEG at 32 px",
            train_images=a.photos,
            ratio_last_epoch=round(ratio, 2),
        )
        print(
            f"[ingest] training images/s, last epoch: ray {r['images_per_s'][-1]:.0f} vs "
            f"stream {s['images_per_s'][-1]:.0f}: ratio {ratio:.2f}x"
        )
    write_json(a.json, info, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
