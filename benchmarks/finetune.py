"""The fine-tuning recipe: from scratch against three ways of starting from pretrained weights,
on real-pixel sets, with the job's own setup and loop.

    python -m benchmarks.evalsets evalsets --only digits textures10-7k textures20-hard  # once
    python -m benchmarks.finetune evalsets [--targets digits textures20-hard] [--seeds 0 1]
        [--image-size 32] [--epochs 6] [--parallel 2]
        [--json benchmarks/results/finetune_cpu.json]

There are no ImageNet weights offline, so the "pretrained" weights are made here: ResNet-18
trained from scratch on a subsample of --source, saved as a run of this project (``model/``:
model.pt + meta.json, as the job exports it). Every target is then trained, for the same epochs,
batch and peak lr, four ways:

    scratch            no --weights
    full fine-tune     --weights RUN --backbone-lr 1
    default            --weights RUN (backbone at FINE_TUNE_BACKBONE_LR of --lr)
    frozen backbone    --weights RUN --freeze-backbone

The head is new in all four (the classes differ from the source's). The batch is --batch
(default 32) with the recipe's lr for it (cifar.train.config.default_lr); the recipe's own batch
for these small sets is checked apart: the default setting on --batch-check at the batch the
recipe picks (default_batch: 4 for a few hundred images and a few epochs), against --batch.

Each run: cifar.data.sources.load_training_data, resolve_recipe, cifar.train.setup.model_setup
(which calls load_pretrained: the source run's normalisation, its head dropped), job_compute,
engine.build + train_one_epoch + evaluate each epoch: what a 1-worker Ray Train run executes.
Runs go in --parallel processes of one torch thread each (on a shared CPU, threads that wait
for each other lose more than they gain). The figure is the best test accuracy over the epochs
(the job keeps the best checkpoint), and the last epoch's.
"""

from __future__ import annotations

import random
import shutil
import statistics
import time
from concurrent.futures import Future, ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

from benchmarks.common import describe, machine, parser, write_json

# target settings: the --weights flags each one adds (scratch has no --weights)
SETTINGS = {
    "scratch": None,
    "full fine-tune": {"backbone_lr": 1.0},
    "default": {},
    "frozen backbone": {"freeze_backbone": True},
}
SOURCE_SEED = 0


# --------------------------------------------------------------------------- data


def subsample(src: Path, dst: Path, per_class: dict[str, int], seed: int = 0) -> Path:
    """A tree of hard links to ``per_class[split]`` files of each class of ``src`` (picked at
    random, a pure function of ``seed``, split and class). Rebuilt on every call."""
    if dst.exists():
        shutil.rmtree(dst)
    for split, k in per_class.items():
        for cls in sorted(d for d in (src / split).iterdir() if d.is_dir()):
            files = sorted(f for f in cls.iterdir() if f.is_file())
            pick = random.Random(f"{seed}/{split}/{cls.name}").sample(files, min(k, len(files)))
            (dst / split / cls.name).mkdir(parents=True)
            for f in pick:
                (dst / split / cls.name / f.name).hardlink_to(f)
    return dst


# --------------------------------------------------------------------------- one run


def train_run(tree: str, overrides: dict, save: str | None = None) -> dict:
    """Train on the folder ``tree`` as a 1-worker job with ``overrides`` of TrainConfig; test
    accuracy after every epoch. ``save``: export the final model there as a run's ``model/``."""
    import torch

    from cifar.data.sources import load_training_data
    from cifar.models.checkpoint import model_meta, save_checkpoint, versions
    from cifar.train.config import TrainConfig, resolve_recipe
    from cifar.train.engine import build, evaluate, job_compute, train_one_epoch
    from cifar.train.setup import model_setup

    torch.set_num_threads(1)
    cfg = TrainConfig(data_dir=tree, download=False, data_loading="memory", **overrides)
    data, loading = load_training_data(cfg.data_request())
    cfg = resolve_recipe(cfg, len(data.train_labels), 1)
    spec, pretrained, _ = model_setup(cfg, data, loading)
    compute = job_compute(cfg, spec, torch.device("cpu"))
    initial = pretrained.state_dict if pretrained is not None else None
    e = build(cfg, data.splits(), spec, compute, initial=initial)
    t0, accs = time.perf_counter(), []
    for epoch in range(cfg.epochs):
        train_one_epoch(e, epoch)
        accs.append(evaluate(e)["test_accuracy"])
    seconds = time.perf_counter() - t0
    if save:
        metrics = {"test_accuracy": accs[-1]}
        meta = model_meta(spec, config=cfg.to_dict(), metrics=metrics, versions=versions())
        save_checkpoint(Path(save) / "model", e.raw, {**meta, "epoch": cfg.epochs})
    return {
        "accuracy": accs,
        "best": max(accs),
        "last": accs[-1],
        "seconds": seconds,
        "train_images": len(data.train_labels),
        "test_images": len(data.test_labels),
        "batch": cfg.batch_size,
        "lr": cfg.lr,
        "backbone_lr": 0.0 if cfg.freeze_backbone else cfg.backbone_lr,
        "precision": compute.name,
    }


# --------------------------------------------------------------------------- the plan


def common(a, epochs: int, seed: int) -> dict:
    """TrainConfig fields every run shares."""
    return {
        "arch": "resnet18",
        "image_size": a.image_size,
        "epochs": epochs,
        "seed": seed,
        "num_workers": 1,
        "precision": a.precision,
        "channels_last": True,
    }


def target_runs(a, trees: dict[str, Path], source_run: str) -> list[tuple[dict, dict]]:
    """(row, overrides) of every target run: the main grid, then the batch check."""
    runs = []
    for name, tree in trees.items():
        for seed in a.seeds:
            for setting, flags in SETTINGS.items():
                o = {**common(a, a.epochs, seed), "batch_size": a.batch}
                if flags is not None:
                    o.update(weights=source_run, **flags)
                runs.append(({"set": name, "setting": setting, "seed": seed, "tree": tree}, o))
    if a.batch_check in trees:
        for seed in a.seeds[: a.batch_check_seeds]:
            o = {**common(a, a.epochs, seed), "weights": source_run}  # batch and lr: the recipe's
            row = {"set": a.batch_check, "setting": "default, recipe batch", "seed": seed}
            runs.append(({**row, "tree": trees[a.batch_check]}, o))
    return runs


def line(row: dict) -> str:
    return (
        f"  {row['set']:16s} {row['setting']:22s} seed {row['seed']}  best {row['best']:.3f}  "
        f"last {row['last']:.3f}  ({row['seconds']:4.0f}s)  B {row['batch']}, lr {row['lr']}, "
        f"backbone x{row['backbone_lr']}"
    )


def summary(rows: list[dict]) -> list[dict]:
    """Per set and setting: mean best accuracy over the seeds, and its gain over scratch."""
    out = []
    for name in dict.fromkeys(r["set"] for r in rows):
        mine = [r for r in rows if r["set"] == name]
        base = statistics.mean(r["best"] for r in mine if r["setting"] == "scratch")
        for setting in dict.fromkeys(r["setting"] for r in mine):
            these = [r for r in mine if r["setting"] == setting]
            best = statistics.mean(r["best"] for r in these)
            out.append(
                {
                    "set": name,
                    "setting": setting,
                    "seeds": [r["seed"] for r in these],
                    "best_each_seed": [r["best"] for r in these],
                    "mean_best": round(best, 4),
                    "vs_scratch": round(best - base, 4),
                    "batch": these[0]["batch"],
                    "lr": these[0]["lr"],
                    "backbone_lr": these[0]["backbone_lr"],
                }
            )
    return out


# --------------------------------------------------------------------------- main


def arguments():
    p = parser(__doc__, "finetune_cpu.json")
    p.add_argument("root", help="the folder `python -m benchmarks.evalsets` wrote")
    p.add_argument("--source", default="textures10-7k", help="the set the weights come from")
    p.add_argument("--source-per-class", type=int, default=100, help="training images")
    p.add_argument("--source-epochs", type=int, default=4)
    p.add_argument("--source-run", help="fine-tune from this run instead of training one")
    p.add_argument("--targets", nargs="+", default=["digits", "textures20-hard"])
    p.add_argument("--train-images", type=int, default=400, help="per target, split by class")
    p.add_argument("--test-per-class", type=int, default=20, help="per target (default 20)")
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--batch", type=int, default=32, help="global batch of the main grid")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--precision", default="fp32", help="fixed: every run alike (auto measures)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    p.add_argument("--batch-check", default="digits", help="target for the recipe-batch check")
    p.add_argument("--batch-check-seeds", type=int, default=1)
    p.add_argument("--parallel", type=int, default=2, help="runs at once, one thread each")
    p.add_argument("--work", default="/tmp/cifar-finetune", help="subsampled sets, source run")
    return p.parse_args()


def prepare(a) -> tuple[Path, dict[str, Path]]:
    """The subsampled source tree and target trees under --work."""
    root, work = Path(a.root), Path(a.work)
    for name in (a.source, *a.targets):
        if not (root / name).is_dir():
            raise SystemExit(
                f"{name}: not in {root} (python -m benchmarks.evalsets {root} --only {name})"
            )
    test_k = {"val": a.test_per_class}
    source = subsample(root / a.source, work / a.source, {"train": a.source_per_class, **test_k})
    trees = {}
    for name in a.targets:
        k = max(1, a.train_images // sum(1 for d in (root / name / "train").iterdir()))
        trees[name] = subsample(root / name, work / name, {"train": k, **test_k})
    return source, trees


def main() -> None:
    a = arguments()
    info = machine()
    source_tree, trees = prepare(a)
    source_run = a.source_run or str(Path(a.work) / "source-run")
    runs: list[tuple[dict, dict]] = []
    print(
        f"[{describe(info)}]  ResNet-18 at {a.image_size} px, {a.parallel} process(es) x 1 thread"
    )
    t0 = time.perf_counter()
    with ProcessPoolExecutor(a.parallel, mp_context=get_context("spawn")) as pool:
        source_job: Future | None = None
        if not a.source_run:
            o = {**common(a, a.source_epochs, SOURCE_SEED), "batch_size": a.batch}
            source_job = pool.submit(train_run, str(source_tree), o, source_run)
        runs = target_runs(a, trees, source_run)
        scratch = [(r, o) for r, o in runs if "weights" not in o]  # need no source: start now
        jobs = [(r, pool.submit(train_run, str(r["tree"]), o)) for r, o in scratch]
        source = source_job.result() if source_job else {"run": source_run}
        if source_job:
            print(
                f"  source {a.source}: {source['train_images']} train images, best "
                f"{source['best']:.3f} last {source['last']:.3f} ({source['seconds']:.0f}s) "
                f"-> {source_run}",
                flush=True,
            )
        tuned = sorted(
            (ro for ro in runs if "weights" in ro[1]),
            key=lambda ro: ro[1].get("batch_size") is not None,
        )  # the slow small-batch check first
        jobs += [(r, pool.submit(train_run, str(r["tree"]), o)) for r, o in tuned]
        rows = []
        for r, job in jobs:
            row = {**{k: v for k, v in r.items() if k != "tree"}, **job.result()}
            rows.append(row)
            print(line(row), flush=True)
    table = summary(rows)
    print(f"\nmean best test accuracy over seeds (vs scratch), {time.perf_counter() - t0:.0f}s")
    for s in table:
        each = " ".join(f"{b:.3f}" for b in s["best_each_seed"])
        print(
            f"  {s['set']:16s} {s['setting']:22s} {s['mean_best']:.3f} ({s['vs_scratch']:+.3f})"
            f"  seeds {s['seeds']}: {each}"
        )
    settings = {
        k: getattr(a, k)
        for k in (
            "source",
            "source_per_class",
            "source_epochs",
            "train_images",
            "test_per_class",
            "epochs",
            "batch",
            "image_size",
            "precision",
            "parallel",
        )
    }
    write_json(
        a.json, info, {"settings": settings, "source": source, "rows": rows, "summary": table}
    )


if __name__ == "__main__":
    main()
