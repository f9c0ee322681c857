"""Prediction from shards vs the same images as loose files, same run (issue 33's measure).

    python -m benchmarks.shards [--samples 100000] [--per-shard 1000]
        [--formats webdataset,parquet] [--repeats 2] [--s3-samples 0]
        [--json benchmarks/results/shards_cpu.json]

Writes ``--samples`` small PNGs (32 px noise, the costliest PNGs to decode per pixel) as a folder
tree, writes the same bytes (no re-encoding) as shards with the writers users have: WebDataset
tars by ``webdataset.ShardWriter``, Parquet by Hugging Face ``datasets`` (``Image`` and
``ClassLabel`` features, ``to_parquet``), ``--per-shard`` samples each. Then runs the prediction
job (cifar.predict.pipeline.predict, on one Ray runtime started once) on the folder and on each
kind of shard, in turn, ``--repeats`` times each. Prints, best of the repeats, the job's images/s
(its pipeline: what ``_summary.json`` reports) and end to end with its preflight (listing the
files, or indexing the shards), and the ratios shards / files.

``--s3-samples N``: the first N of the same files and their shards also go to a moto S3 server
(tests/helpers/s3server.py, loopback), and the jobs run on them again: there every loose file
is one request, every shard one request per batch.

With webdataset among the formats, it also times indexing the local tars (labels read, images
skipped: the preflight's work) by this project's reader (cifar.io.tars) and by the standard
library's ``tarfile`` (what it read with before), and prints microseconds a sample and the ratio.
"""

from __future__ import annotations

import argparse
import functools
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
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
from cifar.predict.config import PredictConfig
from cifar.predict.pipeline import predict
from cifar.predict.preflight import preflight

CLASSES = tuple(str(i) for i in range(10))


# --------------------------------------------------------------------------- the same bytes


def write_tars(files: list[Path], out: Path, per_shard: int) -> None:
    """``files`` as WebDataset tars, ``webdataset.ShardWriter``'s way: ``<key>.png`` + ``.cls``."""
    import webdataset as wds

    out.mkdir(parents=True)
    with wds.ShardWriter(str(out / "shard-%06d.tar"), maxcount=per_shard, verbose=0) as sink:
        for i, p in enumerate(files):
            sink.write({"__key__": f"s{i:07d}", "png": p.read_bytes(), "cls": i % len(CLASSES)})


def write_parquet(files: list[Path], out: Path, per_shard: int) -> None:
    """``files`` as Hugging Face Parquet: one ``datasets.Dataset`` (an ``Image`` column, a
    ``ClassLabel``) written as ``per_shard``-row files with ``to_parquet``."""
    import datasets

    out.mkdir(parents=True)
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=list(CLASSES))}
    )
    n = -(-len(files) // per_shard)
    for s in range(n):
        chunk = files[s * per_shard : (s + 1) * per_shard]
        ds = datasets.Dataset.from_dict(
            {
                "image": [{"bytes": p.read_bytes(), "path": p.name} for p in chunk],
                "label": [(s * per_shard + i) % len(CLASSES) for i in range(len(chunk))],
            },
            features=features,
        )
        ds.to_parquet(str(out / f"shard-{s:06d}.parquet"))


WRITERS = {"webdataset": write_tars, "parquet": write_parquet}


# --------------------------------------------------------------------------- runs


def run(model: Path, inputs: str, out: Path, n: int, args: argparse.Namespace) -> dict:
    """One prediction job as cifar-predict runs it; its images/s with and without preflight."""
    cfg = PredictConfig(
        model=str(model),
        input=[inputs],
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
    assert s["rows"] == n and s["errors"] == 0, s
    return {
        "img_s": s["images_per_s"],
        "img_s_with_preflight": n / total,
        "preflight_s": s["preflight_seconds"],
    }


def best(runs: list[dict], key: str) -> float:
    return max(r[key] for r in runs)


def compare(inputs: dict[str, str], n: int, model: Path, work: Path, args, where: str) -> dict:
    """Every input in turn, ``--repeats`` times (a busy machine slows both alike); ratios."""
    runs: dict[str, list[dict]] = {name: [] for name in inputs}
    for _ in range(max(1, args.repeats)):
        for name, at in inputs.items():
            runs[name].append(run(model, at, work / f"out-{where}-{name}", n, args))
    files = runs["files"]
    results: dict = {"samples": n, "files": {"runs": files}}
    for name in inputs:
        ratio = best(runs[name], "img_s") / best(files, "img_s")
        whole = best(runs[name], "img_s_with_preflight") / best(files, "img_s_with_preflight")
        print(
            f"{where:5s} {name:10s} {n} samples  job {best(runs[name], 'img_s'):6.0f} img/s "
            f"({ratio:4.2f}x files)  with preflight "
            f"{best(runs[name], 'img_s_with_preflight'):6.0f} img/s ({whole:4.2f}x)",
            flush=True,
        )
        if name != "files":
            results[name] = {"runs": runs[name], "ratio": ratio, "ratio_with_preflight": whole}
    return results


def index_rates(folder: Path) -> dict:
    """Microseconds a sample to index every local tar under ``folder``: this project's reader,
    then ``tarfile`` on the same files (the page cache warm for both: each read twice)."""
    from cifar.io import shards, tars

    paths = sorted(str(p) for p in folder.rglob("*.tar"))
    want = functools.partial(shards._wanted, False)
    out: dict = {}
    for name in ["reader", "tarfile"] * 2:  # the second round counts
        t, n = time.perf_counter(), 0
        for path in paths:
            with shards._open(path) as f:
                found = (
                    tars._tarfile_members(f, True, want)
                    if name == "tarfile"
                    else tars.members(tars.Blocks(f, True), want)
                )
                n += sum(1 for _ in shards._grouped(found))
        out[f"{name}_us_per_sample"] = (time.perf_counter() - t) / n * 1e6
    out["samples"] = n
    out["ratio"] = out["tarfile_us_per_sample"] / out["reader_us_per_sample"]
    print(
        f"index  {n} samples in {len(paths)} tars: reader {out['reader_us_per_sample']:.1f} us a "
        f"sample, tarfile {out['tarfile_us_per_sample']:.1f} us ({out['ratio']:.1f}x)",
        flush=True,
    )
    return out


def upload(server, local: Path, uri: str) -> None:
    """``local`` to ``uri``, 16 objects at a time (the helper's upload is one at a time)."""
    bucket, _, prefix = uri.removeprefix("s3://").partition("/")
    client = server.client()
    paths = [p for p in sorted(local.rglob("*")) if p.is_file()]

    def put(p: Path) -> None:
        client.upload_file(str(p), bucket, f"{prefix}/{p.relative_to(local).as_posix()}")

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(put, paths))


def main() -> None:
    p = parser(__doc__, "shards_cpu.json")
    p.add_argument("--samples", type=int, default=100000)
    p.add_argument("--per-shard", type=int, default=1000, help="samples per shard")
    p.add_argument("--formats", default="webdataset,parquet", help="which shards")
    p.add_argument("--repeats", type=int, default=2, help="job runs per input (best counts)")
    p.add_argument("--s3-samples", type=int, default=0, help="also this many through moto S3")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--files-per-block", type=int, default=1024)
    p.add_argument("--num-actors", default="auto")
    args = p.parse_args()
    import ray

    info = machine()
    results: dict = {"per_shard": args.per_shard, "writers": "webdataset.ShardWriter, datasets"}
    with tempfile.TemporaryDirectory(prefix="bench-shards-") as tmp:
        root = Path(tmp)
        model = untrained_model(root)
        write_images(root / "files", args.samples, per_folder=1000, distinct=5000)
        files = sorted((root / "files").rglob("*.png"))
        forms = args.formats.split(",")
        for form in forms:
            WRITERS[form](files, root / form, args.per_shard)
        if "webdataset" in forms:
            results["index"] = index_rates(root / "webdataset")
        server = None
        if args.s3_samples:
            from tests.helpers import s3server

            server = s3server.start()
            os.environ.update(server.env())  # before ray.init: the workers read it too
            bucket = server.create_bucket("bench")
            small = root / "s3"
            for i, f in enumerate(files[: args.s3_samples]):
                dest = small / "files" / f"d{i // 1000:05d}" / f.name
                dest.parent.mkdir(parents=True, exist_ok=True)
                os.link(f, dest)
            for form in forms:
                WRITERS[form](files[: args.s3_samples], small / form, args.per_shard)
            upload(server, small, f"{bucket}/data")
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, configure_logging=False)
        ray.data.DataContext.get_current().enable_progress_bars = False
        try:
            local = {"files": str(root / "files"), **{f: str(root / f) for f in forms}}
            results["local"] = compare(local, args.samples, model, root, args, "local")
            if server is not None:
                remote = {n: f"s3://bench/data/{n}" for n in ["files", *forms]}
                results["s3"] = compare(remote, args.s3_samples, model, root, args, "s3")
        finally:
            if server is not None:
                server.stop()
    print(f"[{describe(info)}]")
    write_json(args.json, info, results)


if __name__ == "__main__":
    main()
