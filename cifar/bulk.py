"""Bulk prediction with Ray Data: list files -> CPU decode tasks -> actor pool -> result files.

Every file found is accounted for exactly once: a file that cannot be read or decoded becomes a
row with ``error`` set, never a failed job or a missing row.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch

from cifar import storage
from cifar.checkpoint import LoadedModel, load_model
from cifar.config import Config, ConfigError, opt
from cifar.device import PRECISIONS, Compute
from cifar.images import decode_batch
from cifar.inputs import label_from_dirs, list_inputs, streamed_input, wanted_extensions
from cifar.predict import BatchPredictor, inference_compute
from cifar.raycluster import ClusterInfo
from cifar.results import (
    FORMATS,
    preview_png,
    read_results,
    result_schema,
    summarize,
    write_side_files,
)
from cifar.sink import (
    JOB_FILE,
    ROWS_PER_FILE,
    check_resume,
    committed_paths,
    finish,
    job_record,
    make_sink,
    start,
)
from cifar.waiting import (
    STALL_TIMEOUT,
    StallError,
    Watchdog,
    actors_placed,
    actors_waiting,
    describe_cluster,
)

log = logging.getLogger(__name__)
progress = logging.getLogger("cifar.progress")

io_opt, scale_opt, output_opt = (partial(opt, group=g) for g in ("data", "scale", "results"))


@dataclass
class PredictConfig(Config):
    # fmt: off
    model: str | None = io_opt(None, "run dir, checkpoint dir, model/ dir or .pt/.pth file", required=True)  # noqa: E501
    input: list[str] | None = io_opt(None, "folder (recursive), file, glob or URI; repeatable", metavar="IN", required=True)  # noqa: E501, RUF009
    output: str | None = io_opt(None, "output folder", metavar="OUT", required=True)
    extensions: str | None = io_opt(None, "only these extensions, e.g. 'jpg,png' (others are skipped and counted); default: every file")  # noqa: E501
    labels_from_dirs: bool = io_opt(False, "folders are named after classes: report accuracy + confusion matrix")  # noqa: E501
    format: str = output_opt("parquet", "result format", choices=tuple(FORMATS))
    top_k: int = output_opt(3, "top-k classes to write")
    overwrite: bool = output_opt(False, "replace results already in OUT")
    resume: bool = output_opt(False, "continue a job that was killed, in the same OUT: keep the rows it committed, classify only the rest")  # noqa: E501
    rows_per_file: int = output_opt(ROWS_PER_FILE, "rows per result file (each is committed whole; a killed job redoes at most the files it was writing)")  # noqa: E501
    preview: int = output_opt(0, "also write OUT/_preview.png: the first N images with predicted class and confidence")  # noqa: E501
    verbose: bool = output_opt(False, "also Ray's and Ray Data's INFO lines")
    batch_size: int = scale_opt(256, "images per inference batch")
    num_actors: str = scale_opt("auto", "inference actors: N, or MIN-MAX to autoscale (auto: 1 per GPU with GPUs, else about 2/3 of the CPUs)")  # noqa: E501
    gpus_per_actor: float | None = scale_opt(None, "GPUs per actor, 0 for CPU (default: 1 if the cluster has GPUs)")  # noqa: E501
    cpus_per_actor: float | None = scale_opt(None, "CPUs per inference actor = its torch threads on CPU (default: 1; decoding and writing ask for none)")  # noqa: E501
    stall_timeout: float = scale_opt(STALL_TIMEOUT, "end the job, saying what it waited for, after this many seconds without progress (0: wait for ever)")  # noqa: E501
    precision: str = scale_opt("auto", "auto: bf16 on GPUs; on CPUs the faster of fp32 and bf16, measured on this node at --batch-size; fp32: exactly the tutorial's arithmetic", choices=PRECISIONS)  # noqa: E501
    files_per_block: int = scale_opt(1024, "files per Ray Data block (decode task)")
    # fmt: on

    def checks(self) -> list[tuple[bool, str]]:
        try:
            parse_actors(self.num_actors)
            actors_error = ""
        except ValueError as e:
            actors_error = str(e)
        return [
            (bool(self.model), "--model is required"),
            (bool(self.input), "at least one --input is required"),
            (bool(self.output), "--output is required"),
            (self.batch_size >= 1, f"--batch-size must be at least 1 (got {self.batch_size})"),
            (self.top_k >= 1, f"--top-k must be at least 1 (got {self.top_k})"),
            (
                self.gpus_per_actor is None or self.gpus_per_actor >= 0,
                "--gpus-per-actor must be >= 0",
            ),
            (
                self.cpus_per_actor is None or self.cpus_per_actor > 0,
                "--cpus-per-actor must be > 0",
            ),
            (self.files_per_block >= 1, "--files-per-block must be at least 1"),
            (self.rows_per_file >= 1, "--rows-per-file must be at least 1"),
            (
                self.extensions is None or bool(wanted_extensions(self.extensions)),
                f"--extensions {self.extensions!r} names no extension: pass e.g. 'jpg,png'",
            ),
            (
                not (self.resume and self.overwrite),
                "--resume keeps the results in --output and --overwrite replaces them: pass one",
            ),
            (0 <= self.preview <= 1000, f"--preview must be 0..1000 (got {self.preview})"),
            (self.stall_timeout >= 0, "--stall-timeout must be >= 0"),
            (not actors_error, actors_error),
        ]


def parse_actors(spec: str) -> tuple[int, int] | None:
    """'auto' -> None, 'N' -> (N, N), 'MIN-MAX' -> (MIN, MAX)."""
    if spec == "auto":
        return None
    try:
        lo, _, hi = spec.partition("-")
        lo_i, hi_i = int(lo), int(hi or lo)
    except ValueError:
        raise ValueError(f"--num-actors must be N, MIN-MAX or auto (got {spec!r})") from None
    if lo_i < 1 or hi_i < lo_i:
        raise ValueError(f"--num-actors {spec!r}: need 1 <= MIN <= MAX")
    return lo_i, hi_i


# --------------------------------------------------------------------------- output folder


def check_output(output: str, overwrite: bool, resume: bool = False) -> None:
    """Refuse an output that holds results (unless --overwrite or --resume) or that cannot be
    written."""
    if not storage.is_uri(output):
        out = Path(output).expanduser()
        if out.exists() and not out.is_dir():
            raise ConfigError(f"--output {out} is a file; pass a folder path.")
        probe_dir = out if out.is_dir() else next(p for p in out.parents if p.exists())
        if not os.access(probe_dir, os.W_OK):
            raise ConfigError(f"--output {out} is not writable. Choose a folder you can write.")
    if storage.is_dir(output) and storage.has_entries(output) and not (overwrite or resume):
        raise ConfigError(
            f"--output {output} already holds results. Pass --resume to continue the job that "
            "wrote them (same command), --overwrite to replace them, or choose another --output."
        )


@dataclass
class Preflight:
    model: LoadedModel
    files: Any  # every input file: a pyarrow string array (no Python object per file)
    skipped: int
    seconds: float = 0.0
    labels: Any = None  # with --labels-from-dirs: a pyarrow string array beside ``files``
    record: dict[str, Any] | None = None  # the job, as _job.json says it
    resuming: bool = False
    todo: Any = None  # pyarrow boolean mask of the files still to classify (None: all)
    stream: str | None = None  # a prefix listed while classifying (files is None then)
    done: Any = None  # with stream and --resume: the committed paths, for the lister

    @property
    def already_done(self) -> int:
        return 0 if self.todo is None else len(self.files) - self.todo.true_count


def preflight(cfg: PredictConfig) -> Preflight:
    """Every check that needs no cluster: config, model, inputs, output. Runs before Ray starts."""
    t0 = time.perf_counter()
    cfg.validate()
    loaded = load_model(cfg.model)
    stream = streamed_input(cfg.input)  # a prefix listed while classifying: not listed here
    pre = Preflight(loaded, None, 0, stream=stream)
    if stream is None:
        found = list_inputs(cfg.input, cfg.extensions)
        pre.files, pre.skipped = found.files, found.skipped
        if cfg.labels_from_dirs:
            import pyarrow as pa

            pre.labels = pa.array(
                [
                    label_from_dirs(f, r, loaded.classes)
                    for f, r in zip(found.files.to_pylist(), found.root_list(), strict=True)
                ],
                pa.string(),
            )
    check_output(cfg.output, cfg.overwrite, cfg.resume)
    pre.record = job_record(cfg, loaded.sha256)
    if cfg.resume and check_resume(cfg.output, pre.record):
        pre.resuming = True
        done = committed_paths(cfg.output, cfg.format)
        if stream is None:
            pre.todo = still_to_do(pre.files, done)
        else:  # the lister leaves them out as it lists
            pre.done = done
    pre.seconds = time.perf_counter() - t0
    return pre


def still_to_do(files, done):
    """A mask of the ``files`` not among ``done`` (pyarrow arrays of paths)."""
    import pyarrow.compute as pc

    return pc.invert(pc.is_in(files, value_set=done))


# --------------------------------------------------------------------------- pipeline


# Decode and write tasks ask Ray for no CPU. A job whose inference actors held every CPU it could
# get while its decode tasks waited for one was the deadlock of several jobs on one cluster (each
# waiting for CPUs the others' actors held): now a job whose actors run can always decode and
# write, whatever else runs. How many run at once is bounded by the plan instead, from the CPUs
# the actors leave. Measured on 2 cores (small PNGs): decoding costs about half as much CPU per
# image as CIFAR10-quick's forward pass in bf16, so actors get about two thirds of the CPUs.
DECODE_SHARE = 1 / 3
BLOCK_BYTES = 8 * 2**20  # ~2,700 decoded 32x32 images
WRITERS_PER_ACTOR = 1  # a writer spends its time in Arrow and file I/O, ~10 ms per block


@dataclass
class Plan:
    actors: tuple[int, int, int]  # min, initial, max: the pool grows when CPUs/GPUs free up
    gpus_per_actor: float
    device: str
    actor_cpus: float = 1.0
    decode_tasks: int = 1  # at most this many at once
    write_tasks: int = 1
    compute: Compute | None = None  # precision and layout of every actor: choose_compute()
    model_file: str | None = None  # the state_dict the driver resolved and fingerprinted

    def describe(self) -> str:
        lo, first, hi = self.actors
        gpu = f" + {self.gpus_per_actor:g} GPU" if self.gpus_per_actor else ""
        return (
            f"{first} inference actor(s) of {self.actor_cpus:g} CPU{gpu} to start with "
            f"(at least {lo}, growing to {hi} as resources free up) on {self.device}, "
            f"up to {self.decode_tasks} decode and {self.write_tasks} write tasks"
        )


def choose_compute(cfg: PredictConfig, plan: Plan, model: LoadedModel) -> Compute:
    """What every actor classifies in. ``auto`` on CPU actors: measured here, with the actors'
    threads and batch size, on the driver's node (CPU clusters are taken to be uniform), so
    all actors compute alike and summary.json can say what they did."""
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, int(plan.actor_cpus)))
    try:
        return inference_compute(model, plan.device, cfg.precision, cfg.batch_size)
    finally:
        torch.set_num_threads(threads)


def plan_resources(cfg: PredictConfig, cluster: ClusterInfo) -> Plan:
    """Actor pool and task bounds for this cluster, sized from what it has free now and able to
    grow to what it has in all; fails before any work when the job could never run."""
    gpus = cfg.gpus_per_actor if cfg.gpus_per_actor is not None else (1.0 if cluster.gpus else 0)
    if gpus > 0 and cluster.gpus < gpus:
        raise ConfigError(
            f"--gpus-per-actor {gpus:g} but the Ray cluster has {cluster.gpus:g} GPUs. Use "
            "--gpus-per-actor 0 to classify on CPU, or connect to a cluster with GPUs."
        )
    cpus = cfg.cpus_per_actor or 1.0
    if cluster.largest_node_cpus is not None and cpus > cluster.largest_node_cpus:
        raise ConfigError(
            f"--cpus-per-actor {cpus:g}, but the largest node of the Ray cluster has "
            f"{cluster.largest_node_cpus:g} CPUs: no actor could ever start. Lower "
            "--cpus-per-actor."
        )
    actors = parse_actors(cfg.num_actors)
    if gpus > 0:
        most = max(1, int(cluster.gpus // gpus))
        now = max(1, int(cluster.idle_gpus // gpus))
    else:
        most = max(1, int(cluster.cpus * (1 - DECODE_SHARE) // cpus))
        now = max(1, int(cluster.idle_cpus * (1 - DECODE_SHARE) // cpus))
    lo, hi = actors if actors is not None else (1, most)
    first = min(max(lo, now), hi)
    spare = cluster.cpus - (0 if gpus > 0 else hi * cpus)
    return Plan(
        actors=(lo, first, hi),
        gpus_per_actor=gpus,
        device="cuda" if gpus > 0 else "cpu",
        actor_cpus=cpus,
        decode_tasks=max(1, int(spare)),
        write_tasks=max(1, hi * WRITERS_PER_ACTOR),
    )


def build_dataset(cfg: PredictConfig, files, plan: Plan, labels=None):
    """paths -> decode tasks (no torch, no CPU asked) -> inference actor pool -> result rows.

    Decoding stays a separate task stage: Ray Data fuses a map into the next actor map when both
    ask for the same resources, and then only the actors' processes decode, one core each, and
    only after they have imported torch. Apart, decode tasks start at once, and run on the
    cores the actors leave free."""
    import pyarrow as pa
    import ray.data

    def block(i: int) -> pa.Table:  # zero-copy slices of the listing
        cols = {"path": files.slice(i, cfg.files_per_block)}
        if labels is not None:
            cols["label"] = labels.slice(i, cfg.files_per_block)
        return pa.table(cols)

    tables = [block(i) for i in range(0, len(files), cfg.files_per_block)]
    # from_blocks, not from_arrow: from_arrow reads each block's schema in a 1-CPU task, so on a
    # cluster whose CPUs other jobs hold the job waited for a CPU before it even started
    return classify(cfg, ray.data.from_blocks(tables), plan)


def listed(lister, plan: Plan):
    """The paths a :class:`~cifar.listing.Lister` actor hands out, as a dataset."""
    from cifar.listing import listed_dataset

    return listed_dataset(lister, plan.decode_tasks)


def classify(cfg: PredictConfig, ds, plan: Plan):
    """Paths (+ labels) -> decoded pixels -> result rows."""
    import ray.data

    ds = ds.map_batches(
        decode_batch,
        batch_size=cfg.batch_size,
        batch_format="numpy",
        num_cpus=0,
        compute=ray.data.TaskPoolStrategy(size=plan.decode_tasks),
    )
    lo, first, hi = plan.actors
    return ds.map_batches(
        BatchPredictor,
        fn_constructor_kwargs={
            "model_path": plan.model_file or cfg.model,  # the file the driver resolved
            "device": plan.device,
            "top_k": cfg.top_k,
            "threads": max(1, int(plan.actor_cpus)),
            "label_dirs": cfg.labels_from_dirs,
            "precision": plan.compute.precision,
            "channels_last": plan.compute.channels_last,
            "batch_size": cfg.batch_size,
        },
        batch_size=cfg.batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(min_size=lo, max_size=hi, initial_size=first),
        num_cpus=plan.actor_cpus,
        num_gpus=plan.gpus_per_actor,
        # Ray Data's actor pools already restart dead actors and retry their tasks
        # (max_restarts=-1, max_task_retries=-1), so a killed actor loses no rows.
    )


def write(ds, cfg: PredictConfig, plan: Plan, schema) -> None:
    # Writers ask no CPU (see DECODE_SHARE) and are at most one per actor, so they run while
    # the actors work instead of queueing up behind them, and Ray starts few processes for them.
    sink = make_sink(cfg.output, cfg.format, schema, cfg.rows_per_file)
    ds.write_datasink(sink, ray_remote_args={"num_cpus": 0}, concurrency=plan.write_tasks)


def run(
    cfg: PredictConfig,
    cluster: ClusterInfo,
    pre: Preflight | None = None,
    ray_start_seconds: float | None = None,
) -> dict[str, Any]:
    """Classify every file, write results + _summary.json. Ray must be up.

    ``seconds``/``images_per_s`` time the Ray Data pipeline (actor start-up included); listing
    the inputs and loading the model (``preflight_seconds``) and starting or joining Ray
    (``ray_start_seconds``, when the caller passes it) are reported apart."""
    pre = pre or preflight(cfg)
    files, labels = pre.files, pre.labels
    if pre.todo is not None:
        files = files.filter(pre.todo)
        labels = None if labels is None else labels.filter(pre.todo)
    plan = plan_resources(cfg, cluster)
    if files is not None:
        blocks = max(1, -(-len(files) // cfg.files_per_block))  # more tasks than blocks: idle
        plan.decode_tasks = min(plan.decode_tasks, blocks)
        plan.write_tasks = min(plan.write_tasks, blocks)
    plan.compute = choose_compute(cfg, plan, pre.model)
    plan.model_file = pre.model.file
    start(cfg.output, pre.record or job_record(cfg, pre.model.sha256), pre.resuming)
    import ray
    import ray.data

    lister = None
    if pre.stream is not None:
        from cifar.listing import Lister

        classes = pre.model.classes if cfg.labels_from_dirs else None
        lister = ray.remote(num_cpus=0)(Lister).remote(
            pre.stream, cfg.extensions, classes, pre.done, cfg.files_per_block
        )
        kept = ", keeping what the killed run committed" if pre.resuming else ""
        progress.info(
            "[cifar] classifying the files under %s as they are listed%s: %s",
            pre.stream,
            kept,
            plan.describe(),
        )
    else:
        kept = f", {pre.already_done} kept from the killed run" if pre.resuming else ""
        progress.info(
            "[cifar] classifying %d files (%d skipped by --extensions%s): %s",
            len(files),
            pre.skipped,
            kept,
            plan.describe(),
        )

    # Ray Data's own guard ends a pipeline in which no block moved for this long
    timeout = cfg.stall_timeout if cfg.stall_timeout > 0 else -1
    ctx = ray.data.DataContext.get_current()
    ctx.execution_no_progress_timeout_s = timeout
    # A task's output is cut into blocks of at most this size. Ray Data's 128 MiB would keep
    # ~40,000 decoded images (or a whole listing of paths) in a task before the next stage
    # sees the first: small blocks let rows flow, and commit, as soon as they are classified.
    ctx.target_max_block_size = BLOCK_BYTES
    t0 = time.perf_counter()
    gpu = f" + {plan.gpus_per_actor:g} GPU" if plan.gpus_per_actor else ""
    need = f"an inference actor of {plan.actor_cpus:g} CPU{gpu}"
    dog = Watchdog(
        "the prediction job",
        need,
        _pipeline_progress(cfg.output),
        lambda: actors_waiting("BatchPredictor"),
        cfg.stall_timeout,
    )
    schema = result_schema(cfg.top_k, len(pre.model.classes), cfg.labels_from_dirs)
    try:
        with dog:  # a stall leaves it as a StallError
            if lister is not None:
                write(classify(cfg, listed(lister, plan), plan), cfg, plan, schema)
            elif len(files):
                write(build_dataset(cfg, files, plan, labels), cfg, plan, schema)
    except Exception as e:
        if type(e).__name__ != "ExecutionTimeoutError":  # Ray Data's own no-progress guard
            raise
        raise StallError(
            f"the prediction job made no progress for {cfg.stall_timeout:g}s (waiting for "
            f"{need}): {describe_cluster()}. Free those resources, lower --num-actors or "
            "--cpus-per-actor, or raise --stall-timeout."
        ) from None
    seconds = time.perf_counter() - t0
    if lister is not None:
        counts = ray.get(lister.counts.remote())
        n_files, skipped, already_done = counts["files"], counts["skipped"], counts["already_done"]
    else:
        n_files, skipped, already_done = len(pre.files), pre.skipped, pre.already_done
    columns = ["path", "class_name", "confidence", "error"]
    columns += ["label"] * cfg.labels_from_dirs
    table = read_results(cfg.output, cfg.format, columns, schema)
    summary = summarize(
        table,
        cfg.to_dict(),
        n_files,
        skipped,
        seconds,
        pre.model.meta,
        already_done=already_done,
        classified=n_files - already_done,
        preflight_seconds=pre.seconds,
        ray_start_seconds=ray_start_seconds,
        waited_seconds=round(dog.waited, 1),
        compute=plan.compute.describe(),
    )
    preview = preview_png(table, cfg.preview) if cfg.preview else None
    finish(cfg.output)
    write_side_files(cfg.output, summary, preview, written=[JOB_FILE])
    check_exactly_once(table, pre.files, n_files)
    return summary


def check_exactly_once(table, files, n_files: int) -> None:
    """Every input file has exactly one row (rows of files that vanished since a killed run
    may remain: they are results too). ``files`` None (listed while classifying): their
    number ``n_files`` is checked."""
    import pyarrow.compute as pc

    paths = table.column("path")
    unique = pc.unique(paths)
    if files is None:
        missing = max(0, n_files - len(unique))
    else:
        missing = len(files) - (pc.sum(pc.is_in(files, value_set=unique)).as_py() or 0)
    if missing or len(unique) != len(paths):
        raise RuntimeError(
            f"{missing} of {n_files} files have no result row and {len(paths) - len(unique)} "
            f"rows repeat a path in {table.num_rows} rows: results are incomplete"
        )


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


def plan_lines(cfg: PredictConfig, pre: Preflight) -> list[str]:
    """``--dry-run``: what this job would do, every check made, nothing started or written."""
    meta = pre.model.meta
    labels = ""
    if pre.labels is not None:
        labelled = len(pre.labels) - pre.labels.null_count
        labels = f"; {labelled} of them in folders named after a class (--labels-from-dirs)"
    return [
        "[cifar] dry run: the model, inputs and output check out; nothing was started",
        f"  model:   {pre.model.path}: {meta.get('arch')}, {len(pre.model.classes)} classes "
        f"({', '.join(pre.model.classes[:10])}{', ...' if len(pre.model.classes) > 10 else ''})",
        f"  inputs:  {len(pre.files)} files ({pre.skipped} skipped by --extensions){labels}"
        if pre.stream is None
        else f"  inputs:  the files under {pre.stream}, listed folder by folder while they are "
        "classified",
        f"  output:  {cfg.output} ({cfg.format}, top {cfg.top_k}"
        f"{', replacing what is there' if cfg.overwrite else ''})",
        f"  actors:  {cfg.num_actors} (sized from the cluster when it runs), batch "
        f"{cfg.batch_size}, precision {cfg.precision}",
    ]


def default_ray_init(verbose: bool = False) -> float:
    """Start or join Ray; returns the seconds it took (reported apart from the pipeline)."""
    import ray

    t0 = time.perf_counter()
    ray.init(configure_logging=False)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = os.environ.get("CIFAR_RAY_PROGRESS", "1") != "0"
    return time.perf_counter() - t0
