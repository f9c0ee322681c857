"""How a photo model should see its evaluation images: the project's squash (the whole image
resized to S x S, as prediction does) or the references' resize of the short side to S*256/224
and centre crop of S, measured on real photos; and the streamed path (random resized crops of
the files in the loader processes) against the in-memory one (crops of the decoded squares on
the device), trained the same way.

    python -m benchmarks.evalcrop [--size 64] [--train 2000] [--val 1000] [--epochs 4]
        [--arch resnet18] [--json benchmarks/results/streaming_evalcrop_cpu.json]

Images: one class per photo, the ten photos of the textures sets (benchmarks.realpixels:
scikit-image's and scikit-learn's bundled pictures). Each image is a box of its photo whose
aspect ratio is drawn from 1/2-2 (landscape and portrait, as photos come) and whose short side
is 30-70% of the photo's, colour-jittered, saved as a JPEG with its aspect kept, 160-320 px on
its long side. Validation boxes come only from the right 30% of each photo, which no training
box touches. Both paths train with the job's engine (cifar.train.engine.build +
train_one_epoch) for --epochs; each model is then evaluated on every validation file both ways
(same model, same files: a paired comparison).
"""

from __future__ import annotations

import io
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from benchmarks.common import describe, machine, parser, write_json

PHOTOS = ("brick", "grass", "gravel", "moon", "coins", "coffee", "chelsea", "astronaut")
PHOTOS += ("rocket", "flower")
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def write_set(root: Path, n_train: int, n_val: int, seed: int = 0) -> Path:
    from benchmarks.realpixels import Jitter, _colour, _photo

    rng = np.random.default_rng(seed)
    jitter = Jitter(scale=(0.3, 0.7), noise=8.0, grey_p=0.1, tint=0.2)
    for name in PHOTOS:
        arr = _photo(name)
        photo = Image.fromarray(arr).convert("RGB")
        hgt, wid = arr.shape[:2]
        cut = round(wid * 0.7)
        for split, n, (x0, x1) in (("train", n_train, (0, cut)), ("val", n_val, (cut, wid))):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n // len(PHOTOS)):
                side = min(hgt, wid) * rng.uniform(*jitter.scale)
                aspect = np.exp(rng.uniform(np.log(0.5), np.log(2.0)))
                w, h = min(side * np.sqrt(aspect), x1 - x0), min(side / np.sqrt(aspect), hgt)
                cx, cy = rng.uniform(x0, x1 - w), rng.uniform(0, hgt - h)
                long = int(rng.integers(160, 321))
                out = (long, max(1, round(long * h / w))) if w >= h else (round(long * w / h), long)
                img = photo.resize(out, Image.BILINEAR, box=(cx, cy, cx + w, cy + h))
                Image.fromarray(_colour(np.asarray(img), rng, jitter)).save(
                    folder / f"{split}_{i:05d}.jpg", quality=90
                )
    return root


def centre_crop(data: bytes, size: int) -> np.ndarray:
    """torchvision's ``Resize(size * 256 // 224)`` + ``CenterCrop(size)`` on the PIL image."""
    from torchvision import transforms

    tf = transforms.Compose([transforms.Resize(size * 256 // 224), transforms.CenterCrop(size)])
    img = Image.open(io.BytesIO(data)).convert("RGB")
    return np.asarray(tf(img)).transpose(2, 0, 1).copy()


def train(root: Path, a, streamed: bool):
    from cifar.data import folders
    from cifar.models.registry import ModelSpec
    from cifar.train.config import TrainConfig, resolve_recipe
    from cifar.train.engine import build, job_compute, train_one_epoch

    tree = folders.scan(str(root), a.size)
    data = folders.list_tree(tree, 0.1, augment=True) if streamed else folders.load_tree(tree)
    cfg = TrainConfig(arch=a.arch, image_size=a.size, epochs=a.epochs, batch_size=a.batch)
    cfg = resolve_recipe(cfg, len(data.train_labels), 1)
    spec = ModelSpec.of(a.arch, data.classes, MEAN, STD, input_size=a.size)
    compute = job_compute(cfg, spec, torch.device("cpu"), n_train=len(data.train_labels))
    splits = data if streamed else data.splits()
    e = build(cfg, splits, spec, compute, loader_workers=2 if streamed else 0)
    for epoch in range(a.epochs):
        st = train_one_epoch(e, epoch)
        print(
            f"    {'streamed' if streamed else 'memory'} epoch {epoch + 1}: loss "
            f"{st.loss_sum / st.samples:.3f}, {st.samples / st.seconds:.0f} img/s",
            flush=True,
        )
    return e


@torch.inference_mode()
def accuracy(e, files: list[tuple[Path, int]], view) -> tuple[float, np.ndarray]:
    from cifar.data.transforms import normalize

    e.model.eval()
    right = []
    for start in range(0, len(files), 128):
        chunk = files[start : start + 128]
        x = torch.from_numpy(np.stack([view(p.read_bytes()) for p, _ in chunk]))
        with e.compute.autocast():
            pred = e.model(normalize(x, MEAN, STD)).argmax(1)
        right += (pred == torch.tensor([c for _, c in chunk])).tolist()
    return float(np.mean(right)), np.array(right)


def main() -> None:
    from cifar.io.images import decode_image

    p = parser(__doc__, "streaming_evalcrop_cpu.json")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--train", type=int, default=2000)
    p.add_argument("--val", type=int, default=1000)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--arch", default="resnet18")
    a = p.parse_args()
    info = machine()
    views = {
        "squash": lambda d: decode_image(d, a.size),
        "centre_crop": lambda d: centre_crop(d, a.size),
    }
    res: dict = {"size": a.size, "arch": a.arch, "epochs": a.epochs, "batch": a.batch}
    with tempfile.TemporaryDirectory(prefix="bench-evalcrop-") as tmp:
        root = write_set(Path(tmp), a.train, a.val)
        classes = sorted(PHOTOS)
        files = sorted((p, classes.index(p.parent.name)) for p in (root / "val").rglob("*.jpg"))
        print(
            f"[{describe(info)}] {a.arch} at {a.size} px, {a.epochs} epochs, "
            f"{len(files)} validation photos",
            flush=True,
        )
        for path in ("streamed", "memory"):
            e = train(root, a, path == "streamed")
            acc = {k: accuracy(e, files, v) for k, v in views.items()}
            both = {k: v[0] for k, v in acc.items()}
            gained = int((acc["centre_crop"][1] & ~acc["squash"][1]).sum())
            lost = int((acc["squash"][1] & ~acc["centre_crop"][1]).sum())
            res[path] = {
                **both,
                "centre_crop_right_squash_wrong": gained,
                "squash_right_centre_crop_wrong": lost,
            }
            print(
                f"  {path}: squash {both['squash']:.3f}, centre crop "
                f"{both['centre_crop']:.3f} (only centre crop right: {gained}, only squash "
                f"right: {lost})",
                flush=True,
            )
    write_json(a.json, info, res)


if __name__ == "__main__":
    main()
