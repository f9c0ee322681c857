"""Pure torch training: one :func:`build` of model, loaders, optimizer and schedule, then
:func:`train_one_epoch` and :func:`evaluate`. No Ray here: the Ray Train worker
(:mod:`cifar.train.worker`), the benchmark and the tests all call these, with their rank, world size
and model wrapper, so a benchmark figure is a figure of the job's own loop.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader

from cifar.data.dataset import Splits
from cifar.data.loaders import GlobalBatchSampler, shard_loaders
from cifar.data.transforms import model_batch
from cifar.device import Compute, Work, machine_key, resolve_compute
from cifar.models.checkpoint import unwrap
from cifar.models.probe import spec_key, step_probe
from cifar.models.registry import ModelSpec, build_model
from cifar.train.config import TrainConfig
from cifar.train.optim import make_optimizer, make_scheduler


def distributed() -> bool:
    """True inside a process group of more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


@dataclass
class Engine:
    """Everything one rank trains with."""

    cfg: TrainConfig
    spec: ModelSpec  # architecture, classes, input size, normalisation
    model: nn.Module  # what runs forward/backward: maybe DDP-wrapped or compiled
    raw: nn.Module  # the plain module inside: what checkpoints save
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler | None
    loss_fn: nn.Module
    train_loader: DataLoader  # or, with --data-loading ray, cifar.data.raydata.RayBatches
    eval_loader: DataLoader
    compute: Compute
    scaler: torch.amp.GradScaler  # loss scaling for fp16; passes through otherwise
    rank: int = 0
    world: int = 1

    @property
    def steps_per_epoch(self) -> int:
        return len(self.train_loader)

    def train_mode(self) -> None:
        """The model in training mode; with a frozen backbone, every layer but the head stays
        in eval mode (its batch-norm statistics and dropout are the pretrained network's)."""
        self.model.train()
        if self.cfg.freeze_backbone:
            head = self.spec.head
            for name, m in self.raw.named_modules():
                if name != head and not name.startswith(head + ".") and not any(m.children()):
                    m.eval()

    def restore(
        self, model: dict, optimizer: dict, scheduler: dict | None, scaler: dict | None = None
    ) -> None:
        self.raw.load_state_dict(model)
        self.optimizer.load_state_dict(optimizer)
        if self.scheduler is not None and scheduler is not None:
            self.scheduler.load_state_dict(scheduler)
        if scaler:
            self.scaler.load_state_dict(scaler)


def build(
    cfg: TrainConfig,
    data: Splits,
    spec: ModelSpec,
    compute: Compute,
    rank: int = 0,
    world: int = 1,
    wrap: Callable[[nn.Module], nn.Module] | None = None,
    initial: dict[str, torch.Tensor] | None = None,
    loader_workers: int = 0,
    train_batches: Any = None,
) -> Engine:
    """The ``spec``'s model (same initial weights on every rank: ``initial``'s where given, the
    head left out), this rank's loaders over ``data`` (:class:`~cifar.data.dataset.Splits`: in
    memory, or files decoded in ``loader_workers`` processes), optimizer and schedule. ``wrap``
    distributes the model (Ray's ``prepare_model``: DDP). ``train_batches`` (a sized iterable
    of batches with ``sampler.set_epoch``, e.g. this rank's Ray Data shard) replaces the training
    loader; evaluation keeps the exact loader over ``data``. ``cfg`` is a resolved recipe
    (:func:`cifar.train.config.resolve_recipe`, done once on the driver): never resolved here."""
    if cfg.batch_size is None or cfg.lr is None or cfg.backbone_lr is None:
        raise ValueError("build() takes a resolved recipe: call resolve_recipe(cfg, ...) first")
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed + rank)
    model = build_model(spec)
    if initial is not None:
        model.load_state_dict(initial, strict=False)  # checked on the driver: only the head new
    optimizer = make_optimizer(model, spec, cfg)  # before DDP: a frozen backbone is not synced
    model = compute.place(model)
    if wrap is not None:
        model = wrap(model)
    raw = unwrap(model)
    if cfg.compile:
        model = torch.compile(model)
    tl, el = shard_loaders(
        data,
        cfg.batch_size,
        cfg.elastic,
        cfg.seed,
        spec.input_size,
        rank,
        world,
        compute.device,
        loader_workers,
    )
    tl = tl if train_batches is None else train_batches
    return Engine(
        cfg=cfg,
        spec=spec,
        model=model,
        raw=raw,
        optimizer=optimizer,
        scheduler=make_scheduler(optimizer, cfg, len(tl)),
        loss_fn=nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing),
        train_loader=tl,
        eval_loader=el,
        compute=compute,
        scaler=compute.scaler(),
        rank=rank,
        world=world,
    )


def job_compute(
    cfg: TrainConfig,
    spec: ModelSpec,
    device: torch.device,
    world: int = 1,
    local_world: int = 1,
    n_train: int | None = None,
) -> Compute:
    """The precision and memory format a training run uses, as the job chooses them: the flags,
    else (``auto`` on a CPU) the fastest training step of this run measured on this CPU (cached
    per machine and work), the slowest rank deciding when there are several. ``cfg`` has its
    batch resolved (:func:`cifar.train.config.resolve_recipe`). With ``n_train``, measuring
    costs at most a share of the run's estimated time (a run smaller than that: fp32,
    unmeasured; :func:`cifar.device.measure_bounded`)."""
    batch = max(1, cfg.batch_size // world)
    work = None if n_train is None else Work(cfg.epochs * -(-n_train // world), batch)
    key = (
        f"train|{machine_key()}|batch={batch}|{spec_key(spec)}|augment={cfg.augment}|"
        f"workers_here={local_world}"
    )
    probe = step_probe(lambda: build_model(spec), spec, batch, True, cfg.augment, cfg.momentum)
    return resolve_compute(
        device,
        cfg.precision,
        cfg.channels_last,
        probe=probe,
        reduce=lambda times: all_reduce(times, device, op="max") if world > 1 else times,
        cache_key=key,
        work=work,
    )


def epoch_generator(device: torch.device, seed: int, rank: int, epoch: int) -> torch.Generator:
    """Augmentation RNG: a pure function of (seed, rank, epoch), so a resumed epoch draws the same
    crops and flips as an uninterrupted one, on every rank."""
    g = torch.Generator(device=device)
    g.manual_seed((seed * 1_000_003 + rank * 10_007 + epoch) % (2**63))
    return g


@dataclass
class EpochStats:
    loss_sum: float  # sum over this rank's samples
    samples: int
    seconds: float
    steps: int
    skipped: list[tuple[str, str]]  # streamed files this rank could not decode: (path, reason)


def batches(loader: DataLoader, skipped: list[tuple[str, str]]):
    """``(images, labels)`` of each batch; a streamed batch's undecodable files go to
    ``skipped``."""
    for batch in loader:
        if len(batch) > 2:
            skipped.extend(batch[2])
        yield batch[0], batch[1]


def train_one_epoch(
    e: Engine, epoch: int, on_log: Callable[[int, float, int, float], None] | None = None
) -> EpochStats:
    """One pass over this rank's shard (an elastic run: its share of every global batch).
    ``on_log(step_in_epoch, mean_loss, images_so_far, seconds_so_far)`` (this rank's) every
    ``cfg.log_every`` steps (the only host syncs
    besides the epoch total).

    DDP averages the ranks' gradients. In an elastic run, where a global batch does not split
    evenly (the last one, or a world size that does not divide the batch) each rank's loss is
    weighted by its share, so the step is the global batch's mean whatever the world size; an
    even split is weighted by exactly 1, untouched."""
    cfg, device = e.cfg, e.compute.device
    sampler = e.train_loader.batch_sampler
    global_batches = isinstance(sampler, GlobalBatchSampler)
    (sampler if global_batches else e.train_loader.sampler).set_epoch(epoch)
    generator = epoch_generator(device, cfg.seed, e.rank, epoch)
    augment = cfg.augment and not getattr(e.train_loader, "loader_augments", False)
    e.train_mode()
    loss_sum = torch.zeros((), device=device)
    window = torch.zeros((), device=device)
    samples = steps = 0
    skipped: list[tuple[str, str]] = []
    t0 = time.perf_counter()
    for images, labels in batches(e.train_loader, skipped):
        size = e.spec.input_size
        x = model_batch(e.compute, images, e.spec.mean, e.spec.std, augment, generator, size)
        y = labels.to(device, non_blocking=True)
        with e.compute.autocast():
            logits = e.model(x)
        share = y.shape[0] * e.world / sampler.global_size(steps) if global_batches else 1.0
        if y.shape[0]:
            loss = e.loss_fn(logits.float(), y)
            weighted = loss if share == 1.0 else loss * share
        else:  # a last global batch smaller than the world: this rank only joins the all-reduce
            loss = weighted = logits.float().sum() * 0.0
        e.optimizer.zero_grad(set_to_none=True)
        e.scaler.scale(weighted).backward()
        if cfg.grad_clip > 0:
            e.scaler.unscale_(e.optimizer)  # clip the true gradients, not the scaled ones
            nn.utils.clip_grad_norm_(e.model.parameters(), cfg.grad_clip)
        e.scaler.step(e.optimizer)  # skips the step if fp16 overflowed, then lowers the scale
        e.scaler.update()
        if e.scheduler is not None:
            e.scheduler.step()
        detached = loss.detach()
        loss_sum += detached * y.shape[0]
        window += detached
        samples += y.shape[0]
        steps += 1
        if on_log is not None and steps % cfg.log_every == 0:
            on_log(steps, float(window) / cfg.log_every, samples, time.perf_counter() - t0)
            window.zero_()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return EpochStats(float(loss_sum), samples, time.perf_counter() - t0, steps, skipped)


def all_reduce(values: list[float], device: torch.device, op: str = "sum") -> list[float]:
    """Sum (or max) across ranks; the values themselves without a process group. float64, so
    counts stay exact."""
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if distributed():
        dist.all_reduce(t, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
    return t.tolist()


@torch.inference_mode()
def evaluate(e: Engine, examples: int = 0) -> dict[str, Any]:
    """Exact test loss/accuracy: each rank's loader covers a disjoint share (no padding), sums are
    all-reduced, so every test image counts exactly once whatever the world size.

    Also ``confusion`` (``[true][predicted]`` counts over the whole test set) and, with
    ``examples``, ``misclassified``: up to that many of this rank's wrong images (uint8),
    with true and predicted class and confidence."""
    e.model.eval()
    device, k = e.compute.device, e.spec.num_classes
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    confusion = torch.zeros(k * k, dtype=torch.int64, device=device)
    wrong: list[tuple[torch.Tensor, ...]] = []
    n_wrong = 0
    skipped: list[tuple[str, str]] = []
    for images, labels in batches(e.eval_loader, skipped):
        x = model_batch(e.compute, images, e.spec.mean, e.spec.std, size=e.spec.input_size)
        y = labels.to(device, non_blocking=True)
        with e.compute.autocast():
            logits = e.model(x).float()
        loss_sum += nn.functional.cross_entropy(logits, y, reduction="sum").double()
        pred = logits.argmax(1)
        confusion += torch.bincount(y * k + pred, minlength=k * k)
        if n_wrong < examples:
            miss = (pred != y).nonzero().flatten()[: examples - n_wrong]
            prob = torch.softmax(logits[miss], 1).gather(1, pred[miss, None])[:, 0]
            wrong.append(
                tuple(t.cpu() for t in (images[miss.to(images.device)], y[miss], pred[miss], prob))
            )
            n_wrong += len(miss)
    if distributed():
        dist.all_reduce(confusion)
        dist.all_reduce(loss_sum)
    total_n = int(confusion.sum())
    correct = int(confusion.view(k, k).diagonal().sum())
    out: dict[str, Any] = {
        "test_loss": float(loss_sum) / max(total_n, 1),
        "test_accuracy": correct / max(total_n, 1),
        "test_correct": correct,
        "test_images": total_n,
        "confusion": confusion.view(k, k).tolist(),
        "skipped": skipped,
    }
    if examples:
        parts = list(zip(*wrong, strict=True)) if wrong else [[torch.zeros(0)]] * 4
        out["misclassified"] = dict(
            zip(("images", "true", "pred", "prob"), (torch.cat(p) for p in parts), strict=True)
        )
    return out


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_tupleize(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _tupleize(x):
    return tuple(_tupleize(v) for v in x) if isinstance(x, list | tuple) else x
