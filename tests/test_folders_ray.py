"""Training on image folders through Ray Train, then predicting with the run (real Ray)."""

import json
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from cifar.cluster.resources import ClusterInfo
from cifar.data import folders
from cifar.data.synthetic import write_folders
from cifar.io.images import decode_batch
from cifar.models.loading import load_model
from cifar.predict.config import PredictConfig
from cifar.predict.pipeline import predict
from cifar.train.config import TrainConfig
from cifar.train.driver import train

pytestmark = pytest.mark.ray


def test_ray_tasks_decode_exactly_like_the_process(ray_session, tmp_path):
    root = write_folders(tmp_path / "t", n_train=700, n_val=0, num_classes=3, seed=2)
    (root / "train" / "bird" / "bad.png").write_bytes(b"nope")
    paths = folders.scan(str(root)).paths()
    in_ray, errors_ray = folders.decode_files(paths, 32)  # 3 chunks -> 3 Ray tasks
    one = decode_batch({"path": np.array(paths, dtype=object)}, 32)  # all in this process
    local, errors_local = one["image"], [str(e) for e in one["error"]]
    assert np.array_equal(in_ray, local) and errors_ray == errors_local
    assert sum(bool(e) for e in errors_ray) == 1


@pytest.fixture(scope="module")
def folder_run(ray_session, tmp_path_factory):
    data = write_folders(tmp_path_factory.mktemp("pets"), 600, 150, num_classes=3, seed=4)
    (data / "train" / "bird" / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    storage = tmp_path_factory.mktemp("runs")
    summary = train(folder_config(data, storage, "pets"), ClusterInfo(cpus=2, gpus=0))
    return data, storage / "pets", summary


def folder_config(data, storage, name: str, **more) -> TrainConfig:
    return TrainConfig(
        data_dir=str(data),
        epochs=3,
        batch_size=32,
        num_workers=2,
        use_gpu=False,
        cpus_per_worker=1,
        storage_path=str(storage),
        name=name,
        max_failures=0,
        precision="fp32",  # as the prediction below: identical arithmetic
        **more,
    )


def test_two_workers_train_on_folders_and_record_classes_and_skips(folder_run):
    _, run_dir, summary = folder_run
    classes = ["airplane", "automobile", "bird"]
    assert summary["dataset"] == "folder" and summary["data"]["classes"] == classes
    assert summary["best_test_accuracy"] > 0.6  # chance is 1/3
    counts = summary["data"]["class_counts"]
    assert sum(counts["train"].values()) == 600 and sum(counts["test"].values()) == 150
    assert summary["data"]["skipped"] == 1
    assert summary["data"]["skipped_files"][0]["path"].endswith("bird/broken.jpg")
    assert json.loads((run_dir / "config.json").read_text())["classes"] == classes
    loaded = load_model(summary["model_path"])
    assert loaded.classes == classes and loaded.meta["num_classes"] == 3
    assert loaded.model(torch.zeros(1, 3, 32, 32)).shape == (1, 3)
    assert loaded.meta["dataset"]["class_counts"] == counts

    acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"tensors": 0})
    acc.Reload()
    text = acc.Tensors("dataset/text_summary")[0].tensor_proto.string_val[0].decode()
    for c in classes:
        assert f"| {c} | {counts['train'][c]} | {counts['test'][c]} |" in text


def test_predicting_the_val_folder_with_the_run_matches_training_evaluation(folder_run, tmp_path):
    data, run_dir, summary = folder_run
    out = tmp_path / "preds"
    cfg = PredictConfig(
        model=str(run_dir),
        input=[str(data / "val")],
        output=str(out),
        labels_from_dirs=True,
        precision="fp32",
        num_actors="1",
    )
    result = predict(cfg, ClusterInfo(cpus=2, gpus=0))
    trained = load_model(summary["model_path"]).meta["metrics"]
    assert result["labelled"] == trained["test_images"] == 150
    assert result["accuracy"] == trained["test_accuracy"]
    table = pq.read_table([str(p) for p in out.glob("*.parquet")])
    assert set(table.column("class_name").to_pylist()) <= set(summary["data"]["classes"])
    # the same with the whole tree as input: labels come from the folder below train/ or val/
    whole = tmp_path / "whole"
    shutil.copytree(data / "val", whole / "val")
    again = predict(
        PredictConfig(**{**cfg.__dict__, "input": [str(whole)], "output": str(tmp_path / "p2")}),
        ClusterInfo(cpus=2, gpus=0),
    )
    assert again["accuracy"] == trained["test_accuracy"]


def test_streamed_from_the_files_it_learns_as_well_as_in_memory(folder_run, tmp_path):
    """The same folders over a 1 MiB memory budget: auto streams them from the files (and says
    so in config.json), skips the broken file the same way, and ends within 0.02 accuracy of
    the in-memory run."""
    data, _, in_memory = folder_run
    cfg = folder_config(data, tmp_path / "runs", "streamed", data_memory_mb=1.0)
    summary = train(cfg, ClusterInfo(cpus=2, gpus=0))
    record = json.loads((tmp_path / "runs" / "streamed" / "config.json").read_text())
    assert record["preprocess"]["data_loading"] == "stream"
    assert "over the memory budget of 1.0 MiB" in record["preprocess"]["data_loading_why"]
    assert summary["data"]["skipped"] == 1
    assert summary["data"]["skipped_files"][0]["path"].endswith("bird/broken.jpg")
    assert abs(summary["best_test_accuracy"] - in_memory["best_test_accuracy"]) <= 0.02
