"""Labelled image folders as training data: layout, labels, pixels, split, cache, errors."""

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from cifar.data import folders
from cifar.data.dataset import DataError
from cifar.data.sources import load_data
from cifar.data.synthetic import write_folders
from cifar.io.images import load_image_file
from cifar.predict.inputs import label_from_dirs
from tests.helpers.images import make_class_tree


@pytest.fixture()
def tree(tmp_path):
    root = tmp_path / "pets"
    files = make_class_tree(root)
    return root, files


def _expected(root: Path, split: str, classes: tuple[str, ...], skip: set[Path]):
    """Pixels and labels the reader must give for ``split``: every readable file in a class
    folder, in path order, decoded exactly as the prediction job decodes."""
    paths = sorted(
        (p for p in (root / split).rglob("*") if p.is_file() and not p.name.startswith(".")),
        key=lambda p: p.relative_to(root).as_posix(),
    )
    paths = [p for p in paths if p not in skip and p.parent != root / split]
    images = np.stack([load_image_file(str(p), 32) for p in paths])
    labels = [classes.index(p.relative_to(root / split).parts[0]) for p in paths]
    return images, labels


def test_tree_with_val_gives_classes_labels_and_the_prediction_jobs_pixels(tree):
    root, files = tree
    data = load_data(str(root))
    assert data.kind == "folder" and data.classes == ("cat", "dog")
    skip = set(files["broken"]) | set(files["stray"])
    for split, images, labels in (
        ("train", data.train_images, data.train_labels),
        ("val", data.test_images, data.test_labels),
    ):
        want_x, want_y = _expected(root, split, data.classes, skip)
        assert torch.equal(images, torch.from_numpy(want_x)), split
        assert labels.tolist() == want_y, split
    # nested folders count for their class; 6 rgb + photo + grey + alpha + 16-bit + nested
    assert data.class_counts() == {"train": {"cat": 11, "dog": 11}, "test": {"cat": 8, "dog": 8}}
    assert data.info["eval_split"] == "val"


def test_broken_and_stray_files_are_skipped_counted_and_listed(tree):
    root, files = tree
    data = load_data(str(root))
    listed = {Path(s["path"]): s["error"] for s in data.info["skipped_files"]}
    assert data.info["skipped"] == len(listed) == 4
    assert set(listed) == {p.resolve() for p in files["broken"] + files["stray"]}
    assert listed[(root / "train/cat/empty.png").resolve()] == "empty file (0 bytes)"
    assert "not an image" in listed[(root / "train/dog/notes.txt").resolve()]
    assert "truncated" in listed[(root / "train/dog/cut.jpg").resolve()]
    assert listed[(root / "train/stray.png").resolve()] == "not inside a class folder"


def _split_paths(data_root: Path, fraction: float):
    """(train, held-out) relative paths, recovered by matching each held-out image's pixels."""
    data = folders.load_folders(str(data_root), fraction)
    tree = folders.scan(str(data_root))
    images, errors, _ = folders.decoded_pixels(tree)
    good = [(f.rel, images[i]) for i, f in enumerate(tree.files) if not errors[i]]
    held = {
        rel
        for rel, img in good
        if any(torch.equal(torch.from_numpy(img), t) for t in data.test_images)
    }
    return data, held


def test_split_without_val_is_stratified_stable_and_the_same_anywhere(tmp_path):
    root = write_folders(tmp_path / "a", n_train=240, n_val=0, num_classes=4, seed=5)
    data, held = _split_paths(root, 0.25)
    counts = data.class_counts()
    for c in data.classes:
        n = counts["train"][c] + counts["test"][c]
        assert counts["test"][c] == folders.held_out_count(n, 0.25) == round(n * 0.25)
    assert data.info["eval_split"] == "0.25 of train/ by path hash"
    again, held_again = _split_paths(root, 0.25)
    assert held_again == held and torch.equal(again.train_images, data.train_images)
    # the split depends on the paths inside the tree, not where the tree lives
    moved = tmp_path / "elsewhere" / "b"
    shutil.copytree(root, moved, ignore=shutil.ignore_patterns(folders.CACHE_DIR))
    _, held_moved = _split_paths(moved, 0.25)
    assert held_moved == held
    assert all(rel.startswith("train/") for rel in held)


def test_held_out_count_keeps_a_training_image_and_evaluates_small_classes():
    assert folders.held_out_count(1, 0.1) == 0
    assert folders.held_out_count(2, 0.1) == 1
    assert folders.held_out_count(5, 0.9) == 4
    assert folders.held_out_count(100, 0.1) == 10
    assert folders.held_out_count(100, 0.0) == 0


def test_ten_classes_and_test_dir_as_the_evaluation_split(tmp_path):
    root = write_folders(tmp_path / "ten", n_train=200, n_val=60, num_classes=10, seed=1)
    (root / "val").rename(root / "test")
    data = load_data(str(root))
    assert len(data.classes) == 10 and data.info["eval_split"] == "test"
    assert data.train_images.shape == (200, 3, 32, 32) and data.test_images.shape[0] == 60
    assert set(data.train_labels.tolist()) == set(range(10))


def test_bad_trees_fail_before_training_with_what_to_do(tmp_path):
    one = tmp_path / "one"
    write_folders(one, n_train=20, n_val=4, num_classes=2)
    shutil.rmtree(one / "train" / "automobile")
    with pytest.raises(DataError, match="at least two"):
        load_data(str(one))

    unreadable = tmp_path / "unreadable"
    write_folders(unreadable, n_train=20, n_val=4, num_classes=2)
    for p in (unreadable / "train" / "automobile").iterdir():
        p.write_bytes(b"garbage")
    with pytest.raises(DataError, match=r"no readable training image.*automobile \(\d+ unread"):
        load_data(str(unreadable))

    no_val = tmp_path / "noval"
    write_folders(no_val, n_train=20, n_val=0, num_classes=2)
    with pytest.raises(DataError, match=r"evaluation split is empty.*--val-fraction"):
        load_data(str(no_val), val_fraction=0.0)

    extra = tmp_path / "extra"
    write_folders(extra, n_train=20, n_val=4, num_classes=2)
    (extra / "val" / "zebra").mkdir()
    with pytest.raises(DataError, match="zebra"):
        load_data(str(extra))

    with pytest.raises(DataError, match=r"train/<class>"):
        load_data(str(tmp_path / "nothing"), download=False)


def test_cache_is_reused_and_rebuilt_when_a_file_changes(tree, monkeypatch):
    root, _ = tree
    first = load_data(str(root))
    assert first.info["decode"]["cache"] == "miss"
    cache_file = Path(first.info["decode"]["cache_file"])
    assert cache_file.parent == root / folders.CACHE_DIR and cache_file.is_file()

    def no_decoding(paths):
        raise AssertionError("decoded although the cache was valid")

    monkeypatch.setattr(folders, "decode_files", no_decoding)
    second = load_data(str(root))
    assert second.info["decode"]["cache"] == "hit"
    assert torch.equal(second.train_images, first.train_images)
    monkeypatch.undo()

    target = root / "train" / "cat" / "rgb0.png"
    from PIL import Image

    Image.fromarray(np.full((40, 36, 3), 200, np.uint8)).save(target)
    os.utime(target, ns=(1, 1))  # a different mtime even on coarse clocks
    third = load_data(str(root))
    assert third.info["decode"]["cache"] == "miss"
    assert Path(third.info["decode"]["cache_file"]) != cache_file and not cache_file.exists()
    assert (third.train_images == 200).all(dim=(1, 2, 3)).sum() == 1


def test_read_only_tree_and_file_uri_use_the_nodes_cache(tree, tmp_path, monkeypatch):
    root, _ = tree
    monkeypatch.setenv("CIFAR_RAY_CACHE", str(tmp_path / "node-cache"))
    local = load_data(str(root))
    uri = load_data(f"file://{root}")
    assert torch.equal(uri.train_images, local.train_images)
    assert torch.equal(uri.test_labels, local.test_labels)
    assert Path(uri.info["decode"]["cache_file"]).is_relative_to(tmp_path / "node-cache")

    # a tree where no cache folder can be made (read-only media; as root, a file in the way)
    ro = tmp_path / "ro"
    shutil.copytree(root, ro, ignore=shutil.ignore_patterns(folders.CACHE_DIR))
    (ro / folders.CACHE_DIR).write_text("in the way")
    data = load_data(str(ro))
    assert Path(data.info["decode"]["cache_file"]).is_relative_to(tmp_path / "node-cache")
    assert torch.equal(data.train_images, local.train_images)


def test_generator_cli_writes_a_labelled_tree(tmp_path, capsys):
    from jobs.data import main as data_main

    data_main(
        [
            "synthetic",
            str(tmp_path / "t"),
            "--folders",
            "--classes",
            "4",
            "--train",
            "40",
            "--test",
            "8",
        ]
    )
    assert "4 classes" in capsys.readouterr().out
    root = tmp_path / "t"
    assert sorted(p.name for p in (root / "train").iterdir()) == sorted(
        ["airplane", "automobile", "bird", "cat"]
    )
    assert len([p for p in (root / "train").rglob("*") if p.is_file()]) == 40
    assert len([p for p in (root / "val").rglob("*") if p.is_file()]) == 8
    data = load_data(str(root))
    assert data.info["generated"] is True and data.info["skipped"] == 0


@pytest.mark.parametrize(
    ("path", "root", "want"),
    [
        ("/d/val/cat/x.png", "/d/val", "cat"),
        ("/d/val/cat/closeups/x.png", "/d/val", "cat"),
        ("/d/val/cat/x.png", "/d", "cat"),  # root above val/: val is not a class
        ("/d/val/Cat/x.png", "/d/val", "cat"),
        ("/d/val/x.png", "/d/val", None),
        ("s3://b/val/dog/x.png", "s3://b/val", "dog"),
    ],
)
def test_prediction_labels_follow_the_training_layout(path, root, want):
    assert label_from_dirs(path, root, ["cat", "dog"]) == want


def test_resume_refuses_data_with_other_classes(tmp_path):
    from cifar.config import ConfigError
    from cifar.train.config import TrainConfig
    from cifar.train.driver import check_classes, prepare_run

    run = tmp_path / "runs" / "r1"
    run.mkdir(parents=True)
    cfg = TrainConfig(storage_path=str(tmp_path / "runs"), name="r1", resume=True)
    saved = {**cfg.to_dict(), "classes": ["ants", "bees"]}  # what the run started with
    (run / "config.json").write_text(json.dumps(saved))
    data = load_data(str(write_folders(tmp_path / "d", 20, 4, 3)))
    with pytest.raises(ConfigError, match=r"classes changed \(\['ants', 'bees'\] ->"):
        check_classes(prepare_run(cfg), data)
    fresh = check_classes(TrainConfig(storage_path=str(tmp_path / "runs"), name="r2"), data)
    assert fresh.classes == ["airplane", "automobile", "bird"]
