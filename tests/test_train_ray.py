"""Training through real Ray Train (embedded, loopback-only Ray runtime)."""

import json
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from cifar.cluster.resources import ClusterInfo
from cifar.models.loading import load_model
from cifar.train.config import TrainConfig
from cifar.train.driver import TrainingError, train

pytestmark = pytest.mark.ray
EPOCHS = 3


def _cfg(data_dir, storage, name, **kw) -> TrainConfig:
    base = dict(
        data_dir=str(data_dir),
        download=False,
        epochs=EPOCHS,
        batch_size=64,
        num_workers=2,
        use_gpu=False,
        cpus_per_worker=1,
        storage_path=str(storage),
        name=name,
        log_every=4,
        max_failures=0,
    )
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture(scope="module")
def finished_run(ray_session, synthetic_dir, tmp_path_factory):
    storage = tmp_path_factory.mktemp("runs")
    summary = train(_cfg(synthetic_dir, storage, "full"), ClusterInfo(cpus=2, gpus=0))
    return storage, summary


def test_two_worker_run_learns_and_exports_model_and_summary(finished_run, synthetic_dir):
    storage, summary = finished_run
    run_dir = storage / "full"
    on_disk = json.loads((run_dir / "summary.json").read_text())
    assert on_disk["epochs_completed"] == EPOCHS == summary["epochs_completed"]
    assert on_disk["dataset"] == "synthetic"
    assert on_disk["best_test_accuracy"] > 0.5  # chance is 0.1
    assert on_disk["final_test_accuracy"] <= on_disk["best_test_accuracy"]
    assert on_disk["train_images_per_s"] > 0 and on_disk["seconds"] > 0
    assert on_disk["restarts"] == 0
    assert [h["epoch"] for h in on_disk["history"]] == [1, 2, 3]
    loaded = load_model(on_disk["model_path"])
    assert loaded.meta["dataset"]["kind"] == "synthetic"
    assert loaded.meta["metrics"]["test_accuracy"] == on_disk["best_test_accuracy"]
    assert loaded.meta["normalize"]["mean"] and loaded.meta["world_size"] == 2
    assert loaded.meta["config"]["num_workers"] == 2 and "torch" in loaded.meta["versions"]
    assert json.loads((run_dir / "config.json").read_text())["name"] == "full"
    ckpts = sorted(p.name for p in run_dir.glob("checkpoint_epoch_*"))
    assert ckpts and len(ckpts) <= 3 and ckpts[-1] == "checkpoint_epoch_0003"


def test_tensorboard_has_every_scalar_for_every_epoch(finished_run):
    storage, _ = finished_run
    acc = EventAccumulator(str(storage / "full" / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    tags = acc.Tags()
    per_epoch = acc.Scalars("test/accuracy")[0].step  # one x-axis: optimizer steps
    for tag in ("test/loss", "test/accuracy", "throughput/images_per_s"):
        assert [e.step for e in acc.Scalars(tag)] == [per_epoch * k for k in (1, 2, 3)], tag
    accs = [e.value for e in acc.Scalars("test/accuracy")]
    assert accs[-1] > 0.5
    train_steps = [e.step for e in acc.Scalars("train/loss")]
    assert len(train_steps) >= EPOCHS and train_steps == sorted(train_steps)
    assert 1 < train_steps[0] < per_epoch < train_steps[-1] <= 3 * per_epoch
    assert [e.step for e in acc.Scalars("train/lr")] == train_steps  # the lr at every log step
    assert "train/samples" in tags["images"]
    assert tags["graph"] is True


def test_run_writes_metrics_pictures_and_per_class_accuracy(finished_run):
    import csv

    from PIL import Image

    storage, summary = finished_run
    run_dir = storage / "full"
    rows = list(csv.DictReader((run_dir / "metrics.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert [float(r["test_accuracy"]) for r in rows] == [
        h["test_accuracy"] for h in summary["history"]
    ]
    assert {"train_loss", "test_loss", "lr", "images_per_s", "train_seconds"} <= set(rows[0])
    classes = summary["data"]["classes"]
    per_class = summary["best_per_class_accuracy"]
    assert list(per_class) == classes and all(0 <= a <= 1 for a in per_class.values())
    cm = summary["best_confusion_matrix"]
    assert sum(map(sum, cm)) == summary["data"]["test_images"]
    best = max(summary["history"], key=lambda h: h["test_accuracy"])
    assert sum(cm[i][i] for i in range(len(classes))) == round(best["test_accuracy"] * 600)
    table = list(csv.DictReader((run_dir / "per_class.csv").open()))
    assert [r["class"] for r in table] == classes
    for name, min_size in (("confusion_matrix.png", (500, 500)), ("misclassified.png", (300, 150))):
        with Image.open(run_dir / name) as img:  # readable: classes named, nothing cut off
            assert img.format == "PNG" and img.size >= min_size, (name, img.size)
            assert img.size[1] >= min_size[1], (name, img.size)
    acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"images": 0})
    acc.Reload()
    assert f"test_class_accuracy/{classes[0]}" in acc.Tags()["scalars"]
    assert {"best/confusion_matrix", "best/misclassified"} <= set(acc.Tags()["images"])
    hparams = EventAccumulator(str(run_dir / "tensorboard" / "hparams"))
    hparams.Reload()
    assert "_hparams_/session_start_info" in hparams.PluginTagToContent("hparams")
    (logged,) = hparams.Scalars("hparam/best_test_accuracy")
    assert logged.value == pytest.approx(summary["best_test_accuracy"], abs=1e-6)  # float32
    assert summary["compute"]["precision"] in ("fp32", "bf16")


def test_interrupted_run_resumes_at_next_epoch_with_same_state(finished_run, synthetic_dir):
    storage, full = finished_run
    cluster = ClusterInfo(cpus=2, gpus=0)
    with pytest.raises(TrainingError, match="--resume --name part"):
        train(_cfg(synthetic_dir, storage, "part", stop_after_epoch=2), cluster)
    part = storage / "part"
    assert (part / "checkpoint_epoch_0002").is_dir() and not (part / "summary.json").exists()

    resumed = train(_cfg(synthetic_dir, storage, "part", resume=True), cluster)
    assert resumed["epochs_completed"] == EPOCHS and resumed["restarts"] == 1
    assert [h["epoch"] for h in resumed["history"]] == [1, 2, 3]
    # epochs 1-2 were not redone, epoch 3 continued from the saved optimizer/scheduler/RNG:
    # the result is the uninterrupted run's, bit for bit
    for a, b in zip(resumed["history"], full["history"], strict=True):
        assert a["test_accuracy"] == b["test_accuracy"]
    w_full = torch.load(storage / "full/checkpoint_epoch_0003/model.pt", weights_only=True)
    w_part = torch.load(part / "checkpoint_epoch_0003/model.pt", weights_only=True)
    assert all(torch.equal(w_full[k], w_part[k]) for k in w_full)
    acc = EventAccumulator(str(part / "tensorboard"))
    acc.Reload()
    steps = [e.step for e in acc.Scalars("test/accuracy")]
    assert steps == [steps[0] * k for k in (1, 2, 3)]  # one point per epoch, none repeated


def test_use_gpu_on_cpu_cluster_fails_before_starting(ray_session, synthetic_dir, tmp_path):
    import ray

    from cifar.config import ConfigError

    cpus = ray.cluster_resources().get("CPU", 0)
    with pytest.raises(ConfigError, match="no GPUs"):
        train(_cfg(synthetic_dir, tmp_path, "gpu", use_gpu=True), ClusterInfo(cpus, 0))
    assert not Path(tmp_path, "gpu").exists()


def test_summary_records_the_world_size_and_whole_test_set_of_every_epoch(finished_run):
    _, summary = finished_run
    assert summary["world_sizes"] == [{"epochs": [1, EPOCHS], "workers": 2}]
    assert [h["test_images"] for h in summary["history"]] == [600] * EPOCHS


def test_a_worker_range_makes_an_elastic_scaling_config(tmp_path):
    from cifar.train.driver import scaling_config
    from cifar.train.summary import world_sizes

    elastic = _cfg(tmp_path, tmp_path, "e", num_workers=[1, 4], resize_interval=5.0)
    sc = scaling_config(elastic, False, 3)
    assert sc.elasticity_enabled and (sc.min_workers, sc.max_workers) == (1, 4)
    assert sc.elastic_resize_monitor_interval_s == 5.0 and sc.resources_per_worker == {"CPU": 3}
    assert not scaling_config(_cfg(tmp_path, tmp_path, "f"), False, 1).elasticity_enabled
    rows = [{"epoch": 1, "workers": 1}, {"epoch": 2, "workers": 2}, {"epoch": 3, "workers": 2}]
    assert world_sizes(rows) == [{"epochs": [1, 1], "workers": 1}, {"epochs": [2, 3], "workers": 2}]
