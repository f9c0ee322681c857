"""Prediction jobs resumed after a crash: every file exactly once, nothing half-written read,
only the same job resumed; and a real SIGKILL of the driver with its Ray part-way through."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow.dataset as pds
import pyarrow.parquet as pq
import pytest

from cifar.cluster.resources import ClusterInfo
from cifar.config import ConfigError
from cifar.predict.commit import JOB_FILE, TMP_DIR
from cifar.predict.config import PredictConfig
from cifar.predict.pipeline import predict
from cifar.predict.preflight import preflight
from tests.helpers.images import write_pngs
from tests.helpers.models import save_untrained
from tests.helpers.processes import kill_group, wait_until

pytestmark = pytest.mark.ray
TWO_CPUS = ClusterInfo(cpus=2, gpus=0, largest_node_cpus=2)


def _model(d: Path, seed: int = 0) -> Path:
    import torch

    torch.manual_seed(seed)
    return save_untrained(d)


def _cfg(model, inputs, out, **kw) -> PredictConfig:
    base = dict(num_actors="1", batch_size=64, files_per_block=50, rows_per_file=100)
    return PredictConfig(model=str(model), input=[str(inputs)], output=str(out), **{**base, **kw})


def _rows(out: Path) -> list[dict]:
    return pds.dataset(out, format="parquet").to_table().to_pylist()


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    return _model(root / "model"), root / "in", write_pngs(root / "in", 700)


def test_a_resume_keeps_committed_rows_and_never_reads_half_written_files(
    ray_session, job, tmp_path
):
    model, inputs, files = job
    out = tmp_path / "out"
    first = predict(_cfg(model, inputs, out), TWO_CPUS)
    parts = sorted(out.glob("part-*.parquet"))
    assert first["files"] == first["rows"] == 700 and len(parts) >= 7  # ~100 rows per file
    assert first["already_done"] == 0 and not (out / TMP_DIR).exists()
    full = {r["path"]: r for r in _rows(out)}
    # what a crash leaves: some files committed, others not yet, one half-written in _tmp/
    lost = parts[::2]
    lost_paths = {p for f in lost for p in pq.read_table(f, columns=["path"])["path"].to_pylist()}
    (out / TMP_DIR).mkdir()
    (out / TMP_DIR / f"{lost[0].name}.1a2b3c4d").write_bytes(lost[0].read_bytes()[:300])
    for f in lost:
        f.unlink()
    (out / "_summary.json").unlink()
    with pytest.raises(ConfigError, match="--resume to continue"):
        preflight(_cfg(model, inputs, out))  # without --resume: refused, nothing touched

    resumed = predict(_cfg(model, inputs, out, resume=True), TWO_CPUS)
    rows = _rows(out)
    assert sorted(r["path"] for r in rows) == files  # each exactly once
    assert resumed["already_done"] == 700 - len(lost_paths) > 0
    assert resumed["classified"] == len(lost_paths)
    assert (resumed["files"], resumed["rows"], resumed["errors"]) == (700, 700, 0)
    assert not (out / TMP_DIR).exists()  # the half-written file is gone, never read
    for r in rows:  # the rows redone are the rows the uninterrupted run wrote
        assert r == full[r["path"]]
    assert json.loads((out / "_summary.json").read_text())["already_done"] > 0

    again = predict(_cfg(model, inputs, out, resume=True), TWO_CPUS)  # nothing left to do
    assert (again["already_done"], again["classified"], again["rows"]) == (700, 0, 700)


def test_a_resume_of_another_job_is_refused(ray_session, job, tmp_path):
    model, inputs, _ = job
    out = tmp_path / "out"
    small = tmp_path / "small"
    write_pngs(small, 30)
    predict(_cfg(model, small, out), TWO_CPUS)
    with pytest.raises(ConfigError, match=r"another job \(--input"):
        preflight(_cfg(model, inputs, out, resume=True))
    other = _model(tmp_path / "other", seed=1)
    with pytest.raises(ConfigError, match=r"another job \(model \(its weights\)"):
        preflight(_cfg(other, small, out, resume=True))
    with pytest.raises(ConfigError, match=r"--top-k"):
        preflight(_cfg(model, small, out, resume=True, top_k=2))
    with pytest.raises(ConfigError, match="pass one"):
        _cfg(model, small, out, resume=True, overwrite=True).validate()
    (out / JOB_FILE).unlink()  # results, but nothing says whose
    with pytest.raises(ConfigError, match=f"no {JOB_FILE}"):
        preflight(_cfg(model, small, out, resume=True))
    fresh = preflight(_cfg(model, small, tmp_path / "new", resume=True))  # nothing to resume
    assert not fresh.resuming and fresh.already_done == 0


def test_sigkilled_job_resumes_with_every_file_exactly_once(tmp_path, job_env):
    """20,000 files; the driver and the Ray it started SIGKILLed once some result files are
    committed; the same command with --resume: every path once, less work than a full run."""
    files = write_pngs(tmp_path / "in", 20_000, seed=3)
    model = _model(tmp_path / "model")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "jobs.predict", "--model", str(model), "--input"]
    cmd += [str(tmp_path / "in"), "--output", str(out), "--rows-per-file", "1000"]
    cmd += ["--num-actors", "1", "--files-per-block", "250"]
    with open(tmp_path / "killed.log", "wb") as log:
        killed = subprocess.Popen(
            cmd, env=job_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            wait_until(
                lambda: len(list(out.glob("part-*.parquet"))) >= 3,
                240,
                "3 result files committed",
                killed,
                tmp_path / "killed.log",
            )
        finally:
            kill_group(killed)
    assert not (out / "_summary.json").exists()  # it really died part-way
    kept = len(pds.dataset(out, format="parquet").to_table(columns=["path"]))
    assert 0 < kept < len(files)

    resumed = subprocess.run(
        [*cmd, "--resume"], env=job_env, capture_output=True, text=True, timeout=600
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"classified 20000 files ({kept} of them kept from the stopped run)" in resumed.stdout
    assert "took over the lock of a job that is gone: pid" in resumed.stdout  # the SIGKILLed one
    paths = pds.dataset(out, format="parquet").to_table(columns=["path"])["path"].to_pylist()
    assert sorted(paths) == files  # each exactly once: no loss, no duplicate
    summary = json.loads((out / "_summary.json").read_text())
    assert summary["already_done"] == kept and summary["classified"] == len(files) - kept
    assert summary["rows"] == summary["files"] == len(files)
    sizes = sorted(pq.read_metadata(f).num_rows for f in out.glob("part-*.parquet"))
    print("rows per file:", sizes)
    assert sum(sizes) == len(files) and not (out / TMP_DIR).exists()
    assert sum(s >= 1000 for s in sizes) >= len(sizes) - 4  # --rows-per-file, tails apart


def test_a_prefix_listed_while_classifying_resumes_exactly_once(ray_session, job, tmp_path):
    """A URI input is listed folder by folder in an actor while the pipeline runs (file:// here,
    s3:// in tests/test_s3.py): the same rows, counts and resume as a listed folder."""
    model, inputs, files = job
    (inputs / "d000" / "notes.txt").write_text("not an image")
    try:
        uri = f"file://{inputs}"
        out = tmp_path / "out"
        cfg = _cfg(model, uri, out, extensions="png", labels_from_dirs=True)
        assert preflight(cfg).stream == uri and preflight(cfg).files is None
        first = predict(cfg, TWO_CPUS)
        assert (first["files"], first["rows"], first["skipped"]) == (700, 700, 1)
        assert first["labelled"] == 0  # no folder names a class: every label null
        parts = sorted(out.glob("part-*.parquet"))
        lost = sum(pq.read_metadata(p).num_rows for p in parts[1::2])
        for p in parts[1::2]:
            p.unlink()
        again = _cfg(model, uri, out, extensions="png", labels_from_dirs=True, resume=True)
        resumed = predict(again, TWO_CPUS)
        assert resumed["already_done"] == 700 - lost and resumed["classified"] == lost
        assert (resumed["files"], resumed["rows"], resumed["skipped"]) == (700, 700, 1)
        assert sorted(r["path"] for r in _rows(out)) == [f"file://{f}" for f in files]
    finally:
        (inputs / "d000" / "notes.txt").unlink()


def test_a_resume_into_a_folder_of_other_things_touches_nothing(job, tmp_path):
    model, inputs, _ = job
    out = tmp_path / "photos"
    out.mkdir()
    (out / "cat.jpg").write_bytes(b"a photo")
    with pytest.raises(ConfigError, match="nothing was touched"):
        preflight(_cfg(model, inputs, out, resume=True))
    assert [p.name for p in out.iterdir()] == ["cat.jpg"]
