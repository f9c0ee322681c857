"""The sweep's driver: load the data once and put it in the object store for every trial, run
the trials with Ray Tune (:mod:`cifar.tune.search`, packed by :mod:`cifar.tune.packing`, each a
training run of :mod:`cifar.tune.trial`), then write what :mod:`cifar.tune.report` makes of
Tune's records. Ray must already be initialised (the job, ``jobs/tune.py``, calls
``ray.init``).

A sweep's folder::

    <storage-path>/<name>/
      config.json    the training config every trial starts from (the default recipe's run)
      sweep.json     the search (flags, space, packing) and, at the end, its results
      trials.csv     one row per trial; sweep.png: test accuracy against the searched settings
      best/          the best trial's run, copied: cifar-predict --model <sweep>/best
      runs/<trial>/  each trial's run, as cifar-train writes one
      tune/          Ray Tune's own state (what --resume restores)
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import logging
import time
from typing import Any

from cifar.cluster.resources import ClusterInfo
from cifar.cluster.state import placement_waiting
from cifar.cluster.watchdog import Watchdog
from cifar.config import ConfigError
from cifar.data.sources import check_data
from cifar.io import storage
from cifar.models.loading import load_pretrained
from cifar.models.registry import ModelSpec
from cifar.train import tracking
from cifar.train.config import resolve_recipe
from cifar.train.driver import TrainingError, prepare, ray_train_env, run_dir
from cifar.train.summary import describe_data, log_data
from cifar.tune import report
from cifar.tune.config import SweepConfig
from cifar.tune.packing import TRIAL_DRIVER, Packing, plan_packing
from cifar.tune.search import METRIC, Search, scheduler, search_text, searched, searcher
from cifar.tune.space import is_default
from cifar.tune.trial import RUNS_DIR, Shared, run_trial, trial_config

progress = logging.getLogger("cifar.progress")
TUNE_DIR, SWEEP_FILE = "tune", "sweep.json"


def check_sweep_dir(cfg: SweepConfig) -> str:
    """The sweep's folder: a new sweep's must not exist, a resumed one's must."""
    d = run_dir(cfg)
    if cfg.resume and not storage.exists(f"{d}/{SWEEP_FILE}"):
        raise ConfigError(
            f"--resume: no sweep named '{cfg.name}' in {cfg.storage_path} (no {d}/{SWEEP_FILE})."
            " Check --name and --storage-path, or drop --resume to start a new sweep."
        )
    if not cfg.resume and storage.exists(d):
        raise ConfigError(
            f"sweep '{cfg.name}' already exists in {cfg.storage_path}. Pass --resume to continue"
            " it (finished trials are kept), or choose another --name."
        )
    if cfg.search_alg == "optuna" and importlib.util.find_spec("optuna") is None:
        raise ConfigError(
            "--search-alg optuna needs optuna: pip install optuna (or the project's 'tune' "
            "extra), or use --search-alg random."
        )
    return d


def record(cfg: SweepConfig, search: Search, packing: Packing) -> dict[str, Any]:
    """sweep.json's account of the search; a resumed sweep must match it."""
    return {
        **cfg.recorded(),
        "space": {p.name: p.spec for p in search.space},
        "default_point": search.point,
        "packing": dataclasses.asdict(packing),
    }


def check_resume(d: str, now: dict[str, Any]) -> dict[str, Any]:
    """The saved record, when the resumed sweep searches as it did."""
    saved = json.loads(storage.read_text(f"{d}/{SWEEP_FILE}"))
    keys = [k for k in now if k not in ("packing", "default_point")]
    changed = [f"{k} {saved.get(k)!r} -> {now[k]!r}" for k in keys if saved.get(k) != now[k]]
    if changed:
        raise ConfigError(
            f"--resume of sweep '{storage.name(d)}' with a different search "
            f"({'; '.join(changed)}). A resumed sweep keeps its search and packing: pass the "
            "same flags, or start a new sweep with another --name."
        )
    return saved


def trial_dirname(trial) -> str:
    """A trial's folder under tune/, named as its run under runs/."""
    return trial.trial_id


def tuner_for(cfg: SweepConfig, search: Search, shared: Shared, d: str):
    """A new Tuner for the sweep or, with --resume, the stopped one restored: its finished
    trials kept, the others continued (Ray Train resumes their runs' latest checkpoints)."""
    from ray import tune

    from cifar.tune.progress import SweepLog

    trainable = tune.with_resources(tune.with_parameters(run_trial, shared=shared), TRIAL_DRIVER)
    packing = shared.packing
    path = f"{d}/{TUNE_DIR}"
    if cfg.resume and tune.Tuner.can_restore(path):
        return tune.Tuner.restore(path, trainable, resume_unfinished=True, resume_errored=True)
    return tune.Tuner(
        trainable,
        param_space={p.name: p.domain() for p in search.space},
        tune_config=tune.TuneConfig(
            metric=METRIC,
            mode="max",
            num_samples=cfg.trials,
            search_alg=searcher(cfg, search, packing.at_once, packing.first_alone),
            scheduler=scheduler(cfg, search),
            trial_dirname_creator=trial_dirname,
        ),
        run_config=tune.RunConfig(
            name=TUNE_DIR,
            storage_path=d,
            verbose=0,  # the log's lines are SweepLog's
            callbacks=[SweepLog(cfg.epochs, search.names)],
        ),
    )


def sweep(cfg: SweepConfig, cluster: ClusterInfo) -> dict[str, Any]:
    """Run (or continue) the sweep ``cfg`` names; returns what sweep.json says of it."""
    import ray

    from cifar.tune.progress import Heartbeats

    d = check_sweep_dir(cfg)
    packing = plan_packing(cfg, cluster)
    p = prepare(cfg.training())  # the data, once; config.json: the recipe trials start from
    search = searched(cfg, p.cfg)
    now = record(cfg, search, packing)
    if cfg.resume:  # Tune restores the trials at once it had
        packing = Packing(**check_resume(d, now)["packing"])
        now["packing"] = dataclasses.asdict(packing)
    storage.write_text(f"{d}/{SWEEP_FILE}", json.dumps(now, indent=2))
    dataset = describe_data(p.data)
    log_data(p.data, dataset)
    # the pixels go to the object store once: every trial's workers read them from there
    pixels = p.data.for_workers()
    weights = p.pretrained
    if weights is None and p.cfg.weights:  # resumed: trials yet to start need them all the same
        base = ModelSpec.of(p.cfg.arch, p.data.classes, input_size=p.cfg.size)
        weights = load_pretrained(p.cfg.weights, base)
    shared = Shared(
        base=p.cfg,
        follow=search.follow,
        spec=p.spec,
        data=ray.put(pixels),
        facts=p.data.facts(),
        dataset=dataset,
        weights=ray.put(weights.state_dict) if weights is not None else None,
        runs=f"{d}/{RUNS_DIR}",
        packing=packing,
        train_env=ray_train_env(cfg),
        mlflow_parent=(parent := tracking.start_sweep(cfg.mlflow_uri, cfg.name, d, now)).ref,
        point=search.point,
    )
    for line in plan_lines(cfg, search, packing)[2:]:
        progress.info("[cifar] %s", line[2:])
    t0 = time.perf_counter()
    with (
        Watchdog(
            f"sweep '{cfg.name}'",
            packing.text(),
            Heartbeats(shared.runs),
            placement_waiting,
            cfg.stall_timeout,
        ) as dog,
        parent,
    ):
        tuner_for(cfg, search, shared, d).fit()
    dog.check()
    summary = finish(cfg, search, shared, d, time.perf_counter() - t0)
    numbers = {k: v for k, v in summary.items() if isinstance(v, (int, float))}
    parent.finish(numbers, (SWEEP_FILE, report.TRIALS_FILE, report.PICTURE_FILE))  # MLflow
    return summary


def finish(cfg: SweepConfig, search: Search, shared: Shared, d: str, seconds: float) -> dict:
    """trials.csv, sweep.png, best/ and sweep.json from Tune's records of the trials. A sweep
    that Ctrl-C ended writes them for the trials so far, then says it was interrupted."""
    from ray.tune import ExperimentAnalysis

    analysis = ExperimentAnalysis(f"{d}/{TUNE_DIR}")
    rows = []
    for number, trial in enumerate(report.in_order(analysis.trials)):
        frame = analysis.trial_dataframes.get(trial.trial_id)
        history = report.run_history(f"{d}/{RUNS_DIR}/{trial.trial_id}")
        row = report.trial_row(number, trial, frame, history, cfg.epochs, search.names)
        trained, _ = trial_config(shared, row.settings, trial.trial_id)
        row.batch_size, row.lr = trained.batch_size, trained.lr
        row.default_recipe = is_default(search.point, row.settings)
        row.run = f"{RUNS_DIR}/{trial.trial_id}"
        rows.append(row)
    storage.write_bytes(f"{d}/{report.TRIALS_FILE}", report.trials_csv(rows, search.names))
    best = report.best_of(rows)
    if best is not None:
        title = (
            f"sweep {cfg.name}: {len(rows)} trials, best test accuracy "
            f"{best.best_test_accuracy:.4f} (trial {best.number})"
        )
        picture = report.sweep_png(rows, search.space, title)
        storage.write_bytes(f"{d}/{report.PICTURE_FILE}", picture)
        report.copy_run(f"{d}/{best.run}", f"{d}/{report.BEST_DIR}")
    summary = results(search, rows, best, d, seconds)
    saved = json.loads(storage.read_text(f"{d}/{SWEEP_FILE}"))
    storage.write_text(f"{d}/{SWEEP_FILE}", json.dumps({**saved, "results": summary}, indent=2))
    if any(r.status == report.UNFINISHED for r in rows):
        raise KeyboardInterrupt("interrupted (SIGINT)")  # Tune's handler took the Ctrl-C
    if best is None:
        said = next((r.error for r in rows if r.error), "no trial reported a result")
        raise TrainingError(f"every trial of sweep '{cfg.name}' failed: {said}")
    return summary


def results(search: Search, rows, best, d: str, seconds: float) -> dict[str, Any]:
    """What sweep.json and the job's last lines say of the sweep."""
    default = next((r for r in rows if r.default_recipe), None)
    statuses = (report.DONE, report.STOPPED, report.ERROR)
    return {
        "sweep_dir": d,
        "trials": len(rows),
        **{s.replace(" ", "_"): sum(r.status == s for r in rows) for s in statuses},
        "seconds": round(seconds, 1),
        "peak_trials_at_once": report.peak_concurrency(rows),
        "best": None if best is None else best.csv_row(search.names),
        "default_recipe": None if default is None else default.csv_row(search.names),
        "best_dir": f"{d}/{report.BEST_DIR}" if best is not None else None,
    }


# --------------------------------------------------------------------------- --dry-run


def plan_lines(cfg: SweepConfig, search: Search, packing: Packing) -> list[str]:
    """What the sweep does: its folder, space, trials, first trial and packing."""
    width = max(len(n) for n in search.names)
    space = [f"{p.name:<{width}}  {p.text()}" for p in search.space]
    first = "the default recipe is outside the space: not tried"
    if search.point:
        values = ", ".join(
            f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in search.point.items()
        )
        alone = (
            f"first and alone with {packing.default_threads} CPUs per worker, "
            if packing.first_alone
            else ""
        )
        first = f"the default recipe ({values}): cifar-train's run ({alone}never stopped early)"
    return [
        "[cifar] dry run: the config, data, space and sweep folder check out; nothing was started",
        f"  sweep:     {run_dir(cfg)} ({'resumed' if cfg.resume else 'new'})",
        f"  space:     {space[0]}",
        *(f"             {s}" for s in space[1:]),
        f"  trials:    {search_text(cfg)}",
        f"  first:     {first}",
        f"  packing:   {packing.text()}",
    ]


def tune_plan(cfg: SweepConfig, cluster: ClusterInfo) -> list[str]:
    """``--dry-run``: every check made, the plan printed, nothing started or written."""
    check_sweep_dir(cfg)
    typed = cfg.training()
    if cfg.resume:  # the batch and lr the sweep picked when it started
        saved = json.loads(storage.read_text(f"{run_dir(cfg)}/config.json"))
        chosen = {k: saved[k] for k in ("batch_size", "lr") if getattr(typed, k) is None}
        typed = dataclasses.replace(typed, **chosen)
    data, n_train = check_data(typed.data_request())
    resolved = resolve_recipe(typed, n_train or 50_000, cfg.workers_per_trial)
    search = searched(cfg, resolved)
    lines = plan_lines(cfg, search, plan_packing(cfg, cluster))
    return [*lines[:2], f"  data:      {data}", *lines[2:]]
