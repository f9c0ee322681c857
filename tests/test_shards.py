"""Shards as training data: WebDataset tars and Hugging Face Parquet, written by the real
``webdataset`` and ``datasets`` writers from real pixels (scikit-learn's digits), give the same
classes, counts and pixels as the same images as a folder tree; streamed, every sample once
across ranks; bad samples and broken shards named, never fatal; ``cifar-data pack`` round-trips;
object storage; one training run through Ray."""

from __future__ import annotations

import shutil
import tarfile
from collections import Counter
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
import webdataset as wds

from cifar.data.dataset import DataError, DataRequest
from cifar.data.examples import write_digits
from cifar.data.loaders import shard_loaders
from cifar.data.shards import ShardSplits
from cifar.data.sources import check_data, load_training_data
from jobs.data import main as cifar_data

CPU = torch.device("cpu")
SPLITS = ("train", "val")


def tree_files(tree: Path, split: str) -> list[tuple[Path, int]]:
    """(file, class index) in the order a folder tree is loaded: by path below the tree."""
    classes = sorted(d.name for d in (tree / "train").iterdir())
    files = sorted((tree / split).rglob("*.png"), key=lambda p: p.relative_to(tree).as_posix())
    return [(p, classes.index(p.parent.name)) for p in files]


def write_webdataset(tree: Path, out: Path, per_shard: int = 50) -> Path:
    for split in SPLITS:
        (out / split).mkdir(parents=True)
        pattern = str(out / split / "shard-%06d.tar")
        with wds.ShardWriter(pattern, maxcount=per_shard, verbose=0) as sink:
            for p, c in tree_files(tree, split):
                sink.write({"__key__": p.stem, "png": p.read_bytes(), "cls": c})
    return out


def write_hf_parquet(tree: Path, out: Path) -> Path:
    names = sorted(d.name for d in (tree / "train").iterdir())
    for split in SPLITS:
        files = tree_files(tree, split)
        images = [{"bytes": p.read_bytes(), "path": p.name} for p, _ in files]
        ds = datasets.Dataset.from_dict({"image": images, "label": [c for _, c in files]})
        ds = ds.cast_column("image", datasets.Image()).cast_column(
            "label", datasets.ClassLabel(names=names)
        )
        (out / split).mkdir(parents=True)
        ds.to_parquet(str(out / split / "data.parquet"))
    return out


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    """200 real-pixel digits (160 train / 40 val, 32x32 PNGs) as a folder tree."""
    root = tmp_path_factory.mktemp("digits") / "tree"
    write_digits(root, np.random.default_rng(0), 160, 40)
    return root


@pytest.fixture(scope="module")
def shard_dirs(tree, tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("shards")
    return {
        "webdataset": write_webdataset(tree, base / "wds"),
        "parquet": write_hf_parquet(tree, base / "hf"),
    }


@pytest.fixture(scope="module")
def in_memory_tree(tree):
    return load_training_data(DataRequest(str(tree), loading="memory"))[0]


def rows(images: torch.Tensor, labels: torch.Tensor) -> list[tuple[int, bytes]]:
    """The samples as a sorted list: equal whatever their order."""
    return sorted((int(y), x.numpy().tobytes()) for x, y in zip(images, labels, strict=True))


@pytest.mark.parametrize("kind", ["webdataset", "parquet"])
def test_shards_give_the_folder_trees_classes_counts_and_pixels(kind, shard_dirs, in_memory_tree):
    root = shard_dirs[kind]
    line, n_train = check_data(DataRequest(str(root)))
    assert n_train == 160 and f"{kind} shards" in line and "evaluated on val/" in line
    data, how = load_training_data(DataRequest(str(root), loading="memory"))
    assert how.how == "memory" and data.kind == "shards" and data.info["skipped"] == 0
    assert data.classes == in_memory_tree.classes == tuple(str(d) for d in range(10))
    assert data.class_counts() == in_memory_tree.class_counts()
    assert torch.equal(data.train_images, in_memory_tree.train_images)  # written in tree order
    assert torch.equal(data.test_labels, in_memory_tree.test_labels)
    assert torch.equal(data.test_images, in_memory_tree.test_images)


@pytest.mark.parametrize("kind", ["webdataset", "parquet"])
def test_streamed_shards_cover_every_sample_once_across_two_ranks(kind, shard_dirs, tree):
    memory, _ = load_training_data(DataRequest(str(shard_dirs[kind]), loading="memory"))
    splits, how = load_training_data(DataRequest(str(shard_dirs[kind]), loading="stream"))
    assert isinstance(splits, ShardSplits) and how.how == "stream"
    assert splits.class_counts() == memory.class_counts()
    train, _ = splits.datasets(CPU)
    images, labels, skipped = train.__getitems__([3, 120, 0, 77])  # across shards, any order
    assert skipped == [] and torch.equal(labels, memory.train_labels[[3, 120, 0, 77]])
    assert torch.equal(images, memory.train_images[[3, 120, 0, 77]])
    seen, evaluated = [], []
    for rank in (0, 1):
        tl, el = shard_loaders(splits, 16, False, 0, 32, rank, 2, CPU, loader_workers=2)
        tl.sampler.set_epoch(1)
        seen += [row for x, y, _ in tl for row in rows(x, y)]
        evaluated += [row for x, y, _ in el for row in rows(x, y)]
    assert sorted(seen) == rows(memory.train_images, memory.train_labels)
    assert sorted(evaluated) == rows(memory.test_images, memory.test_labels)  # each once


def test_a_bad_sample_is_skipped_and_named(tree, tmp_path):
    png = [p.read_bytes() for p, _ in tree_files(tree, "train")[:9]]
    for split, names in (("train", ["cat", "dog", "eel"] * 2), ("val", ["cat", "dog", "eel"])):
        (tmp_path / split).mkdir()
        with wds.TarWriter(str(tmp_path / split / "a.tar")) as sink:
            for i, name in enumerate(names):
                sink.write({"__key__": f"s{i}", "png": png[i], "txt": name})
            if split == "train":
                sink.write({"__key__": "broken", "png": b"not a png", "txt": "cat"})
                sink.write({"__key__": "unlabelled", "png": png[8]})
    shard = str(tmp_path / "train" / "a.tar")
    memory, _ = load_training_data(DataRequest(str(tmp_path), loading="memory"))
    assert memory.classes == ("cat", "dog", "eel") and len(memory.train_labels) == 6
    assert memory.info["skipped_files"] == [
        {"path": f"{shard}#unlabelled", "error": "no label"},
        {"path": f"{shard}#broken", "error": "not an image, or an unsupported format"},
    ]
    streamed, _ = load_training_data(DataRequest(str(tmp_path), loading="stream"))
    assert len(streamed.train_labels) == 7  # found undecodable while training
    images, _, skipped = streamed.datasets(CPU)[0].__getitems__(list(range(7)))
    assert len(images) == 6 and skipped == [
        (f"{shard}#broken", memory.info["skipped_files"][1]["error"])
    ]


def test_a_truncated_tar_keeps_the_samples_before_the_break_and_names_it(shard_dirs, tmp_path):
    root = tmp_path / "wds"
    shutil.copytree(shard_dirs["webdataset"], root)
    shard = root / "train" / "shard-000000.tar"
    with tarfile.open(shard) as tf:
        images = [m for m in tf.getmembers() if m.name.endswith(".png")]
    cut = images[10].offset_data + 20  # inside the 11th image
    shard.write_bytes(shard.read_bytes()[:cut])
    (root / "train" / "zz-garbage.tar").write_bytes(b"\x00not a tar" * 100)
    for loading in ("memory", "stream"):
        data, _ = load_training_data(DataRequest(str(root), loading=loading))
        assert len(data.train_labels) == 160 - (len(images) - 10)
        named = {s["path"]: s["error"] for s in data.info["skipped_files"]}
        assert named[str(shard)].startswith("read 10, then truncated or corrupt tar")
        assert named[str(root / "train" / "zz-garbage.tar")].startswith("read 0, then")


def test_parquet_columns_found_by_type_or_named(tree, tmp_path):
    files = tree_files(tree, "train")[::13][:12] + tree_files(tree, "val")[::7][:6]
    words = ["zero", "one", "two"]
    for split, part in (("train", files[:12]), ("val", files[12:])):
        ds = datasets.Dataset.from_dict(
            {"img": [p.read_bytes() for p, _ in part], "name": [words[c % 3] for _, c in part]}
        )
        (tmp_path / split).mkdir()
        ds.to_parquet(str(tmp_path / split / "part.parquet"))  # img: binary, name: string
    with pytest.raises(DataError, match=r"no label column 'label'.*img \(binary\).*--label-column"):
        load_training_data(DataRequest(str(tmp_path)))
    with pytest.raises(DataError, match=r"no image column 'photo'.*--image-column"):
        load_training_data(DataRequest(str(tmp_path), image_column="photo", label_column="name"))
    data, _ = load_training_data(DataRequest(str(tmp_path), label_column="name"))
    assert data.classes == ("one", "two", "zero")  # names sorted
    assert len(data.train_labels) == 12 and len(data.test_labels) == 6


@pytest.mark.parametrize("kind", ["webdataset", "parquet"])
def test_cifar_data_pack_round_trips(kind, tree, in_memory_tree, tmp_path, capsys):
    out = tmp_path / kind
    assert (
        cifar_data(["pack", str(tree), str(out), "--format", kind, "--samples-per-shard", "64"])
        == 0
    )
    assert "packed 160 train / 40 val images of 10 classes into 4" in capsys.readouterr().out
    assert (out / "classes.txt").read_text().split() == list(in_memory_tree.classes)
    data, _ = load_training_data(DataRequest(str(out), loading="memory"))
    assert data.class_counts() == in_memory_tree.class_counts()
    assert rows(data.train_images, data.train_labels) == rows(
        in_memory_tree.train_images, in_memory_tree.train_labels
    )
    want = Counter(in_memory_tree.train_labels.tolist())
    shards = sorted(str(p) for p in (out / "train").iterdir())
    if kind == "webdataset":
        got = Counter(int(s["cls"]) for s in wds.WebDataset(shards, shardshuffle=False))
    else:
        ds = datasets.Dataset.from_parquet(shards, cache_dir=str(tmp_path / "hf"))
        assert ds.features["label"].names == list(in_memory_tree.classes)
        assert ds[0]["image"].size == (32, 32)  # a PIL image: the struct{bytes, path} decoded
        got = Counter(ds["label"])
    assert got == want


def test_shards_in_object_storage(s3, shard_dirs, tree, in_memory_tree, tmp_path, monkeypatch):
    server, bucket = s3
    monkeypatch.setenv("CIFAR_RAY_CACHE", str(tmp_path / "node-cache"))
    server.upload_dir(shard_dirs["webdataset"], f"{bucket}/wds")
    streamed, _ = load_training_data(DataRequest(f"{bucket}/wds", loading="stream"))
    assert streamed.class_counts() == in_memory_tree.class_counts()
    images, _, skipped = streamed.datasets(CPU)[0].__getitems__([5, 150, 60])
    assert torch.equal(images, in_memory_tree.train_images[[5, 150, 60]]) and skipped == []
    assert streamed.fetch(2, CPU).context == "spawn"
    cifar_data(["pack", str(tree), f"{bucket}/packed", "--format", "parquet"])
    packed, _ = load_training_data(DataRequest(f"{bucket}/packed", loading="memory"))
    assert packed.class_counts() == in_memory_tree.class_counts()


@pytest.mark.ray
def test_training_on_shards_through_ray(ray_session, shard_dirs, tmp_path):
    from cifar.cluster.resources import ClusterInfo
    from cifar.train.config import TrainConfig
    from cifar.train.driver import train

    cfg = TrainConfig(
        data_dir=str(shard_dirs["webdataset"]),
        data_loading="stream",
        epochs=1,
        batch_size=32,
        num_workers=2,
        use_gpu=False,
        cpus_per_worker=1,
        storage_path=str(tmp_path),
        name="shards",
        max_failures=0,
    )
    summary = train(cfg, ClusterInfo(cpus=2, gpus=0))
    assert summary["dataset"] == "shards" and summary["data"]["format"] == "webdataset"
    counts = summary["data"]["class_counts"]
    assert sum(counts["train"].values()) == 160 and sum(counts["test"].values()) == 40
    last = summary["history"][-1]
    assert last["test_images"] == 40  # every evaluation sample once across the 2 workers
    correct = last["test_accuracy"] * 40
    assert abs(correct - round(correct)) < 1e-9
