"""The default recipe against the tutorial's (and the old default) on several evaluation sets.

    .venv/bin/python scripts/evalsets.py evalsets   # once: the sets (needs the bench extra)
    .venv/bin/python scripts/bench_recipe.py evalsets [--sets pair-245 digits ...] [--json F]

For every set, recipe and worker count it trains with the job's own loop (cifar.engine) and
prints test accuracy after 2 and after 4 epochs. The default recipe picks its batch and
learning rate from the data and the number of epochs, so it runs once for 2 and once for 4
epochs; the tutorial's and the old default's do not, so one 4-epoch run gives both figures.
Two workers are two processes with a real gloo process group and DDP (one thread each), as
Ray Train runs them; one worker is one process with one thread.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import describe, machine

from cifar.train_config import RECIPE_PRESETS, TrainConfig, resolve_recipe

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

    from cifar.engine import build, evaluate, job_compute, train_one_epoch
    from cifar.sources import load_data

    torch.set_num_threads(1)
    if world > 1:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        dist.init_process_group("gloo", rank=rank, world_size=world)
    data = load_data(root, download=False)
    cfg = TrainConfig(**{**overrides, "epochs": epochs})
    cfg = resolve_recipe(cfg, len(data.train_labels), world)
    mean, std = data.channel_stats() if cfg.normalize else (None, None)
    k = len(data.classes)
    compute = job_compute(cfg, torch.device("cpu"), k, mean, std, world, world)
    wrap = DistributedDataParallel if world > 1 else None
    e = build(cfg, data.tensors(), k, compute, mean, std, rank, world, wrap)
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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("root", help="the folder scripts/evalsets.py wrote")
    p.add_argument("--sets", nargs="+", default=list(SETS))
    p.add_argument("--workers", nargs="+", type=int, default=[1, 2])
    p.add_argument("--json")
    a = p.parse_args()
    info = machine()
    rows = []
    print(f"[{describe(info)}]  accuracy after 2 / 4 epochs (seconds for 4 epochs)")
    for name in a.sets:
        root = Path(a.root) / name
        if not root.is_dir():
            print(f"  {name}: not in {a.root} (run scripts/evalsets.py {a.root} --only {name})")
            continue
        for recipe, overrides in RECIPES.items():
            for world in a.workers:
                if recipe == "default":
                    two, four = run(root, overrides, 2, world), run(root, overrides, 4, world)
                    acc2, acc4 = two["accuracy"][-1], four["accuracy"][-1]
                    setting = f"B {two['batch']}/{four['batch']}, lr {two['lr']}/{four['lr']}"
                else:
                    four = run(root, overrides, 4, world)
                    acc2, acc4 = four["accuracy"][1], four["accuracy"][-1]
                    setting = f"B {four['batch']}, lr {four['lr']}"
                row = {
                    "set": name,
                    "recipe": recipe,
                    "workers": world,
                    "acc_2_epochs": acc2,
                    "acc_4_epochs": acc4,
                    "seconds_4_epochs": four["seconds"],
                    "setting": setting,
                    "precision": four["precision"],
                }
                rows.append(row)
                print(
                    f"  {name:16s} {recipe:12s} {world} worker(s)  {acc2:.3f} / {acc4:.3f}  "
                    f"({four['seconds']:5.1f}s)  {setting}",
                    flush=True,
                )
    if a.json:
        Path(a.json).write_text(json.dumps({"machine": info, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
