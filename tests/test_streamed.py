"""Streaming image folders from their files (no Ray): the same split, labels and pixels as the
in-memory path, bad files dropped and named, every file once per epoch across ranks, memory
that does not grow with the number of files; and the photo-sized augmentation."""

import subprocess
import sys

import numpy as np
import pytest
import torch

from cifar.data import folders
from cifar.data.dataset import DataError, DataRequest
from cifar.data.loaders import shard_loaders
from cifar.data.loading import choose_loading
from cifar.data.sources import load_training_data
from cifar.data.streamed import FileSplits
from cifar.data.synthetic import write_folders
from cifar.data.transforms import model_input, normalize, random_crop_flip

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return write_folders(tmp_path_factory.mktemp("s") / "t", 90, 30, num_classes=3, seed=1)


def test_streamed_splits_labels_and_pixels_equal_the_in_memory_ones(tree):
    memory, how = load_training_data(DataRequest(str(tree), size=48, loading="memory"))
    streamed, how_s = load_training_data(DataRequest(str(tree), size=48, loading="stream"))
    assert isinstance(streamed, FileSplits) and (how.how, how_s.how) == ("memory", "stream")
    assert "270 files" not in how_s.why and "120 files decoded at 48x48" in how_s.why
    assert streamed.classes == memory.classes
    assert torch.equal(streamed.train_labels, memory.train_labels)
    assert torch.equal(streamed.test_labels, memory.test_labels)
    assert streamed.class_counts() == memory.class_counts()
    images, labels, skipped = streamed.dataset("train").__getitems__(list(range(10)))
    assert torch.equal(images, memory.train_images[:10]) and skipped == []
    assert torch.equal(labels, memory.train_labels[:10])


def test_a_bad_file_is_dropped_from_its_batch_and_named(tree, tmp_path):
    (tree / "train" / "bird" / "zz_bad.png").write_bytes(b"not an image")
    try:
        splits, _ = load_training_data(DataRequest(str(tree), size=32, loading="stream"))
        bad = splits.train_paths.index(str(tree / "train" / "bird" / "zz_bad.png"))
        images, labels, skipped = splits.dataset("train").__getitems__([0, bad, 1])
    finally:
        (tree / "train" / "bird" / "zz_bad.png").unlink()
    assert images.shape == (2, 3, 32, 32) and len(labels) == 2
    assert skipped == [(splits.train_paths[bad], "not an image, or an unsupported format")]


def test_auto_streams_only_over_the_memory_budget_and_says_why(tree):
    scanned = folders.scan(str(tree), 224)  # 120 files x 150 KiB = 17.6 MiB decoded
    n = len(scanned.files)
    small = choose_loading(n, 224, "auto", budget_mb=10)
    large = choose_loading(n, 224, "auto", budget_mb=100)
    assert small.how == "stream" and "over the memory budget of 10.0 MiB" in small.why
    assert "--data-memory-mb 10" in small.why and "--data-loading memory" in small.why
    assert large.how == "memory" and "within the memory budget of 100.0 MiB" in large.why
    assert "17.2 MiB" in large.why
    assert choose_loading(n, 224, "memory", budget_mb=1).how == "memory"
    with pytest.raises(DataError, match="CIFAR-format files are read into memory"):
        load_training_data(DataRequest(str(tree), synthetic=[64, 32, 0], loading="stream"))


def test_two_ranks_with_loader_processes_see_every_file_once_per_epoch(tree):
    splits, _ = load_training_data(DataRequest(str(tree), size=32, loading="stream"))
    seen, evaluated = [], []
    for rank in (0, 1):
        train, test = shard_loaders(splits, 8, False, 0, 32, rank, 2, CPU, loader_workers=2)
        train.sampler.set_epoch(3)
        seen += [int(y) for _, labels, _ in train for y in labels]
        evaluated += [len(labels) for _, labels, _ in test]
    assert len(seen) == 90 and sorted(seen) == sorted(splits.train_labels.tolist())
    assert sum(evaluated) == 30  # evaluation: each file exactly once, no padding


PEAK = r"""
import gc, re, resource, sys, torch
open("/proc/self/clear_refs", "w").write("5")  # an exec keeps the parent's peak: start afresh
from cifar.data.folders import list_tree, scan
from cifar.data.loaders import shard_loaders
splits = list_tree(scan(sys.argv[1], 64), 0.1)
train, _ = shard_loaders(splits, 32, False, 0, 64, 0, 1, torch.device("cpu"), 2)
n = sum(len(labels) for _, labels, _ in train)
del train
gc.collect()  # persistent loader processes end here, so their peak is counted below
own = re.search(r"VmHWM:\s+(\d+) kB", open("/proc/self/status").read())[1]
print(n, own, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""


def test_streamed_memory_does_not_grow_with_the_number_of_files(tmp_path):
    """One epoch through 2 loader processes at 64 px over 300 and 3,000 files: in memory the
    larger set would take 33 MiB more (3 x 64 x 64 bytes a file); streamed, neither the
    training process nor a loader process grows by a third of that."""
    peaks = {}
    for n in (300, 3000):
        root = write_folders(tmp_path / str(n), n, 20, num_classes=2, seed=n)
        out = subprocess.run(
            [sys.executable, "-c", PEAK, str(root)], capture_output=True, text=True, check=True
        )
        count, main_kb, loader_kb = map(int, out.stdout.split())
        assert count == n
        peaks[n] = (main_kb, loader_kb)
    grew = [(big - small) / 1024 for small, big in zip(peaks[300], peaks[3000], strict=True)]
    decoded = 2700 * 3 * 64 * 64 / 2**20
    assert max(grew) < decoded / 3, (peaks, grew)


def test_cifar_sized_batches_are_exactly_crop_flip_then_normalize():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8, generator=g)
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.2, 0.2)
    got = model_input(x, 32, mean, std, True, torch.Generator().manual_seed(1))
    want = normalize(random_crop_flip(x, generator=torch.Generator().manual_seed(1)), mean, std)
    assert torch.equal(got, want)
    up = model_input(x, 96, None, None)  # CIFAR-format arrays for a model at 96 px
    assert up.shape == (8, 3, 96, 96) and float(up.min()) >= 0 and float(up.max()) <= 1


def test_photos_get_random_resized_crops_and_flips_of_the_image():
    """A left-dark/right-bright photo: crops keep its pixels (no black borders), flips mirror
    it about half the time, and a seed repeats the draw."""
    ramp = torch.linspace(0, 255, 128).round().to(torch.uint8)
    photo = ramp.view(1, 1, 1, 128).expand(64, 3, 128, 128).contiguous()
    out = model_input(photo, 112, None, None, True, torch.Generator().manual_seed(0))
    again = model_input(photo, 112, None, None, True, torch.Generator().manual_seed(0))
    assert out.shape == (64, 3, 112, 112) and torch.equal(out, again)
    left, right = out[..., :8].mean((1, 2, 3)), out[..., -8:].mean((1, 2, 3))
    mirrored = (left > right).float().mean()
    assert 0.25 < mirrored < 0.75
    assert float(out.min()) >= 0 and float(out.max()) <= 1
    widths = (out[:, 0, 0, :].max(1).values - out[:, 0, 0, :].min(1).values).numpy()
    assert np.ptp(widths) > 0.2  # crops of different widths of the ramp
