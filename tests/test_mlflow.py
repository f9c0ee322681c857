"""MLflow tracking (``--mlflow-uri``): a real ``mlflow server`` on loopback
(:mod:`tests.helpers.mlflowserver`) receives a 2-worker training run, read back through MLflow's
client as a user reads it; a server that goes away mid-run, or is not there, costs one warning
line. Resuming, failing and sweeps (a parent run, a child per trial) through the tracking API."""

import json
import logging
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from cifar.cluster.resources import ClusterInfo
from cifar.train import tracking
from cifar.train.config import TrainConfig
from tests.helpers import mlflowserver
from tests.helpers.faultproxy import FaultProxy, Rule
from tests.helpers.s3server import free_port
from tests.paths import ROOT

EPOCHS = 2
STEPS = 10  # per epoch: 500 images, batch 50
LOG_EVERY = 2
DATASET = {"root": "/data/pets", "kind": "folder"}


@pytest.fixture(scope="module")
def launched(tmp_path_factory):
    """The server, starting (a Ray test starts Ray meanwhile)."""
    s = mlflowserver.launch(tmp_path_factory.mktemp("mlflow"))
    yield s
    s.stop()


@pytest.fixture(scope="module")
def server(launched):
    return launched.wait()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from cifar.data.synthetic import write_synthetic

    d = tmp_path_factory.mktemp("data")
    write_synthetic(d, n_train=500, n_test=200, seed=5)
    return d


def flags(data, storage, name: str) -> dict:
    return dict(
        data_dir=str(data),
        download=False,
        epochs=EPOCHS,
        batch_size=50,
        num_workers=2,
        use_gpu=False,
        cpus_per_worker=1,
        storage_path=str(storage),
        name=name,
        log_every=LOG_EVERY,
        max_failures=0,
        precision="fp32",
    )


def run_dir(tmp_path: Path, name: str) -> str:
    (tmp_path / name).mkdir(parents=True)
    return str(tmp_path / name)


def test_without_a_uri_mlflow_is_never_imported(tmp_path):
    """The whole tracking path of a run without --mlflow-uri (the driver's start and end, rank
    0's writer at every step and epoch) imports nothing of mlflow."""
    script = f"""
import sys
from cifar.train import driver, outputs, tracking, worker
from cifar.train.config import TrainConfig
import jobs.train
cfg = TrainConfig(name="r", storage_path={str(tmp_path)!r})
tracked = tracking.start_run(cfg, {str(tmp_path)!r}, {{"root": "x"}})
out = outputs.RankZero(0, {str(tmp_path)!r}, ["a"], tracking=tracked.ref)
out.step_scalars({{"train/loss": 1.0}}, 1)
out.metrics([{{"epoch": 1, "test_accuracy": 0.5}}])
out.close()
with tracked:
    pass
tracked.finish_run({{"model_path": None}})
assert tracked.ref is None
print(sorted(m for m in sys.modules if m == "mlflow" or m.startswith("mlflow.")))
"""
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    r = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


def test_a_server_not_there_at_the_start_is_one_warning(tmp_path, caplog, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")  # refused
    rdir = run_dir(tmp_path, "r")
    with caplog.at_level(logging.WARNING):
        tracked = tracking.start_run(TrainConfig(name="r"), rdir, DATASET)
        with tracked:
            pass
        tracked.finish_run({"best_test_accuracy": 0.5, "model_path": None})
    assert tracked.ref is None
    said = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(said) == 1 and "ConnectionRefusedError" in said[0], said
    assert "the run goes on without it" in said[0]
    assert "start the run" in json.loads((tmp_path / "r" / "mlflow.json").read_text())["lost"]


# --------------------------------------------------------------------------- a tracked run


@dataclass
class Tracked:
    run_dir: Path
    summary: dict
    run_id: str
    client: object


@pytest.fixture(scope="module")
def tracked(launched, ray_session, data, tmp_path_factory):
    """A 2-worker run of 2 epochs, tracked."""
    from cifar.train.driver import train

    server, storage = launched.wait(), tmp_path_factory.mktemp("runs")
    cfg = TrainConfig(**flags(data, storage, "tracked"), mlflow_uri=server.uri)
    summary = train(cfg, ClusterInfo(cpus=2, gpus=0))
    record = json.loads((storage / "tracked" / "mlflow.json").read_text())
    assert record["lost"] is None
    return Tracked(storage / "tracked", summary, record["run_id"], server.client())


@pytest.mark.ray
def test_the_run_has_its_config_as_params_and_what_it_is_as_tags(tracked):
    run = tracked.client.get_run(tracked.run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "tracked"
    assert tracked.client.get_experiment(run.info.experiment_id).name == "cifar-ray"
    p, config = run.data.params, tracked.summary["config"]
    assert p["arch"] == "cifar10_quick" and p["epochs"] == str(EPOCHS)
    assert p["batch_size"] == "50" and p["num_workers"] == "2" and p["lr"] == str(config["lr"])
    assert json.loads(p["classes"]) == config["classes"]
    assert "weights" not in p  # None: left out
    t = run.data.tags
    assert t["data_root"] == tracked.summary["dataset_root"] and t["arch"] == "cifar10_quick"
    compute = tracked.summary["compute"]
    assert t["device"] == "cpu" and t["precision"] == "fp32"
    assert t["channels_last"] == str(compute["channels_last"])
    assert t["run_dir"] == str(tracked.run_dir) and t["mlflow.source.name"] == "cifar-train"
    if (ROOT / ".git").exists():
        head = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True
        ).stdout.strip()
        assert t["mlflow.source.git.commit"] == head and t["git_dirty"] in ("true", "false")


@pytest.mark.ray
def test_metrics_per_epoch_and_per_step_match_the_run_dir(tracked):
    history = tracked.summary["history"]
    c, run_id = tracked.client, tracked.run_id
    acc = c.get_metric_history(run_id, "test_accuracy")
    assert [(m.step, m.value) for m in acc] == [(h["epoch"], h["test_accuracy"]) for h in history]
    for key in ("test_loss", "train_loss", "images_per_s", "lr"):
        assert [m.step for m in c.get_metric_history(run_id, key)] == [1, 2], key
    loss = sorted(c.get_metric_history(run_id, "train/loss"), key=lambda m: m.step)
    steps = [m.step for m in loss]
    assert steps == list(range(LOG_EVERY, EPOCHS * STEPS + 1, LOG_EVERY))
    assert sorted(m.step for m in c.get_metric_history(run_id, "train/lr")) == steps
    tb = EventAccumulator(str(tracked.run_dir / "tensorboard"), size_guidance={"scalars": 0})
    tb.Reload()  # TensorBoard's per-step scalars, the same
    assert [e.step for e in tb.Scalars("train/loss")] == steps
    assert [e.value for e in tb.Scalars("train/loss")] == pytest.approx([m.value for m in loss])
    best = c.get_metric_history(run_id, "best_test_accuracy")
    assert [m.value for m in best] == [tracked.summary["best_test_accuracy"]]


@pytest.mark.ray
def test_pictures_files_and_model_are_artifacts(tracked, tmp_path):
    import onnxruntime

    c, run_id = tracked.client, tracked.run_id
    top = {a.path for a in c.list_artifacts(run_id)}
    assert top == {
        "config.json",
        "summary.json",
        "metrics.csv",
        "per_class.csv",
        "confusion_matrix.png",
        "misclassified.png",
        "model",
    }
    assert {a.path for a in c.list_artifacts(run_id, "model")} == {
        "model/model.pt",
        "model/meta.json",
        "model/model.onnx",
    }
    got = c.download_artifacts(run_id, "", str(tmp_path))
    for name in ("confusion_matrix.png", "summary.json", "model/model.pt", "model/meta.json"):
        assert (tmp_path / name).read_bytes() == (tracked.run_dir / name).read_bytes(), name
    session = onnxruntime.InferenceSession(f"{got}/model/model.onnx")
    assert session.get_inputs()[0].shape[0] == "batch"  # any batch size


# ---------------------------------------------------------------- resume, failure, sweeps


def test_a_failed_run_resumed_continues_its_mlflow_run(server, tmp_path):
    rdir, c = run_dir(tmp_path, "again"), server.client()
    first = tracking.start_run(TrainConfig(name="again", mlflow_uri=server.uri), rdir, DATASET)
    with pytest.raises(RuntimeError), first:
        raise RuntimeError("a worker failed for good")
    assert c.get_run(first.ref.run_id).info.status == "FAILED"
    # --resume with another worker count (resumable): the same run; a param keeps its value
    cfg = TrainConfig(name="again", mlflow_uri=server.uri, num_workers=3)
    again = tracking.start_run(cfg, rdir, DATASET)
    assert again.ref == first.ref and c.get_run(first.ref.run_id).info.status == "RUNNING"
    tracking.Tracker(again.ref, rdir, None).epoch({"epoch": 3, "test_accuracy": 0.75})
    Path(rdir, "summary.json").write_text("{}")
    again.finish_run({"best_test_accuracy": 0.75, "model_path": None})
    run = c.get_run(first.ref.run_id)
    assert run.info.status == "FINISHED" and run.data.params["num_workers"] == "1"
    assert run.data.metrics == {"test_accuracy": 0.75, "best_test_accuracy": 0.75}
    assert [a.path for a in c.list_artifacts(run.info.run_id)] == ["summary.json"]
    record = json.loads(Path(rdir, "mlflow.json").read_text())
    assert record["run_id"] == run.info.run_id and record["lost"] is None


def test_a_sweep_is_a_parent_run_with_a_child_run_per_trial(server, tmp_path):
    space = {"lr": "loguniform(0.01, 0.3)"}
    sweep = tracking.start_sweep(server.uri, "sweep", run_dir(tmp_path, "sweep"), {"space": space})
    trials = []
    for name in ("trial_1", "trial_2"):
        cfg = TrainConfig(name=name, lr=0.1)  # a trial's config: its own URI is not asked
        trial = tracking.start_trial(cfg, run_dir(tmp_path, name), DATASET, sweep.ref)
        trial.finish_run({"best_test_accuracy": 0.5, "model_path": None})
        trials.append(trial.ref)
    sweep.finish({"best_test_accuracy": 0.5})
    c, parent = server.client(), sweep.ref
    assert json.loads(c.get_run(parent.run_id).data.params["space"]) == space
    children = c.search_runs(
        [parent.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.run_id}'"
    )
    assert {r.info.run_name for r in children} == {"trial_1", "trial_2"}
    assert {r.info.run_id for r in children} == {t.run_id for t in trials}
    assert all(r.info.status == "FINISHED" and r.data.params["lr"] == "0.1" for r in children)
    assert children[0].data.tags["mlflow.source.name"] == "cifar-tune"
    assert tracking.start_trial(cfg, str(tmp_path), DATASET, None).ref is None  # untracked sweep


# --------------------------------------------------------------------------- the server gone


@dataclass
class GoneAfter(Rule):
    """The server gone (every connection reset) once ``batches`` log-batch requests passed: the
    run's params (the driver's), compute tags and first metrics (rank 0's) arrive."""

    batches: int = 3
    batches_seen: int = 0
    gone: bool = False

    def decide(self, line: str, target: str) -> bool:
        self.batches_seen += "log-batch" in line
        self.gone = self.gone or self.batches_seen > self.batches
        return self.gone


@pytest.mark.ray
def test_a_server_gone_mid_run_costs_one_warning_and_the_run_finishes(
    server, data, tmp_path, job_env
):
    rule = GoneAfter(".", mode="reset")
    with FaultProxy(server.uri, [rule]) as proxy:
        cmd = [
            sys.executable,
            "-m",
            "jobs.train",
            "--data-dir",
            str(data),
            "--no-download",
            "--epochs",
            str(EPOCHS),
            "--batch-size",
            "50",
            "--num-workers",
            "2",
            "--cpus-per-worker",
            "1",
            "--log-every",
            str(LOG_EVERY),
            "--max-failures",
            "0",
            "--precision",
            "fp32",
            "--storage-path",
            str(tmp_path),
            "--name",
            "gone",
            "--mlflow-uri",
            proxy.endpoint,
        ]
        r = subprocess.run(cmd, cwd=ROOT, env=job_env, capture_output=True, text=True, timeout=600)
    log = r.stdout + r.stderr
    assert r.returncode == 0, log
    assert (tmp_path / "gone" / "summary.json").exists()
    warned = [line for line in log.splitlines() if "MLflow at" in line]
    assert len(warned) == 1 and "the run goes on without it" in warned[0], log
    assert "Traceback" not in log  # (also not Ray's, with the session's Ray on the machine)
    record = json.loads((tmp_path / "gone" / "mlflow.json").read_text())
    assert record["lost"]
    run = server.client().get_run(record["run_id"])
    assert run.data.params["name"] == "gone" and run.info.status == "RUNNING"
    acc = server.client().get_metric_history(record["run_id"], "test_accuracy")
    assert len(acc) < EPOCHS  # what came after the server went is in the run dir only
