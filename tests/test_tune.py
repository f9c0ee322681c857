"""cifar-tune: the search space and packing (no Ray), a real sweep on generated folders (trials
packed four to two CPUs, ASHA, best/ classifying, the first trial cifar-train's run to the bit),
and a sweep SIGKILLed and resumed."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from cifar.cluster.resources import ClusterInfo
from cifar.config import ConfigError
from cifar.io import storage
from cifar.train.config import TrainConfig
from cifar.tune.config import SweepConfig, resolve_sweep
from cifar.tune.packing import plan_packing
from cifar.tune.report import in_order
from cifar.tune.search import cuts
from cifar.tune.space import Param, default_point, default_space, parse_space
from tests.helpers.processes import kill_group, wait_until
from tests.paths import ROOT

TWO_CPUS = ClusterInfo(cpus=2, gpus=0, largest_node_cpus=2)
BASE = TrainConfig()


# --------------------------------------------------------------------------- without Ray


def test_a_space_from_flags_and_from_a_file_draws_typed_values(tmp_path):
    space = parse_space(
        [
            "lr=loguniform:0.001:0.3",
            "batch_size=choice:16,32,64",
            "augment=choice:on,off",
            "seed=randint:0:3",
            "schedule=choice:cosine,onecycle",
        ],
        BASE,
    )
    assert [p.spec for p in space] == [
        "loguniform:0.001:0.3",
        "choice:16,32,64",
        "choice:true,false",
        "randint:0:3",
        "choice:cosine,onecycle",
    ]
    assert space[1].values == (16, 32, 64) and space[3].text() == "integer 0 .. 3"
    assert space[0].holds(0.3) and not space[0].holds(0.31) and space[2].holds(False)
    (tmp_path / "space.yaml").write_text("lr: uniform:0.01:0.1\nbatch_size: [16, 64]\n")
    (tmp_path / "space.json").write_text(json.dumps({"weight_decay": "loguniform:1e-5:1e-3"}))
    from_files = parse_space([str(tmp_path / "space.yaml"), str(tmp_path / "space.json")], BASE)
    assert [(p.name, p.kind, p.values) for p in from_files] == [
        ("lr", "uniform", (0.01, 0.1)),
        ("batch_size", "choice", (16, 64)),
        ("weight_decay", "loguniform", (1e-5, 1e-3)),
    ]


@pytest.mark.parametrize(
    "entry, said",
    [
        ("lrr=loguniform:0.001:0.3", "did you mean lr?"),
        ("arch=choice:resnet18,cifar10_quick", "searches the training recipe's settings"),
        ("epochs=randint:1:9", "--epochs is the most a trial runs"),
        ("lr=0.05", "a fixed value is a flag: --lr 0.05"),
        ("lr=normal:0:1", "loguniform:LO:HI, uniform:LO:HI, randint:LO:HI"),
        ("batch_size=uniform:16:64", "batch_size is a whole number: randint:LO:HI"),
        ("lr=loguniform:0:0.1", "loguniform needs LO > 0"),
        ("lr=uniform:0.3:0.1", "LO must be below HI"),
        ("momentum=uniform:0.5:1.5", "--momentum must be in [0, 1) (got 1.5)"),
        ("schedule=choice:cosine,linear", "schedule is one of onecycle, cosine, constant"),
        ("augment=choice:yes,maybe", "'maybe' is not true or false"),
        ("batch_size=choice:32", "two different options at least"),
        ("no-such-file.yaml", "no such file"),
    ],
)
def test_a_bad_search_is_one_line_naming_the_fix(entry, said):
    with pytest.raises(ConfigError, match=r"^--search") as e:
        parse_space([entry], BASE)
    assert said in str(e.value) and "\n" not in str(e.value)


def test_the_same_setting_twice_is_refused():
    with pytest.raises(ConfigError, match="lr is given twice"):
        parse_space(["lr=uniform:0.01:0.1", "lr=loguniform:0.01:0.1"], BASE)


def test_the_default_space_is_around_the_recipe_and_holds_it():
    resolved = TrainConfig(batch_size=32, lr=0.05)
    space = default_space(resolved)
    assert [p.name for p in space] == ["lr", "batch_size", "weight_decay"]
    assert space[1].values == (16, 32, 64) and space[0].values == (0.0167, 0.15)
    assert default_point(space, resolved) == {"lr": 0.05, "batch_size": 32, "weight_decay": 5e-4}
    outside = (Param("lr", "loguniform", (0.1, 0.3)),)
    assert default_point(outside, resolved) is None


def test_packing_fills_the_free_resources_and_fails_fast_when_a_trial_cannot_fit():
    sweep = SweepConfig(trials=8, cpus_per_trial=0.5)
    pack = plan_packing(sweep, TWO_CPUS)
    assert (pack.at_once, pack.cpus_per_worker, pack.threads, pack.use_gpu) == (4, 0.5, 1, False)
    assert pack.worker(default_recipe=False) == (0.5, 1)
    assert pack.worker(default_recipe=True) == (2, 2)  # alone first, as cifar-train: 2 CPUs
    busy = ClusterInfo(cpus=2, gpus=0, free_cpus=1.0, largest_node_cpus=2)
    assert plan_packing(sweep, busy).at_once == 2  # another job holds a CPU
    assert plan_packing(SweepConfig(trials=3, cpus_per_trial=0.5), TWO_CPUS).at_once == 3
    capped = plan_packing(SweepConfig(trials=8, cpus_per_trial=0.5, max_concurrent=3), TWO_CPUS)
    assert (capped.at_once, capped.why) == (3, "--max-concurrent")
    gpu = plan_packing(SweepConfig(trials=16), ClusterInfo(cpus=16, gpus=1, largest_node_cpus=16))
    assert (gpu.gpus, gpu.at_once) == (0.25, 4)  # four trials share the GPU
    assert not gpu.first_alone  # on a GPU, torch threads change no result: packed as the others
    with pytest.raises(ConfigError, match="the largest node has 2"):
        plan_packing(SweepConfig(cpus_per_trial=4), TWO_CPUS)
    with pytest.raises(ConfigError, match="has no GPUs"):
        plan_packing(SweepConfig(use_gpu=True), TWO_CPUS)


def test_asha_never_stops_the_default_recipe_s_trial_but_counts_it():
    from types import SimpleNamespace

    from cifar.tune.search import METRIC, scheduler, searched

    cfg = resolve_sweep({"epochs": 4, "search": ["lr=loguniform:0.01:0.1"], "lr": 0.05})
    asha = scheduler(cfg, searched(cfg, cfg.training()))
    asha.set_search_properties(METRIC, "max")
    lr = {"good": 0.02, "default": 0.05, "bad": 0.09, "fair": 0.08}
    trials = {k: SimpleNamespace(trial_id=k, config={"lr": v}) for k, v in lr.items()}
    for t in trials.values():
        asha.on_trial_add(None, t)

    def after_epoch_1(name: str, accuracy: float) -> str:
        return asha.on_trial_result(None, trials[name], {"epoch": 1, METRIC: accuracy})

    assert after_epoch_1("good", 0.9) == "CONTINUE"
    assert after_epoch_1("default", 0.5) == "CONTINUE"  # below the cut: spared
    assert after_epoch_1("bad", 0.6) == "STOP"
    # the default's 0.5 counts at the rung: the cut is 0.7 (best third of 0.9, 0.6, 0.5), not 0.8
    assert after_epoch_1("fair", 0.75) == "CONTINUE"


def test_sweep_flags_are_checked_like_the_training_job_s():
    cfg = resolve_sweep({"workers_per_trial": 2, "epochs": 8, "recipe": "tutorial"})
    assert (cfg.num_workers, cfg.epochs, cfg.lr) == (2, 8, 0.01)  # the preset, typed flags win
    assert cuts(cfg) == [2, 6]  # ASHA's rungs: never the last epoch
    with pytest.raises(ConfigError, match="cannot share a GPU"):
        resolve_sweep({"workers_per_trial": 2, "gpus_per_trial": 0.5})
    with pytest.raises(ConfigError, match="--trials must be at least 1"):
        resolve_sweep({"trials": 0})


def test_a_sweep_refuses_ray_data_loading_naming_stream():
    with pytest.raises(ConfigError, match="does not take --data-loading ray") as e:
        resolve_sweep({"data_loading": "ray"})
    assert "use --data-loading stream" in str(e.value) and "\n" not in str(e.value)
    assert resolve_sweep({"data_loading": "stream"}).data_loading == "stream"


def test_the_dry_run_prints_the_space_packing_and_trials_at_once(tmp_path, job_env):
    from cifar.data.synthetic import write_folders

    data = write_folders(tmp_path / "pets", 300, 60, num_classes=3, seed=1)
    cmd = [
        sys.executable,
        "-m",
        "jobs.tune",
        "--data-dir",
        str(data),
        "--dry-run",
        "--trials",
        "8",
        "--cpus-per-trial",
        "0.5",
        "--storage-path",
        str(tmp_path / "runs"),
    ]
    out = subprocess.run(cmd, env=job_env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "lr            loguniform" in text and "batch_size    one of" in text
    assert "8 by random search (seed 0)" in text and "first:     the default recipe (" in text
    assert f"{min(8, 2 * (os.cpu_count() or 1))} trial(s) at once" in text
    assert not (tmp_path / "runs").exists()  # nothing written
    bad = subprocess.run(
        [*cmd, "--search", "lrr=loguniform:0.01:0.1"],
        env=job_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1
    assert bad.stderr.startswith("error: --search lrr=loguniform:0.01:0.1: did you mean lr?")


# --------------------------------------------------------------------------- a real sweep


def _records(tune_dir: str) -> dict[str, tuple[str, int]]:
    """Tune's saved record of the trials: trial id -> (status, results reported)."""
    from ray.tune import ExperimentAnalysis

    try:
        analysis = ExperimentAnalysis(str(tune_dir))
    except Exception:  # not written yet, or being written
        return {}
    frames = analysis.trial_dataframes
    return {t.trial_id: (t.status, len(frames[t.trial_id])) for t in in_order(analysis.trials)}


def _finished(records: dict[str, tuple[str, int]]) -> dict[str, int]:
    return {t: n for t, (status, n) in records.items() if status == "TERMINATED"}


def _killable(records: dict[str, tuple[str, int]]) -> bool:
    """The first four trials (those that ran at once) have ended: Tune has saved their records,
    which it keeps through a kill (it forgets those of a trial it restarts)."""
    first = list(records)[:4]
    return len(first) == 4 and all(records[t][0] == "TERMINATED" for t in first)


SWEPT = 6  # trials: the first alone, four at once, killed once four have ended, the rest resumed
# the default recipe's flags, the sweep's and a plain run's: batch 16 (the space holds it; the
# recipe would pick 4 for 600 images) and fp32, as the classifier below (identical arithmetic)
FIRST = ["--epochs", "2", "--batch-size", "16", "--precision", "fp32"]


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """One sweep for every test below, as a user runs it: 6 trials x 2 epochs, the first (the
    default recipe's) alone, then half a CPU each on 2 CPUs, SIGKILLed (with the Ray it started)
    once the first four have finished, then the same command with --resume. (Tune saves its
    records every 2 s: the cifar-tune job sets TUNE_GLOBAL_CHECKPOINT_S.)"""
    from cifar.data.synthetic import write_folders

    root = tmp_path_factory.mktemp("tune")
    data = write_folders(root / "pets", 600, 150, num_classes=3, seed=4)
    d = str(root / "runs" / "s")
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "CIFAR_RAY_CACHE": str(root / "cache"),
        "RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS": "0",
    }
    env.pop("RAY_ADDRESS", None)
    cmd = [
        sys.executable,
        "-m",
        "jobs.tune",
        "--data-dir",
        str(data),
        "--storage-path",
        storage.parent(d),
        "--name",
        "s",
        "--trials",
        str(SWEPT),
        "--cpus-per-trial",
        "0.5",
        "--search",
        "lr=loguniform:0.0003:0.5",
        "--search",
        "batch_size=choice:16,64",
        *FIRST,
    ]
    with open(root / "killed.log", "wb") as log:
        killed = subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            wait_until(
                lambda: _killable(_records(f"{d}/tune")),
                300,
                "four finished trials",
                killed,
                root / "killed.log",
            )
        finally:
            kill_group(killed)
    records = _records(f"{d}/tune")  # what Tune had saved when it died
    at_kill = {t: storage.read_bytes(f"{d}/runs/{t}/metrics.csv") for t in _finished(records)}
    resumed = subprocess.run(
        [*cmd, "--resume"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    return data, d, resumed.stdout, records, at_kill


def _csv(uri: str) -> pd.DataFrame:
    return pd.read_csv(io.StringIO(storage.read_text(uri)))


@pytest.mark.ray
def test_a_sweep_writes_one_row_per_trial_stops_some_early_and_best_classifies(swept):
    from cifar.io.images import decode_batch
    from cifar.predict.predictor import Predictor

    data, d, out, _, _ = swept
    trials = _csv(f"{d}/trials.csv")
    assert len(trials) == SWEPT and set(trials["status"]) <= {"done", "stopped early"}
    assert trials["stopped_early"].sum() >= 1  # ASHA cut some after epoch 1
    assert (trials.loc[trials["stopped_early"], "epochs"] == 1).all()
    assert (trials.loc[~trials["stopped_early"], "epochs"] == 2).all()
    assert trials["lr"].between(0.0003, 0.5).all() and set(trials["batch_size"]) <= {16, 64}
    for run in trials["run"]:  # every trial a run as the training job writes one
        assert storage.is_file(f"{d}/{run}/metrics.csv") and storage.is_dir(
            f"{d}/{run}/tensorboard"
        )
    best = trials.loc[trials["best_test_accuracy"].idxmax()]
    assert f"best test accuracy {best['best_test_accuracy']:.4f} (trial {best['trial']}" in out
    assert storage.read_bytes(f"{d}/sweep.png")[:4] == b"\x89PNG"
    # best/ is the best trial's run: the classifier takes it as any run
    clf = Predictor.from_path(f"{d}/best", precision="fp32")
    files = sorted((data / "val").rglob("*.*"))
    images = decode_batch({"path": np.array([str(f) for f in files], dtype=object)}, 32)
    predicted = clf.probabilities(images["image"]).argmax(1)
    truth = [clf.classes.index(f.parent.name) for f in files]
    accuracy = float(np.mean(predicted == np.array(truth)))
    assert accuracy == pytest.approx(best["best_test_accuracy"], abs=1.5 / len(files))


@pytest.mark.ray
def test_the_first_trial_is_cifar_train_s_run_to_the_bit_alone_and_never_stopped(
    swept, tmp_path, job_env
):
    """The default recipe's trial next to ``cifar-train`` of the same flags: the same losses and
    accuracies, every bit (precision, threads, batch, lr, seed, data order, augmentation)."""
    from ray.tune import ExperimentAnalysis

    data, d, _, _, _ = swept
    trials = _csv(f"{d}/trials.csv")
    (first,) = trials.loc[trials["default_recipe"]].itertuples()
    assert first.trial == 0 and first.status == "done" and not first.stopped_early
    where = ["--storage-path", str(tmp_path), "--name", "plain"]
    plain = subprocess.run(
        [sys.executable, "-m", "jobs.train", "--data-dir", str(data), *FIRST, *where],
        cwd=ROOT,
        env=job_env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert plain.returncode == 0, plain.stderr[-3000:]
    exact = ["epoch", "train_loss", "test_loss", "test_accuracy", "lr", "test_images"]

    def columns(run: str) -> list[list[str]]:  # as written: every digit of every float
        rows = csv.DictReader(io.StringIO(storage.read_text(f"{run}/metrics.csv")))
        return [[r[k] for k in exact] for r in rows]

    assert columns(f"{d}/{first.run}") == columns(str(tmp_path / "plain"))
    assert len(columns(str(tmp_path / "plain"))) == 2
    # it ran alone: every other trial began after its last epoch (Tune's own records)
    frames = ExperimentAnalysis(f"{d}/tune").trial_dataframes
    ended = frames[first.trial_id]["reported_at"].max()
    for trial_id, f in frames.items():
        if trial_id != first.trial_id and "reported_at" in f:
            assert (f["reported_at"] - f["time_this_iter_s"]).min() >= ended


@pytest.mark.ray
def test_half_a_cpu_per_trial_runs_four_trials_at_once_on_two_cpus(swept):
    """From Tune's own records: a trial runs from the start of its first reported epoch to the
    end of its last."""
    from ray.tune import ExperimentAnalysis

    _, d, _, _, _ = swept
    analysis = ExperimentAnalysis(f"{d}/tune")
    spans = [
        ((f["reported_at"] - f["time_this_iter_s"]).min(), f["reported_at"].max())
        for f in analysis.trial_dataframes.values()
        if "reported_at" in f  # (Tune forgets the records of a trial it restarts)
    ]
    events = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])
    running = np.cumsum([step for _, step in events])
    sweep_json = json.loads(storage.read_text(f"{d}/sweep.json"))
    assert running.max() == 4 == sweep_json["results"]["peak_trials_at_once"]
    assert sweep_json["packing"]["at_once"] == 4


@pytest.mark.ray
def test_a_killed_sweep_resumes_keeping_its_finished_trials(swept):
    _, d, out, at_kill, kept = swept
    finished = _finished(at_kill)
    assert 0 < len(finished) < SWEPT  # it died part-way
    assert f"[cifar] sweep done: {SWEPT} trials" in out
    after = _finished(_records(f"{d}/tune"))
    assert len(after) == SWEPT
    for t, results in finished.items():  # not run again: no new result, the same run files
        assert after[t] == results and f"({t})" not in out
        assert storage.read_bytes(f"{d}/runs/{t}/metrics.csv") == kept[t]
    trials = _csv(f"{d}/trials.csv")  # the others ran: every trial has its epochs
    assert set(trials["status"]) <= {"done", "stopped early"} and (trials["epochs"] >= 1).all()
