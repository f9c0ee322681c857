import hashlib
import http.server
import os
import pickle
import tarfile
import threading
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch

from cifar.data import cifar10 as C
from cifar.data import loaders as D
from cifar.data import transforms as T
from cifar.data.dataset import DataError, TensorImageDataset
from cifar.data.synthetic import write_synthetic


def test_reader_loads_generated_set(synthetic_dir):
    d = C.load_cifar10(synthetic_dir)
    assert d.train_images.shape == (2000, 3, 32, 32) and d.train_images.dtype == torch.uint8
    assert d.test_images.shape == (600, 3, 32, 32)
    assert d.train_labels.dtype == torch.int64
    assert int(d.train_labels.min()) >= 0 and int(d.train_labels.max()) <= 9
    assert len(set(d.train_labels.tolist())) == 10
    assert d.kind == "synthetic"
    assert d.classes[0] == "airplane"


def test_reader_matches_official_row_layout(tmp_path):
    """CIFAR rows are 1024 R, then 1024 G, then 1024 B values, row-major 32x32."""
    bd = tmp_path / C.BATCH_DIR
    write_synthetic(tmp_path, 5, 1, seed=1)
    row = np.arange(3072, dtype=np.int64) % 251
    with open(bd / "test_batch", "wb") as f:
        pickle.dump({"data": row[None].astype(np.uint8), "labels": [7]}, f, protocol=2)
    d = C.load_cifar10(tmp_path)
    img = d.test_images[0]
    assert int(img[1, 0, 0]) == 1024 % 251  # first green pixel
    assert int(img[0, 1, 0]) == 32  # second row of red
    assert d.test_labels.tolist() == [7]


def test_generated_set_is_labelled_synthetic_and_official_files_are_detected(tmp_path):
    write_synthetic(tmp_path, 10, 5)
    meta = C.safe_unpickle(tmp_path / C.BATCH_DIR / C.META_FILE)
    assert meta["generator"] == C.SYNTHETIC_MARKER
    meta.pop("generator")
    with open(tmp_path / C.BATCH_DIR / C.META_FILE, "wb") as f:
        pickle.dump(meta, f)
    assert C.load_cifar10(tmp_path).kind == "custom"  # not official MD5s, not marked


class _Evil:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_code_running_batch_pickle_is_refused_and_not_run(tmp_path):
    write_synthetic(tmp_path, 10, 5)
    marker = tmp_path / "pwned"
    evil = _Evil()
    evil.marker = marker
    with open(tmp_path / C.BATCH_DIR / "data_batch_2", "wb") as f:
        pickle.dump({"data": evil, "labels": [0]}, f, protocol=2)
    with pytest.raises(DataError, match=r"posix\.system|os\.system|refusing"):
        C.load_cifar10(tmp_path)
    assert not marker.exists()


def test_missing_and_corrupt_data_errors_say_what_to_do(tmp_path):
    with pytest.raises(DataError, match="--download") as e:
        C.load_cifar10(tmp_path)
    assert "cifar-data synthetic" in str(e.value)
    write_synthetic(tmp_path, 10, 5)
    p = tmp_path / C.BATCH_DIR / "test_batch"
    p.write_bytes(p.read_bytes()[:100])
    with pytest.raises(DataError, match="corrupt or truncated"):
        C.load_cifar10(tmp_path)


# ---------------------------------------------------------------- download


def _archive(tmp_path: Path) -> tuple[Path, str]:
    src = tmp_path / "src"
    write_synthetic(src, 10, 5)
    arc = tmp_path / "served" / C.CIFAR10_ARCHIVE
    arc.parent.mkdir()
    with tarfile.open(arc, "w:gz") as tar:
        tar.add(src / C.BATCH_DIR, arcname=C.BATCH_DIR)
    return arc, hashlib.md5(arc.read_bytes()).hexdigest()


class _CountingServer:
    def __init__(self, root: Path):
        self.hits = 0
        outer = self

        class H(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *a, **k):
                super().__init__(*a, directory=str(root), **k)

            def do_GET(self):
                outer.hits += 1
                super().do_GET()

            def log_message(self, *a):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/{C.CIFAR10_ARCHIVE}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()


def _download(args):
    root, url, md5 = args
    return str(C.download_cifar10(root, url=url, md5=md5))


def test_download_verifies_md5_extracts_and_runs_once_for_concurrent_workers(tmp_path):
    arc, md5 = _archive(tmp_path)
    server = _CountingServer(arc.parent)
    try:
        root = tmp_path / "data"
        with ProcessPoolExecutor(3) as ex:
            out = list(ex.map(_download, [(root, server.url, md5)] * 3))
        assert server.hits == 1
        assert len(set(out)) == 1
        assert C.load_cifar10(root).kind == "synthetic"
    finally:
        server.close()


def test_download_with_wrong_md5_extracts_nothing(tmp_path):
    arc, _ = _archive(tmp_path)
    server = _CountingServer(arc.parent)
    try:
        with pytest.raises(DataError, match="MD5"):
            C.download_cifar10(tmp_path / "d", url=server.url, md5="0" * 32)
        assert not (tmp_path / "d" / C.BATCH_DIR).exists()
        assert not list((tmp_path / "d").glob("*.part"))
    finally:
        server.close()


def test_offline_download_error_explains_how_to_provide_the_data(tmp_path):
    with pytest.raises(DataError, match="offline") as e:
        C.download_cifar10(tmp_path, url="http://127.0.0.1:9/cifar-10-python.tar.gz")
    assert "cifar-data synthetic" in str(e.value)


# ---------------------------------------------------------------- loaders


def _dataset(n=103):
    imgs = torch.arange(n, dtype=torch.int64).view(n, 1, 1, 1).expand(n, 3, 32, 32) % 256
    return TensorImageDataset(imgs.to(torch.uint8).contiguous(), torch.arange(n))


@pytest.mark.parametrize("world", [1, 2, 3])
def test_train_shards_cover_everything_and_reshuffle_per_epoch(world):
    ds = _dataset()
    seen, orders = [], []
    for rank in range(world):
        loader = D.train_loader(ds, 16, rank, world, seed=5)
        loader.sampler.set_epoch(0)
        labels = torch.cat([y for _, y in loader])
        seen.append(labels)
        loader.sampler.set_epoch(1)
        orders.append((labels, torch.cat([y for _, y in loader])))
    allv = torch.cat(seen)
    assert set(allv.tolist()) == set(range(103))
    assert len(allv) == -(-103 // world) * world  # DistributedSampler pads to equal shards
    assert all(not torch.equal(a, b) for a, b in orders)


def test_batches_are_stacked_uint8_tensors_matching_their_labels():
    loader = D.train_loader(_dataset(), 16, 0, 1, seed=0)
    x, y = next(iter(loader))
    assert x.shape == (16, 3, 32, 32) and x.dtype == torch.uint8
    assert torch.equal(x[:, 0, 0, 0].long(), y % 256)


@pytest.mark.parametrize("world", [1, 2, 3])
def test_eval_shards_count_every_image_exactly_once(world):
    ds = _dataset()
    labels = torch.cat([y for r in range(world) for _, y in D.eval_loader(ds, 10, r, world)])
    assert sorted(labels.tolist()) == list(range(103))


def test_random_crop_flip_is_a_shifted_window_of_the_padded_image():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(1, 255, (64, 3, 32, 32), dtype=torch.uint8)
    y = T.random_crop_flip(x, generator=g)
    assert y.shape == x.shape and y.dtype == torch.uint8
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    flips = 0
    for i in range(64):
        windows = [padded[i, :, dy : dy + 32, dx : dx + 32] for dy in range(9) for dx in range(9)]
        plain = any(torch.equal(y[i], w) for w in windows)
        mirrored = any(torch.equal(y[i], w.flip(-1)) for w in windows)
        assert plain or mirrored
        flips += mirrored and not plain
    assert 15 < flips < 49  # about half are flipped


def test_normalize_without_stats_is_totensor():
    x = torch.randint(0, 256, (2, 3, 4, 4), dtype=torch.uint8)
    assert torch.allclose(T.normalize(x, None, None), x.float() / 255)
    n = T.normalize(x, [0.5, 0.5, 0.5], [0.25, 0.25, 0.25])
    assert torch.allclose(n, (x.float() / 255 - 0.5) / 0.25)


def test_channel_stats_match_numpy(synthetic_dir):
    d = C.load_cifar10(synthetic_dir)
    mean, std = d.channel_stats()
    a = d.train_images.numpy().astype(np.float64) / 255
    assert np.allclose(mean, a.mean(axis=(0, 2, 3)), atol=1e-5)
    assert np.allclose(std, a.std(axis=(0, 2, 3)), atol=1e-5)


def test_synthetic_cli_writes_requested_sizes(tmp_path):
    from jobs.data import main

    main(["synthetic", str(tmp_path), "--train", "50", "--test", "7", "--seed", "2"])
    d = C.load_cifar10(tmp_path)
    assert len(d.train_labels) == 50 and len(d.test_labels) == 7
