"""How ``--data-loading ray``'s pipeline hands an epoch to the trainer: the first batch's wait and
the epoch's seconds, for Ray's default blocks (the pipeline before 2026-12-07: one task decoded
the whole epoch) against rows cut into decode tasks and blocks (cifar.data.raydata's shape),
with a stand-in decode of ``--ms-per-row`` (a sleep, so the figures are Ray Data's and not the
decoder's), Ray given 1 CPU: the decode's own seconds are ``rows x ms``; the rest is Ray Data's.
Epoch 2 of each (epoch 1 carries the workers' start).

    python -m benchmarks.ray_blocks [--rows 1500 20000] [--ms-per-row 0.5] [--json PATH]
"""

from __future__ import annotations

import time

import numpy as np

from benchmarks.common import describe, machine, parser, write_json

# name: (decode rows a task, rows a block out of it); None: Ray's default blocks
SHAPES = {
    "ray default blocks": None,
    "64-row tasks": (64, 64),
    "256-row tasks, one block": (256, 256),
    "256-row tasks, a block every 64 (the job's)": (256, 64),
}


def epoch(ds) -> tuple[float, float]:
    """(seconds to the first batch, seconds to the last) of one pass, as a Train worker reads."""
    t0, first = time.perf_counter(), None
    for _ in ds.iter_batches(batch_size=64, batch_format="numpy", prefetch_batches=8):
        first = first if first is not None else time.perf_counter() - t0
    return first or 0.0, time.perf_counter() - t0


def pipeline(rows: int, shape: tuple[int, int] | None, ms: float):
    import ray.data
    from ray.data import RandomSeedConfig

    def decode(batch: dict) -> dict:
        time.sleep(ms / 1000 * len(batch["id"]))
        return {"image": np.zeros((len(batch["id"]), 3, 64, 64), np.uint8), "id": batch["id"]}

    seed = RandomSeedConfig(seed=0, reseed_after_execution=True)
    if shape is None:
        ds = ray.data.range(rows).random_shuffle(seed=seed)
        return ds.map_batches(decode, batch_size=64, batch_format="numpy", num_cpus=1)
    task, block = shape
    ds = ray.data.range(rows, override_num_blocks=1).random_shuffle(seed=seed)
    ds = ds.repartition(target_num_rows_per_block=task)
    ds = ds.map_batches(decode, batch_size=block, batch_format="numpy", num_cpus=1)
    ds.context.target_max_block_size = block * 3 * 64 * 64
    return ds


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__, "ray_blocks.json")
    p.add_argument("--rows", type=int, nargs="+", default=[1500, 20000])
    p.add_argument("--ms-per-row", type=float, default=0.5, help="the stand-in decode's cost")
    a = p.parse_args(argv)
    import ray

    info = machine()
    print(f"[ray_blocks] {describe(info)}", flush=True)
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    ray.data.DataContext.get_current().enable_progress_bars = False
    runs = []
    for rows in a.rows:
        for name, shape in SHAPES.items():
            ds = pipeline(rows, shape, a.ms_per_row)
            epoch(ds)  # epoch 1: the workers start
            first, total = epoch(ds)
            decode = rows * a.ms_per_row / 1000
            runs.append(
                dict(
                    rows=rows,
                    shape=name,
                    first_batch_s=round(first, 2),
                    epoch_s=round(total, 2),
                    decode_s=round(decode, 2),
                )
            )
            print(
                f"[ray_blocks] {rows} rows, {name}: first batch after {first:.2f} s, epoch "
                f"{total:.2f} s (the decode itself: {decode:.2f} s)",
                flush=True,
            )
    ray.shutdown()
    write_json(a.json, info, {"ms_per_row": a.ms_per_row, "ray_cpus": 1, "runs": runs})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
