"""MLflow tracking (``--mlflow-uri URI``, else ``$MLFLOW_TRACKING_URI``): the driver opens the run
(params: the resolved config; tags: data root, arch, git commit) and at its end logs the run's
files and model as artifacts; rank 0 logs the metrics (per step: train/loss and train/lr, as in
TensorBoard; per epoch: the row of ``metrics.csv``, at step = the epoch) and the compute tags.
A sweep is a parent run (:func:`start_sweep`) with one child run per trial (:func:`start_trial`).
The run dir stays the truth: a server down or gone away costs one warning line and the run goes
on (``mlflow.json`` records it: no process of the run calls it again). Without a URI nothing
here imports mlflow."""

from __future__ import annotations

import contextlib
import getpass
import importlib.util
import json
import logging
import os
import re
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cifar.config import refuse_credentials
from cifar.io import storage

log = logging.getLogger(__name__)
progress = logging.getLogger("cifar.progress")

RUN_FILE = "mlflow.json"  # in the run dir: its MLflow run, which --resume continues
EXPERIMENT = "cifar-ray"  # where runs go, unless $MLFLOW_EXPERIMENT_NAME says
# MLflow's client retries 7 times with backoff (minutes), waiting 120 s for each answer: a server
# gone away would stall training that long. Ours: one retry, a short wait (a user's own wins).
# (and no "View run" lines printed by set_terminated)
HTTP_ENV = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
}
UPLOAD_TIMEOUT_S = 120  # artifacts: the server stores a model file before it answers
FLUSH_EVERY_S = 15.0  # rank 0 sends per-step metrics with each epoch's, or after this long
PARAM_CHARS = 500  # the longest param value every MLflow server version takes
RUN_FILES = (
    "config.json",
    "summary.json",
    "metrics.csv",
    "per_class.csv",
    "confusion_matrix.png",
    "misclassified.png",
)
MODEL_FILES = ("model.pt", "meta.json")
ONNX_MODULES = ("onnx", "onnxruntime", "onnxscript")  # the `onnx` extra


def tracking_uri(typed: str | None) -> str | None:
    """The tracking server: ``--mlflow-uri``, else ``$MLFLOW_TRACKING_URI``, else None (off)."""
    uri = typed or os.environ.get("MLFLOW_TRACKING_URI") or None
    if uri:
        refuse_credentials("mlflow_uri", uri)  # it goes into mlflow.json and the log
    return uri


@dataclass(frozen=True)
class RunRef:
    """An MLflow run: what rank 0 (``WorkerArgs.tracking``) and a sweep's trials get."""

    uri: str
    experiment_id: str
    run_id: str

    @property
    def url(self) -> str:
        """The run's page in a server's UI, else where it is."""
        if self.uri.startswith(("http://", "https://")):
            return f"{self.uri.rstrip('/')}/#/experiments/{self.experiment_id}/runs/{self.run_id}"
        return f"{self.uri} (run {self.run_id})"


class Session:
    """One process's calls for one run: the first failure warns once and ends them all."""

    def __init__(self, uri: str, run_dir: str, fresh: bool = False) -> None:
        self.uri, self.run_dir = uri, run_dir
        self.failed = None if fresh else lost(run_dir)  # another process found it gone
        self._client = None

    def call(self, what: str, fn: Callable[[Any], Any], timeout: float | None = None) -> Any:
        """``fn(client)``; None once a call failed."""
        if self.failed:
            return None
        try:
            with _http_env(timeout):
                if self._client is None:
                    from mlflow import MlflowClient

                    self._client = MlflowClient(tracking_uri=self.uri)
                return fn(self._client)
        except Exception as e:  # the server's failures or the client's: the run goes on
            said = reason(e)
            self.failed = f"{what}: {said}"
            log.warning(
                "MLflow at %s failed to %s (%s); the run goes on without it (its run "
                "dir has everything)",
                self.uri,
                what,
                said,
            )
            with contextlib.suppress(Exception):  # the run dir may be out of reach too
                record = {**(read_record(self.run_dir) or {}), "lost": self.failed}
                storage.write_text(f"{self.run_dir}/{RUN_FILE}", json.dumps(record, indent=2))
            return None


def _batch(c, run_id: str, metrics: Sequence[tuple] = (), params=None, tags=None) -> None:
    """One ``log_batch``: ``metrics`` as (key, value, step, time in ms) tuples."""
    from mlflow.entities import Metric, Param, RunTag

    c.log_batch(
        run_id,
        [Metric(k, float(v), ms, step) for k, v, step, ms in metrics],
        [Param(k, v) for k, v in (params or {}).items()],
        [RunTag(k, v) for k, v in (tags or {}).items()],
        synchronous=True,
    )


@contextlib.contextmanager
def _http_env(timeout: float | None) -> Iterator[None]:
    """Our HTTP settings for a call (MLflow reads them at each request); no urllib3 retry line."""
    wanted = {**HTTP_ENV, **({"MLFLOW_HTTP_REQUEST_TIMEOUT": f"{timeout:g}"} if timeout else {})}
    added = {k: v for k, v in wanted.items() if k not in os.environ}
    retries = logging.getLogger("urllib3.connectionpool")
    level = retries.level
    os.environ.update(added)
    retries.setLevel(logging.ERROR)
    try:
        yield
    finally:
        retries.setLevel(level)
        for k in added:
            os.environ.pop(k, None)


def reason(e: BaseException) -> str:
    """The innermost cause ("ConnectionRefusedError: ..."), not the client's wrappers of it."""
    for _ in range(10):  # each wrapper raised while handling the one below
        e = e.__cause__ or e.__context__ or e
    said = (str(e).strip().splitlines() or [""])[0][:200]
    return f"{type(e).__name__}: {said}" if said else type(e).__name__


def read_record(run_dir: str) -> dict[str, Any] | None:
    """``<run>/mlflow.json``: the run's MLflow run, if it has one."""
    path = f"{run_dir}/{RUN_FILE}"
    return json.loads(storage.read_text(path)) if storage.exists(path) else None


def lost(run_dir: str) -> str | None:
    """What failed, where a process of this run found the server gone."""
    with contextlib.suppress(Exception):
        return (read_record(run_dir) or {}).get("lost")


def _stamped(values: dict[str, Any], step: int) -> list[tuple]:
    ms = int(time.time() * 1000)
    return [(k, v, step, ms) for k, v in values.items() if isinstance(v, int | float)]


# --------------------------------------------------------------------------- the driver


class Tracked:
    """The driver's MLflow run (``ref`` None: not tracked, and nothing is called). A context
    around the fit: a run that raises ends FAILED (KILLED on Ctrl-C) in MLflow too."""

    def __init__(self, session: Session | None = None, ref: RunRef | None = None) -> None:
        self.session, self.ref = session, ref

    def __enter__(self) -> Tracked:
        return self

    def __exit__(self, kind, exc, tb) -> None:
        if kind is not None and self._live():
            status = "KILLED" if issubclass(kind, KeyboardInterrupt) else "FAILED"
            self.session.call("end the run", lambda c: c.set_terminated(self.ref.run_id, status))

    def _live(self) -> bool:
        if self.ref is None or self.session is None:
            return False
        self.session.failed = self.session.failed or lost(self.session.run_dir)
        return not self.session.failed

    def finish_run(self, summary: dict[str, Any]) -> None:
        """A finished training run: its results, files and model (with model.onnx) logged."""
        results = ("best_test_accuracy", "best_epoch", "seconds", "restarts")
        self.finish({k: summary.get(k) for k in results}, RUN_FILES, summary.get("model_path"))

    def finish(
        self,
        metrics: dict[str, Any] | None = None,
        files: Sequence[str] = (),
        model_dir: str | None = None,
    ) -> None:
        """``metrics`` (step 0), the run dir's ``files``, ``model_dir`` logged; FINISHED."""
        if not self._live():
            return
        s, run_id = self.session, self.ref.run_id
        s.call("log the results", lambda c: _batch(c, run_id, _stamped(metrics or {}, 0)))
        with tempfile.TemporaryDirectory(prefix="cifar-mlflow-") as tmp:
            if not s.failed and _gather(s.run_dir, files, model_dir, Path(tmp)):
                s.call("log the files", lambda c: c.log_artifacts(run_id, tmp), UPLOAD_TIMEOUT_S)
        s.call("end the run", lambda c: c.set_terminated(run_id, "FINISHED"))


def _gather(run_dir: str, files: Sequence[str], model_dir: str | None, tmp: Path) -> bool:
    """The run's files into ``tmp`` (the model's into ``tmp/model``): is there any?"""
    for name in files:
        if storage.exists(f"{run_dir}/{name}"):
            (tmp / name).write_bytes(storage.read_bytes(f"{run_dir}/{name}"))
    if model_dir:
        (tmp / "model").mkdir()
        for name in MODEL_FILES:
            (tmp / "model" / name).write_bytes(storage.read_bytes(f"{model_dir}/{name}"))
        onnx_file(model_dir, str(tmp / "model" / "model.onnx"))
    return any(tmp.iterdir())


def onnx_file(model_dir: str, out: str) -> str | None:
    """``cifar-export``'s checked ONNX file of the model (any batch), with the `onnx` extra."""
    if any(importlib.util.find_spec(m) is None for m in ONNX_MODULES):
        return None
    from cifar.export import ExportConfig, export

    try:
        return export(ExportConfig(run=model_dir, output=out, dynamic_batch=True)).path
    except Exception as e:  # the exporter's own failures included: the training succeeded
        log.warning("MLflow: the model is logged without an ONNX file (%s)", reason(e))
        return None


def start_run(cfg, run_dir: str, dataset: dict[str, Any]) -> Tracked:
    """The training run ``cfg`` (resolved, its run dir made); a --resume continues its run."""
    uri = tracking_uri(cfg.mlflow_uri)
    if uri is None:
        return Tracked()
    return _open(uri, run_dir, cfg.name, cfg.to_dict(), run_tags(cfg, dataset, "cifar-train"))


def start_trial(cfg, run_dir: str, dataset: dict[str, Any], parent: RunRef | None) -> Tracked:
    """A sweep's trial as a child run of ``parent`` (the sweep's run; None: not tracked)."""
    if parent is None:
        return Tracked()
    tags = {**run_tags(cfg, dataset, "cifar-tune"), "mlflow.parentRunId": parent.run_id}
    return _open(parent.uri, run_dir, cfg.name, cfg.to_dict(), tags, parent)


def start_sweep(typed: str | None, name: str, sweep_dir: str, params: dict) -> Tracked:
    """A sweep's parent run (``params``: its flags, space); its ``ref`` goes to its trials."""
    uri = tracking_uri(typed)
    if uri is None:
        return Tracked()
    return _open(uri, sweep_dir, name, params, code_tags("cifar-tune"))


def _open(
    uri: str,
    run_dir: str,
    name: str,
    params: dict[str, Any],
    tags: dict[str, str],
    parent: RunRef | None = None,
) -> Tracked:
    """A new run, or the one ``mlflow.json`` names on this server: params, tags, mlflow.json."""
    s = Session(uri, run_dir, fresh=True)  # a new start: the server may be back
    saved = read_record(run_dir)
    again = saved if saved and saved.get("uri") == uri and saved.get("run_id") else None
    values, tags = param_values(params), {**tags, "run_dir": run_dir}
    ref = s.call("start the run", lambda c: _begin(c, uri, name, values, tags, again, parent))
    if ref is None:
        return Tracked()
    record = {**asdict(ref), "url": ref.url, "lost": None}
    storage.write_text(f"{run_dir}/{RUN_FILE}", json.dumps(record, indent=2))
    said = "continuing" if again else "logging to"
    progress.info("[cifar] MLflow: %s run '%s': %s", said, name, ref.url)
    return Tracked(s, ref)


def _begin(c, uri, name, params, tags, again, parent) -> RunRef:
    if again:  # --resume: the same run, RUNNING again; a param keeps its first value
        run_id, experiment_id = again["run_id"], again["experiment_id"]
        have = c.get_run(run_id).data.params
        c.update_run(run_id, status="RUNNING")
        params = {k: v for k, v in params.items() if k not in have}
    else:
        experiment_id = parent.experiment_id if parent else _experiment(c)
        run_id = c.create_run(experiment_id, tags=tags, run_name=name).info.run_id
    _batch(c, run_id, params=params, tags=tags if again else None)
    return RunRef(uri, experiment_id, run_id)


def _experiment(c) -> str:
    """The experiment's id ($MLFLOW_EXPERIMENT_NAME, else EXPERIMENT), made if new."""
    name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or EXPERIMENT
    found = c.get_experiment_by_name(name)
    if found is None:
        with contextlib.suppress(Exception):  # another run may make it first
            return c.create_experiment(name)
        found = c.get_experiment_by_name(name)
    return found.experiment_id


def param_values(config: dict[str, Any]) -> dict[str, str]:
    """A config as MLflow params: JSON but for strings, None left out, cut at PARAM_CHARS."""
    out = {}
    for k, v in config.items():
        text = v if isinstance(v, str) else json.dumps(v)
        if v is not None:
            out[k] = text if len(text) <= PARAM_CHARS else f"{text[: PARAM_CHARS - 3]}..."
    return out


def run_tags(cfg, dataset: dict[str, Any], source: str) -> dict[str, str]:
    """What a training run is, for MLflow's search: its data, architecture and code."""
    data = {"data_root": str(dataset.get("root")), "data_kind": str(dataset.get("kind"))}
    return {**code_tags(source), **data, "arch": cfg.arch}


def code_tags(source: str) -> dict[str, str]:
    """The program and, in a git checkout, the code's commit (and whether it had changes)."""
    tags = {"mlflow.source.name": source, "mlflow.source.type": "JOB"}
    with contextlib.suppress(Exception):  # no user name in some containers
        tags["mlflow.user"] = getpass.getuser()
    root = Path(__file__).resolve().parents[2]
    if (root / ".git").exists():  # not for an installed package
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            git = ["git", "-C", str(root)]
            run = dict(capture_output=True, text=True, timeout=5, check=True)
            head = subprocess.run([*git, "rev-parse", "HEAD"], **run).stdout.strip()
            changed = subprocess.run([*git, "status", "--porcelain", "-uno"], **run).stdout
            if re.fullmatch(r"[0-9a-f]{40}", head):
                tags["mlflow.source.git.commit"] = head
                tags["git_dirty"] = str(bool(changed.strip())).lower()
    return tags


# --------------------------------------------------------------------------- rank 0


class Tracker:
    """Rank 0's metrics (per-step ones sent with each epoch's, or after FLUSH_EVERY_S)."""

    def __init__(self, ref: RunRef, run_dir: str, compute: dict[str, Any] | None) -> None:
        self.run_id = ref.run_id
        self.session = Session(ref.uri, run_dir)
        self.pending: list[tuple] = []
        self._sent = time.monotonic()
        said = {k: str((compute or {}).get(k)) for k in ("device", "precision", "channels_last")}
        self.session.call("tag the run", lambda c: _batch(c, self.run_id, tags=said))

    def step(self, values: dict[str, float], step: int) -> None:
        """TensorBoard's per-step scalars (train/loss, train/lr) at the optimizer step."""
        self.pending += _stamped(values, step)
        if time.monotonic() - self._sent >= FLUSH_EVERY_S:
            self.flush()

    def epoch(self, row: dict[str, Any]) -> None:
        """``metrics.csv``'s row of an epoch, at step = the epoch (1-based)."""
        self.pending += _stamped({k: v for k, v in row.items() if k != "epoch"}, row["epoch"])
        self.flush()

    def flush(self) -> None:
        batch, self.pending = self.pending, []
        self._sent = time.monotonic()
        if batch:
            self.session.call("log metrics", lambda c: _batch(c, self.run_id, batch))
