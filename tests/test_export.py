"""``cifar-export``: ONNX and TorchScript files that compute what the model computes, with its
preprocessing in them, read back as their users read them (onnx, onnxruntime, torch.jit);
``cifar-predict --model model.onnx`` gives the PyTorch job's rows."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pandas as pd
import pytest
import torch

from cifar.config import ConfigError
from cifar.export import ExportConfig, compare, export, model_inputs
from cifar.io.images import decode_batch
from cifar.models.checkpoint import CheckpointError, model_meta, save_checkpoint
from cifar.models.exported import load_torchscript
from cifar.models.loading import load_model
from cifar.models.registry import ModelSpec, build_model
from cifar.predict.config import PredictConfig
from cifar.predict.pipeline import predict
from cifar.predict.predictor import Predictor
from tests.helpers.images import make_class_tree, make_image_tree, write_pngs
from tests.paths import ROOT

MEAN, STD = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)
CASES = [("cifar10_quick", 32), ("cifar10_quick_relu", 32), ("resnet18", 64)]


def decisive(arch: str, folder, size: int, seed: int = 0):
    """An untrained ``arch`` saved as a run saves it, normalised, with its head scaled up: its
    top-1 class is then clear-cut, not a near-tie of ten ~0.1 probabilities."""
    torch.manual_seed(seed)
    classes = [f"c{i}" for i in range(5)]
    spec = ModelSpec.of(arch, classes, MEAN, STD, None if arch.startswith("cifar") else size)
    model = build_model(spec).eval()
    head = model.fc if arch == "resnet18" else model.model1[-1]
    with torch.no_grad():
        head.weight.mul_(30)
    return save_checkpoint(folder, model, model_meta(spec))


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Image files of every kind (the broken ones included) plus plain PNGs: 51 files."""
    root = tmp_path_factory.mktemp("images")
    good, bad = make_image_tree(root / "tree")
    pngs = write_pngs(root / "pngs", 30, seed=1, side=40)
    return root, [str(p) for p in good] + pngs, [str(p) for p in bad]


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
@pytest.mark.parametrize(("arch", "size"), CASES)
def test_export_agrees_with_the_model_and_records_its_preprocessing(
    arch, size, fmt, images, tmp_path
):
    run = decisive(arch, tmp_path / "model", size)
    done = export(ExportConfig(run=str(run), format=fmt, dynamic_batch=True))
    assert done.parity.ok and done.parity.images == 64 and done.parity.agree == 64
    assert done.path == str(run / f"model{'.onnx' if fmt == 'onnx' else '.torchscript.pt'}")
    # read back as a user would, on decoded files of every kind, through the job's preprocessing
    _, good, _ = images
    batch = decode_batch({"path": np.array(good, dtype=object)}, size)
    loaded = load_model(run)
    x = model_inputs(batch["image"], loaded)
    with torch.no_grad():
        want = loaded.model(x).numpy()
    if fmt == "onnx":
        session = ort.InferenceSession(done.path, providers=["CPUExecutionProvider"])
        got = session.run(None, {"input": x.numpy()})[0]
        meta = {p.key: p.value for p in onnx.load(done.path).metadata_props}
        assert meta["arch"] == arch and meta["image_size"] == str(size)
        assert meta["classes"] == '["c0", "c1", "c2", "c3", "c4"]'
        assert json.loads(meta["mean"]) == list(MEAN) and json.loads(meta["std"]) == list(STD)
    else:
        module, meta = load_torchscript(done.path)
        got = module(x).detach().numpy()
        assert (meta["arch"], meta["image_size"], meta["mean"]) == (arch, size, list(MEAN))
    assert meta["source_sha256"] == hashlib.sha256((run / "model.pt").read_bytes()).hexdigest()
    assert (got.argmax(1) == want.argmax(1)).all()
    assert np.abs(got - want).max() < 1e-3 * max(1.0, np.abs(want).max())


def test_the_check_runs_on_the_run_s_own_images_where_they_are(tmp_path):
    """A run's meta.json says where its data is: its val/ files, or its CIFAR test batch."""
    from cifar.data.synthetic import write_synthetic

    make_class_tree(tmp_path / "tree")  # 16 val images
    batches = write_synthetic(tmp_path / "cifar", n_train=5, n_test=100)
    spec = ModelSpec.of()
    for kind, root, n in (("folder", tmp_path / "tree", 16), ("synthetic", batches, 64)):
        meta = model_meta(spec, dataset={"kind": kind, "root": str(root)})
        run = save_checkpoint(tmp_path / kind, build_model(spec), meta)
        done = export(ExportConfig(run=str(run), format="torchscript"))
        assert done.parity.images == n and f"of the run's data ({root})" in done.parity.where


def test_a_fixed_batch_old_opset_file_from_the_command_line(images, tmp_path):
    """opset 13: the TorchScript-based exporter, as asked; a fixed batch of 4, fed in chunks."""
    run = decisive("cifar10_quick", tmp_path / "model", 32)
    out = tmp_path / "q.onnx"
    cmd = [sys.executable, "-m", "jobs.export", str(run), "--opset", "13", "--batch-size", "4"]
    r = subprocess.run([*cmd, "--output", str(out)], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert "ONNX opset 13, batch 4" in r.stdout and "top-1 identical on 64/64 images" in r.stdout
    assert "max abs logit difference" in r.stdout
    proto = onnx.load(out)
    assert [o.version for o in proto.opset_import if o.domain == ""] == [13]
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 4
    _, good, _ = images
    pixels = decode_batch({"path": np.array(good[:10], dtype=object)}, 32)["image"]
    fixed = Predictor.from_path(str(out)).probabilities(pixels)  # 10 images: 4 + 4 + 2 padded
    torch_probs = Predictor.from_path(str(run), precision="fp32").probabilities(pixels)
    assert np.abs(fixed - torch_probs).max() < 1e-5
    again = subprocess.run([*cmd, "--output", str(out)], capture_output=True, text=True, cwd=ROOT)
    assert (
        again.returncode == 2
        and again.stderr.startswith("error: ")
        and "--overwrite" in (again.stderr)
    )
    assert len(again.stderr.strip().splitlines()) == 1 and "Traceback" not in again.stderr


def test_what_cannot_be_exported_or_classified_is_refused_clearly(tmp_path):
    run = decisive("cifar10_quick", tmp_path / "model", 32)
    with pytest.raises(ConfigError, match="--opset applies to --format onnx only"):
        export(ExportConfig(run=str(run), format="torchscript", opset=18))
    with pytest.raises(ConfigError, match="--opset 5 is too old"):
        export(ExportConfig(run=str(run), opset=5))
    with pytest.raises(CheckpointError, match="does not exist"):
        export(ExportConfig(run=str(tmp_path / "nope.pt")))
    # an ONNX file that cifar-export did not write: no preprocessing to classify it with
    plain = tmp_path / "plain.onnx"
    model = build_model(ModelSpec.of()).eval()
    torch.onnx.export(model, (torch.zeros(2, 3, 32, 32),), str(plain), dynamo=False)
    with pytest.raises(CheckpointError, match="not written by cifar-export"):
        Predictor.from_path(str(plain))
    done = export(ExportConfig(run=str(run)))
    with pytest.raises(ConfigError, match="--precision bf16 does not apply to an ONNX model"):
        Predictor.from_path(done.path, precision="bf16")
    with pytest.raises(ConfigError, match="--arch does not apply"):
        Predictor.from_path(done.path, arch="resnet18")


def test_the_check_refuses_a_model_that_computes_something_else(images, tmp_path):
    """What makes the exporter refuse a file: another model's logits (a real one, not a mock)."""
    one = load_model(decisive("cifar10_quick", tmp_path / "a", 32, seed=0))
    other = load_model(decisive("cifar10_quick", tmp_path / "b", 32, seed=1))
    _, good, _ = images
    x = model_inputs(decode_batch({"path": np.array(good, dtype=object)}, 32)["image"], one)
    same = compare(one.model, one.model, x, "files")
    assert same.ok and same.max_diff == 0
    differ = compare(one.model, other.model, x, "files")
    assert not differ.ok and differ.agree < len(x) and "files" in differ.line()


@pytest.mark.ray
def test_predict_with_the_onnx_file_gives_the_pytorch_rows(ray_session, images, tmp_path):
    from cifar.cluster.resources import ClusterInfo

    run = decisive("cifar10_quick", tmp_path / "model", 32)
    onnx_file = export(ExportConfig(run=str(run), dynamic_batch=True)).path
    root, good, bad = images
    rows = {}
    for name, model, precision in (("torch", run, "fp32"), ("onnx", onnx_file, "auto")):
        out = str(tmp_path / name)
        # top 5 of 5 classes: every probability, each in a column of its own
        cfg = PredictConfig(
            model=str(model),
            input=[str(root)],
            output=out,
            num_actors="1",
            batch_size=16,
            top_k=5,
            precision=precision,
        )
        summary = predict(cfg, ClusterInfo(cpus=2, gpus=0, largest_node_cpus=2))
        assert summary["files"] == len(good) + len(bad) == 51
        rows[name] = pd.read_parquet(out).sort_values("path").reset_index(drop=True)
    assert summary["compute"]["chosen_by"] == "onnxruntime"
    assert summary["model_meta"]["format"] == "onnx"
    torch_rows, onnx_rows = rows["torch"], rows["onnx"]
    assert list(onnx_rows.columns) == list(torch_rows.columns)
    assert onnx_rows.dtypes.equals(torch_rows.dtypes)
    probs = ["confidence"] + [c for c in torch_rows.columns if c.endswith("_prob")]
    assert len(probs) == 6
    exact = [c for c in torch_rows.columns if c not in probs]  # paths, classes, errors
    pd.testing.assert_frame_equal(onnx_rows[exact], torch_rows[exact])
    assert onnx_rows["error"].notna().sum() == len(bad)
    ok = torch_rows["error"].isna()
    assert np.abs(onnx_rows[probs][ok].to_numpy() - torch_rows[probs][ok].to_numpy()).max() < 1e-4
