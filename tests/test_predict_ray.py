"""The bulk prediction job on a real (embedded) Ray runtime, results read back with pyarrow."""

import json
import subprocess
import sys
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
import torchvision
from PIL import Image

from cifar.cluster.resources import ClusterInfo
from cifar.config import ConfigError
from cifar.data.cifar10 import load_cifar10
from cifar.device import resolve_compute
from cifar.models.checkpoint import CheckpointError, model_meta, save_checkpoint
from cifar.models.cifar_quick import CifarQuick
from cifar.models.registry import DEFAULT_ARCH, ModelSpec
from cifar.predict.config import PredictConfig
from cifar.predict.formats import FORMATS, read_results, result_schema
from cifar.predict.pipeline import predict
from cifar.predict.predictor import Predictor
from cifar.predict.preflight import preflight
from cifar.train.config import TrainConfig, resolve_recipe
from cifar.train.engine import build, train_one_epoch
from tests.helpers.images import make_image_tree
from tests.paths import ROOT

pytestmark = pytest.mark.ray
TWO_CPUS = ClusterInfo(cpus=2, gpus=0, largest_node_cpus=2)  # the embedded test Ray


@pytest.fixture(scope="module")
def trained(synthetic_dir, tmp_path_factory):
    """A model trained (the job's loop, 3 epochs, fp32) on the synthetic set, saved as a
    checkpoint dir."""
    data = load_cifar10(synthetic_dir)
    mean, std = data.channel_stats()
    cfg = TrainConfig(
        epochs=3, batch_size=64, lr=0.02, augment=False, label_smoothing=0.0, grad_clip=0.0
    )
    spec = ModelSpec.of(classes=data.classes, mean=mean, std=std)
    cfg = resolve_recipe(cfg, len(data.train_labels), 1)
    e = build(cfg, data.splits(), spec, resolve_compute("cpu", "fp32", False))
    for epoch in range(cfg.epochs):
        train_one_epoch(e, epoch)
    d = tmp_path_factory.mktemp("model") / "model"
    save_checkpoint(d, e.raw, model_meta(spec))
    return d, data


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("imgs")
    good, bad = make_image_tree(root)
    return root, good, bad


def _cfg(model, inputs, out, **kw):
    return PredictConfig(
        model=str(model),
        input=[str(i) for i in inputs],
        output=str(out),
        num_actors="1",
        batch_size=8,
        files_per_block=7,
        **kw,
    )


def test_every_file_gets_exactly_one_row_and_rows_equal_single_image_path(
    ray_session, trained, tree, tmp_path
):
    model_dir, data = trained
    root, good, bad = tree
    summary = predict(_cfg(model_dir, [root], tmp_path / "out", probs=True), TWO_CPUS)
    files = sorted((tmp_path / "out").glob("*.parquet"))
    table = pq.read_table(files)
    rows = table.to_pylist()
    paths = [r["path"] for r in rows]
    assert sorted(paths) == sorted(str(p.resolve()) for p in good + bad)  # once each
    assert all(r["relpath"] == str(Path(r["path"]).relative_to(root.resolve())) for r in rows)
    made_by = json.loads(pq.read_schema(files[0]).metadata[b"cifar_ray"])  # every file says
    assert made_by["classes"] == list(data.classes) and made_by["schema_version"] == 2
    assert made_by["inputs"] == [str(root.resolve())] and made_by["arch"] == DEFAULT_ARCH
    assert (
        made_by["model_sha256"]
        == json.loads((tmp_path / "out/_job.json").read_text())["model_sha256"]
    )
    for r in rows:  # --probs: every class's probability, in the classes' order
        if r["error"] is None:
            assert len(r["probs"]) == len(data.classes)
            assert sum(r["probs"]) == pytest.approx(1, abs=1e-4)
            assert r["probs"][r["class_index"]] == pytest.approx(r["confidence"], abs=1e-6)
        else:
            assert len(r["probs"]) == len(data.classes) and np.isnan(r["probs"]).all()
    errors = {r["path"] for r in rows if r["error"] is not None}
    assert errors == {str(p.resolve()) for p in bad}
    assert summary["files"] == summary["rows"] == len(good) + len(bad)
    assert summary["errors"] == len(bad) and summary["predicted"] == len(good)
    assert summary["waited_seconds"] == 0  # alone on its Ray: nothing to wait for
    assert sum(summary["class_histogram"].values()) == len(good)
    single = {
        r.path: r
        for r in Predictor.from_path(  # what the job's actors computed in (auto: measured)
            str(model_dir),
            precision=summary["compute"]["precision"],
            channels_last=summary["compute"]["channels_last"],
        ).classify_files([str(p.resolve()) for p in good + bad])
    }
    for r in rows:
        s = single[r["path"]]
        if s.error is not None:
            assert r["error"] == s.error and r["class_name"] is None
            continue
        assert (r["class_name"], r["class_index"]) == (s.class_name, s.class_index)
        assert r["confidence"] == pytest.approx(s.confidence, abs=1e-5)
        assert r["top1_class"] == r["class_name"] and r["top1_prob"] >= r["top2_prob"]
    on_disk = json.loads((tmp_path / "out" / "_summary.json").read_text())
    assert on_disk["files"] == len(good) + len(bad) and on_disk["images_per_s"] > 0
    assert on_disk["preflight_seconds"] > 0 and on_disk["ray_start_seconds"] is None
    assert on_disk["model_meta"]["arch"] == DEFAULT_ARCH


def _labelled_tree(root, classes, n=4):
    rng = np.random.default_rng(1)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(
                root / c / f"{i}.png"
            )


def test_output_folder_opens_with_every_reader_as_it_is(ray_session, trained, tmp_path):
    """The folder itself, no glob around the side files: pandas, pyarrow, Ray Data, DuckDB."""
    import duckdb
    import pyarrow.dataset as pds

    model_dir, data = trained
    _labelled_tree(tmp_path / "in", data.classes[:3])
    out = tmp_path / "preds"
    predict(_cfg(model_dir, [tmp_path / "in"], out, labels_from_dirs=True, preview=6), TWO_CPUS)
    side = {p.name for p in out.iterdir() if p.name.startswith("_")}
    assert side >= {"_summary.json", "_confusion_matrix.csv", "_confusion_matrix.png"}
    assert {"_per_class.csv", "_preview.png"} <= side
    n = 12
    assert len(pd.read_parquet(out)) == n
    assert pds.dataset(out).count_rows() == n
    assert ray_session.data.read_parquet(str(out)).count() == n
    got = duckdb.sql(f"select count(*) from read_parquet('{out}/*.parquet')").fetchall()[0][0]
    assert got == n
    summary = json.loads((out / "_summary.json").read_text())
    assert set(summary["side_files"]) == side


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_other_formats_open_as_datasets(ray_session, trained, tree, tmp_path, fmt):

    model_dir, data = trained
    root, good, bad = tree
    _labelled_tree(root.parent / f"labelled-{fmt}", data.classes[:2], n=1)
    inputs = [root, root.parent / f"labelled-{fmt}"]
    out = tmp_path / "o"
    # files of 3 rows: some with an error row, some without (an all-empty error column)
    cfg = _cfg(model_dir, inputs, out, format=fmt, top_k=2, labels_from_dirs=True)
    cfg.rows_per_file = 3
    cfg.files_per_block = 3
    predict(cfg, TWO_CPUS)
    assert (out / "_confusion_matrix.csv").is_file()  # a CSV the CSV readers must skip
    assert len(list(out.glob("part-*"))) > 3
    summary = json.loads((out / "_summary.json").read_text())
    assert (summary["errors"], summary["labelled"]) == (len(bad), 3)  # 2 + the tree's cat/
    # as the README says to read them: pandas, file by file; the schema given to Arrow
    files = sorted(out.glob(f"part-*{FORMATS[fmt].suffix}"))
    assert fmt != "jsonl" or all(f.suffix == ".jsonl" for f in files)  # not .json
    reader = pd.read_csv if fmt == "csv" else partial(pd.read_json, lines=True)
    df = pd.concat([reader(f) for f in files], ignore_index=True)
    table = read_results(str(out), fmt, schema=result_schema(2, len(data.classes), True))
    assert table.num_rows == len(df) == len(good) + len(bad) + 2
    assert df["error"].notna().sum() == len(bad) == table.num_rows - table["error"].null_count
    assert {"path", "class_index", "class_name", "confidence", "top2_class", "top2_prob"} <= set(
        df.columns
    )
    assert "top3_class" not in df.columns


def test_extensions_filter_skips_and_counts(ray_session, trained, tree, tmp_path):
    model_dir, _ = trained
    root, good, bad = tree
    s = predict(_cfg(model_dir, [root], tmp_path / "o", extensions="png, .JPG"), TWO_CPUS)
    every = good + bad
    kept = [p for p in every if p.suffix.lower() in (".png", ".jpg")]
    assert s["files"] == len(kept) and s["skipped"] == len(every) - len(kept)
    assert read_results(str(tmp_path / "o"), "parquet").num_rows == len(kept)


def test_globs_single_files_and_file_uris(ray_session, trained, tree, tmp_path):
    model_dir, _ = trained
    root, good, _ = tree
    one = next(p for p in good if "名前" in str(p))
    s = predict(
        _cfg(model_dir, [f"{root}/jpeg/*.jp*g", one, f"file://{root}/deep"], tmp_path / "o"),
        TWO_CPUS,
    )
    jpegs = list((root / "jpeg").iterdir())
    deep = [p for p in (root / "deep").rglob("*") if p.is_file()]
    assert s["files"] == len(jpegs) + 1 + len(deep)
    paths = read_results(str(tmp_path / "o"), "parquet").column("path").to_pylist()
    assert str(one.resolve()) in paths
    assert sum(p.startswith("file://") for p in paths) == len(deep)


def test_labels_from_dirs_reports_accuracy_and_confusion(ray_session, trained, tmp_path):
    model_dir, data = trained
    root = tmp_path / "val"
    for i in range(150):
        label = data.classes[int(data.test_labels[i])]
        (root / label).mkdir(parents=True, exist_ok=True)
        Image.fromarray(data.test_images[i].permute(1, 2, 0).numpy()).save(
            root / label / f"{i}.png"
        )
    s = predict(_cfg(model_dir, [root], tmp_path / "o", labels_from_dirs=True), TWO_CPUS)
    table = read_results(str(tmp_path / "o"), "parquet").to_pylist()
    want = np.mean([r["label"] == r["class_name"] for r in table])
    assert s["labelled"] == 150 and s["accuracy"] == pytest.approx(want)
    assert s["accuracy"] > 0.5
    cm = np.array(s["confusion_matrix"]["rows_true_cols_pred"])
    assert cm.sum() == 150 and np.trace(cm) == round(want * 150)


def test_bad_inputs_fail_before_any_work(ray_session, trained, tree, tmp_path):
    model_dir, _ = trained
    root, _, _ = tree
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no files found"):
        preflight(_cfg(model_dir, [tmp_path / "empty"], tmp_path / "o"))
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "part-0.parquet").write_bytes(b"x")
    with pytest.raises(ConfigError, match="--overwrite"):
        preflight(_cfg(model_dir, [root], tmp_path / "full"))
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        preflight(_cfg(model_dir, [root], tmp_path / "afile"))
    with pytest.raises(ConfigError, match="has 0 GPUs"):
        predict(_cfg(model_dir, [root], tmp_path / "g", gpus_per_actor=1), TWO_CPUS)
    assert not (tmp_path / "g").exists()
    with pytest.raises(ConfigError, match="largest node"):
        predict(_cfg(model_dir, [root], tmp_path / "g2", cpus_per_actor=3), TWO_CPUS)
    sd = CifarQuick(relu=True).state_dict()
    torch.save(sd, tmp_path / "relu_without_meta_is_fine.pt")
    preflight(_cfg(tmp_path / "relu_without_meta_is_fine.pt", [root], tmp_path / "o"))
    sd.pop("model1.12.bias")
    torch.save(sd, tmp_path / "broken.pt")
    with pytest.raises(CheckpointError, match=r"model1\.8\.bias"):
        preflight(_cfg(tmp_path / "broken.pt", [root], tmp_path / "o"))


def test_job_cli_exits_2_with_one_paragraph_before_ray_starts(trained, tmp_path, job_env):
    model_dir, _ = trained
    (tmp_path / "empty").mkdir()
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "jobs.predict",
            "--model",
            str(model_dir),
            "--input",
            str(tmp_path / "empty"),
            "--output",
            str(tmp_path / "o"),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=job_env,
        timeout=120,
    )
    assert r.returncode == 2
    assert r.stderr.startswith("error: no files found") and "Traceback" not in r.stderr
    assert "Ray" not in r.stderr  # failed before ray.init


def test_bf16_inference_agrees_with_fp32(trained):
    """precision=auto may run in bf16: its classes must match the fp32 (tutorial) arithmetic."""
    model_dir, data = trained
    images = data.test_images[:500].numpy()
    fp32 = Predictor.from_path(str(model_dir), precision="fp32").probabilities(images)
    bf16 = Predictor.from_path(str(model_dir), precision="bf16").probabilities(images)
    agree = (fp32.argmax(1) == bf16.argmax(1)).mean()
    assert agree >= 0.98
    assert np.abs(fp32 - bf16).max() < 0.05


def test_the_tutorial_vgg16_state_dict_classifies_a_folder_with_arch(ray_session, tmp_path):
    """`cifar-predict --model vgg16_method2.pth --arch vgg16` (the tutorial's saved vgg16 with
    classifier[6] = Linear(4096, 10)): one row per file, the same as the tutorial's forward on
    the same 32x32 tensors; without --arch the job is refused before any work, naming it."""
    torch.manual_seed(0)
    vgg16 = torchvision.models.vgg16()
    vgg16.classifier[6] = torch.nn.Linear(4096, 10)
    path = tmp_path / "vgg16_method2.pth"
    torch.save(vgg16.state_dict(), path)
    root = tmp_path / "imgs"
    root.mkdir()
    rng = np.random.default_rng(1)
    for i in range(12):
        Image.fromarray(rng.integers(0, 256, (40 + i, 36, 3), dtype=np.uint8)).save(
            root / f"{i}.png"
        )
    with pytest.raises(CheckpointError, match=r"bare state_dict of vgg16 .*Pass --arch vgg16"):
        predict(_cfg(path, [root], tmp_path / "refused"), TWO_CPUS)
    cfg = _cfg(path, [root], tmp_path / "o", arch="vgg16", image_size=32, precision="fp32")
    assert predict(cfg, TWO_CPUS)["rows"] == 12
    rows = pd.read_parquet(tmp_path / "o").sort_values("path")

    to_tensor = torchvision.transforms.Compose(  # the tutorial's test.py preprocessing
        [torchvision.transforms.Resize((32, 32)), torchvision.transforms.ToTensor()]
    )
    vgg16.eval()
    with torch.inference_mode():
        x = torch.stack([to_tensor(Image.open(p).convert("RGB")) for p in rows["path"]])
        probs = torch.softmax(vgg16(x), 1)
    assert rows["class_index"].tolist() == probs.argmax(1).tolist()
    np.testing.assert_allclose(rows["confidence"], probs.max(1).values, rtol=1e-4)
