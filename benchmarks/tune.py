"""A sweep packed onto the machine vs the same trials one after another; the best trial vs the
default recipe.

    python -m benchmarks.tune [--trials 16] [--epochs 4] [--train 7000 --test 1000]
        [--cpus-per-trial 0.5] [--asha] [--json benchmarks/results/tune_cpu.json]

Writes the digits set (real handwritten scans, ``cifar-data digits``), then runs the sweep job
as a user runs it (``python -m jobs.tune``, its default space around the default recipe, the
default recipe as trial 0), twice with the same --trials trials (same seed, so the same
settings) and --no-early-stop, so both do the same work:
  one after another: --max-concurrent 1 and every CPU to the trial (as --trials cifar-train
                     runs would), and
  packed:            --cpus-per-trial (default 0.5: four trials at once on two CPUs).
With --asha, a third run: packed with ASHA early stopping, the job's default.
Prints each sweep's time (Tune's loop; Ray start-up and data loading apart), the speed-up, the
trials at once (from Tune's records), and the best trial's test accuracy against the default
recipe's (trial 0).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import pandas as pd

from benchmarks.common import describe, job_env, machine, parser, run_module, write_json


def sweep(data: Path, runs: Path, name: str, args, *flags: object) -> dict:
    """One ``python -m jobs.tune`` run: its summary, its trials and its process's wall time."""
    _, wall = run_module(
        "jobs.tune",
        "--data-dir",
        data,
        "--storage-path",
        runs,
        "--name",
        name,
        "--trials",
        args.trials,
        "--epochs",
        args.epochs,
        *flags,
        env=job_env(CIFAR_RAY_CACHE=str(runs / "cache")),
    )
    d = runs / name
    results = json.loads((d / "sweep.json").read_text())["results"]
    trials = pd.read_csv(d / "trials.csv")
    best = results["best"]
    line = (
        f"{name:18s} {results['seconds']:7.1f}s sweep ({wall:6.1f}s process), "
        f"{results['peak_trials_at_once']} at once, best {best['best_test_accuracy']:.4f} "
        f"(trial {best['trial']}), {results['stopped_early']} stopped early"
    )
    print(line, flush=True)
    return {
        "sweep_seconds": results["seconds"],
        "process_seconds": round(wall, 1),
        "peak_trials_at_once": results["peak_trials_at_once"],
        "mean_trial_seconds": round(float(trials["seconds"].mean()), 1),
        "best": results["best"],
        "default_recipe": results["default_recipe"],
        "stopped_early": results["stopped_early"],
        "settings": trials.drop(columns=["run", "error"]).to_dict("records"),
    }


def main() -> None:
    p = parser(__doc__, "tune_cpu.json")
    p.add_argument("--trials", type=int, default=16)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--train", type=int, default=7000)
    p.add_argument("--test", type=int, default=1000)
    p.add_argument("--cpus-per-trial", type=float, default=0.5)
    p.add_argument("--asha", action="store_true", help="also the packed sweep with ASHA")
    args = p.parse_args()
    import numpy as np

    from cifar.data.examples import write_digits

    info = machine()
    cpus = os.cpu_count() or 1
    with tempfile.TemporaryDirectory(prefix="bench-tune-") as tmp:
        data, runs = Path(tmp) / "digits", Path(tmp) / "runs"
        write_digits(data, np.random.default_rng(0), args.train, args.test)
        alone = sweep(
            data,
            runs,
            "one-after-another",
            args,
            "--no-early-stop",
            "--max-concurrent",
            1,
            "--cpus-per-trial",
            cpus,
        )
        packed = sweep(
            data, runs, "packed", args, "--no-early-stop", "--cpus-per-trial", args.cpus_per_trial
        )
        asha = (
            sweep(data, runs, "packed-asha", args, "--cpus-per-trial", args.cpus_per_trial)
            if args.asha
            else None
        )
    same = [(r["lr"], r["batch_size"]) for r in alone["settings"]] == [
        (r["lr"], r["batch_size"]) for r in packed["settings"]
    ]
    speedup = alone["sweep_seconds"] / packed["sweep_seconds"]
    default = packed["default_recipe"]
    print(
        f"packed / one after another: {speedup:.2f}x faster ({args.trials} trials x "
        f"{args.epochs} epochs, the same settings: {same}); best trial "
        f"{packed['best']['best_test_accuracy']:.4f} vs the default recipe "
        f"{default['best_test_accuracy'] if default else float('nan'):.4f}  [{describe(info)}]"
    )
    results = {
        "trials": args.trials,
        "epochs": args.epochs,
        "train_images": args.train,
        "test_images": args.test,
        "cpus_per_trial": args.cpus_per_trial,
        "same_settings": same,
        "speedup": round(speedup, 2),
        "one_after_another": alone,
        "packed": packed,
        "packed_asha": asha,
    }
    write_json(args.json, info, results)


if __name__ == "__main__":
    main()
