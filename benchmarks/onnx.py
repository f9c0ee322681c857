"""ONNX Runtime vs PyTorch for classifying on CPU actors: the same files, the same job, one run.

    python -m benchmarks.onnx [--files 20000] [--rounds 2] [--batch-size 256]
        [--json benchmarks/results/onnx_cpu.json]

An untrained CIFAR10-quick (32 px; what it computes costs the same whatever its weights) is
exported with ``cifar-export --dynamic-batch`` (the export's own check included), then the bulk
job (cifar.predict.pipeline.predict, on a Ray runtime started here) classifies the same folder
of PNGs (32-64 px noise, as benchmarks.predict) with
  pytorch      the run's model, --precision auto (what the job does today: on a CPU the faster
               of fp32 and bf16, measured);
  pytorch-fp32 the run's model in fp32 (the arithmetic the ONNX file computes);
  onnx         the exported model.onnx through onnxruntime (CPUExecutionProvider).
Each round runs the three in turn (a change in the machine's load hits them alike); the first
round also starts Ray Data's helpers. Also timed, without Ray: the model alone on one batch of
--batch-size decoded images (Predictor.probabilities), best of 20. Prints images/s and the
ratios onnx / pytorch; writes the figures as JSON with --json.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from benchmarks.common import (
    describe,
    local_cluster,
    machine,
    parser,
    untrained_model,
    write_images,
    write_json,
)

VARIANTS = ("pytorch", "pytorch-fp32", "onnx")


def job(model: str, folder: Path, out: Path, precision: str, batch_size: int) -> dict:
    """One run of the bulk job, as ``cifar-predict --model M --input F --output O`` runs it."""
    from cifar.predict.config import PredictConfig
    from cifar.predict.pipeline import predict

    cfg = PredictConfig(
        model=model,
        input=[str(folder)],
        output=str(out),
        overwrite=True,
        batch_size=batch_size,
        precision=precision,
    )
    return predict(cfg, local_cluster())


def model_alone(models: dict[str, tuple[str, str]], batch_size: int) -> dict[str, float]:
    """images/s of each variant's classifier on one decoded batch (no decode, no Ray)."""
    import numpy as np
    import torch

    from cifar.predict.predictor import Predictor

    torch.set_num_threads(1)  # what an actor of 1 CPU (the job's default) computes with
    pixels = np.random.default_rng(0).integers(0, 256, (batch_size, 3, 32, 32), dtype=np.uint8)
    rates = {}
    for name, (path, precision) in models.items():
        c = Predictor.from_path(path, precision=precision, batch_size=batch_size)
        c.probabilities(pixels)
        best = float("inf")
        for _ in range(20):
            t = time.perf_counter()
            c.probabilities(pixels)
            best = min(best, time.perf_counter() - t)
        rates[name] = batch_size / best
    return rates


def main() -> None:
    p = parser(__doc__, "onnx_cpu.json")
    p.add_argument("--files", type=int, default=20000)
    p.add_argument("--rounds", type=int, default=2, help="runs of each variant (first = cold)")
    p.add_argument("--batch-size", type=int, default=256)
    args = p.parse_args()
    import ray

    from cifar.export import ExportConfig, export

    info = machine()
    with tempfile.TemporaryDirectory(prefix="bench-onnx-") as tmp:
        root = Path(tmp)
        run = untrained_model(root)
        exported = export(ExportConfig(run=str(run), dynamic_batch=True))
        print(f"exported: {exported.parity.line()}", flush=True)
        models = {
            "pytorch": (str(run), "auto"),
            "pytorch-fp32": (str(run), "fp32"),
            "onnx": (exported.path, "auto"),
        }
        alone = model_alone(models, args.batch_size)
        print("model alone, 1 thread: " + ", ".join(f"{k} {v:.0f} img/s" for k, v in alone.items()))
        write_images(root / "files", args.files, sides=(32, 64))
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, configure_logging=False)
        ray.data.DataContext.get_current().enable_progress_bars = False
        runs: dict[str, list[float]] = {v: [] for v in VARIANTS}
        computes = {}
        for r in range(max(1, args.rounds)):
            for name in VARIANTS:
                path, precision = models[name]
                s = job(path, root / "files", root / f"out-{name}", precision, args.batch_size)
                assert s["rows"] == args.files and s["errors"] == 0
                runs[name].append(s["images_per_s"])
                computes[name] = s["compute"]
                print(f"round {r + 1} {name:13s} {s['images_per_s']:6.0f} img/s", flush=True)
    best = {k: max(v) for k, v in runs.items()}
    line = "  ".join(f"{k} {v:.0f} img/s" for k, v in best.items())
    print(
        f"job, best of {args.rounds} on {args.files} files: {line}; onnx / pytorch "
        f"{best['onnx'] / best['pytorch']:.2f}x, onnx / pytorch-fp32 "
        f"{best['onnx'] / best['pytorch-fp32']:.2f}x  [{describe(info)}]"
    )
    write_json(
        args.json,
        info,
        {
            "files": args.files,
            "batch_size": args.batch_size,
            "job_img_s_each_round": runs,
            "job_img_s_best": best,
            "ratio_onnx_to_pytorch": best["onnx"] / best["pytorch"],
            "ratio_onnx_to_pytorch_fp32": best["onnx"] / best["pytorch-fp32"],
            "model_alone_img_s": alone,
            "compute": computes,  # what each variant's actors computed in, and why
            "export_check": exported.parity.line(),
        },
    )


if __name__ == "__main__":
    main()
