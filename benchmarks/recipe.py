"""The default recipe against the tutorial's (and the old default) on several evaluation sets.

    python -m benchmarks.evalsets evalsets   # once: the sets (needs the bench extra)
    python -m benchmarks.recipe evalsets [--sets pair-245 digits ...] [--workers 1 2]
        [--json benchmarks/results/recipe_cpu.json]

For every set, recipe and worker count it trains with the job's own loop (cifar.train.engine)
and prints test accuracy after 2 and after 4 epochs. The default recipe picks its batch and
learning rate from the data and the number of epochs, so it runs once for 2 and once for 4
epochs; the tutorial's and the old default's do not, so one 4-epoch run gives both figures.
Two workers are two processes with a real gloo process group and DDP (one thread each), as
Ray Train runs them; one worker is one process with one thread.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from benchmarks.common import describe, machine, parser, write_json
from cifar.train.config import RECIPE_PRESETS, TrainConfig, resolve_recipe

SETS = ("pair-245", "digits", "digits-7k", "textures10-7k", "textures20-hard", "patterns-50k")
RECIPES = {
    "default": {},
    "old default": {"batch_size": 256, "lr": 0.02},  # before the recipe was chosen per dataset
    "tutorial": RECIPE_PRESETS["tutorial"],
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train(rank: int, world: int, port: int, root: str, overrides: dict, epochs: int, out):
    """One rank: the job's build/train/evaluate, with DDP when world > 1."""
    from torch.nn.parallel import DistributedDataParallel

    from cifar.data.sources import load_data
    from cifar.models.registry import ModelSpec
    from cifar.train.engine import build, evaluate, job_compute, train_one_epoch

    torch.set_num_threads(1)
    if world > 1:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        dist.init_process_group("gloo", rank=rank, world_size=world)
    data = load_data(root, download=False)
    cfg = TrainConfig(**{**overrides, "epochs": epochs})
    cfg = resolve_recipe(cfg, len(data.train_labels), world)
    mean, std = data.channel_stats() if cfg.normalize else (None, None)
    spec = ModelSpec.of(cfg.arch, data.classes, mean, std)
    compute = job_compute(cfg, spec, torch.device("cpu"), world, world)
    wrap = DistributedDataParallel if world > 1 else None
    e = build(cfg, data.splits(), spec, compute, rank, world, wrap)
    t0, accs = time.perf_counter(), []
    for epoch in range(epochs):
        train_one_epoch(e, epoch)
        accs.append(evaluate(e)["test_accuracy"])
    if rank == 0:
        out.put(
            {
                "accuracy": accs,
                "seconds": time.perf_counter() - t0,
                "batch": cfg.batch_size,
                "lr": cfg.lr,
                "precision": compute.name,
            }
        )
    if world > 1:
        dist.barrier()  # no rank leaves the group while another still talks to it
        dist.destroy_process_group()


def run(root: Path, overrides: dict, epochs: int, world: int) -> dict:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    args = (world, _free_port(), str(root), overrides, epochs, q)
    mp.start_processes(_train, args=args, nprocs=world, start_method="spawn")
    return q.get(timeout=60)


def row(root: Path, recipe: str, world: int) -> dict:
    """One set, recipe and worker count: accuracy after 2 and 4 epochs."""
    overrides = RECIPES[recipe]
    if recipe == "default":
        two, four = run(root, overrides, 2, world), run(root, overrides, 4, world)
        acc2, acc4 = two["accuracy"][-1], four["accuracy"][-1]
        setting = f"B {two['batch']}/{four['batch']}, lr {two['lr']}/{four['lr']}"
    else:
        four = run(root, overrides, 4, world)
        acc2, acc4 = four["accuracy"][1], four["accuracy"][-1]
        setting = f"B {four['batch']}, lr {four['lr']}"
    print(
        f"  {root.name:16s} {recipe:12s} {world} worker(s)  {acc2:.3f} / {acc4:.3f}  "
        f"({four['seconds']:5.1f}s)  {setting}",
        flush=True,
    )
    return {
        "set": root.name,
        "recipe": recipe,
        "workers": world,
        "acc_2_epochs": acc2,
        "acc_4_epochs": acc4,
        "seconds_4_epochs": four["seconds"],
        "setting": setting,
        "precision": four["precision"],
    }


def main() -> None:
    p = parser(__doc__, "recipe_cpu.json")
    p.add_argument("root", help="the folder `python -m benchmarks.evalsets` wrote")
    p.add_argument("--sets", nargs="+", default=list(SETS))
    p.add_argument("--workers", nargs="+", type=int, default=[1, 2])
    a = p.parse_args()
    info = machine()
    rows = []
    print(f"[{describe(info)}]  accuracy after 2 / 4 epochs (seconds for 4 epochs)")
    for name in a.sets:
        root = Path(a.root) / name
        if not root.is_dir():
            print(
                f"  {name}: not in {a.root} (python -m benchmarks.evalsets {a.root} --only {name})"
            )
            continue
        rows += [row(root, recipe, world) for recipe in RECIPES for world in a.workers]
    write_json(a.json, info, {"rows": rows})


if __name__ == "__main__":
    main()
