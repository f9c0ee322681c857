"""``--data-loading ray``: Ray Data decodes the training samples on the cluster's CPUs and streams
them into the Train workers; evaluation stays exact on the workers; a bad sample is a counted
skip; ``--resume`` continues; ``auto`` never picks it."""

from pathlib import Path

import numpy as np
import pytest
import torch

from cifar.data.dataset import DataError, DataRequest
from cifar.data.examples import write_digits
from cifar.data.loading import choose_loading, memory_only
from cifar.data.raydata import collate, decode_rows, steps_per_epoch
from cifar.data.sources import load_training_data

BAD = "train/3/zz_bad.png"


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    """96 real-pixel digits (64 train / 32 val, 32x32 PNGs) and one training file that is not
    an image."""
    root = tmp_path_factory.mktemp("digits") / "tree"
    write_digits(root, np.random.default_rng(0), 64, 32)
    (root / BAD).write_bytes(b"not an image")
    return root


def test_auto_never_picks_ray_and_cifar_files_refuse_it():
    for budget in (0.001, 10_000):
        assert choose_loading(1000, 224, "auto", budget_mb=budget).how in ("memory", "stream")
    asked = choose_loading(1000, 224, "ray")
    assert asked.how == "ray" and "decoded by Ray Data" in asked.line()
    with pytest.raises(DataError, match="Drop --data-loading ray"):
        memory_only("ray", "CIFAR-format files")


def test_a_bad_sample_stays_a_row_and_is_counted_by_the_worker(tree):
    splits, how = load_training_data(DataRequest(str(tree), size=32, loading="ray"))
    assert how.how == "ray"
    train, _ = splits.datasets(torch.device("cpu"))
    bad = list(train.paths).index(str(tree / BAD))
    rows = decode_rows({"id": np.array([0, bad, 1])}, train)
    assert rows["image"].shape == (3, 3, 32, 32) and rows["label"][1] == -1
    images, labels, skipped = collate(rows)
    assert images.shape == (2, 3, 32, 32) and labels.tolist() == rows["label"][[0, 2]].tolist()
    assert skipped == [(str(tree / BAD), "not an image, or an unsupported format")]
    assert steps_per_epoch(97, 16, 2) == 6  # 48 rows a rank (equal split), batches of 8


def test_photos_are_cropped_and_flipped_in_the_decode_tasks_with_fresh_draws(tmp_path):
    """At photo sizes with augmentation on, Ray Data's decode tasks crop and flip (a fresh draw
    every call) and the training loop is told to only normalise; a bad sample is still a row."""
    from PIL import Image

    from cifar.data.raydata import RayBatches

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c in ("a", "b"):
            (tmp_path / split / c).mkdir(parents=True)
            for k in range(2):  # 160 x 120 JPEGs of noise: every crop and flip shows
                pixels = rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(tmp_path / split / c / f"{k}.jpg")
    (tmp_path / "train/b/zz_bad.jpg").write_bytes(b"not an image")
    req = DataRequest(str(tmp_path), size=64, loading="ray", augment=True)
    splits, _ = load_training_data(req)
    train = splits.datasets(torch.device("cpu"))[0]
    assert RayBatches(None, 4, 2, train).loader_augments  # the device only normalises
    ids = {"id": np.arange(len(train))}
    first, second = decode_rows(ids, train), decode_rows(ids, train)
    good = first["label"] >= 0
    assert first["image"].shape == (5, 3, 64, 64) and first["image"].dtype == np.uint8
    assert good.sum() == 4 and first["error"][~good][0].startswith(str(tmp_path / "train/b/zz"))
    assert (second["label"] == first["label"]).all()
    assert all((first["image"][i] != second["image"][i]).any() for i in np.flatnonzero(good))
    plain = load_training_data(DataRequest(str(tmp_path), size=64, loading="ray"))[0]
    unaugmented = plain.datasets(torch.device("cpu"))[0]
    assert not RayBatches(None, 4, 2, unaugmented).loader_augments  # the device augments
    once, again = decode_rows(ids, unaugmented), decode_rows(ids, unaugmented)
    assert (once["image"] == again["image"]).all()


def _cfg(tree: Path, storage: Path, **kw):
    from cifar.train.config import TrainConfig

    # as little as proves it: 32 px (cifar10_quick's only size), 3 steps an epoch (65 rows,
    # batches of 32), 1 worker, no loader processes for the evaluation, fp32 (no precision probe)
    base = dict(
        data_dir=str(tree),
        data_loading="ray",
        epochs=2,
        batch_size=32,
        num_workers=1,
        use_gpu=False,
        cpus_per_worker=1,  # the session's other CPU decodes
        loader_workers=0,
        storage_path=str(storage),
        name="raydata",
        max_failures=0,
        precision="fp32",
    )
    return TrainConfig(**{**base, **kw})


@pytest.mark.ray
def test_training_through_ray_data_evaluates_exactly_counts_skips_and_resumes(
    ray_session, tree, tmp_path
):
    from cifar.cluster.resources import ClusterInfo
    from cifar.train.driver import TrainingError, train

    cluster = ClusterInfo(cpus=2, gpus=0)
    with pytest.raises(TrainingError, match="--resume --name raydata"):
        train(_cfg(tree, tmp_path, stop_after_epoch=1), cluster)
    summary = train(_cfg(tree, tmp_path, resume=True), cluster)
    assert summary["epochs_completed"] == 2 and summary["restarts"] == 1
    assert [h["epoch"] for h in summary["history"]] == [1, 2]
    assert all(h["test_images"] == 32 for h in summary["history"])  # every val image once
    assert summary["data"]["skipped"] == 1  # the bad file, found in epoch 1, said once
    assert summary["data"]["skipped_files"][0]["path"].endswith(BAD)


@pytest.mark.ray
def test_tar_shards_through_the_ray_dataset_every_sample_once(ray_session, tree, tmp_path):
    """WebDataset tars (written by webdataset's own writer) with an undecodable sample: the Ray
    Dataset gives every training sample once, the bad one as a row the worker counts."""
    import webdataset as wds

    from cifar.data.raydata import train_dataset

    for split in ("train", "val"):
        (tmp_path / split).mkdir()
        files = [p for p in sorted((tree / split).rglob("*.png")) if p.name != "zz_bad.png"]
        with wds.TarWriter(str(tmp_path / split / "a.tar")) as sink:
            for i, p in enumerate(files[:30]):
                sink.write({"__key__": f"s{i}", "png": p.read_bytes(), "cls": int(p.parent.name)})
            if split == "train":
                sink.write({"__key__": "broken", "png": b"not a png", "cls": 3})
    splits, how = load_training_data(DataRequest(str(tmp_path), size=32, loading="ray"))
    assert how.how == "ray" and splits.n_train == 31
    rows = train_dataset(splits, seed=0).take_all()
    images, labels, skipped = collate(
        {k: np.stack([r[k] for r in rows]) for k in ("image", "label", "error")}
    )
    expected = sorted(splits.train_labels.tolist())
    expected.remove(3)  # the broken sample's
    assert len(rows) == 31 and sorted(labels.tolist()) == expected
    assert images.shape == (30, 3, 32, 32)
    assert skipped == [(f"{tmp_path}/train/a.tar#broken", "not an image, or an unsupported format")]


@pytest.mark.ray
def test_an_epoch_is_decoded_by_many_tasks_a_block_per_batch(ray_session, tree, monkeypatch):
    """The epoch's rows are cut into a decode task every ROWS_PER_TASK and a block every
    ROWS_PER_BLOCK, so the cluster's CPUs share the decoding and the trainer starts on the first
    block (Ray's default blocks for range(n) had one task decode the whole epoch); the order is
    new every execution and every sample comes once."""
    import re

    from cifar.data import raydata

    monkeypatch.setattr(raydata, "ROWS_PER_TASK", 16)
    monkeypatch.setattr(raydata, "ROWS_PER_BLOCK", 8)
    splits, _ = load_training_data(DataRequest(str(tree), size=32, loading="ray"))
    ds = raydata.train_dataset(splits, seed=0)
    orders = []
    for _ in range(2):  # as Ray Train does every epoch: the same dataset, executed again
        blocks = list(ds.iter_batches(batch_size=None, batch_format="numpy"))  # as made
        assert len(blocks) >= 65 // 8 and max(len(b["label"]) for b in blocks) <= 8
        tasks = re.search(r"MapBatches\(decode_rows\)\D*(\d+) tasks executed", ds.stats())
        assert tasks and int(tasks.group(1)) >= 65 // 16
        orders.append([int(i) for b in blocks for i in b["label"]])
    assert len(orders[0]) == 65 and sorted(orders[0]) == sorted(orders[1])
    assert orders[0] != orders[1]
