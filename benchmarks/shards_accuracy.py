"""Accuracy from shards vs the same images as a folder tree, same run (issue 33's measure).

    python -m benchmarks.shards_accuracy [--sets digits textures10-2k] [--epochs 5]
        [--batch-size 32] [--seed 0] [--json benchmarks/results/shards_accuracy_cpu.json]

For every set named (real pixels: a set of :mod:`benchmarks.evalsets` such as ``digits``,
scikit-learn's digit scans, or ``textures10-2k``: textures10-7k's ten photo classes and jitter,
2,000 train / 500 val crops, small enough for a busy 2-core machine; ``--seed`` also draws the
crops), writes the folder tree, packs it with ``cifar-data pack``'s writer as WebDataset tars
and as Parquet (the same image bytes), then trains the job (cifar.train.driver.train, one
worker, on one Ray runtime started once) on each of the three with the same epochs, batch, seed
and precision (bf16, not measured per run; the batch fixed because the default recipe's batch
of 4 for a few epochs of 1,438 digits takes too long here), and prints the final test accuracy
of each and the difference shards - tree. The aim is |difference| <= 0.02: the shards hold the
same pixels and labels, so what differs is only the order the samples are listed in (a shard
mixes the classes), which the seeded shuffle then permutes differently. How far that alone
moves accuracy is the tree trained again with the next seed, printed beside.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import (
    describe,
    local_cluster,
    machine,
    parser,
    use_job_train_env,
    write_json,
)
from benchmarks.evalsets import TEXTURE_JITTER, TEXTURES10, write_set
from benchmarks.realpixels import write_textures
from cifar.data.pack import pack
from cifar.train.config import TrainConfig
from cifar.train.driver import train

FORMS = ("webdataset", "parquet")
AIM = 0.02


def write_tree(root: Path, name: str, seed: int) -> Path:
    """The set ``name`` as a folder tree ``root/name`` (train/ and val/)."""
    if name == "textures10-2k":
        rng = np.random.default_rng([seed, 2000])
        write_textures(root / name, rng, TEXTURES10, [200] * 10, [50] * 10, TEXTURE_JITTER)
    else:
        write_set(root, name, seed)
    return root / name


def fit(data_dir: Path, runs: Path, name: str, args, seed: int) -> dict:
    """One training run as cifar-train runs it: final test accuracy and seconds."""
    cfg = TrainConfig(
        data_dir=str(data_dir),
        download=False,
        epochs=args.epochs,
        batch_size=args.batch_size,
        seed=seed,
        num_workers=1,
        storage_path=str(runs),
        name=name,
        precision="bf16",  # pinned: a busy machine's measurement could pick another per run
    )
    t = time.perf_counter()
    s = train(cfg, local_cluster())
    return {
        "test_accuracy": s["final_test_accuracy"],
        "seconds": round(time.perf_counter() - t, 1),
    }


def main() -> None:
    p = parser(__doc__, "shards_accuracy_cpu.json")
    p.add_argument("--sets", nargs="+", default=["digits", "textures10-2k"])
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    import ray

    info = machine()
    results: dict = {"epochs": args.epochs, "batch_size": args.batch_size, "seed": args.seed}
    results |= {"aim": AIM, "sets": {}}
    use_job_train_env()
    with tempfile.TemporaryDirectory(prefix="bench-shard-acc-") as tmp:
        root = Path(tmp)
        for name in args.sets:
            write_tree(root / "trees", name, args.seed)
            for form in FORMS:
                pack(str(root / "trees" / name), str(root / form / name), form)
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, configure_logging=False)
        for name in args.sets:
            tree_dir = root / "trees" / name
            runs = {"tree": fit(tree_dir, root / "runs", name, args, args.seed)}
            for form in FORMS:
                runs[form] = fit(
                    root / form / name, root / "runs", f"{name}-{form}", args, args.seed
                )
            tree = runs["tree"]["test_accuracy"]
            runs["tree, next seed"] = fit(
                tree_dir, root / "runs", f"{name}-seed", args, args.seed + 1
            )
            for form in (*FORMS, "tree, next seed"):
                runs[form]["minus_tree"] = runs[form]["test_accuracy"] - tree
            results["sets"][name] = runs
            said = "  ".join(
                f"{k} {v['test_accuracy']:.4f}"
                + (f" ({v['minus_tree']:+.4f})" if k != "tree" else "")
                for k, v in runs.items()
            )
            print(f"{name:14s} {args.epochs} epochs, seed {args.seed}:  {said}", flush=True)
    worst = max(abs(r[f]["minus_tree"]) for r in results["sets"].values() for f in FORMS)
    results["worst_abs_difference"] = worst
    print(f"worst |shards - tree| {worst:.4f} (aim <= {AIM})  [{describe(info)}]")
    write_json(args.json, info, results)


if __name__ == "__main__":
    main()
