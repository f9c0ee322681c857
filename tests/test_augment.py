"""Streamed training photos augmented in the loader processes (no Ray): torchvision's
RandomResizedCrop + RandomHorizontalFlip of the original file, the same box from the same seed;
a sample's crop a pure function of (seed, epoch, index); bad files still counted skips; the
training loop told not to augment again."""

import io

import numpy as np
import pytest
import torch
import torchvision.transforms as T
from PIL import Image, ImageOps

from cifar.data.augment import LoaderAugment, crop_flip, crop_params, sample_generator
from cifar.data.dataset import DataRequest
from cifar.data.loaders import KeyedSampler, shard_loaders
from cifar.data.sources import load_training_data
from cifar.data.streamed import FileDataset
from cifar.data.transforms import RRC_RATIO, RRC_SCALE
from cifar.io.images import decode_image

CPU = torch.device("cpu")
TORCHVISION = T.Compose([T.RandomResizedCrop(64, RRC_SCALE, RRC_RATIO), T.RandomHorizontalFlip()])


def photo(w: int, h: int, fmt: str = "PNG", seed: int = 0, exif: dict | None = None) -> bytes:
    """A smooth random picture (blocks of colour, bicubic-upscaled) as encoded bytes."""
    cells = np.random.default_rng(seed).integers(0, 256, (h // 16 + 1, w // 16 + 1, 3))
    img = Image.fromarray(cells.astype(np.uint8)).resize((w, h), Image.BICUBIC)
    buf = io.BytesIO()
    if exif:
        ex = Image.Exif()
        ex.update(exif)
        img.save(buf, fmt, quality=95, exif=ex)
    else:
        img.save(buf, fmt, quality=95)
    return buf.getvalue()


def torchvision_view(data: bytes, seed: int, size: int = 64) -> np.ndarray:
    torch.manual_seed(seed)
    img = Image.open(io.BytesIO(data))
    tv = T.Compose([T.RandomResizedCrop(size, RRC_SCALE, RRC_RATIO), T.RandomHorizontalFlip()])
    return np.asarray(tv(img.convert("RGB"))).transpose(2, 0, 1).astype(int)


@pytest.mark.parametrize("w,h", [(300, 200), (90, 400), (1000, 40), (64, 64)])
def test_crop_box_is_torchvisions_from_the_same_seed(w, h):
    """Same draws in the same order as ``RandomResizedCrop.get_params`` under
    ``torch.manual_seed``, the 10 tries' fallback included (1000 x 40 is outside the ratios)."""
    for seed in range(20):
        torch.manual_seed(seed)
        want = T.RandomResizedCrop.get_params(torch.zeros(3, h, w), RRC_SCALE, RRC_RATIO)
        assert crop_params(w, h, torch.Generator().manual_seed(seed)) == want


def test_pixels_equal_torchvisions_exactly_without_and_closely_with_the_jpeg_draft():
    """PNG (decoded at full scale): torchvision's pixels exactly. A 1,200 x 900 JPEG decoded at
    the reduced DCT scale that keeps the box >= 224 px a side, vs torchvision on the full
    decode: within a mean absolute difference of 1.5 and a maximum of 24 levels of 255 (measured
    0.79 and 10 over 30 seeds)."""
    png = photo(300, 200)
    for seed in range(10):
        got = decode_image(png, 64, crop_flip(torch.Generator().manual_seed(seed)))
        assert np.array_equal(got, torchvision_view(png, seed))
    jpeg = photo(1200, 900, "JPEG")
    diffs = []
    for seed in range(6):
        got = decode_image(jpeg, 224, crop_flip(torch.Generator().manual_seed(seed)))
        diffs.append(np.abs(got.astype(int) - torchvision_view(jpeg, seed, 224)))
    assert np.mean([d.mean() for d in diffs]) < 1.5 and max(d.max() for d in diffs) <= 24


def test_exif_rotated_jpeg_is_cropped_as_torchvision_crops_the_upright_image():
    jpeg = photo(400, 300, "JPEG", exif={0x0112: 6})  # stored landscape, shown portrait
    got = decode_image(jpeg, 64, crop_flip(torch.Generator().manual_seed(3)))
    torch.manual_seed(3)
    upright = Image.open(io.BytesIO(jpeg))
    want = np.asarray(TORCHVISION(ImageOps.exif_transpose(upright).convert("RGB")))
    assert np.abs(got.astype(int) - want.transpose(2, 0, 1)).mean() < 3


def test_whole_image_decode_is_torchvisions_resize():
    """Evaluation (and prediction) keep the squash: ``Resize((S, S))`` on the PIL image."""
    png = photo(300, 200)
    want = np.asarray(T.Resize((64, 64))(Image.open(io.BytesIO(png)).convert("RGB")))
    assert np.array_equal(decode_image(png, 64), want.transpose(2, 0, 1))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("aug")
    paths = []
    for i in range(12):
        p = root / f"{i}.{'jpg' if i % 2 else 'png'}"
        p.write_bytes(photo(160 + 8 * i, 120, "JPEG" if i % 2 else "PNG", seed=i))
        paths.append(str(p))
    (root / "bad.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    return [*paths, str(root / "bad.jpg")]


def augmenting(files) -> FileDataset:
    return FileDataset(files, torch.arange(len(files)), 64, LoaderAugment())


def test_a_samples_crop_depends_on_seed_epoch_and_index_only(files):
    ds = augmenting(files)
    keys = [(7, 2, i) for i in range(12)]
    forward, _, _ = ds.__getitems__(keys)
    backward, _, _ = ds.__getitems__(keys[::-1])
    assert torch.equal(forward, backward.flip(0))  # any order, any batch
    alone, _, _ = ds.__getitems__([keys[5]])
    assert torch.equal(alone[0], forward[5])
    other_epoch, _, _ = ds.__getitems__([(7, 3, i) for i in range(12)])
    other_seed, _, _ = ds.__getitems__([(8, 2, i) for i in range(12)])
    for changed in (other_epoch, other_seed):
        assert sum(not torch.equal(a, b) for a, b in zip(changed, forward, strict=True)) >= 10
    plain, _, _ = ds.__getitems__(list(range(12)))  # not a keyed sampler's: unaugmented
    assert torch.equal(plain, FileDataset(files, torch.arange(13), 64).__getitems__(range(12))[0])
    g1, g2 = sample_generator(7, 2, 5), sample_generator(7, 2, 5)
    assert torch.equal(torch.rand(4, generator=g1), torch.rand(4, generator=g2))


def test_a_bad_file_is_still_a_counted_skip(files):
    images, labels, skipped = augmenting(files).__getitems__([(0, 0, 12), (0, 0, 1)])
    assert images.shape == (1, 3, 64, 64) and labels.tolist() == [1]
    assert skipped == [(files[12], "not an image, or an unsupported format")]


def test_loader_processes_give_the_in_process_crops_and_the_loop_is_told(tmp_path):
    """Through ``shard_loaders`` (2 loader processes, persistent): the sampler carries (seed,
    epoch) to them, each batch equals the same keys decoded here, and the training loader says
    its batches come augmented; CIFAR-sized images and --no-augment keep the device's."""
    from cifar.data.synthetic import write_folders

    tree = write_folders(tmp_path / "t", 24, 8, num_classes=2, seed=3)
    req = DataRequest(str(tree), size=64, loading="stream", augment=True)
    splits, _ = load_training_data(req)
    train, test = shard_loaders(splits, 8, False, 5, 64, 0, 1, CPU, loader_workers=2)
    assert train.loader_augments and isinstance(train.sampler, KeyedSampler)
    assert not getattr(test, "loader_augments", False)
    for epoch in (0, 1):
        train.sampler.set_epoch(epoch)
        keys = list(train.sampler)
        got = torch.cat([images for images, _, _ in train])
        want = train.dataset.__getitems__(keys)[0]
        assert all(k[:2] == (5, epoch) for k in keys) and torch.equal(got, want)
    for size, augment in ((32, True), (64, False)):
        req = DataRequest(str(tree), size=size, loading="stream", augment=augment)
        plain, _ = shard_loaders(load_training_data(req)[0], 8, True, 5, size, 0, 1, CPU)
        assert not plain.loader_augments and isinstance(next(iter(plain.batch_sampler))[0], int)


def test_streamed_shards_crop_each_sample_as_its_file_is_cropped(tmp_path):
    """A tar of a folder tree: a training sample's pixels are its file's decoded through the
    same key's crop, and a bad sample is a counted skip."""
    import tarfile

    from cifar.data.synthetic import write_folders

    tree = write_folders(tmp_path / "t", 16, 4, num_classes=2, seed=5)
    bad = next((tree / "train").iterdir()) / "zz_bad.png"
    bad.write_bytes(b"not an image")
    classes = sorted(d.name for d in (tree / "train").iterdir())
    for split in ("train", "val"):  # WebDataset: <key>.png + <key>.cls per sample
        (tmp_path / "wds" / split).mkdir(parents=True)
        with tarfile.open(tmp_path / "wds" / split / "shard-000000.tar", "w") as tar:
            for p in sorted((tree / split).rglob("*.png")):
                cls = str(classes.index(p.parent.name)).encode()
                for name, data in ((f"{p.stem}.png", p.read_bytes()), (f"{p.stem}.cls", cls)):
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    req = DataRequest(str(tmp_path / "wds"), size=64, loading="stream", augment=True)
    shards, _ = load_training_data(req)
    train = shards.datasets(CPU)[0]
    assert train.loader_augments and not shards.datasets(CPU)[1].loader_augments
    got, _, skipped = train.__getitems__([(1, 4, i) for i in range(len(train))])
    assert len(skipped) == 1 and skipped[0][1] == "not an image, or an unsupported format"
    files = {p.stem: p for p in tree.rglob("*.png")}
    names = [train.samples.name(i).split("#")[1] for i in range(len(train))]
    good = [i for i, n in enumerate(names) if n != "zz_bad"]
    for row, i in enumerate(good):
        view = crop_flip(sample_generator(1, 4, i))
        assert np.array_equal(
            got[row].numpy(), decode_image(files[names[i]].read_bytes(), 64, view)
        )


def test_the_run_records_where_its_photos_are_augmented():
    import dataclasses

    from cifar.data.dataset import Loading
    from cifar.data.transforms import augmentation
    from cifar.train.config import TrainConfig
    from cifar.train.setup import loads_augmented

    stream, memory = Loading("stream", "over budget"), Loading("memory", "fits")
    cfg = TrainConfig(arch="resnet18", image_size=64)
    assert loads_augmented(cfg, stream) and not loads_augmented(cfg, memory)
    assert not loads_augmented(dataclasses.replace(cfg, augment=False), stream)
    assert not loads_augmented(dataclasses.replace(cfg, image_size=32), stream)
    assert "of the original file, in the loader processes" in augmentation(64, True)
    assert "on the device" in augmentation(64) and "4px" in augmentation(32, True)
