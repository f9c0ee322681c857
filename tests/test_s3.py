"""Every s3:// path against a real S3-protocol server (moto on loopback), reached through the
standard AWS environment: models, inputs, training data, runs, results, and no secret leaked."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pyarrow.dataset as pads
import pytest
import torch

from cifar.config import ConfigError
from cifar.data.cifar10 import CIFAR10_CLASSES, load_cifar10
from cifar.data.dataset import DataError
from cifar.data.sources import load_data
from cifar.io import storage
from cifar.models.checkpoint import CheckpointError, model_meta, save_checkpoint
from cifar.models.cifar_quick import CifarQuick
from cifar.models.loading import load_model
from cifar.models.registry import ModelSpec
from cifar.predict.inputs import list_inputs
from tests.helpers.models import save_untrained
from tests.helpers.processes import kill_group, wait_until
from tests.helpers.s3server import SECRET_KEY


def _weights_equal(model, sd) -> bool:
    return all(torch.equal(v, sd[k]) for k, v in model.state_dict().items())


@pytest.fixture()
def run_in_bucket(s3, tmp_path):
    """A training run's layout (two checkpoints, a model/ export) and a tutorial state_dict,
    uploaded: (bucket, {form: expected state_dict})."""
    server, bucket = s3
    torch.manual_seed(0)
    models = {k: CifarQuick() for k in ("ckpt1", "ckpt2", "export", "bare")}
    run = tmp_path / "r1"
    for epoch, (key, acc) in enumerate((("ckpt1", 0.3), ("ckpt2", 0.7)), start=1):
        meta = model_meta(ModelSpec.of(), epoch=epoch, metrics={"test_accuracy": acc})
        save_checkpoint(run / f"checkpoint_epoch_{epoch:04d}", models[key], meta)
    save_checkpoint(run / "model", models["export"], model_meta(ModelSpec.of(), epoch=2))
    torch.save(models["bare"].state_dict(), tmp_path / "model_state.pth")  # the tutorial's
    server.upload_dir(run, f"{bucket}/runs/r1")
    server.client().upload_file(str(tmp_path / "model_state.pth"), bucket[5:], "model_state.pth")
    return bucket, {k: m.state_dict() for k, m in models.items()}


def test_model_from_s3_in_every_form(run_in_bucket, tmp_path, monkeypatch):
    bucket, sd = run_in_bucket
    monkeypatch.setenv("CIFAR_RAY_CACHE", str(tmp_path / "node-cache"))
    forms = {
        f"{bucket}/runs/r1": "export",  # a run: its model/ export first
        f"{bucket}/runs/r1/": "export",
        f"{bucket}/runs/r1/model": "export",
        f"{bucket}/runs/r1/model/model.pt": "export",
        f"{bucket}/runs/r1/checkpoint_epoch_0001": "ckpt1",
        f"{bucket}/model_state.pth": "bare",
    }
    for uri, key in forms.items():
        loaded = load_model(uri)
        assert _weights_equal(loaded.model, sd[key]), uri
        assert loaded.classes == list(CIFAR10_CLASSES)
    storage.reset_filesystems()
    # without model/, a run dir means its best checkpoint (test accuracy 0.7: epoch 2)
    storage.clear_dir(f"{bucket}/runs/r1/model")
    assert _weights_equal(load_model(f"{bucket}/runs/r1").model, sd["ckpt2"])
    with pytest.raises(CheckpointError, match=r"--model s3://.*/runs/r9 does not exist"):
        load_model(f"{bucket}/runs/r9")


def test_pickled_module_in_bucket_is_refused_without_running_it(s3, tmp_path, monkeypatch):
    server, bucket = s3
    monkeypatch.setenv("CIFAR_RAY_CACHE", str(tmp_path / "node-cache"))
    torch.save(CifarQuick(), tmp_path / "whole.pt")  # the tutorial's "method 1"
    server.client().upload_file(str(tmp_path / "whole.pt"), bucket[5:], "whole.pt")
    with pytest.raises(CheckpointError, match="nothing in it was executed"):
        load_model(f"{bucket}/whole.pt")


def test_node_cache_downloads_once_and_again_when_the_object_changes(s3, tmp_path, monkeypatch):
    _, bucket = s3
    monkeypatch.setenv("CIFAR_RAY_CACHE", str(tmp_path / "node-cache"))
    storage.write_bytes(f"{bucket}/m/model.pt", b"first")
    local = storage.local_copy(f"{bucket}/m/model.pt")
    assert local.read_bytes() == b"first" and str(local).startswith(str(tmp_path / "node-cache"))
    stamp = local.stat().st_mtime_ns
    time.sleep(0.01)
    assert storage.local_copy(f"{bucket}/m/model.pt").stat().st_mtime_ns == stamp  # re-used
    time.sleep(1.1)  # S3 mtimes have one-second resolution
    storage.write_bytes(f"{bucket}/m/model.pt", b"second, longer")
    assert storage.local_copy(f"{bucket}/m/model.pt").read_bytes() == b"second, longer"
    with pytest.raises(FileNotFoundError, match="does not exist"):
        storage.local_copy(f"{bucket}/m/nothing.pt")


def test_inputs_from_a_prefix_a_glob_and_a_file(s3):
    _, bucket = s3
    for rel in ("a/cat/1.png", "a/cat/2.jpg", "a/dog/3.png", "a/.hidden/4.png", "b/5.png"):
        storage.write_bytes(f"{bucket}/imgs/{rel}", b"x")
    found = list_inputs([f"{bucket}/imgs/a"], None)
    assert [f.removeprefix(f"{bucket}/imgs/") for f in found.files.to_pylist()] == [
        "a/.hidden/4.png",  # every file of a prefix, as for a local folder: the job decides
        "a/cat/1.png",
        "a/cat/2.jpg",
        "a/dog/3.png",
    ]
    assert set(found.root_list()) == {f"{bucket}/imgs/a"}
    globbed = list_inputs([f"{bucket}/imgs/*/*/*.png"], None)
    assert [f.removeprefix(f"{bucket}/imgs/") for f in globbed.files.to_pylist()] == [
        "a/.hidden/4.png",
        "a/cat/1.png",
        "a/dog/3.png",
    ]
    one = list_inputs([f"{bucket}/imgs/b/5.png"], None).files.to_pylist()
    assert one == [f"{bucket}/imgs/b/5.png"]
    with pytest.raises(ConfigError, match="no files found"):
        list_inputs([f"{bucket}/imgs/none"], None)


def test_cifar_format_data_dir_is_copied_once_and_read_like_local(
    s3, synthetic_dir, tmp_path, monkeypatch
):
    server, bucket = s3
    monkeypatch.setenv("CIFAR_RAY_CACHE", str(tmp_path / "node-cache"))
    server.upload_dir(synthetic_dir, f"{bucket}/data")
    from_s3 = load_data(f"{bucket}/data", download=False)
    local = load_cifar10(synthetic_dir)
    assert np.array_equal(from_s3.train_images, local.train_images)
    assert np.array_equal(from_s3.test_labels, local.test_labels)
    assert str(tmp_path / "node-cache") in from_s3.root
    copies = sorted((tmp_path / "node-cache").rglob("data_batch_1"))
    before = [p.stat().st_mtime_ns for p in copies]
    load_data(f"{bucket}/data", download=False)  # the second time: nothing downloaded
    assert [p.stat().st_mtime_ns for p in copies] == before
    with pytest.raises(DataError, match="neither image folders"):
        load_data(f"{bucket}/nothing", download=False)


def test_credentials_in_a_uri_are_refused_before_anything_is_written(tmp_path):
    from cifar.train.config import resolve_config

    with pytest.raises(ConfigError, match="carries credentials"):
        resolve_config({"storage_path": "s3://AKIAEXAMPLE:secret@bucket/runs", "name": "x"})


# --------------------------------------------------------------------------- jobs, end to end


def _job(args, env, cwd, log, **kw) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", *args],
        cwd=cwd,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: the driver and the Ray it started
        **kw,
    )


def _finished(args, env, cwd) -> subprocess.CompletedProcess:
    """``python -m ARGS`` run to its end (bounded), output captured."""
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


@pytest.mark.ray
def test_train_on_s3_killed_resumed_elsewhere_then_predict_s3_to_s3(
    s3, synthetic_dir, tmp_path, job_env
):
    """Data and run in the bucket; the job (driver and its Ray) SIGKILLed after its first
    checkpoint; resumed from another folder with another node cache: the run lives only in the
    bucket. Then prediction with --model/--input/--output on S3. No secret anywhere."""
    server, bucket = s3
    server.upload_dir(synthetic_dir, f"{bucket}/data")
    images = tmp_path / "images"
    from tests.helpers.images import make_image_tree

    good, bad = make_image_tree(images)
    server.upload_dir(images, f"{bucket}/images")
    env = {**job_env, **server.env(), "CIFAR_RAY_CACHE": str(tmp_path / "cache-a")}
    train = ["jobs.train", "--data-dir", f"{bucket}/data", "--storage-path", f"{bucket}/runs"]
    train += ["--name", "r1", "--epochs", "3", "--num-workers", "2", "--cpus-per-worker", "1"]
    train += ["--batch-size", "32", "--max-failures", "0"]
    (tmp_path / "a").mkdir()
    logs = []
    with open(tmp_path / "train-1.log", "wb") as log:
        first = _job(train, env, tmp_path / "a", log)
        try:
            key = "checkpoint_epoch_0001/meta.json"
            wait_until(
                lambda: key in server.keys(f"{bucket}/runs/r1"),
                240,
                key,
                first,
                tmp_path / "train-1.log",
            )
        finally:
            kill_group(first)
    logs.append((tmp_path / "train-1.log").read_text())
    done = server.keys(f"{bucket}/runs/r1")
    assert "summary.json" not in done and "model/model.pt" not in done, done

    (tmp_path / "b").mkdir()
    env_b = {**env, "CIFAR_RAY_CACHE": str(tmp_path / "cache-b")}  # a machine that never saw it
    resumed = _finished([*train, "--resume"], env_b, tmp_path / "b")
    logs.append(resumed.stdout + resumed.stderr)
    assert resumed.returncode == 0, logs[-1][-3000:]
    summary = json.loads(storage.read_text(f"{bucket}/runs/r1/summary.json"))
    assert summary["epochs_completed"] == 3 and summary["restarts"] >= 1
    assert [h["epoch"] for h in summary["history"]] == [1, 2, 3]
    assert summary["best_test_accuracy"] > 0.5
    assert summary["model_path"] == f"{bucket}/runs/r1/model"
    keys = server.keys(f"{bucket}/runs/r1")
    assert {"model/model.pt", "model/meta.json", "config.json", "metrics.csv"} <= set(keys)
    assert {"checkpoint_epoch_0003/model.pt", "checkpoint_epoch_0003/train_state.pt"} <= set(keys)

    # TensorBoard events read back from the bucket with TensorBoard's reader
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tb = tmp_path / "tb"
    for k in keys:
        if k.startswith("tensorboard/") and not k.endswith("/"):
            (tb / k).parent.mkdir(parents=True, exist_ok=True)
            (tb / k).write_bytes(storage.read_bytes(f"{bucket}/runs/r1/{k}"))
    acc = EventAccumulator(str(tb / "tensorboard"))
    acc.Reload()
    steps = sorted({e.step for e in acc.Scalars("test/accuracy")})
    assert steps == [steps[0] * k for k in (1, 2, 3)]  # every epoch, at its optimizer step

    predict = ["jobs.predict", "--model", f"{bucket}/runs/r1", "--input", f"{bucket}/images"]
    predict += ["--output", f"{bucket}/preds/r1", "--num-actors", "1"]
    env_c = {**env, "CIFAR_RAY_CACHE": str(tmp_path / "cache-c")}
    pred = _finished(predict, env_c, tmp_path)
    logs.append(pred.stdout + pred.stderr)
    assert pred.returncode == 0, logs[-1][-3000:]
    df = pd.read_parquet(f"{bucket}/preds/r1")  # as a user reads it, straight from the bucket
    want = sorted(f"{bucket}/images/{p.relative_to(images).as_posix()}" for p in good + bad)
    assert sorted(df["path"]) == want  # one row per file
    assert df["error"].notna().sum() == len(bad)
    table = pads.dataset(f"{bucket}/preds/r1", format="parquet").to_table()
    assert table.num_rows == len(good) + len(bad)
    out = json.loads(storage.read_text(f"{bucket}/preds/r1/_summary.json"))
    assert out["files"] == len(want) and out["predicted"] == len(good)

    # no credential anywhere: the objects written, the logs
    for k in server.keys(bucket):
        if not k.startswith(("data/", "images/")) and not k.endswith("/"):
            assert SECRET_KEY.encode() not in storage.read_bytes(f"{bucket}/{k}"), k
    for text in logs:
        assert SECRET_KEY not in text


@pytest.mark.ray
def test_prediction_from_a_prefix_resumes_in_the_bucket(s3, tmp_path, job_env):
    """A prefix listed while classifying, results committed object by object to S3; some lost
    as a crash would lose them; --resume: every key exactly once, the rest kept."""
    from tests.helpers.images import make_class_tree

    server, bucket = s3
    tree = make_class_tree(tmp_path / "tree", val=False)
    server.upload_dir(tmp_path / "tree", f"{bucket}/tree")
    model = save_untrained(tmp_path / "model")
    env = {**job_env, **server.env()}
    cmd = [sys.executable, "-m", "jobs.predict", "--model", str(model), "--input"]
    cmd += [f"{bucket}/tree", "--output", f"{bucket}/preds", "--rows-per-file", "4"]
    cmd += ["--files-per-block", "4", "--num-actors", "1", "--batch-size", "4"]
    first = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-3000:]
    assert f"classifying the files under {bucket}/tree as they are listed" in first.stdout
    parts = [k for k in server.keys(f"{bucket}/preds") if k.startswith("part-")]
    n = sum(len(v) for v in tree.values()) + 1  # + train/cat/.DS_Store: every file is a row
    assert len(parts) >= 5 and len(pd.read_parquet(f"{bucket}/preds")) == n
    c = server.client()
    for k in parts[::2]:
        c.delete_object(Bucket=bucket[5:], Key=f"preds/{k}")
    kept = len(pd.read_parquet(f"{bucket}/preds"))
    resumed = subprocess.run(
        [*cmd, "--resume"], env=env, capture_output=True, text=True, timeout=300
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    df = pd.read_parquet(f"{bucket}/preds")
    assert df["path"].is_unique and len(df) == n
    out = json.loads(storage.read_text(f"{bucket}/preds/_summary.json"))
    assert (out["already_done"], out["classified"], out["rows"]) == (kept, n - kept, n)


@pytest.mark.ray
def test_fine_tune_resnet18_streamed_from_a_bucket_then_classify_the_bucket(s3, tmp_path, job_env):
    """Issue 24's user: photo folders and resnet18 weights in a bucket, 2 workers streaming the
    files at 64 px with the backbone frozen; the run records its preprocessing, keeps the
    file's backbone, and classifies the bucket's val/ folder with nothing retyped."""
    import torchvision

    from cifar.data.synthetic import write_folders

    server, bucket = s3
    data = write_folders(tmp_path / "pets", 64, 32, num_classes=2, seed=3)
    server.upload_dir(data, f"{bucket}/pets")
    weights = torchvision.models.resnet18().state_dict()  # as if ImageNet-pretrained
    (tmp_path / "w").mkdir()
    torch.save(weights, tmp_path / "w" / "resnet18.pth")
    server.upload_dir(tmp_path / "w", f"{bucket}/w")
    env = {**job_env, **server.env(), "CIFAR_RAY_CACHE": str(tmp_path / "cache")}
    train = ["jobs.train", "--data-dir", f"{bucket}/pets", "--storage-path", f"{bucket}/runs"]
    train += ["--name", "ft", "--arch", "resnet18", "--weights", f"{bucket}/w/resnet18.pth"]
    train += ["--image-size", "64", "--data-loading", "stream", "--freeze-backbone"]
    train += ["--epochs", "1", "--batch-size", "16", "--num-workers", "2", "--max-failures", "0"]
    train += ["--precision", "fp32"]  # no speed probe: seconds of CI on a machine that has it
    done = _finished(train, env, tmp_path)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    assert "[cifar] data loading: streamed from the files" in done.stdout + done.stderr

    config = json.loads(storage.read_text(f"{bucket}/runs/ft/config.json"))
    pre = config["preprocess"]
    assert config["arch"] == "resnet18" and pre["image_size"] == 64
    assert pre["data_loading"] == "stream" and pre["normalize"]["from"].startswith("ImageNet")
    assert pre["weights"]["file"] == f"{bucket}/w/resnet18.pth" and pre["freeze_backbone"]
    trained = load_model(f"{bucket}/runs/ft/model")
    backbone = {k: v for k, v in trained.model.state_dict().items() if not k.startswith("fc.")}
    assert all(torch.equal(v, weights[k]) for k, v in backbone.items())  # frozen: the file's
    assert trained.spec.input_size == 64 and trained.classes == ["airplane", "automobile"]

    predict = ["jobs.predict", "--model", f"{bucket}/runs/ft", "--input", f"{bucket}/pets/val"]
    predict += ["--output", f"{bucket}/preds", "--num-actors", "1", "--labels-from-dirs"]
    predict += ["--precision", "fp32"]
    pred = _finished(predict, env, tmp_path)
    assert pred.returncode == 0, (pred.stdout + pred.stderr)[-3000:]
    df = pd.read_parquet(f"{bucket}/preds")
    assert len(df) == 32 and df["error"].isna().all()
    assert set(df["class_name"]) <= {"airplane", "automobile"}
