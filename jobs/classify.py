"""Classify image files one at a time: ``cifar-classify --model MODEL IMAGE [IMAGE ...]`` (or
``python -m jobs.classify``).

Prints ``path<TAB>class<TAB>confidence`` per image (with ``--top-k K`` the next classes and
their probabilities too), like the tutorial's ``test.py`` but with the preprocessing the model
was trained with (its ``meta.json``; the tutorial's Resize((32, 32)) + ToTensor() for a bare
state_dict); with ``--json`` one JSON object per image. Exit status 1 if any image failed,
reasons on stderr.
"""

from __future__ import annotations

import json
import sys

from cifar import __version__
from cifar.config import Parser
from cifar.device import PRECISIONS
from cifar.models.checkpoint import CheckpointError
from cifar.predict.predictor import Predictor, PredictorSettings

from .common import Boundary


def main(argv: list[str] | None = None) -> int:
    p = Parser(
        prog="cifar-classify",
        description="Classify images with a trained model (one line per image).",
        allow_abbrev=False,
    )
    p.add_argument("--model", required=True, help="run dir, checkpoint, model/, .pt/.pth, .onnx")
    p.add_argument("images", nargs="+", help="image files")
    p.add_argument(
        "--arch",
        metavar="NAME",
        help="what a bare .pt/.pth state_dict is: a torchvision name such as vgg16 or resnet18 "
        "(CIFAR10-quick's are recognised by themselves; a run's model says it itself)",
    )
    p.add_argument(
        "--image-size",
        type=int,
        metavar="PIXELS",
        help="classify at this size instead of the model's own",
    )
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="auto",
        help="auto: bf16 on GPUs that have it, else fp16; on a CPU the faster of fp32 and bf16, "
        "measured; fp32: exactly the tutorial's test.py arithmetic",
    )
    p.add_argument("--top-k", type=int, default=1, metavar="K", help="the K best classes")
    p.add_argument("--json", action="store_true", help="one JSON object per image")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    a = p.parse_args(argv)
    if a.top_k < 1:
        p.error(f"--top-k must be at least 1 (got {a.top_k})")
    settings = PredictorSettings(
        a.model, a.arch, a.image_size, precision=a.precision, top_k=a.top_k, work=len(a.images)
    )
    failed = 0
    for r in Predictor(settings).classify_files(a.images):
        failed += r.error is not None
        if a.json:  # the object cifar-serve answers with
            print(json.dumps(r.to_dict(), ensure_ascii=False))
        elif r.error is None:
            rest = "".join(f"\t{t['class_name']}\t{t['prob']:.4f}" for t in r.top_k[1:])
            print(f"{r.path}\t{r.class_name}\t{r.confidence:.4f}{rest}")
        else:
            print(f"{r.path}: {r.error}", file=sys.stderr)
    return 1 if failed else 0


def cli() -> None:
    """The installed ``cifar-classify`` command."""
    Boundary((CheckpointError,)).run(lambda b: main(sys.argv[1:]))


if __name__ == "__main__":
    cli()
