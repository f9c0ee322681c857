"""Image files -> uint8 CHW arrays at the model's input size: the one decode/preprocess step
shared by training on folders, the single-image command, the Ray Data job and the benchmarks.
Imports no torch, so Ray Data's decode tasks start fast."""

from __future__ import annotations

import io
import math
import warnings
from collections.abc import Callable, Sequence

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from cifar.io.faults import CONNECTION_KINDS, StorageError
from cifar.io.storage import read_bytes

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")


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


# (left, top, right, bottom) of the (EXIF-rotated) original to take, and whether to mirror it
View = tuple[tuple[int, int, int, int], bool]
_SWAPS_SIDES = (5, 6, 7, 8)  # EXIF orientations that turn the image a quarter


def decode_image(
    data: bytes, size: int, view: Callable[[int, int], View] | None = None
) -> np.ndarray:
    """Encoded image bytes -> uint8 ``[3, size, size]``: EXIF-rotated, first frame, RGB, resized
    with PIL bilinear (what torchvision's ``Resize((size, size))`` does on a PIL image).

    ``view(width, height)`` (of the EXIF-rotated original) picks a box of it to resize instead,
    mirrored or not: training's random resized crop (:mod:`cifar.data.augment`). A JPEG is
    decoded at the smallest DCT scale that keeps the box at least ``size`` pixels a side (the
    whole image: ``2 * size``).

    Raises ``ValueError`` with a short reason for anything that is not a readable image."""
    if len(data) == 0:
        raise ValueError("empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            box, flip, scale = None, False, 1.0
            if view is not None:
                w, h = img.size
                if img.getexif().get(ExifTags.Base.Orientation) in _SWAPS_SIDES:
                    w, h = h, w
                box, flip = view(w, h)
            if img.format == "JPEG":
                scale = _draft(img, size, box)
            img.seek(0)  # first frame of GIF/TIFF/WebP animations
            img.load()
            img = ImageOps.exif_transpose(img)
            rgb = _to_rgb(img)
            if box is None:
                rgb = rgb.resize((size, size), Image.BILINEAR)
            elif scale == 1.0:  # torchvision's resized_crop: crop, then resize
                rgb = rgb.crop(box).resize((size, size), Image.BILINEAR)
            else:  # the box on the reduced decode
                rgb = rgb.resize((size, size), Image.BILINEAR, box=[v * scale for v in box])
            if flip:
                rgb = rgb.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    except UnidentifiedImageError:
        raise ValueError("not an image, or an unsupported format") from None
    except Image.DecompressionBombError as e:
        raise ValueError(f"image too large: {e}") from None
    except (OSError, SyntaxError, EOFError, ValueError, IndexError, TypeError) as e:
        raise ValueError(f"truncated or corrupt image: {e}") from None
    return np.asarray(rgb, dtype=np.uint8).transpose(2, 0, 1).copy()


def _draft(img: Image.Image, size: int, box: tuple[int, int, int, int] | None) -> float:
    """Ask the JPEG decoder for a reduced scale (1/2, 1/4, 1/8) that keeps ``box`` (the whole
    image: twice ``size``) at least ``size`` pixels a side -> the scale it decodes at."""
    if box is None:
        img.draft("RGB", (size * 2, size * 2))
        return 1.0
    w, h = img.size
    factor = size / max(1, min(box[2] - box[0], box[3] - box[1]))
    drafted = img.draft("RGB", (max(1, math.ceil(w * factor)), max(1, math.ceil(h * factor))))
    return drafted[1][2] / w if drafted else 1.0


def decode_into(
    images: np.ndarray,
    errors,
    rows,
    datas,
    size: int,
    views: Sequence[Callable[[int, int], View] | None] | None = None,
) -> None:
    """Decode ``datas`` (encoded images; None for a sample that has none, as a shard's row can
    be) into ``images[rows]``, each through its ``views`` entry where given
    (:func:`decode_image`); a sample that does not decode gets its reason in ``errors[row]``
    and keeps its zero image (shards, for training and prediction alike)."""
    for k, (i, data) in enumerate(zip(rows, datas, strict=True)):
        try:
            if data is None:
                raise ValueError("no image bytes in this row")
            images[i] = decode_image(data, size, views[k] if views is not None else None)
        except ValueError as e:
            errors[i] = str(e)


def load_image_file(
    path: str, size: int, view: Callable[[int, int], View] | None = None
) -> np.ndarray:
    return decode_image(read_bytes(path), size, view)


def decode_batch(batch: dict[str, np.ndarray], size: int) -> dict[str, np.ndarray]:
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
            if isinstance(e, StorageError) and e.kind in CONNECTION_KINDS:
                raise  # the store is gone, not this file: the job ends, --resume redoes it
            errors[i] = f"cannot read file: {e.strerror or e}"
    out = dict(batch)
    out.update(
        path=np.array(paths, dtype=object), image=images, error=np.array(errors, dtype=object)
    )
    return out
