"""Shards as prediction input: WebDataset tars and Hugging Face Parquet, written by the real
``webdataset`` and ``datasets`` writers from real pixels (scikit-learn's digits), classified one
row per sample, each row what the same image as a loose file gives; labels from the shards give
accuracy and a confusion matrix; bad samples and broken shards are rows, never a failed job;
``--resume`` exactly once; a prefix of shards in a bucket; the dry run's count."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import datasets
import numpy as np
import pyarrow.dataset as pds
import pytest
import webdataset as wds

from cifar.cluster.resources import ClusterInfo
from cifar.config import ConfigError
from cifar.data.examples import DIGIT_NAMES, write_digits
from cifar.io import shards as fmt
from cifar.io.images import load_image_file
from cifar.predict.config import PredictConfig
from cifar.predict.pipeline import predict
from cifar.predict.predictor import Predictor
from cifar.predict.preflight import preflight
from cifar.predict.shard_input import decode_samples, preview_loader
from tests.helpers.models import save_untrained
from tests.paths import ROOT

TWO_CPUS = ClusterInfo(cpus=2, gpus=0, largest_node_cpus=2)  # the embedded test Ray


def write_tars(files: list[Path], out: Path, per_shard: int = 25, extra=()) -> list[Path]:
    """``files`` as WebDataset tars (``<stem>.png`` + ``<stem>.cls``), then ``extra`` samples."""
    out.mkdir(parents=True, exist_ok=True)
    with wds.ShardWriter(str(out / "shard-%03d.tar"), maxcount=per_shard, verbose=0) as sink:
        for p in files:
            sink.write({"__key__": p.stem, "png": p.read_bytes(), "cls": int(p.parent.name)})
        for sample in extra:
            sink.write(sample)
    return sorted(out.glob("*.tar"))


def write_parquet(images: list[bytes], labels: list[int], path: Path) -> Path:
    items = [{"bytes": b, "path": f"{i}.png"} for i, b in enumerate(images)]
    ds = datasets.Dataset.from_dict({"image": items, "label": labels})
    ds = ds.cast_column("image", datasets.Image())
    ds.cast_column("label", datasets.ClassLabel(names=list(DIGIT_NAMES))).to_parquet(str(path))
    return path


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> dict:
    """60 real-pixel digits as loose PNGs, the same bytes as 2 tars (with classes.txt) and as a
    Hugging Face Parquet file, and an untrained model over the ten digits."""
    base = tmp_path_factory.mktemp("shard-predict").resolve()
    write_digits(base / "tree", np.random.default_rng(0), 40, 20)
    files = sorted((base / "tree").rglob("*.png"))
    shards = base / "shards"
    tars = write_tars(files[:45], shards)
    (shards / "classes.txt").write_text("\n".join(DIGIT_NAMES) + "\n")
    rest = files[45:]
    parquet = write_parquet(
        [p.read_bytes() for p in rest], [int(p.parent.name) for p in rest], shards / "hf.parquet"
    )
    expected = {
        f"{t}#{p.stem}": p
        for t, chunk in zip(tars, (files[:25], files[25:45]), strict=True)
        for p in chunk
    }
    expected |= {f"{parquet}#{i}": p for i, p in enumerate(rest)}
    return {
        "base": base,
        "shards": shards,
        "files": files,
        "expected": expected,  # result path -> the same image as a loose file
        "model": save_untrained(base / "model", classes=DIGIT_NAMES),
    }


def _cfg(model, inputs, out, **kw) -> PredictConfig:
    base = dict(num_actors="1", batch_size=16, files_per_block=20, rows_per_file=20)
    return PredictConfig(
        model=str(model), input=[str(i) for i in inputs], output=str(out), **{**base, **kw}
    )


def _rows(out: Path) -> list[dict]:
    return pds.dataset(out, format="parquet").to_table().to_pylist()


@pytest.fixture(scope="module")
def first_run(ray_session, digits, tmp_path_factory):
    out = tmp_path_factory.mktemp("first") / "out"
    return out, predict(_labelled(digits, out), TWO_CPUS)


def _labelled(digits, out: Path, **kw) -> PredictConfig:
    # fp32: the arithmetic Predictor.classify_files does in the comparison
    return _cfg(
        digits["model"], [digits["shards"]], out, labels_from_dirs=True, precision="fp32", **kw
    )


@pytest.mark.ray
def test_one_row_per_sample_equal_to_the_same_image_as_a_file_with_labels(digits, first_run):
    out, summary = first_run
    rows = _rows(out)
    expected = digits["expected"]
    assert sorted(r["path"] for r in rows) == sorted(expected)  # each sample once
    assert summary["files"] == summary["rows"] == summary["predicted"] == 60
    assert summary["errors"] == 0
    shards = digits["shards"].resolve()
    single = {
        r.path: r
        for r in Predictor.from_path(str(digits["model"]), precision="fp32").classify_files(
            [str(p) for p in expected.values()]
        )
    }
    for r in rows:
        assert r["relpath"] == r["path"].removeprefix(f"{shards}/")  # hf.parquet#3, ...
        file = expected[r["path"]]
        s = single[str(file)]
        assert r["label"] == file.parent.name  # classes.txt / ClassLabel names -> the class
        assert (r["class_name"], r["class_index"]) == (s.class_name, s.class_index)
        assert r["confidence"] == pytest.approx(s.confidence, abs=1e-4)
        for j, top in enumerate(s.top_k, start=1):  # the top 3 classes and probabilities
            assert r[f"top{j}_class"] == top["class_name"]
            assert r[f"top{j}_prob"] == pytest.approx(top["prob"], abs=1e-4)
    on_disk = json.loads((out / "_summary.json").read_text())
    right = sum(r["label"] == r["class_name"] for r in rows)
    assert on_disk["labelled"] == 60 and on_disk["accuracy"] == pytest.approx(right / 60)
    matrix = on_disk["confusion_matrix"]["rows_true_cols_pred"]
    assert sum(map(sum, matrix)) == 60 and sum(matrix[i][i] for i in range(10)) == right
    assert (out / "_confusion_matrix.csv").exists()


@pytest.mark.ray
def test_resume_after_a_lost_result_file_classifies_each_sample_exactly_once(
    digits, first_run, tmp_path
):
    done, _ = first_run
    out = tmp_path / "out"
    shutil.copytree(done, out)
    parts = sorted(out.glob("part-*.parquet"))
    assert len(parts) >= 3  # 60 rows, about 20 a file
    lost = len(pds.dataset(parts[1], format="parquet").to_table())
    parts[1].unlink()
    resumed = predict(_labelled(digits, out, resume=True), TWO_CPUS)
    rows = _rows(out)
    assert sorted(r["path"] for r in rows) == sorted(digits["expected"])  # each exactly once
    assert (resumed["already_done"], resumed["classified"]) == (60 - lost, lost)


@pytest.mark.ray
def test_bad_samples_and_a_truncated_tar_are_rows_and_the_job_goes_on(
    ray_session, digits, tmp_path
):
    files = digits["files"]
    mixed = tmp_path.resolve() / "mixed"
    bad = [
        {"__key__": "garbage", "png": b"not a png at all", "cls": 1},
        {"__key__": "no_image", "cls": 2},
    ]
    (ok_tar,) = write_tars(files[:5], mixed / "ok", extra=bad)
    (cut,) = write_tars(files[5:30], mixed / "cut")
    whole = cut.read_bytes()
    cut.write_bytes(whole[: len(whole) // 2])  # truncated mid-way: no end-of-archive block
    with tarfile.open(fileobj=io.BytesIO(whole)) as tf:
        keys = list(dict.fromkeys(m.name.split(".")[0] for m in tf.getmembers()))
    shutil.copy(files[30], mixed / "loose.png")  # a folder mixing shards and images
    parquet = write_parquet(
        [files[31].read_bytes(), b"\x89PNG broken"], [0, 1], mixed / "p.parquet"
    )
    out = tmp_path / "out"
    summary = predict(_cfg(digits["model"], [mixed], out, preview=4), TWO_CPUS)
    rows = {r["path"]: r for r in _rows(out)}
    errors = {p: r["error"] for p, r in rows.items() if r["error"]}
    assert set(errors) == {f"{ok_tar}#garbage", f"{ok_tar}#no_image", f"{cut}#", f"{parquet}#1"}
    assert "not an image" in errors[f"{ok_tar}#garbage"]
    assert "no image" in errors[f"{ok_tar}#no_image"]
    cut_rows = [p.split("#", 1)[1] for p in rows if p.startswith(f"{cut}#") and p != f"{cut}#"]
    assert 0 < len(cut_rows) < len(keys) and cut_rows == keys[: len(cut_rows)]  # before the break
    assert f"after {len(cut_rows)} sample(s)" in errors[f"{cut}#"]
    assert "truncated" in errors[f"{cut}#"]
    assert rows[str((mixed / "loose.png").resolve())]["error"] is None
    assert rows[f"{parquet}#0"]["error"] is None and rows[f"{ok_tar}#{files[0].stem}"]["class_name"]
    assert summary["files"] == summary["rows"] == len(rows) == 5 + 2 + len(cut_rows) + 1 + 1 + 2
    assert summary["errors"] == 4
    assert (out / "_preview.png").exists()  # shard samples read from their shard, files by path


def test_a_prefix_of_shards_in_a_bucket_reads_as_the_local_shards(digits, s3, tmp_path):
    server, bucket = s3
    server.upload_dir(digits["shards"], f"{bucket}/data/val")
    prefix = f"{bucket}/data/val"
    cfg = _cfg(digits["model"], [prefix], tmp_path / "out", labels_from_dirs=True)
    pre = preflight(cfg)
    assert pre.stream is None  # a prefix of shards: its keys listed first, not streamed
    local = preflight(_cfg(digits["model"], [digits["shards"]], tmp_path / "o2"))
    shards = f"{digits['shards'].resolve()}/"
    assert pre.files.to_pylist() == [
        f"{prefix}/{p.removeprefix(shards)}" for p in local.files.to_pylist()
    ]
    todo = {k: v.to_numpy(zero_copy_only=False) for k, v in pre.remaining().items()}
    there = {k: v.to_numpy(zero_copy_only=False) for k, v in local.remaining().items()}
    got, want = decode_samples(todo, 32), decode_samples(there, 32)
    assert set(got["error"]) == {""} and np.array_equal(got["image"], want["image"])
    labels = dict(zip(pre.files.to_pylist(), pre.labels.to_pylist(), strict=True))
    for p, file in digits["expected"].items():
        assert labels[f"{prefix}/{p.removeprefix(shards)}"] == file.parent.name


def test_dry_run_on_shards_prints_the_sample_count(digits, tmp_path, job_env):
    cmd = [sys.executable, "-m", "jobs.predict", "--model", str(digits["model"])]
    cmd += ["--input", str(digits["shards"]), "--output", str(tmp_path / "out"), "--dry-run"]
    done = subprocess.run(cmd, cwd=ROOT, env=job_env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "60 files (0 skipped by --extensions; 60 of them samples of 3 shard(s))" in done.stdout
    assert not (tmp_path / "out").exists()


def _decoded(pre) -> dict[str, np.ndarray]:
    """The decode stage run here on what a preflight left to do."""
    return decode_samples(
        {k: v.to_numpy(zero_copy_only=False) for k, v in pre.remaining().items()}, 32
    )


def test_parquet_columns_named_by_the_flags_and_a_wrong_name_says_what_is_there(digits, tmp_path):
    """A Hugging Face Parquet whose image and label columns have their own names, after a binary
    column the default would take for the image: --image-column / --label-column read it."""
    files = digits["files"][:12]
    ds = datasets.Dataset.from_dict(
        {
            "thumb": [b"not the image"] * len(files),
            "photo": [{"bytes": p.read_bytes(), "path": p.name} for p in files],
            "digit": [int(p.parent.name) for p in files],
        }
    )
    ds = ds.cast_column("photo", datasets.Image())
    path = tmp_path.resolve() / "own.parquet"
    ds.cast_column("digit", datasets.ClassLabel(names=list(DIGIT_NAMES))).to_parquet(str(path))
    ix = fmt.index_shard(str(path), "photo", None)  # no label asked for: the footer's rows
    assert (ix.column, ix.names, ix.error) == ("photo", None, "")
    assert [(s.key, s.label) for s in ix.samples] == [(str(i), None) for i in range(12)]
    kw = dict(image_column="photo", label_column="digit", labels_from_dirs=True)
    pre = preflight(_cfg(digits["model"], [path], tmp_path / "out", **kw))
    assert pre.labels.to_pylist() == [p.parent.name for p in files]  # ClassLabel names
    got = _decoded(pre)
    assert set(got["error"]) == {""}
    assert np.array_equal(got["image"], np.stack([load_image_file(str(p), 32) for p in files]))
    no_label = preflight(_cfg(digits["model"], [path], tmp_path / "o2", image_column="photo"))
    assert len(no_label.files) == 12  # no 'label' column: prediction needs none
    default = preflight(_cfg(digits["model"], [path], tmp_path / "o3"))
    assert "not an image" in _decoded(default)["error"][0]  # the first binary column, as said
    with pytest.raises(ConfigError, match=r"no label column 'name'; its columns: thumb .*--label-"):
        preflight(_cfg(digits["model"], [path], tmp_path / "o4", label_column="name"))
    with pytest.raises(ConfigError, match=r"no image column 'img'.*photo \(struct.*--image-col"):
        preflight(_cfg(digits["model"], [path], tmp_path / "o5", image_column="img"))


def test_preview_images_of_shard_samples_are_the_same_images_as_files(digits, tmp_path):
    pre = preflight(_cfg(digits["model"], [digits["shards"], digits["files"][0]], tmp_path / "o"))
    load = preview_loader(pre.files, pre.shards)
    shown = [*list(digits["expected"])[::7], str(digits["files"][0])]  # tars, Parquet, a file
    want = [digits["expected"].get(p, Path(p)) for p in shown]
    assert np.array_equal(load(shown, 48), np.stack([load_image_file(str(w), 48) for w in want]))
