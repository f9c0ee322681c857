"""Search the training recipe with Ray Tune: ``cifar-tune [flags]`` (``python -m jobs.tune`` for
``ray job submit``). Each trial is a training run as ``cifar-train`` makes one; several run at
once on a CPU or a GPU; ASHA stops the trailing ones early; ``best/`` is the best trial's run.

Examples:
  cifar-tune --smoke-test
  cifar-tune --data-dir pets --trials 16 --epochs 8 --name pets-sweep
  cifar-tune --data-dir pets --search lr=loguniform:0.001:0.3 --search batch_size=choice:16,32,64
  cifar-tune --data-dir pets --search space.yaml --search-alg optuna
  cifar-tune --data-dir pets --cpus-per-trial 0.5          # two trials per CPU
  cifar-tune --data-dir data --gpus-per-trial 0.25         # four trials per GPU
  cifar-tune --data-dir pets --name pets-sweep --resume    # after a kill: finished trials kept
  cifar-tune --data-dir pets --dry-run                     # the space, packing, trials at once
  cifar-predict --model ~/ray_results/pets-sweep/best --input photos/ --output preds/
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

from cifar.config import ConfigError, config_yaml
from cifar.data.dataset import DataError
from cifar.models.checkpoint import CheckpointError
from cifar.train.driver import TrainingError, named, ray_train_env
from cifar.tune.config import SweepConfig, resolve_sweep

from .common import Boundary, command, configure_logging, handle_signals, parse

PROGRAM = "cifar-tune"
TUNE_ENV = {
    # Ray Tune saves which trials finished every TUNE_GLOBAL_CHECKPOINT_S (default: 10 s or
    # more): a sweep killed just after a trial finished would run that trial again on --resume
    "TUNE_GLOBAL_CHECKPOINT_S": "2",
    # Tune's own output engine prints a table at the start whatever the verbosity: the log's
    # lines are the sweep's own (one per trial epoch)
    "RAY_AIR_NEW_OUTPUT": "0",
}


def main(boundary: Boundary, argv: list[str]) -> int:
    asked = parse(
        SweepConfig,
        PROGRAM,
        "Search the training recipe with Ray Tune.",
        __doc__,
        argv,
        resolve_sweep,
    )
    cfg = asked.cfg
    if asked.print_config:
        print(config_yaml(cfg, leave_out=("name", "resume")), end="")
        return 0
    cfg = named(cfg)
    configure_logging(cfg.verbose)
    if not cfg.verbose:  # after a kill Tune warns of each trial's lost records: the runs have them
        logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)
        quiet_optuna(cfg)
    boundary.verbose = cfg.verbose
    from cifar.tune.sweep import sweep, tune_plan

    if asked.dry_run:
        lines = tune_plan(cfg, local_resources())
        if os.environ.get("RAY_ADDRESS"):
            lines.append("  (trials at once on this machine; on the cluster: as many as its free")
            lines.append("   CPUs and GPUs hold when the sweep starts)")
        print("\n".join(lines))
        return 0
    settings = {"RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS": "0", **TUNE_ENV, **ray_train_env(cfg)}
    for k, v in settings.items():
        os.environ.setdefault(k, v)
    from cifar.cluster.resources import cluster_info, connect

    # the trials' lines come to this log through Ray Tune (one per epoch); their workers' own
    # lines, sixteen trials at once, only with --verbose
    connect(log_to_driver=cfg.verbose, configure_logging=False)
    handle_signals()
    boundary.hint = lambda code: resume_hint(cfg, argv)
    print(done_lines(sweep(cfg, cluster_info())))
    return 0


def quiet_optuna(cfg: SweepConfig) -> None:
    """Optuna logs "A new study created" at INFO on import and study: WARNING and up only."""
    if cfg.search_alg == "optuna":
        try:
            import optuna
        except ImportError:  # the sweep says what to install
            return
        optuna.logging.set_verbosity(optuna.logging.WARNING)


def local_resources():
    """--dry-run starts no Ray: this machine's CPUs and GPUs (a cluster's are counted when the
    sweep starts)."""
    from cifar.cluster.resources import ClusterInfo

    try:
        import torch

        gpus = float(torch.cuda.device_count())
    except ImportError:
        gpus = 0.0
    return ClusterInfo(cpus=float(os.cpu_count() or 1), gpus=gpus)


def resume_hint(cfg: SweepConfig, argv: list[str]) -> str:
    """What a stopped sweep keeps, and the command that continues it."""
    again = command(
        PROGRAM, argv, add=["--resume", *([] if "--name" in argv else ["--name", cfg.name])]
    )
    return f"Sweep '{cfg.name}': finished trials are kept; continue it with: {again}"


def done_lines(s: dict[str, Any]) -> str:
    """The sweep's last lines: the best trial against the default recipe, and where things are."""
    best, default = s["best"], s["default_recipe"]
    vs = ""
    if default is not None and default["trial"] == best["trial"]:
        vs = ": the default recipe"
    elif default is not None:
        vs = f"; the default recipe: {default['best_test_accuracy']:.4f}, trial {default['trial']}"
    return (
        f"[cifar] sweep done: {s['trials']} trials ({s['done']} done, {s['stopped_early']} stopped "
        f"early, {s['error']} failed) in {s['seconds']:.0f}s, at most "
        f"{s['peak_trials_at_once']} at once; best test accuracy "
        f"{best['best_test_accuracy']:.4f} (trial {best['trial']}{vs})\n"
        f"  best run:    {s['best_dir']} (cifar-predict --model {s['best_dir']})\n"
        f"  trials:      {s['sweep_dir']}/trials.csv, picture: {s['sweep_dir']}/sweep.png\n"
        f"  tensorboard: tensorboard --logdir {s['sweep_dir']}/runs"
    )


def cli() -> None:
    """The installed ``cifar-tune`` command."""
    handled = (ConfigError, DataError, CheckpointError, TrainingError)
    Boundary(handled).run(lambda b: main(b, sys.argv[1:]))


if __name__ == "__main__":
    cli()
