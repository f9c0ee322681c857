"""What rank 0 writes while a run trains: progress lines, TensorBoard, MLflow's metrics (with
``--mlflow-uri``), and the run's files (``metrics.csv`` every epoch; at the end
``confusion_matrix.png``, ``misclassified.png`` and ``per_class.csv`` of the best epoch). Every
other rank writes nothing."""

from __future__ import annotations

import csv
import io
import json
import logging
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from cifar.io import storage
from cifar.plots import per_class_csv

if TYPE_CHECKING:
    from cifar.device import Compute
    from cifar.train.state import TrainState
    from cifar.train.tracking import RunRef

progress = logging.getLogger("cifar.progress")

METRICS_FILE = "metrics.csv"
HEARTBEAT_FILE = "heartbeat.json"  # the driver's watchdog reads it: is the run moving?
HEARTBEAT_EVERY = 10.0  # seconds between heartbeats at most
LINE_EVERY_S = 10.0  # a step line within an epoch at most this often
METRICS_COLUMNS = (
    "epoch",
    "train_loss",
    "test_loss",
    "test_accuracy",
    "lr",
    "images_per_s",
    "train_seconds",
    "workers",  # world size: an elastic run's changes as nodes come and go
    "test_images",  # images evaluated: the whole test set, each once, whatever the world size
)


class RankZero:
    """The one place that decides who writes: rank 0 prints, logs to TensorBoard, writes files."""

    def __init__(
        self,
        rank: int,
        run_dir: str | None,
        classes: Sequence[str] = (),
        purge_step: int | None = None,
        note: str = "",
        tracking: RunRef | None = None,
        compute: dict[str, Any] | None = None,
    ) -> None:
        self.is_writer = rank == 0
        self.run_dir = run_dir
        self.classes = list(classes)
        self.note = note  # the start of every picture's title: "GENERATED data: " for such
        self.writer = None
        self._tb_local = self._tb_remote = None
        self._last_beat = 0.0
        self._last_line = time.monotonic()
        if self.is_writer and run_dir:
            from torch.utils.tensorboard import SummaryWriter

            tb_dir = f"{run_dir}/tensorboard"
            if storage.is_uri(tb_dir):  # cloud storage: write locally, upload after each epoch
                self._tb_remote = tb_dir
                self._tb_local = tempfile.mkdtemp(prefix="cifar-tb-")
            self.writer = SummaryWriter(self._tb_local or tb_dir, purge_step=purge_step)
        self.tracker = None  # MLflow's run: the metrics (and compute tags) of rank 0
        if self.is_writer and run_dir and tracking is not None:
            from cifar.train.tracking import Tracker

            self.tracker = Tracker(tracking, run_dir, compute)

    def print(self, msg: str) -> None:
        """A user-facing progress line (Ray Train forwards worker logging to the driver)."""
        if self.is_writer:
            progress.info(msg)
            self._last_line = time.monotonic()

    def print_now_and_then(self, msg: str) -> None:
        """A line within an epoch: printed when the last line is ``LINE_EVERY_S`` old, so a
        long epoch shows progress and a short one only its epoch line."""
        if time.monotonic() - self._last_line >= LINE_EVERY_S:
            self.print(msg)

    def scalars(self, values: dict[str, float], step: int) -> None:
        for tag, value in values.items():
            self.call(lambda w, tag=tag, value=value: w.add_scalar(tag, value, step))

    def step_scalars(self, values: dict[str, float], step: int) -> None:
        """Per-step scalars (train/loss, train/lr): TensorBoard's, and MLflow's where tracked
        (per-epoch ones go to MLflow as metrics.csv's row, :meth:`metrics`)."""
        self.scalars(values, step)
        if self.tracker is not None:
            self.tracker.step(values, step)

    def call(self, fn: Callable[[Any], None]) -> None:
        if self.writer is not None:
            fn(self.writer)

    def file(self, name: str, data: bytes) -> None:
        """``data`` as ``<run>/<name>`` (local path or URI)."""
        if self.is_writer and self.run_dir:
            storage.write_bytes(f"{self.run_dir}/{name}", data)

    def heartbeat(self, epoch: int, step: int, force: bool = False) -> None:
        """Tell the driver the run is moving: at the start, during epochs (every
        ``HEARTBEAT_EVERY`` seconds at most) and after each epoch."""
        now = time.time()
        if not self.is_writer or (not force and now - self._last_beat < HEARTBEAT_EVERY):
            return
        self._last_beat = now
        beat = {"epoch": epoch, "step": step, "time": round(now, 1)}
        self.file(HEARTBEAT_FILE, json.dumps(beat).encode())

    def metrics(self, history: list[dict[str, float]]) -> None:
        """``metrics.csv``: one row per finished epoch, rewritten whole (object stores cannot
        append), so a crashed run still has every epoch it finished."""
        self.file(METRICS_FILE, metrics_csv(history))
        if self.tracker is not None and history:
            self.tracker.epoch(history[-1])

    def best_epoch(
        self, epoch: int, confusion: list[list[int]], wrong: dict[str, Any] | None
    ) -> None:
        """Pictures and per-class table of the best epoch, as files and in TensorBoard.

        Drawn once, when the run ends (about a second with matplotlib: drawn during training,
        in a thread or not, it slowed the next epoch by half on a 2-core machine)."""
        if not self.is_writer:
            return
        from cifar.plots import confusion_png, image_grid_png, png_to_chw

        title = f"{self.note}test set at the best epoch ({epoch})"
        pictures = {"confusion_matrix.png": confusion_png(confusion, self.classes, title)}
        if wrong is not None:
            captions = [
                f"true: {self.classes[t]}\npred: {self.classes[p]} {c:.2f}"
                for t, p, c in zip(
                    wrong["true"].tolist(),
                    wrong["pred"].tolist(),
                    wrong["prob"].tolist(),
                    strict=True,
                )
            ]
            pictures["misclassified.png"] = image_grid_png(
                wrong["images"].numpy(),
                captions,
                f"{self.note}misclassified test images at epoch {epoch}: {len(captions)} from "
                "the share of the test set evaluated by worker 0",
            )
        for name, png in pictures.items():
            self.file(name, png)
            tag = f"best/{name.removesuffix('.png')}"
            self.call(lambda w, tag=tag, png=png: w.add_image(tag, png_to_chw(png), epoch))
        self.file("per_class.csv", per_class_csv(confusion, self.classes))

    def hparams(self, config: dict[str, Any], results: dict[str, float]) -> None:
        """The run's settings against its results, for TensorBoard's HParams tab."""
        flat = {
            k: v if isinstance(v, bool | int | float | str) else str(v)
            for k, v in config.items()
            if v is not None
        }
        self.call(
            lambda w: w.add_hparams(
                flat, {f"hparam/{k}": v for k, v in results.items()}, run_name="hparams"
            )
        )

    def flush(self) -> None:
        if self.writer is None:
            return
        self.writer.flush()
        if self._tb_remote:
            import pyarrow.fs

            pyarrow.fs.copy_files(self._tb_local, self._tb_remote)

    def close(self) -> None:
        if self.tracker is not None:
            self.tracker.flush()
        if self.writer is not None:
            self.flush()
            self.writer.close()


def metrics_csv(history: list[dict[str, float]]) -> bytes:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=METRICS_COLUMNS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    w.writerows(history)
    return buf.getvalue().encode()


def dataset_markdown(d: dict[str, Any]) -> str:
    """The class counts as a Markdown table (TensorBoard's Text tab)."""
    counts = d["class_counts"]
    skipped = f", {d['skipped']} unreadable files skipped" if d.get("skipped") else ""
    lines = [
        f"{d['kind']} dataset at `{d['root']}`: {d['train_images']} training and "
        f"{d['test_images']} evaluation images{skipped}",
        "",
        "| index | class | train | test |",
        "| ---: | --- | ---: | ---: |",
    ]
    for i, c in enumerate(d["classes"]):
        lines.append(f"| {i} | {c} | {counts['train'][c]} | {counts['test'][c]} |")
    return "\n".join(lines)


def compute_line(c: Compute, world: int) -> str:
    """How the run computes, and the figures behind a measured choice."""
    line = f"[cifar] training in {c.name} on {c.device.type} ({c.chosen_by}"
    if c.ms_per_step:
        times = ", ".join(f"{k} {v:.1f} ms" for k, v in c.ms_per_step.items())
        who = f"slowest of {world} workers" if world > 1 else "this worker"
        line += f" per training step, {who}: {times}"
    return line + ")"


def restored_line(state: TrainState, epochs: int, world: int) -> str:
    """A restart says where it continues, and with how many workers when that changed (an
    elastic run resized, or a node lost)."""
    line = (
        f"[cifar] restored from checkpoint of epoch {state.start_epoch} "
        f"(restart #{state.restarts}); continuing at epoch {state.start_epoch + 1}/{epochs}"
    )
    before = state.history[-1].get("workers") if state.history else None
    if before is not None and before != world:
        line += f" with {world} worker{'s' if world > 1 else ''} (was {before})"
    return line


def epoch_line(m: dict[str, Any], epochs: int, seconds_per_epoch: float) -> str:
    eta = seconds_per_epoch * (epochs - m["epoch"])
    return (
        f"[cifar] epoch {m['epoch']}/{epochs}  train_loss {m['train_loss']:.4f}  "
        f"test_loss {m['test_loss']:.4f}  test_acc {m['test_accuracy']:.4f}  "
        f"{m['images_per_s']:.0f} img/s  ETA {fmt_seconds(eta)}"
    )


def fmt_seconds(s: float) -> str:
    s = round(s)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def skipped_line(n: int, skipped: list[dict[str, str]]) -> str:
    """Streamed files left out because no decoder could read them: how many, and the first."""
    shown = "; ".join(f"{s['path']} ({s['error']})" for s in skipped[:3])
    more = " ..." if n > 3 else ""
    return (
        f"[cifar] skipped {n} unreadable file(s) (each epoch; listed in summary.json): "
        f"{shown}{more}"
    )
