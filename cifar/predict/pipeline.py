"""Bulk prediction with Ray Data, read top-down in :func:`predict`: preflight (before Ray) ->
plan -> pipeline (list -> CPU decode tasks -> actor pool -> result files committed whole) ->
report. Every file found is accounted for exactly once: a file that cannot be read or decoded
becomes a row with ``error`` set, never a failed job or a missing row.
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Any

from cifar.cluster.resources import ClusterInfo, connect
from cifar.cluster.state import actors_placed, actors_waiting, describe_cluster
from cifar.cluster.watchdog import StallError, Watchdog
from cifar.io import storage
from cifar.io.images import decode_batch
from cifar.io.lock import FolderLock
from cifar.predict.commit import JOB_FILE, finish, make_sink, start
from cifar.predict.config import PredictConfig
from cifar.predict.formats import read_results, result_schema
from cifar.predict.plan import Plan, plan_resources, with_compute
from cifar.predict.predictor import BatchPredictor, PredictorSettings
from cifar.predict.preflight import Preflight, preflight
from cifar.predict.report import (
    RowProgress,
    check_exactly_once,
    generated_note,
    job_summary,
    preview_png,
    write_side_files,
)
from cifar.predict.shard_input import decode_samples, preview_loader

log = logging.getLogger(__name__)
progress = logging.getLogger("cifar.progress")

# A task's output is cut into blocks of at most this size. Ray Data's 128 MiB would keep tens of
# thousands of decoded images (or a whole listing of paths) in a task before the next stage sees
# the first: small blocks let rows flow, and commit, as soon as they are classified.
BLOCK_BYTES = 8 * 2**20


def ray_init(progress_bars: bool) -> float:
    """Start or join Ray for a prediction job, with Ray Data's progress bars or without; returns
    the seconds it took (reported apart from the pipeline's)."""
    import ray.data

    seconds = connect(configure_logging=False)
    ray.data.DataContext.get_current().enable_progress_bars = progress_bars
    return seconds


def predict(
    cfg: PredictConfig,
    cluster: ClusterInfo,
    pre: Preflight | None = None,
    ray_start_seconds: float | None = None,
    report_every: float | None = None,
) -> dict[str, Any]:
    """Classify every file, write results + _summary.json. Ray must be up. ``report_every``:
    seconds between one-line progress reports (None: none).

    ``seconds``/``images_per_s`` time the Ray Data pipeline (actor start-up included); listing
    the inputs and loading the model (``preflight_seconds``) and starting or joining Ray
    (``ray_start_seconds``, when the caller passes it) are reported apart."""
    pre = pre or preflight(cfg)
    todo = pre.remaining()  # the columns of the files to classify; None: listed as it goes
    total = None if todo is None else len(todo["path"])
    planned = plan_resources(cfg, cluster, total, pre.model.spec.input_size)
    plan = with_compute(cfg, planned, pre.model, total)
    with hold(cfg):
        start(cfg.output, pre.record, pre.resuming)
        lister = start_lister(cfg, pre) if pre.stream is not None else None
        progress.info(starting_line(pre, plan, total))
        schema = results_schema(cfg, pre)
        t0 = time.perf_counter()
        dog = watchdog(cfg, plan)
        reports = RowProgress(cfg.output, cfg.format, total, report_every or 0)
        stages: dict[str, Any] = {}
        with watched(cfg, dog), reports if report_every else contextlib.nullcontext():
            if lister is not None:
                stages = write(classify(cfg, listed(lister, plan), plan, pre), cfg, plan, schema)
            elif total:
                stages = write(build_dataset(cfg, todo, plan, pre), cfg, plan, schema)
        seconds = time.perf_counter() - t0
        return report(
            cfg,
            pre,
            counts(pre, lister),
            seconds,
            ray_start_seconds=ray_start_seconds,
            waited_seconds=round(dog.waited, 1),
            compute=plan.compute.describe(),
            plan=plan.describe(),
            stages=stages,
        )


def complete(cfg: PredictConfig, pre: Preflight) -> dict[str, Any]:
    """A resumed job whose files all have their rows already: its summary and side files, made
    without Ray."""
    with hold(cfg):
        counted = len(pre.files), pre.skipped, pre.already_done
        return report(cfg, pre, counted, 0.0, ray_start_seconds=None, waited_seconds=0.0)


@contextlib.contextmanager
def hold(cfg: PredictConfig):
    """The output folder, held by this job alone while it writes."""
    what = f"cifar-predict --model {cfg.model} --input {' '.join(cfg.input)}"
    with FolderLock(cfg.output, what) as lock:
        if lock.note:
            progress.info("[cifar] %s", lock.note)
        yield


def report(
    cfg: PredictConfig, pre: Preflight, counted: tuple[int, int, int], seconds: float, **extra
) -> dict[str, Any]:
    """Read the committed results back, check every file has exactly one row, and write
    _summary.json and the side files. ``counted``: (files found, skipped by --extensions, kept
    from a killed run)."""
    n_files, skipped, already_done = counted
    schema = results_schema(cfg, pre)
    columns = ["path", "class_name", "confidence", "error"] + ["label"] * cfg.labels_from_dirs
    table = read_results(cfg.output, cfg.format, columns, schema)
    summary = job_summary(
        table,
        cfg.to_dict(),
        n_files,
        skipped,
        seconds,
        pre.model.meta,
        resumed=pre.resuming,
        already_done=already_done,
        classified=n_files - already_done,
        preflight_seconds=pre.seconds,
        **extra,
    )
    note = generated_note(pre)
    load = preview_loader(pre.files, pre.shards)  # shard samples: read from their shard
    preview = preview_png(table, cfg.preview, note=note, load=load) if cfg.preview else None
    finish(cfg.output)
    write_side_files(cfg.output, summary, preview, written=[JOB_FILE], note=note)
    check_exactly_once(table, pre.files, n_files)
    return summary


def start_lister(cfg: PredictConfig, pre: Preflight):
    """The actor that lists the streamed prefix while its files are classified."""
    import ray

    from cifar.predict.listing import Lister

    classes = pre.model.classes if cfg.labels_from_dirs else None
    actor = ray.remote(num_cpus=0)(Lister)
    return actor.remote(pre.stream, cfg.extensions, classes, pre.done, cfg.files_per_block)


def starting_line(pre: Preflight, plan: Plan, total: int | None) -> str:
    """What the job is about to do, in the log."""
    if pre.stream is not None:
        kept = ", keeping what the stopped run committed" if pre.resuming else ""
        return (
            f"[cifar] classifying the files under {pre.stream} as they are listed{kept}: "
            f"{plan.describe()}"
        )
    kept = f", {pre.already_done} kept from the stopped run" if pre.resuming else ""
    return (
        f"[cifar] classifying {total} files ({pre.skipped} skipped by --extensions{kept}): "
        f"{plan.describe()}"
    )


def counts(pre: Preflight, lister) -> tuple[int, int, int]:
    """(files found, skipped by --extensions, kept from a killed run)."""
    if lister is None:
        return len(pre.files), pre.skipped, pre.already_done
    import ray

    c = ray.get(lister.counts.remote())
    return c["files"], c["skipped"], c["already_done"]


def need(plan: Plan) -> str:
    gpu = f" + {plan.gpus_per_actor:g} GPU" if plan.gpus_per_actor else ""
    return f"an inference actor of {plan.actor_cpus:g} CPU{gpu}"


def watchdog(cfg: PredictConfig, plan: Plan) -> Watchdog:
    """Says what the job waits for while no actor is placed, and ends it after --stall-timeout
    without an actor placed or a result file written."""
    return Watchdog(
        "the prediction job",
        need(plan),
        _pipeline_progress(cfg.output),
        lambda: actors_waiting("BatchPredictor"),
        cfg.stall_timeout,
    )


@contextlib.contextmanager
def watched(cfg: PredictConfig, dog: Watchdog):
    """The pipeline under the watchdog and Ray Data's own no-progress guard (set to the same
    --stall-timeout), whose end becomes the same StallError."""
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.execution_no_progress_timeout_s = cfg.stall_timeout if cfg.stall_timeout > 0 else -1
    ctx.target_max_block_size = BLOCK_BYTES
    try:
        with dog:  # a stall it saw leaves it as its StallError
            yield
    except Exception as e:
        if type(e).__name__ != "ExecutionTimeoutError":
            raise
        raise StallError(
            f"the prediction job made no progress for {cfg.stall_timeout:g}s (waiting for "
            f"{dog.need}): {describe_cluster()}. Free those resources, lower --num-actors or "
            "--cpus-per-actor, or raise --stall-timeout."
        ) from None


def results_schema(cfg: PredictConfig, pre: Preflight):
    """The result files' columns, and what made them in their metadata: the model (its file,
    SHA-256, architecture, input size, classes), the inputs, the project version."""
    from cifar import __version__

    spec = pre.model.spec
    provenance = {
        "model": pre.record["model"],
        "model_sha256": pre.model.sha256,
        "arch": spec.arch,
        "input_size": spec.input_size,
        "classes": list(spec.classes),
        "inputs": pre.record["input"],
        "cifar_ray": __version__,
    }
    k = len(spec.classes)
    return result_schema(cfg.top_k, k, cfg.labels_from_dirs, cfg.probs, provenance)


def build_dataset(cfg: PredictConfig, todo: dict[str, Any], plan: Plan, pre: Preflight):
    """The listed files' columns, in blocks of --files-per-block, classified."""
    import pyarrow as pa
    import ray.data

    def block(i: int) -> pa.Table:  # zero-copy slices of the listing
        return pa.table({k: v.slice(i, cfg.files_per_block) for k, v in todo.items()})

    tables = [block(i) for i in range(0, len(todo["path"]), cfg.files_per_block)]
    # from_blocks, not from_arrow: from_arrow reads each block's schema in a 1-CPU task, so on a
    # cluster whose CPUs other jobs hold the job waited for a CPU before it even started
    return classify(cfg, ray.data.from_blocks(tables), plan, pre)


def listed(lister, plan: Plan):
    """The paths a :class:`~cifar.predict.listing.Lister` actor hands out, as a dataset."""
    from cifar.predict.listing import listed_dataset

    return listed_dataset(lister, max(1, plan.decode_tasks))  # 0: the actors decode


def classify(cfg: PredictConfig, ds, plan: Plan, pre: Preflight):
    """paths (+ labels) -> decode tasks (no torch, no CPU asked) -> inference actor pool ->
    result rows; or, for small inputs (``plan.decode_in_actors``), paths -> actors that decode
    and classify.

    Large inputs keep a separate decode stage: its tasks start at once (an actor first imports
    torch) and run beside the actors, whose forward pass is the work. A small image's decode
    costs about what its forward pass does, and a stage of its own cost more than both (a task,
    a block through the object store and an actor call per batch): the actors decode it."""
    import ray.data

    decode = decode_batch if pre.shards is None else decode_samples  # shards: by their shard
    if not plan.decode_in_actors:
        ds = ds.map_batches(
            decode,
            fn_kwargs={"size": pre.model.spec.input_size},
            batch_size=plan.batch_size,
            batch_format="numpy",
            num_cpus=0,
            compute=ray.data.TaskPoolStrategy(size=plan.decode_tasks),
        )
    lo, first, hi = plan.actors
    return ds.map_batches(
        BatchPredictor,
        fn_constructor_kwargs={
            "settings": predictor_settings(cfg, plan, pre),
            "label_dirs": cfg.labels_from_dirs,
            "probs": cfg.probs,
            "decode": decode if plan.decode_in_actors else None,
        },
        batch_size=plan.batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(min_size=lo, max_size=hi, initial_size=first),
        num_cpus=plan.actor_cpus,
        num_gpus=plan.gpus_per_actor,
        # Ray Data's actor pools already restart dead actors and retry their tasks
        # (max_restarts=-1, max_task_retries=-1), so a killed actor loses no rows.
    )


def predictor_settings(cfg: PredictConfig, plan: Plan, pre: Preflight) -> PredictorSettings:
    """What every inference actor builds its predictor from: the model file the driver resolved
    and fingerprinted, in the precision and layout the plan measured once."""
    return PredictorSettings(
        model=pre.model.file,
        arch=cfg.arch,
        image_size=cfg.image_size,
        device=plan.device,
        precision=plan.compute.precision,
        channels_last=plan.compute.channels_last,
        batch_size=plan.batch_size,
        threads=max(1, int(plan.actor_cpus)),
        top_k=cfg.top_k,
    )


def write(ds, cfg: PredictConfig, plan: Plan, schema) -> dict[str, Any]:
    """Result files of about --rows-per-file rows, each committed whole. Writers ask no CPU and
    are at most one per actor, so they run while the actors work instead of queueing up behind
    them, and Ray starts few processes for them. Returns :func:`stage_seconds`."""
    sink = make_sink(cfg.output, cfg.format, schema, cfg.rows_per_file)
    ds.write_datasink(sink, ray_remote_args={"num_cpus": 0}, concurrency=plan.write_tasks)
    return stage_seconds(ds)


def stage_seconds(ds) -> dict[str, Any]:
    """Where the pipeline's time went, from Ray Data's own counters: per stage, the seconds its
    tasks ran and computed, summed over tasks (so up to the cores times the wall time). ``{}``
    where Ray Data keeps none."""
    try:
        summaries = [ds.get_stats_summary()]
    except Exception:  # a developer API: its absence costs the breakdown, never the job
        return {}

    def total(s) -> float | None:
        return None if s is None else round(float(s.sum), 3)

    out: dict[str, Any] = {}
    while summaries:  # the write's stages, then the stages before it (its parents)
        summary = summaries.pop()
        summaries += summary.parents
        for op in summary.operators_stats:
            if op.wall_time is not None:
                out[op.operator_name] = {
                    "task_s": total(op.wall_time),
                    "task_cpu_s": total(op.cpu_time),
                }
    return out


def _pipeline_progress(output: str):
    """For the watchdog: this job's inference actors that are placed, and files written."""

    def value() -> tuple[int, int]:
        try:
            actors = actors_placed("BatchPredictor")
        except Exception:  # no dashboard: the output files alone
            actors = 0
        files = len(storage.list_files(output)) if storage.is_dir(output) else 0
        return actors, files

    return value
