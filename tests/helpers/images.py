"""Image files of every format and mode the prediction job must handle, plus broken ones."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image


def _rgb(rng, w=48, h=40):
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")


def make_image_tree(root: Path, seed: int = 0) -> tuple[list[Path], list[Path]]:
    """Write a nested tree; returns (good files, broken files)."""
    rng = np.random.default_rng(seed)
    good: list[Path] = []
    bad: list[Path] = []

    def put(rel: str, save, broken: bool = False) -> None:
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        save(p)
        (bad if broken else good).append(p)

    put("jpeg/rgb photo.jpg", lambda p: _rgb(rng, 400, 300).save(p, quality=90))
    put("jpeg/grey.jpeg", lambda p: _rgb(rng).convert("L").save(p))
    put("jpeg/cmyk.jpg", lambda p: _rgb(rng).convert("CMYK").save(p))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 CW to display
    put("jpeg/rotated.jpg", lambda p: _rgb(rng, 64, 32).save(p, exif=exif))
    put("png/rgba.png", lambda p: _rgb(rng).convert("RGBA").save(p))
    put("png/palette.png", lambda p: _rgb(rng).convert("P", palette=Image.ADAPTIVE).save(p))
    put(
        "png/sixteen bit.png",
        lambda p: Image.fromarray(rng.integers(0, 65536, (33, 31), dtype=np.uint16)).save(p),
    )
    put("png/one-bit.png", lambda p: _rgb(rng).convert("1").save(p))
    put("png/la.png", lambda p: _rgb(rng).convert("LA").save(p))
    put("deep/er/nested/x.bmp", lambda p: _rgb(rng).save(p))
    put(
        "deep/anim.gif",
        lambda p: _rgb(rng).save(
            p, save_all=True, append_images=[_rgb(rng), _rgb(rng)], duration=50
        ),
    )
    put("deep/tiff.tif", lambda p: _rgb(rng).save(p))
    put("deep/webp.webp", lambda p: _rgb(rng).save(p, quality=80))
    put("名前 with spaces/猫 ü.png", lambda p: _rgb(rng).save(p))
    put("cat/a.png", lambda p: _rgb(rng, 32, 32).save(p))

    put("broken/empty.png", lambda p: p.write_bytes(b""), broken=True)
    put("broken/random.jpg", lambda p: p.write_bytes(rng.bytes(3000)), broken=True)
    put("broken/text.png", lambda p: p.write_text("definitely not a PNG\n"), broken=True)

    def truncated(fmt):
        def save(p):
            buf = io.BytesIO()
            _rgb(rng, 300, 200).save(buf, fmt)
            p.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])

        return save

    put("broken/truncated.jpg", truncated("JPEG"), broken=True)
    put("broken/truncated.png", truncated("PNG"), broken=True)
    put("broken/notes.txt", lambda p: p.write_text("a note"), broken=True)
    return good, bad


def make_class_tree(root: Path, seed: int = 0, val: bool = True) -> dict[str, list[Path]]:
    """A labelled folder tree, ``train/{cat,dog}/`` (+ ``val/``), in every mode the training
    reader must handle: JPEG, PNG, greyscale, RGBA, 16-bit, a nested folder, plus broken files
    and a stray file outside any class folder. Returns {"good": [...], "broken": [...],
    "stray": [...]} of training files (val files are all good)."""
    rng = np.random.default_rng(seed)
    out: dict[str, list[Path]] = {"good": [], "broken": [], "stray": []}

    def save(rel: str, write, kind: str = "good") -> None:
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        write(p)
        if rel.startswith("train/"):
            out[kind].append(p)

    for split in ("train", "val") if val else ("train",):
        for cls in ("cat", "dog"):
            n = 6 if split == "train" else 3
            for i in range(n):
                save(f"{split}/{cls}/rgb{i}.png", lambda p: _rgb(rng, 40, 36).save(p))
            save(f"{split}/{cls}/photo.jpg", lambda p: _rgb(rng, 120, 90).save(p, quality=90))
            save(f"{split}/{cls}/grey.png", lambda p: _rgb(rng).convert("L").save(p))
            save(f"{split}/{cls}/alpha.png", lambda p: _rgb(rng).convert("RGBA").save(p))
            save(
                f"{split}/{cls}/deep.png",
                lambda p: Image.fromarray(rng.integers(0, 65536, (33, 31), dtype=np.uint16)).save(
                    p
                ),
            )
            save(f"{split}/{cls}/nested/more/n.bmp", lambda p: _rgb(rng).save(p))
    save("train/cat/empty.png", lambda p: p.write_bytes(b""), "broken")
    save("train/dog/notes.txt", lambda p: p.write_text("not an image"), "broken")
    save("train/dog/cut.jpg", lambda p: p.write_bytes(_jpeg(rng)[:300]), "broken")
    save("train/stray.png", lambda p: _rgb(rng).save(p), "stray")
    (root / "train" / "cat" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")  # hidden: not listed
    return out


def _jpeg(rng) -> bytes:
    buf = io.BytesIO()
    _rgb(rng, 200, 150).save(buf, "JPEG")
    return buf.getvalue()


def write_pngs(root: Path, n: int, seed: int = 0, side: int = 8) -> list[str]:
    """``n`` small PNGs in folders of 500 (16 distinct pictures, uncompressed: cheap to write
    and to read); their absolute paths, sorted."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (16, side, side, 3), dtype=np.uint8)
    out = []
    for i in range(n):
        p = root / f"d{i // 500:03d}" / f"img{i:06d}.png"
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels[i % 16]).save(p, compress_level=0)
        out.append(str(p.resolve()))
    return sorted(out)
