"""What a sweep leaves besides its runs: ``trials.csv`` (one row per trial), ``sweep.png`` (test
accuracy against every searched setting, and per epoch), and ``best/`` (the best trial's run,
copied whole: ``cifar-predict --model <sweep>/best`` takes it as any run). Read from Tune's
records of the trials (status, settings, times) and from each trial's run (its epochs)."""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field
from typing import Any

from cifar.io import storage
from cifar.train.outputs import METRICS_FILE
from cifar.tune.space import Space, value_text

TRIALS_FILE, PICTURE_FILE, BEST_DIR = "trials.csv", "sweep.png", "best"
DONE, STOPPED, ERROR, UNFINISHED = "done", "stopped early", "error", "unfinished"


@dataclass
class TrialRow:
    """One trial as trials.csv has it."""

    number: int  # its place in the sweep: 0 is the first trial
    trial_id: str
    status: str
    settings: dict[str, Any]  # the searched settings it drew
    batch_size: int | None  # as trained: drawn, typed, or picked for its batch
    lr: float | None
    epochs: int = 0  # epochs it ran
    best_test_accuracy: float | None = None
    best_epoch: int | None = None
    final_test_accuracy: float | None = None
    seconds: float = 0.0  # Tune's time, start to last report, over every session of the trial
    default_recipe: bool = False
    run: str = ""  # runs/<trial id>, below the sweep
    error: str = ""
    history: list[tuple[int, float]] = field(default_factory=list)  # (epoch, test accuracy)
    spans: list[tuple[float, float]] = field(default_factory=list)  # (start, end) of each epoch

    def csv_row(self, names: list[str]) -> dict[str, Any]:
        acc = self.best_test_accuracy
        trained = {"batch_size": self.batch_size, "lr": self.lr}  # drawn, typed or picked
        return {
            "trial": self.number,
            "trial_id": self.trial_id,
            "status": self.status,
            **{n: self.settings.get(n) for n in names},
            **{k: v for k, v in trained.items() if k not in names},
            "epochs": self.epochs,
            "best_test_accuracy": None if acc is None else round(acc, 6),
            "best_epoch": self.best_epoch,
            "final_test_accuracy": self.final_test_accuracy,
            "stopped_early": self.status == STOPPED,
            "seconds": round(self.seconds, 2),
            "default_recipe": self.default_recipe,
            "run": self.run,
            "error": self.error,
        }


def created(trial) -> int:
    """When Tune made the trial, as a count: its tag starts with it (from 0 or 1, by searcher)."""
    return int(trial.experiment_tag.split("_", 1)[0])


def in_order(trials: list) -> list:
    """Tune's trials in the order it made them (its saved record keeps another order)."""
    return sorted(trials, key=created)


def run_history(run: str) -> list[tuple[int, float]]:
    """(epoch, test accuracy) of every epoch the run finished, from its metrics.csv (written
    by the run after each epoch, so it holds what a killed sweep's Tune records may lack)."""
    path = f"{run}/{METRICS_FILE}"
    if not storage.exists(path):
        return []
    rows = csv.DictReader(io.StringIO(storage.read_text(path)))
    return [(int(r["epoch"]), float(r["test_accuracy"])) for r in rows]


def trial_row(
    number: int, trial, frame, history: list[tuple[int, float]], epochs: int, names: list[str]
) -> TrialRow:
    """Row ``number`` from Tune's record of ``trial`` (a ``ray.tune.experiment.Trial``: status,
    settings), its reported results ``frame`` (a DataFrame: times) and its run's ``history``."""
    results = [] if frame is None or "time_this_iter_s" not in frame else frame.to_dict("records")
    ran = max((e for e, _ in history), default=0)
    status = {"TERMINATED": DONE if ran >= epochs else STOPPED, "ERROR": ERROR}
    row = TrialRow(
        number=number,
        trial_id=trial.trial_id,
        status=status.get(trial.status, UNFINISHED),
        settings={n: trial.config.get(n) for n in names},
        batch_size=None,
        lr=None,
        epochs=ran,
        seconds=sum(float(r["time_this_iter_s"]) for r in results),
        history=history,
        spans=[_span(r) for r in results],
    )
    if history:
        best_epoch, best = max(history, key=lambda h: (h[1], -h[0]))
        row.best_test_accuracy, row.best_epoch = best, best_epoch
        row.final_test_accuracy = history[-1][1]
    if trial.status == "ERROR":
        text = (trial.get_error() or "").strip().splitlines()
        row.error = text[-1] if text else "failed"
    return row


def _span(result: dict[str, Any]) -> tuple[float, float]:
    """(start, end) of a reported epoch, the first one's start being the trial's."""
    end = result.get("reported_at")
    if end is None or end != end:  # reported before the sweep recorded it (NaN in a frame)
        end = result["timestamp"]
    return end - result["time_this_iter_s"], end


def best_of(rows: list[TrialRow]) -> TrialRow | None:
    """The trial with the best test accuracy (the earlier one on a tie)."""
    scored = [r for r in rows if r.best_test_accuracy is not None]
    return max(scored, key=lambda r: (r.best_test_accuracy, -r.number), default=None)


def peak_concurrency(rows: list[TrialRow]) -> int:
    """The most trials that were running at one time: each trial from the start of its first
    reported epoch to the end of its last."""
    spans = [(min(s for s, _ in r.spans), max(e for _, e in r.spans)) for r in rows if r.spans]
    events = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])
    running = peak = 0
    for _, step in events:  # at the same time, an end (-1) before a start
        running += step
        peak = max(peak, running)
    return peak


def trials_csv(rows: list[TrialRow], names: list[str]) -> bytes:
    buf = io.StringIO()
    out = [r.csv_row(names) for r in sorted(rows, key=lambda r: r.number)]
    writer = csv.DictWriter(buf, fieldnames=list(out[0]) if out else ["trial"])
    writer.writeheader()
    writer.writerows(out)
    return buf.getvalue().encode()


def copy_run(src: str, dest: str) -> None:
    """Every file of the run ``src`` into the (emptied) folder ``dest``: local or URIs."""
    storage.clear_dir(dest)
    for e in storage.list_files(src, hidden=True):
        storage.write_bytes(storage.join(dest, e.rel), storage.read_bytes(storage.join(src, e.rel)))


# --------------------------------------------------------------------------- the picture


def sweep_png(rows: list[TrialRow], space: Space, title: str) -> bytes:
    """Test accuracy per epoch of every trial, then the best test accuracy of each trial
    against each searched setting (over the setting's whole range)."""
    from matplotlib.ticker import MaxNLocator

    from cifar.plots import _figure, _png

    scored = [r for r in rows if r.best_test_accuracy is not None]
    panels = 1 + len(space)
    cols = min(panels, 3)
    lines = math.ceil(panels / cols)
    fig = _figure(4.2 * cols, 3.4 * lines + 0.8)
    key = "filled: ran every epoch; hollow: stopped early (ASHA); ringed: the default recipe"
    fig.suptitle(f"{title}\n{key}", fontsize=10)
    best = best_of(rows)
    curves = fig.add_subplot(lines, cols, 1)
    for r in scored:
        epochs, accs = zip(*r.history, strict=True)
        style = {"color": "tab:blue", "alpha": 0.5, "marker": "o", "ms": 3}
        if r.status == STOPPED:
            style = {"color": "grey", "alpha": 0.7, "ls": "--", "marker": "o", "mfc": "none"}
        if r is best:
            style = {"color": "tab:red", "lw": 2, "marker": "*", "ms": 9, "label": "best"}
        curves.plot(epochs, accs, **style)
    curves.xaxis.set_major_locator(MaxNLocator(integer=True))
    curves.set(xlabel="epoch", ylabel="test accuracy", title="every trial, epoch by epoch")
    if best is not None:
        curves.legend(fontsize=7, loc="lower right")
    for i, p in enumerate(space, start=2):
        ax = fig.add_subplot(lines, cols, i, sharey=curves)
        _setting_panel(ax, p, scored, best)
    fig.tight_layout()
    return _png(fig)


def _setting_panel(ax, p, scored: list[TrialRow], best: TrialRow | None) -> None:
    options = list(p.values) if p.kind == "choice" else None
    for r in scored:
        v = r.settings.get(p.name)
        x = options.index(v) if options is not None and v in options else v
        y = r.best_test_accuracy
        filled = "tab:blue" if r.status != STOPPED else "none"
        ax.scatter([x], [y], s=36, edgecolors="tab:blue", facecolors=filled, zorder=2)
        if r.default_recipe:
            ax.scatter([x], [y], s=170, facecolors="none", edgecolors="black", zorder=1)
        if r is best:
            ax.scatter([x], [y], s=220, marker="*", color="tab:red", zorder=3)
    if options is not None:
        ax.set_xticks(range(len(options)), [value_text(o) for o in options])
        ax.set_xlim(-0.5, len(options) - 0.5)
    elif p.kind == "loguniform":  # the whole range, a little more: points at its ends show
        ax.set_xscale("log")
        ax.set_xlim(p.values[0] / 1.2, p.values[1] * 1.2)
    else:
        pad = (p.values[1] - p.values[0]) * 0.04
        ax.set_xlim(p.values[0] - pad, p.values[1] + pad)
    ax.set(xlabel=f"{p.name} ({p.text()})", ylabel="best test accuracy")
