"""The Ray Train worker: the only code that talks to Ray Train inside a worker (context,
checkpoint, report), around the pure loop of :mod:`cifar.train.engine`. Rank 0 writes; every rank
reports (Ray's ``report`` is a barrier)."""

from __future__ import annotations

import logging
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from cifar.data.loaders import first_images
from cifar.data.transforms import make_grid_sample, model_input
from cifar.device import Compute, resolve_compute
from cifar.models import checkpoint as ckpt
from cifar.models.registry import ModelSpec
from cifar.plots import per_class_accuracy
from cifar.train.config import TrainConfig
from cifar.train.engine import (
    Engine,
    all_reduce,
    build,
    distributed,
    evaluate,
    job_compute,
    rng_state,
    set_rng_state,
    train_one_epoch,
)
from cifar.train.outputs import (
    METRICS_COLUMNS,
    RankZero,
    compute_line,
    dataset_markdown,
    epoch_line,
    restored_line,
    skipped_line,
)
from cifar.train.state import TrainState

progress = logging.getLogger("cifar.progress")

EXAMPLES = 48  # misclassified test images in the best epoch's picture
LISTED_SKIPS = 1000  # streamed files that could not be decoded, listed by name (all counted)


@dataclass(frozen=True)
class WorkerArgs:
    """What the driver hands every Ray Train worker, as it is: Ray passes
    ``train_loop_config={"args": WorkerArgs}`` (:meth:`to_config`); nothing in it is resolved
    again on the worker."""

    cfg: TrainConfig  # resolved: batch and lr picked, classes recorded
    spec: ModelSpec  # the model: architecture, classes, input size, normalisation
    threads: int  # torch threads per worker (its CPUs)
    run_dir: str  # local path or URI
    data: Any  # ObjectRef of the data's Splits (TrainingData.for_workers()), put once
    dataset: dict[str, Any]  # what meta.json, summary.json and TensorBoard say about the data
    weights: Any = None  # ObjectRef of the --weights to start from (a fresh run only)
    loader_workers: int = 0  # streamed data: decoding processes per worker
    tracking: Any = None  # the MLflow run rank 0 logs metrics to (tracking.RunRef), if any
    ray_data: bool = False  # --data-loading ray: training batches from Ray Train's dataset shard

    def to_config(self) -> dict[str, Any]:
        return {"args": self}


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train worker: build, restore, then train/evaluate/checkpoint/report every epoch."""
    import ray
    import ray.train
    import ray.train.torch

    args: WorkerArgs = config["args"]
    cfg = args.cfg
    if not cfg.verbose:
        _quiet_reports()
    ctx = ray.train.get_context()  # Ray: who am I
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    else:
        torch.backends.cudnn.benchmark = True
    checkpoint = ray.train.get_checkpoint()  # Ray: set after a failure or on --resume
    state, weights = restored(checkpoint)
    data = ray.get(args.data)  # Ray: the data's Splits, put there once by the driver
    local = ctx.get_local_world_size()
    compute = choose_compute(cfg, args.spec, state, device, world, local, data.n_train)
    initial = ray.get(args.weights) if args.weights is not None and checkpoint is None else None
    prepare = ray.train.torch.prepare_model  # Ray: to the device, DDP when world > 1
    batches = ray_data_shard(args, data, world, device)
    workers = args.loader_workers
    e = build(cfg, data, args.spec, compute, rank, world, prepare, initial, workers, batches)
    if weights is not None:
        e.restore(weights, state.optimizer, state.scheduler, state.scaler)
        set_rng_state(state.rng[min(rank, len(state.rng) - 1)])
    # a resumed run overwrites what came after the checkpoint (its epoch ends at that step)
    purge = state.start_epoch * e.steps_per_epoch + 1 if state.start_epoch else None
    note = "GENERATED data: " if generated(args.dataset) else ""
    out = RankZero(
        rank,
        args.run_dir,
        args.spec.classes,
        purge_step=purge,
        note=note,
        tracking=args.tracking,
        compute=state.compute,
    )
    out.heartbeat(state.start_epoch, 0, force=True)  # the workers are up
    if checkpoint is not None:
        out.print(restored_line(state, cfg.epochs, world))
    else:
        write_intro(out, e, first_images(e.train_loader.dataset, 64), args.dataset)
        out.print(compute_line(compute, world))
    meta = ckpt.model_meta(
        args.spec,
        dataset=args.dataset,
        config=cfg.to_dict(),
        versions=ckpt.versions(),
        world_size=world,
        compute=state.compute,
    )
    train_epochs(e, out, state, meta)
    out.close()


def ray_data_shard(args: WorkerArgs, data: Any, world: int, device: torch.device):
    """``--data-loading ray``: this rank's shard of the Ray Dataset the driver gave Ray Train
    (decoded on the cluster's CPUs), as the engine's training loader; None otherwise."""
    if not args.ray_data:
        return None
    import ray.train

    from cifar.data import raydata

    batch, n = args.cfg.batch_size, data.n_train
    return raydata.RayBatches(
        ray.train.get_dataset_shard("train"),  # Ray: this rank's stream of decoded rows
        raydata.per_rank_batch(batch, world),
        raydata.steps_per_epoch(n, batch, world),
        data.datasets(device)[0],
    )


def generated(dataset: dict[str, Any]) -> bool:
    """The run's data was made by cifar.data.synthetic, not taken from the world."""
    return dataset.get("kind") == "synthetic" or bool(dataset.get("generated"))


def note_skipped(e: Engine, out: RankZero, state: TrainState, mine: list[tuple[str, str]]) -> None:
    """Streamed files that could not be decoded this epoch (every rank's): recorded in
    ``state`` and said once, the first time they turn up."""
    (total,) = all_reduce([len(mine)], e.compute.device)
    if not total or state.skipped:
        return
    found = [{"path": p, "error": r} for p, r in mine]
    if distributed():
        import torch.distributed as dist

        every: list[Any] = [None] * e.world
        dist.all_gather_object(every, found)
        found = [s for rank in every for s in rank]
    state.skipped = found[:LISTED_SKIPS]
    out.print(skipped_line(int(total), state.skipped))


def restored(checkpoint) -> tuple[TrainState, dict[str, torch.Tensor] | None]:
    """(state, weights) from Ray Train's checkpoint, as the start of a restart; a fresh state and
    no weights without one."""
    if checkpoint is None:
        return TrainState(), None
    with checkpoint.as_directory() as d:
        state = TrainState.from_checkpoint(d).continued()
        return state, ckpt.load_state_dict_file(Path(d) / ckpt.MODEL_FILE)


def train_epochs(e: Engine, out: RankZero, state: TrainState, meta: dict[str, Any]) -> None:
    """Every epoch from where ``state`` stopped: train, evaluate, print, checkpoint + report; at
    the end, the best epoch's pictures and the HParams row."""
    cfg, world = e.cfg, e.world
    t_run, first = time.perf_counter(), state.start_epoch
    for epoch in range(first, cfg.epochs):
        before = state.history[-1].get("workers") if state.history else None
        metrics = run_epoch(e, epoch, out, state)
        elapsed = time.perf_counter() - t_run
        line = epoch_line(metrics, cfg.epochs, elapsed / (epoch + 1 - first))
        if world != before and (cfg.elastic or before is not None):  # a size that changed
            line += f"  ({world} worker{'s' if world > 1 else ''})"
        out.print(line)
        report(e, out, state, metrics, meta)
        if cfg.stop_after_epoch is not None and epoch + 1 == cfg.stop_after_epoch:
            out.close()
            raise RuntimeError(f"stop_after_epoch={cfg.stop_after_epoch} (testing hook)")
    if state.best is not None:
        out.best_epoch(state.best["epoch"], state.best["confusion"], state.best["examples"])
        best = max(h["test_accuracy"] for h in state.history)
        final = state.history[-1]["test_accuracy"]
        out.hparams(cfg.to_dict(), {"best_test_accuracy": best, "final_test_accuracy": final})


def choose_compute(
    cfg: TrainConfig,
    spec: ModelSpec,
    state: TrainState,
    device: torch.device,
    world: int,
    local_world: int = 1,
    n_train: int | None = None,
) -> Compute:
    """What a restarted run recorded (so it continues exactly), else what the job chooses now
    (:func:`cifar.train.engine.job_compute`, its cost bounded by the run's ``n_train`` images),
    recorded in ``state``."""
    if state.compute is not None:
        c = state.compute
        return resolve_compute(device, c["precision"], c["channels_last"])
    compute = job_compute(cfg, spec, device, world, local_world, n_train)
    state.compute = compute.describe()
    return compute


def write_intro(out: RankZero, e: Engine, first: torch.Tensor, dataset: dict[str, Any]) -> None:
    """TensorBoard's model graph, a grid of (augmented) training samples, the class counts."""
    with warnings.catch_warnings():  # add_graph traces with the deprecated torch.jit
        warnings.simplefilter("ignore", FutureWarning)
        side = e.spec.input_size
        example = torch.zeros(1, 3, side, side, device=e.compute.device)
        out.call(lambda w: w.add_graph(e.raw, example))
    seen = model_input(first, side, None, None, e.cfg.augment)  # what the model sees, unscaled
    grid = make_grid_sample(seen)
    out.call(lambda w: w.add_image("train/samples", grid, 0))
    out.call(lambda w: w.add_text("dataset", dataset_markdown(dataset), 0))


def run_epoch(e: Engine, epoch: int, out: RankZero, state: TrainState) -> dict[str, Any]:
    """Train one epoch, evaluate exactly, add the epoch to ``state.history`` and TensorBoard."""

    def on_log(step: int, loss: float, images: int, seconds: float) -> None:
        lr = e.optimizer.param_groups[0]["lr"]
        out.step_scalars({"train/loss": loss, "train/lr": lr}, epoch * e.steps_per_epoch + step)
        out.heartbeat(epoch, step)
        rate = images * e.world / max(seconds, 1e-9)  # this rank's pace, for all of them
        out.print_now_and_then(
            f"[cifar] epoch {epoch + 1}/{e.cfg.epochs}  step {step}/{e.steps_per_epoch}  "
            f"loss {loss:.4f}  lr {lr:.4g}  {rate:.0f} img/s"
        )

    stats = train_one_epoch(e, epoch, on_log if out.is_writer else None)
    loss_sum, samples = all_reduce([stats.loss_sum, stats.samples], e.compute.device)
    (seconds,) = all_reduce([stats.seconds], e.compute.device, op="max")  # the slowest rank
    evaluation = evaluate(e, examples=EXAMPLES if out.is_writer else 0)
    confusion = evaluation.pop("confusion")
    wrong = evaluation.pop("misclassified", None)
    note_skipped(e, out, state, stats.skipped + evaluation.pop("skipped"))
    metrics = {
        "epoch": epoch + 1,
        "epochs": e.cfg.epochs,
        "train_loss": loss_sum / max(samples, 1),
        "images_per_s": samples / max(seconds, 1e-9),
        "train_seconds": seconds,
        "lr": e.optimizer.param_groups[0]["lr"],
        "restarts": state.restarts,
        "workers": e.world,  # the world size this epoch trained with: an elastic run's varies
        **evaluation,
    }
    is_best = all(metrics["test_accuracy"] > h["test_accuracy"] for h in state.history)
    state.history.append({k: metrics[k] for k in METRICS_COLUMNS})
    state.epoch = epoch
    per_class = per_class_accuracy(confusion, out.classes)
    out.scalars(
        {
            "test/loss": metrics["test_loss"],
            "test/accuracy": metrics["test_accuracy"],
            "throughput/images_per_s": metrics["images_per_s"],
            **{f"test_class_accuracy/{c}": a for c, a in per_class.items() if a is not None},
        },
        (epoch + 1) * e.steps_per_epoch,  # one x-axis: the optimizer step, as train/loss
    )
    out.metrics(state.history)
    out.heartbeat(epoch + 1, 0, force=True)
    if is_best:
        state.best = {"epoch": epoch + 1, "confusion": confusion, "examples": wrong}
    out.flush()
    return metrics


def report(
    e: Engine, out: RankZero, state: TrainState, metrics: dict[str, Any], meta: dict[str, Any]
) -> None:
    """Checkpoint (rank 0 writes it) and report the epoch's metrics (every rank: a barrier)."""
    import ray.train

    state.rng = _gather_rng_states(e.world)
    state.optimizer = e.optimizer.state_dict()
    state.scheduler = e.scheduler.state_dict() if e.scheduler is not None else None
    state.scaler = e.scaler.state_dict() if e.scaler.is_enabled() else None
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = None
        if out.is_writer:
            epoch_meta = {**meta, "epoch": metrics["epoch"], "metrics": metrics}
            ckpt.save_checkpoint(tmp, e.raw, epoch_meta, state.to_dict())
            checkpoint = ray.train.Checkpoint.from_directory(tmp)
        ray.train.report(
            metrics,
            checkpoint=checkpoint,
            checkpoint_dir_name=f"checkpoint_epoch_{metrics['epoch']:04d}",
        )


def _quiet_reports() -> None:
    """Ray Train 2.60 logs every report (with the whole metrics dict) through a logger named
    after its file, which RunConfig's LoggingConfig does not reach: quiet that one logger."""
    try:
        from ray.train.v2._internal.execution import context
    except ImportError:  # another Ray version: nothing to quiet, or quieted another way
        return
    logging.getLogger(context.__file__).setLevel(logging.WARNING)


def _gather_rng_states(world: int) -> list[dict[str, Any]]:
    import torch.distributed as dist

    state = rng_state()
    if not distributed():
        return [state]
    states: list[Any] = [None] * world
    dist.all_gather_object(states, state)
    return states
