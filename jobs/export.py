"""Export a trained model for serving: ``cifar-export RUN --format onnx|torchscript`` (or
``python -m jobs.export``).

RUN is what ``cifar-predict --model`` takes: a run dir, a checkpoint or model/ dir, or a bare
.pt/.pth state_dict (with --arch where it is not CIFAR10-quick). The file records the model's
preprocessing (input size, mean/std, class names, architecture, the SHA-256 of the weights):
ONNX in its metadata_props, TorchScript as cifar_ray.json in its extra files. Before it is kept
the file is checked: run as its users run it (onnxruntime; torch.jit.load) on a batch of the
run's images (generated ones where the run's data is not here), it must pick the same top-1
class as the PyTorch model for every image; the largest logit difference is printed. A file
that disagrees is not written (exit status 2).

Examples:
  cifar-export runs/r1                                  # runs/r1/model/model.onnx, opset 18
  cifar-export runs/r1 --dynamic-batch --output r1.onnx
  cifar-export runs/r1 --format torchscript
  cifar-export vgg16_method2.pth --arch vgg16 --image-size 64 --dynamic-batch
  cifar-predict --model r1.onnx --input photos/ --output preds/   # classified by onnxruntime
"""

from __future__ import annotations

import json
import sys

from cifar.config import (
    ConfigError,
    add_job_flags,
    build_parser,
    config_yaml,
    make_config,
    parse_explicit,
    read_config_file,
)
from cifar.export import ExportConfig, Exported, ExportError, export, prepare
from cifar.models.checkpoint import CheckpointError

from .common import Boundary, configure_logging, exit_codes_text

PROGRAM = "cifar-export"


def parse(argv: list[str]) -> tuple[ExportConfig, bool, bool]:
    """(config, --dry-run, --print-config): the config's flags plus RUN, the one positional."""
    from cifar import env

    plain = (__doc__ or "").replace("``", "")  # as the user reads it, without its markup
    epilog = f"{plain}\n{env.help_text()}\n\n{exit_codes_text()}"
    p = build_parser(ExportConfig, PROGRAM, "Export a model as ONNX or TorchScript.", epilog)
    p.add_argument("run", nargs="?", metavar="RUN", help="run dir, model/ dir or .pt/.pth file")
    add_job_flags(p)
    explicit = parse_explicit(p, argv)
    dry_run = explicit.pop("dry_run", False)
    printing = explicit.pop("print_config", False)
    saved = read_config_file(explicit.pop("config", None), ExportConfig)
    return make_config(ExportConfig, saved, explicit), dry_run, printing


def main(boundary: Boundary, argv: list[str]) -> int:
    cfg, dry_run, printing = parse(argv)
    if printing:
        # RUN is a positional, not a flag: config_yaml leaves it out (a JSON string is YAML)
        print(f"run: {json.dumps(cfg.run)}\n" + config_yaml(cfg, leave_out=("overwrite",)), end="")
        return 0
    configure_logging(cfg.verbose)
    boundary.verbose = cfg.verbose
    if dry_run:
        loaded, out = prepare(cfg)
        spec = loaded.spec
        print(
            f"[cifar] dry run: would export {loaded.file} ({spec.arch}, {spec.input_size}x"
            f"{spec.input_size}, {spec.num_classes} classes) to {out} ({cfg.format}); nothing "
            "was written"
        )
        return 0
    print("\n".join(done_lines(export(cfg))))
    return 0


def done_lines(e: Exported) -> list[str]:
    """What was written, and how it compared with the PyTorch model."""
    spec = e.model.spec
    what = f"ONNX opset {e.opset}" if e.format == "onnx" else "TorchScript"
    batch = "any batch" if e.batch is None else f"batch {e.batch}"
    runner = "onnxruntime" if e.format == "onnx" else "torch.jit.load"
    return [
        f"[cifar] exported {e.model.file} ({spec.arch}, {spec.input_size}x{spec.input_size}, "
        f"{spec.num_classes} classes) to {e.path}: {what}, {batch}, "
        f"{e.size_bytes / 2**20:.1f} MiB, in {e.seconds:.1f}s",
        f"[cifar] checked with {runner} against the PyTorch model: {e.parity.line()}",
    ]


def cli() -> None:
    """The installed ``cifar-export`` command."""
    Boundary((ConfigError, CheckpointError, ExportError)).run(lambda b: main(b, sys.argv[1:]))


if __name__ == "__main__":
    cli()
