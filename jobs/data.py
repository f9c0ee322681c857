"""Get data to train on: ``cifar-data download DIR`` fetches CIFAR-10 (MD5-checked);
``cifar-data digits DIR`` writes image folders of real handwritten digits (scikit-learn's);
``cifar-data synthetic DIR`` writes a GENERATED learnable set, CIFAR-format files or (with
``--folders``) a labelled image-folder tree; ``cifar-data pack TREE OUT`` writes an image-folder
tree as WebDataset tars or Parquet shards. Also ``python -m jobs.data``.

Examples:
  cifar-data download data                              # data/cifar-10-batches-py
  cifar-data digits digits --train 7000 --test 1000     # digits/train/<0..9>/, digits/val/
  cifar-data synthetic data/synthetic --train 20000 --test 4000
  cifar-data synthetic pets --folders --classes 3 --train 600 --test 150
  cifar-data pack digits s3://bucket/digits-wds --format webdataset --samples-per-shard 1000
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from cifar.data.cifar10 import CIFAR10_URL, TRAIN_FILES, download_cifar10
from cifar.data.dataset import DataError
from cifar.data.examples import write_digits
from cifar.data.pack import FORMATS, SAMPLES_PER_SHARD, pack
from cifar.data.synthetic import write_folders, write_synthetic

from .common import Boundary


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="cifar-data",
        description="Download CIFAR-10, or write a generated (NOT CIFAR-10) dataset.",
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    sub = p.add_subparsers(
        dest="command", required=True, metavar="{download,digits,synthetic,pack}"
    )
    d = sub.add_parser(
        "download",
        help="download and extract CIFAR-10 into DIR/cifar-10-batches-py",
        description=f"Download CIFAR-10 ({CIFAR10_URL}, MD5-checked) and extract it into "
        "DIR/cifar-10-batches-py.",
        allow_abbrev=False,
    )
    d.add_argument("dir", metavar="DIR")
    d.add_argument("--url", default=CIFAR10_URL, help="a mirror of the official archive")
    g = sub.add_parser(
        "digits",
        help="image folders of real handwritten digits (needs scikit-learn)",
        description="Write DIR/train/<digit>/ and DIR/val/<digit>/ from scikit-learn's 1,797 "
        "handwritten digit scans, each image a redrawing of a scan (own size, slant, shift and "
        "colours); no val image comes from a scan a training image comes from.",
        allow_abbrev=False,
    )
    g.add_argument("dir", metavar="DIR")
    g.add_argument("--train", type=int, default=7000, help="training images (default 7000)")
    g.add_argument("--test", type=int, default=1000, help="val images (default 1000)")
    g.add_argument("--seed", type=int, default=0)
    s = sub.add_parser(
        "synthetic",
        help="write a generated learnable set (CIFAR-format, or image folders)",
        description="Write a learnable generated dataset (NOT CIFAR-10) to DIR: CIFAR-format "
        "batch files, or with --folders a labelled image-folder tree.",
        allow_abbrev=False,
    )
    s.add_argument("dir", metavar="DIR")
    s.add_argument("--train", type=int, default=5000, help="training images (default 5000)")
    s.add_argument(
        "--test", type=int, default=1000, help="test (--folders: val) images (default 1000)"
    )
    s.add_argument("--seed", type=int, default=0)
    s.add_argument(
        "--folders", action="store_true", help="write DIR/train/<class>/, DIR/val/<class>/"
    )
    s.add_argument("--classes", type=int, default=3, help="classes with --folders (default 3)")
    add_pack(sub)
    return p


def add_pack(sub) -> None:
    """``cifar-data pack``'s arguments."""
    k = sub.add_parser(
        "pack",
        help="an image-folder tree as WebDataset tars or Parquet shards",
        description="Write TREE/train/<class>/... (and val/ or test/) as shards in OUT/train/ "
        "(OUT/val/, OUT/test/), plus OUT/classes.txt; every shard is read back and each "
        "class's count checked. TREE and OUT may be paths or URIs; OUT must be empty or new.",
        allow_abbrev=False,
    )
    k.add_argument("tree", metavar="TREE")
    k.add_argument("out", metavar="OUT")
    k.add_argument(
        "--format",
        choices=sorted(FORMATS),
        default="webdataset",
        help="WebDataset tars (<key>.<ext> + <key>.cls; default) or Parquet as Hugging Face "
        "datasets writes it (image struct{bytes, path}, label with ClassLabel names)",
    )
    k.add_argument(
        "--samples-per-shard",
        type=int,
        default=SAMPLES_PER_SHARD,
        metavar="N",
        help=f"images per shard (default {SAMPLES_PER_SHARD})",
    )


def run_pack(p: argparse.ArgumentParser, a: argparse.Namespace) -> None:
    if a.samples_per_shard < 1:
        p.error("--samples-per-shard must be at least 1")
    done = pack(a.tree, a.out, a.format, a.samples_per_shard)
    splits = " / ".join(f"{n} {split}" for split, n in done.samples.items())
    print(
        f"packed {splits} images of {len(done.classes)} classes into "
        f"{sum(done.shards.values())} {a.format} shards in {a.out} (read back: every class's "
        "count matches)"
    )
    for s in done.skipped:
        print(f"  left out {s['path']}: {s['error']}")


def main(argv: list[str] | None = None) -> int:
    p = parser()
    a = p.parse_args(argv)
    if a.command == "download":
        print(f"CIFAR-10 is in {download_cifar10(a.dir, url=a.url)}")
    elif a.command == "pack":
        run_pack(p, a)
    elif a.command == "digits":
        if a.train < 10 or a.test < 10:
            p.error("digits needs --train and --test of at least 10")
        write_digits(a.dir, np.random.default_rng(a.seed), a.train, a.test)
        print(
            f"wrote {a.train} train / {a.test} val images of handwritten digits (10 classes, "
            f"scikit-learn's scans redrawn) to {a.dir}"
        )
    elif a.folders:
        if a.classes < 2 or a.train < a.classes or a.test < 0:
            p.error("--folders needs --classes >= 2, --train >= --classes and --test >= 0")
        d = write_folders(a.dir, a.train, a.test, a.classes, a.seed)
        print(
            f"wrote a generated image-folder tree ({a.classes} classes, {a.train} train / "
            f"{a.test} val images) to {d}"
        )
    else:
        if a.train < len(TRAIN_FILES) or a.test < 1:
            p.error(f"--train must be >= {len(TRAIN_FILES)} and --test >= 1")
        d = write_synthetic(a.dir, a.train, a.test, a.seed)
        print(f"wrote a generated CIFAR-format set ({a.train} train / {a.test} test) to {d}")
    return 0


def cli() -> None:
    """The installed ``cifar-data`` command."""
    Boundary((DataError,)).run(lambda b: main(sys.argv[1:]))


if __name__ == "__main__":
    cli()
