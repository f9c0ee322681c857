"""The decode limit: how many images one core decodes and resizes to the model's size, in a tight
loop, the way every path of the project decodes (cifar.io.images.decode_image: PIL, EXIF
rotation, RGB, bilinear resize; a JPEG decoded at a reduced scale where it is much larger than
the model's input: PIL's draft mode).

    python -m benchmarks.decode [--files 400] [--rounds 3]
        [--json benchmarks/results/decode_cpu.json]

Three kinds of files, written here:
  png32      32x32 PNGs of noise (CIFAR-sized; what 21,000-small-file prediction decodes), to 32 px
  jpeg160    160x120 JPEGs of smooth colour fields plus noise (a thumbnail), to 64 px
  jpeg1200   1200x900 JPEGs of the same content (a camera-sized photo), to 224 px, decoded
             with draft mode (what the project does) and at full scale (draft off), so the ratio
             says what draft mode is worth.
Each is timed on one core (torch and PIL use one thread) as the best of --rounds passes over
--files files read from memory (the file reads are not what is measured), and printed as
images/s per core: a job's images/s divided by this times its cores is its share of the limit.
"""

from __future__ import annotations

import io
import time

from benchmarks.common import describe, machine, parser, write_json

KINDS = {  # name: (width, height, format, model size)
    "png32": (32, 32, "PNG", 32),
    "jpeg160": (160, 120, "JPEG", 64),
    "jpeg1200": (1200, 900, "JPEG", 224),
}


def encoded(kind: str, n: int) -> list[bytes]:
    """``n`` encoded images of ``kind``: noise for PNGs, smooth fields plus noise for JPEGs
    (content that compresses as photos do)."""
    import numpy as np
    from PIL import Image

    width, height, fmt, _ = KINDS[kind]
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        if fmt == "PNG":
            pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        else:
            grid = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8), "RGB")
            smooth = np.asarray(grid.resize((width, height), Image.BICUBIC), dtype=np.int16)
            pixels = np.clip(smooth + rng.integers(-20, 21, smooth.shape), 0, 255)
        buf = io.BytesIO()
        Image.fromarray(pixels.astype(np.uint8)).save(buf, fmt, quality=90)
        out.append(buf.getvalue())
    return out


def rate(files: list[bytes], size: int, rounds: int, draft: bool = True) -> float:
    """Images/s of decode_image over ``files`` on this core, best of ``rounds`` passes."""
    from PIL import Image

    from cifar.io.images import decode_image

    original = Image.Image.draft
    if not draft:  # PIL's draft() is a request: refusing it decodes at full scale
        Image.Image.draft = lambda self, mode, size: None
    try:
        best = float("inf")
        for _ in range(rounds):
            t0 = time.perf_counter()
            for data in files:
                decode_image(data, size)
            best = min(best, time.perf_counter() - t0)
    finally:
        Image.Image.draft = original
    return len(files) / best


def main() -> None:
    p = parser(__doc__, "decode_cpu.json")
    p.add_argument("--files", type=int, default=400, help="files of each kind")
    p.add_argument("--rounds", type=int, default=3, help="passes; the best is kept")
    a = p.parse_args()
    import torch

    torch.set_num_threads(1)
    info = machine()
    print(f"[decode] {describe(info)}: images/s on one core, decode + resize, best of {a.rounds}")
    results: dict = {}
    for kind, (width, height, _, size) in KINDS.items():
        files = encoded(kind, a.files)
        results[kind] = {
            "from": f"{width}x{height}",
            "to": size,
            "per_core": rate(files, size, a.rounds),
        }
        line = f"  {kind:9s} {width}x{height} -> {size} px: {results[kind]['per_core']:8.0f} img/s"
        if KINDS[kind][2] == "JPEG":
            full = rate(files, size, a.rounds, draft=False)
            results[kind]["per_core_full_scale"] = full
            gain = results[kind]["per_core"] / full
            line += f"  (full-scale decode {full:.0f}: draft mode {gain:.2f}x)"
        print(line)
    write_json(a.json, info, {"decode": results})


if __name__ == "__main__":
    main()
