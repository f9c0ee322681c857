"""Prediction from shards vs the same images as loose files, same run (issue 33's measure).

    python -m benchmarks.shards [--samples 20000] [--per-shard 1000] [--formats webdataset]
        [--repeats 2] [--json benchmarks/results/shards_cpu.json]

Writes ``--samples`` small PNGs (32 px noise, the costliest PNGs to decode per pixel) as a folder
tree, packs the same files with ``cifar-data pack``'s own writer (no re-encoding: the same
bytes), then runs the prediction job (cifar.predict.pipeline.predict, on one Ray runtime started
once) on the folder and on the shards, in turn, ``--repeats`` times each. Prints, best of the
repeats, the job's images/s (its pipeline: what ``_summary.json`` reports) and end to end with
its preflight (listing the files, or indexing the shards), and the ratios shards / files.
"""

from __future__ import annotations

import argparse
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
from cifar.data.pack import pack
from cifar.predict.config import PredictConfig
from cifar.predict.pipeline import predict
from cifar.predict.preflight import preflight


def run(model: Path, inputs: Path, out: Path, args: argparse.Namespace) -> dict:
    """One prediction job as cifar-predict runs it; its images/s with and without preflight."""
    cfg = PredictConfig(
        model=str(model),
        input=[str(inputs)],
        output=str(out),
        overwrite=True,
        batch_size=args.batch_size,
        files_per_block=args.files_per_block,
        num_actors=args.num_actors,
        gpus_per_actor=0.0,
    )
    t = time.perf_counter()
    pre = preflight(cfg)
    s = predict(cfg, local_cluster(), pre)
    total = time.perf_counter() - t
    assert s["rows"] == args.samples and s["errors"] == 0, s
    return {
        "img_s": s["images_per_s"],
        "img_s_with_preflight": args.samples / total,
        "preflight_s": s["preflight_seconds"],
    }


def best(runs: list[dict], key: str) -> float:
    return max(r[key] for r in runs)


def main() -> None:
    p = parser(__doc__, "shards_cpu.json")
    p.add_argument("--samples", type=int, default=20000)
    p.add_argument("--per-shard", type=int, default=1000, help="samples per shard")
    p.add_argument("--formats", default="webdataset", help="webdataset,parquet: which shards")
    p.add_argument("--repeats", type=int, default=2, help="job runs per input (best counts)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--files-per-block", type=int, default=1024)
    p.add_argument("--num-actors", default="auto")
    args = p.parse_args()
    import ray

    info = machine()
    results: dict = {"samples": args.samples, "per_shard": args.per_shard}
    with tempfile.TemporaryDirectory(prefix="bench-shards-") as tmp:
        root = Path(tmp)
        model = untrained_model(root)
        tree = root / "tree"
        write_images(tree / "train", args.samples, per_folder=-(-args.samples // 10))
        inputs = {"files": tree / "train"}
        for form in args.formats.split(","):
            pack(str(tree), str(root / form), form, args.per_shard)
            inputs[form] = root / form / "train"
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, configure_logging=False)
        ray.data.DataContext.get_current().enable_progress_bars = False
        runs: dict[str, list[dict]] = {name: [] for name in inputs}
        for _ in range(max(1, args.repeats)):  # in turn: a busy machine slows both alike
            for name, folder in inputs.items():
                runs[name].append(run(model, folder, root / f"out-{name}", args))
    files = runs["files"]
    results["files"] = {"runs": files}
    for name in inputs:
        ratio = best(runs[name], "img_s") / best(files, "img_s")
        whole = best(runs[name], "img_s_with_preflight") / best(files, "img_s_with_preflight")
        print(
            f"{name:10s} {args.samples} samples  job {best(runs[name], 'img_s'):6.0f} img/s "
            f"({ratio:4.2f}x files)  with preflight "
            f"{best(runs[name], 'img_s_with_preflight'):6.0f} img/s ({whole:4.2f}x)",
            flush=True,
        )
        if name != "files":
            results[name] = {"runs": runs[name], "ratio": ratio, "ratio_with_preflight": whole}
    print(f"[{describe(info)}]")
    write_json(args.json, info, results)


if __name__ == "__main__":
    main()
