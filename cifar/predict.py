"""Prediction: one decode/preprocess function, one classifier, used by both the single-image CLI
and the Ray Data batch job.

    python -m cifar.predict --model MODEL IMAGE [IMAGE ...]

prints ``path<TAB>class<TAB>confidence`` per image, like the tutorial's ``test.py`` but with the
preprocessing the model was trained with (its ``meta.json``; the tutorial's Resize((32, 32)) +
ToTensor() for a bare state_dict). Exit status 1 if any image failed, reasons on stderr.
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from cifar.checkpoint import CheckpointError, LoadedModel, load_model
from cifar.data import normalize
from cifar.model import IMAGE_SIZE
from cifar.storage import read_bytes

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")


# --------------------------------------------------------------------------- reading + decoding


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit RGB. 16-bit/32-bit/float greyscale is rescaled (PIL's own convert
    would clip it to white); everything else is ``convert('RGB')`` as in the tutorial."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        a = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") else max(float(a.max()), 1.0)
        if img.mode == "F" and a.max() <= 1.0:
            top = 1.0
        a = np.clip(a / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(a, mode="L").convert("RGB")
    return img.convert("RGB")


def decode_image(data: bytes, size: int = IMAGE_SIZE) -> np.ndarray:
    """Encoded image bytes -> uint8 ``[3, size, size]``: EXIF-rotated, first frame, RGB, resized
    with PIL bilinear (what torchvision's ``Resize((32, 32))`` does on a PIL image).

    Raises ``ValueError`` with a short reason for anything that is not a readable image."""
    if len(data) == 0:
        raise ValueError("empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            if img.format == "JPEG":
                img.draft("RGB", (size * 2, size * 2))  # decode big JPEGs at reduced scale
            img.seek(0)  # first frame of GIF/TIFF/WebP animations
            img.load()
            img = ImageOps.exif_transpose(img)
            rgb = _to_rgb(img).resize((size, size), Image.BILINEAR)
    except UnidentifiedImageError:
        raise ValueError("not an image, or an unsupported format") from None
    except Image.DecompressionBombError as e:
        raise ValueError(f"image too large: {e}") from None
    except (OSError, SyntaxError, EOFError, ValueError, IndexError, TypeError) as e:
        raise ValueError(f"truncated or corrupt image: {e}") from None
    return np.asarray(rgb, dtype=np.uint8).transpose(2, 0, 1).copy()


def load_image_file(path: str, size: int = IMAGE_SIZE) -> np.ndarray:
    return decode_image(read_bytes(path), size)


def decode_batch(batch: dict[str, np.ndarray], size: int = IMAGE_SIZE) -> dict[str, np.ndarray]:
    """Ray Data CPU stage: ``{"path"}`` -> ``{"path", "image" uint8 [B,3,H,W], "error"}``.
    A file that cannot be read or decoded gets a zero image and its reason in ``error``; a good
    one gets ``""`` (an all-None column would not survive Arrow: it comes back as NaN)."""
    paths = [str(p) for p in batch["path"]]
    images = np.zeros((len(paths), 3, size, size), dtype=np.uint8)
    errors: list[str] = [""] * len(paths)
    for i, p in enumerate(paths):
        try:
            images[i] = load_image_file(p, size)
        except ValueError as e:
            errors[i] = str(e)
        except OSError as e:
            errors[i] = f"cannot read file: {e.strerror or e}"
    out = dict(batch)
    out.update(
        path=np.array(paths, dtype=object), image=images, error=np.array(errors, dtype=object)
    )
    return out


# --------------------------------------------------------------------------- classifying


PRECISIONS = ("auto", "fp32", "bf16")


def resolve_precision(precision: str, device: torch.device) -> bool:
    """True for bf16 autocast. ``auto``: bf16 on GPUs and on CPUs with bf16 instructions."""
    from cifar.train import cpu_has_native_bf16

    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "auto":
        return device.type == "cuda" or cpu_has_native_bf16()
    return precision == "bf16"


class Classifier:
    """A loaded model plus the preprocessing its metadata asks for."""

    def __init__(
        self, model: LoadedModel, device: torch.device | str = "cpu", precision: str = "fp32"
    ) -> None:
        self.device = torch.device(device)
        self.amp = resolve_precision(precision, self.device)
        self.loaded = model
        # channels_last: 2x the images/s of the default layout on CPU (CIFAR10-quick, batch 256)
        self.model = model.model.to(self.device, memory_format=torch.channels_last).eval()
        self.classes = model.classes
        self.mean, self.std = model.mean, model.std

    @classmethod
    def from_path(
        cls, path: str, device: torch.device | str = "cpu", precision: str = "fp32"
    ) -> Classifier:
        return cls(load_model(path, "cpu"), device, precision)

    @torch.inference_mode()
    def probabilities(self, images: np.ndarray) -> np.ndarray:
        """uint8 ``[B, 3, 32, 32]`` -> softmax probabilities ``[B, classes]`` (float32)."""
        x = torch.from_numpy(np.ascontiguousarray(images)).to(self.device, non_blocking=True)
        x = normalize(x, self.mean, self.std).contiguous(memory_format=torch.channels_last)
        if self.amp:
            with torch.autocast(self.device.type, dtype=torch.bfloat16):
                logits = self.model(x)
        else:
            logits = self.model(x)
        return torch.softmax(logits.float(), dim=1).cpu().numpy()


def prediction_columns(
    probs: np.ndarray, ok: np.ndarray, classes: Sequence[str], top_k: int
) -> dict[str, list]:
    """Result columns for a batch (``probs`` has one row per ``ok`` row); failed rows get None."""
    n, k = len(ok), min(top_k, len(classes))
    cols: dict[str, list] = {
        "class_index": [None] * n,
        "class_name": [None] * n,
        "confidence": [None] * n,
    }
    for j in range(1, k + 1):
        cols[f"top{j}_class"] = [None] * n
        cols[f"top{j}_prob"] = [None] * n
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    for r_in, r in enumerate(np.flatnonzero(ok)):
        best = int(order[r_in, 0])
        cols["class_index"][r] = best
        cols["class_name"][r] = classes[best]
        cols["confidence"][r] = float(probs[r_in, best])
        for j in range(k):
            c = int(order[r_in, j])
            cols[f"top{j + 1}_class"][r] = classes[c]
            cols[f"top{j + 1}_prob"][r] = float(probs[r_in, c])
    return cols


def result_schema(top_k: int, num_classes: int, with_label: bool):
    """The output columns, typed, so every block (even one of only errors) has one schema."""
    import pyarrow as pa

    fields = [
        ("path", pa.string()),
        ("class_index", pa.int64()),
        ("class_name", pa.string()),
        ("confidence", pa.float64()),
    ]
    for j in range(1, min(top_k, num_classes) + 1):
        fields += [(f"top{j}_class", pa.string()), (f"top{j}_prob", pa.float64())]
    if with_label:
        fields.append(("label", pa.string()))
    fields.append(("error", pa.string()))
    return pa.schema(fields)


class BatchPredictor:
    """Ray Data actor: weights loaded once in ``__init__``; ``__call__(batch) -> batch``."""

    def __init__(
        self,
        model_path: str,
        device: str = "cpu",
        top_k: int = 3,
        threads: int = 1,
        label_dirs: bool = False,
        precision: str = "auto",
    ) -> None:
        if device == "cpu":
            torch.set_num_threads(max(1, threads))
        self.classifier = Classifier.from_path(model_path, device, precision)
        self.top_k = top_k
        self.label_dirs = label_dirs
        self.schema = result_schema(top_k, len(self.classifier.classes), label_dirs)

    def __call__(self, batch: dict[str, np.ndarray]):
        """``{"path", "image", "error"}`` -> a pyarrow Table of results, one row per input row."""
        import pyarrow as pa

        errors = [str(e) or None for e in batch["error"]]
        paths = [str(p) for p in batch["path"]]
        ok = np.array([e is None for e in errors], dtype=bool)
        probs = (
            self.classifier.probabilities(batch["image"][ok])
            if ok.any()
            else np.zeros((0, len(self.classifier.classes)), dtype=np.float32)
        )
        cols: dict[str, list] = {"path": paths}
        cols.update(prediction_columns(probs, ok, self.classifier.classes, self.top_k))
        if self.label_dirs:
            cols["label"] = [label_from_path(p, self.classifier.classes) for p in paths]
        cols["error"] = errors
        return pa.table(cols, schema=self.schema)


def label_from_path(path: str, classes: Sequence[str]) -> str | None:
    """The class named by the file's parent folder (``.../cat/x.png`` -> ``cat``), if any."""
    parent = os.path.basename(os.path.dirname(path.rstrip("/"))).lower()
    lookup = {c.lower(): c for c in classes}
    return lookup.get(parent)


# --------------------------------------------------------------------------- single-image CLI


@dataclass
class ImageResult:
    path: str
    class_name: str | None
    class_index: int | None
    confidence: float | None
    error: str | None


def classify_files(
    classifier: Classifier, paths: Sequence[str], top_k: int = 1
) -> list[ImageResult]:
    """The single-image path: same decode, same preprocessing, same classifier as the job."""
    results = []
    for p in paths:
        try:
            img = load_image_file(p)
        except ValueError as e:
            results.append(ImageResult(p, None, None, None, str(e)))
            continue
        except OSError as e:
            results.append(ImageResult(p, None, None, None, f"cannot read file: {e.strerror or e}"))
            continue
        probs = classifier.probabilities(img[None])
        cols = prediction_columns(probs, np.array([True]), classifier.classes, top_k)
        results.append(
            ImageResult(
                p, cols["class_name"][0], cols["class_index"][0], cols["confidence"][0], None
            )
        )
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m cifar.predict",
        description="Classify images with a trained CIFAR10-quick model (one line per image).",
    )
    p.add_argument("--model", required=True, help="run dir, checkpoint dir, model/ or .pt/.pth")
    p.add_argument("images", nargs="+", help="image files")
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="auto",
        help="auto: bf16 on GPUs and bf16-capable CPUs (what jobs.predict uses); fp32: exactly "
        "the tutorial's test.py arithmetic",
    )
    a = p.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        classifier = Classifier.from_path(a.model, device, a.precision)
    except CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    failed = 0
    for r in classify_files(classifier, a.images):
        if r.error is None:
            print(f"{r.path}\t{r.class_name}\t{r.confidence:.4f}")
        else:
            failed += 1
            print(f"{r.path}: {r.error}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
