"""Classify image files one at a time: ``cifar-classify --model MODEL IMAGE [IMAGE ...]`` (or
``python -m jobs.classify``).

Prints ``path<TAB>class<TAB>confidence`` per image, like the tutorial's ``test.py`` but with the
preprocessing the model was trained with (its ``meta.json``; the tutorial's Resize((32, 32)) +
ToTensor() for a bare state_dict). Exit status 1 if any image failed, reasons on stderr.
"""

from __future__ import annotations

import argparse
import sys

from cifar.device import PRECISIONS
from cifar.models.checkpoint import CheckpointError
from cifar.predict.classifier import Classifier, classify_files
from jobs.common import Boundary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="cifar-classify",
        description="Classify images with a trained model (one line per image).",
        allow_abbrev=False,
    )
    p.add_argument("--model", required=True, help="run dir, checkpoint dir, model/ or .pt/.pth")
    p.add_argument("images", nargs="+", help="image files")
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="auto",
        help="auto: bf16 on GPUs; on a CPU the faster of fp32 and bf16, measured; fp32: "
        "exactly the tutorial's test.py arithmetic",
    )
    a = p.parse_args(argv)
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    classifier = Classifier.from_path(a.model, device, precision=a.precision)
    failed = 0
    for r in classify_files(classifier, a.images):
        if r.error is None:
            print(f"{r.path}\t{r.class_name}\t{r.confidence:.4f}")
        else:
            failed += 1
            print(f"{r.path}: {r.error}", file=sys.stderr)
    return 1 if failed else 0


def cli() -> None:
    """The installed ``cifar-classify`` command."""
    Boundary((CheckpointError,)).run(lambda b: main(sys.argv[1:]))


if __name__ == "__main__":
    cli()
