"""Decoding and single-image prediction (no Ray)."""

import json
import logging
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from cifar.data.examples import write_digits
from cifar.io.images import decode_image, load_image_file
from cifar.models.checkpoint import save_checkpoint
from cifar.models.cifar_quick import CifarQuick
from cifar.models.loading import load_model
from cifar.predict.config import PredictConfig
from cifar.predict.predictor import Predictor
from cifar.predict.preflight import preflight
from tests.helpers.images import make_image_tree
from tests.paths import ROOT


@pytest.fixture(scope="session")
def tutorial_state_dict(tmp_path_factory):
    torch.manual_seed(0)
    p = tmp_path_factory.mktemp("tut") / "network_29.pth"
    torch.save(CifarQuick().state_dict(), p)
    return p


def test_every_format_and_mode_decodes_and_broken_files_are_reported(tmp_path):
    good, bad = make_image_tree(tmp_path)
    for p in good:
        x = load_image_file(str(p), 32)
        assert x.shape == (3, 32, 32) and x.dtype == np.uint8, p
    for p in bad:
        with pytest.raises(ValueError) as e:
            load_image_file(str(p), 32)
        reason = str(e.value)
        if p.name == "empty.png":
            assert reason == "empty file (0 bytes)"
        elif p.name.startswith("truncated"):
            assert "truncated or corrupt" in reason
        else:
            assert "not an image" in reason


def test_preprocessing_is_the_tutorials_resize_and_totensor(tmp_path):
    import torchvision

    img = Image.fromarray(np.random.default_rng(1).integers(0, 256, (70, 90, 3), dtype=np.uint8))
    p = tmp_path / "dog.png"
    img.convert("RGBA").save(p)
    tutorial = torchvision.transforms.Compose(
        [torchvision.transforms.Resize((32, 32)), torchvision.transforms.ToTensor()]
    )(Image.open(p).convert("RGB"))
    ours = torch.from_numpy(load_image_file(str(p), 32)).float() / 255
    assert torch.allclose(ours, tutorial, atol=1 / 255 + 1e-6)


def test_exif_rotation_gif_first_frame_and_16_bit_scaling(tmp_path):
    a = np.zeros((32, 64, 3), dtype=np.uint8)
    a[:, :32] = (255, 0, 0)  # left half red
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(a).save(tmp_path / "r.jpg", exif=exif, quality=95)
    x = decode_image((tmp_path / "r.jpg").read_bytes(), 32)
    # after rotating 90 degrees clockwise, the red half is on top
    assert x[0, :12].mean() > 200 and x[0, -12:].mean() < 60

    frames = [Image.new("RGB", (20, 20), c) for c in ((255, 0, 0), (0, 0, 255))]
    frames[0].save(tmp_path / "a.gif", save_all=True, append_images=frames[1:])
    g = decode_image((tmp_path / "a.gif").read_bytes(), 32)
    assert g[0].mean() > 200 and g[2].mean() < 50

    Image.fromarray(np.full((8, 8), 32768, dtype=np.uint16)).save(tmp_path / "s.png")
    s = decode_image((tmp_path / "s.png").read_bytes(), 32)
    assert abs(int(s.mean()) - 128) <= 1  # PIL's plain convert would clip this to 255


def test_large_jpeg_decodes_at_reduced_size_close_to_full_decode(tmp_path):
    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    big = Image.fromarray(small).resize((2048, 2048), Image.NEAREST)
    big.save(tmp_path / "big.jpg", quality=95)
    fast = decode_image((tmp_path / "big.jpg").read_bytes(), 32).astype(int)
    full = (
        np.asarray(Image.open(tmp_path / "big.jpg").convert("RGB").resize((32, 32), Image.BILINEAR))
        .transpose(2, 0, 1)
        .astype(int)
    )
    assert np.abs(fast - full).mean() < 4


def test_tutorial_state_dict_predicts_like_the_tutorials_test_py(tmp_path, tutorial_state_dict):
    import torchvision

    Image.fromarray(np.random.default_rng(3).integers(0, 256, (50, 60, 3), dtype=np.uint8)).save(
        tmp_path / "dog.png"
    )
    clf = Predictor.from_path(str(tutorial_state_dict))
    [r] = clf.classify_files([str(tmp_path / "dog.png")])
    # the tutorial's test.py, step by step
    image = Image.open(tmp_path / "dog.png").convert("RGB")
    image = torchvision.transforms.Compose(
        [torchvision.transforms.Resize((32, 32)), torchvision.transforms.ToTensor()]
    )(image)
    model = CifarQuick()
    model.load_state_dict(torch.load(tutorial_state_dict, weights_only=True))
    model.eval()
    with torch.no_grad():
        output = model(torch.reshape(image, (1, 3, 32, 32)))
    assert r.class_index == int(output.argmax(1))
    assert r.confidence == pytest.approx(float(torch.softmax(output, 1).max()), abs=1e-3)


def test_trained_meta_normalization_is_applied(tmp_path):
    m = CifarQuick()
    meta = {
        "arch": "cifar10_quick",
        "relu": False,
        "num_classes": 10,
        "classes": [f"c{i}" for i in range(10)],
        "normalize": {"mean": [0.4, 0.5, 0.6], "std": [0.2, 0.25, 0.3]},
    }
    save_checkpoint(tmp_path / "ck", m, meta)
    clf = Predictor.from_path(str(tmp_path / "ck"))
    x = np.random.default_rng(0).integers(0, 256, (2, 3, 32, 32), dtype=np.uint8)
    t = torch.from_numpy(x).float() / 255
    t = (t - torch.tensor([0.4, 0.5, 0.6]).view(1, 3, 1, 1)) / torch.tensor([0.2, 0.25, 0.3]).view(
        1, 3, 1, 1
    )
    with torch.no_grad():
        want = torch.softmax(load_model(tmp_path / "ck").model(t), 1).numpy()
    assert np.allclose(clf.probabilities(x), want, atol=1e-6)


def test_single_image_cli_prints_lines_and_fails_on_bad_images(tmp_path, tutorial_state_dict):
    good, bad = make_image_tree(tmp_path / "imgs")
    args = [sys.executable, "-m", "jobs.classify", "--model", str(tutorial_state_dict)]
    ok = subprocess.run([*args, *map(str, good[:3])], capture_output=True, text=True, cwd=ROOT)
    assert ok.returncode == 0, ok.stderr
    lines = ok.stdout.strip().splitlines()
    assert len(lines) == 3
    path, _cls, conf = lines[0].split("\t")
    assert path == str(good[0]) and 0 < float(conf) <= 1
    mixed = subprocess.run(
        [*args, str(good[0]), str(bad[0])], capture_output=True, text=True, cwd=ROOT
    )
    assert mixed.returncode == 1
    assert len(mixed.stdout.strip().splitlines()) == 1
    assert str(bad[0]) in mixed.stderr and "empty file" in mixed.stderr
    missing = subprocess.run(
        [*args[:-1], str(tmp_path / "nope.pt"), str(good[0])],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert missing.returncode == 2 and "does not exist" in missing.stderr
    as_json = subprocess.run(
        [*args, "--top-k", "3", "--json", str(good[0]), str(bad[0])],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    first, second = (json.loads(line) for line in as_json.stdout.splitlines())
    assert as_json.returncode == 1 and first["path"] == str(good[0]) and first["error"] is None
    top = first["top_k"]
    assert top[0]["class_name"] == first["class_name"] and len(top) == 3
    assert top[0]["class_index"] == first["class_index"]
    assert top[0]["prob"] == first["confidence"] >= top[1]["prob"] >= top[2]["prob"]
    assert second["class_name"] is None and "empty file" in second["error"]
    tabbed = subprocess.run(
        [*args, "--top-k", "2", str(good[0])], capture_output=True, text=True, cwd=ROOT
    )
    path, c1, p1, c2, p2 = tabbed.stdout.strip().split("\t")
    assert (path, c1) == (str(good[0]), first["class_name"]) and float(p1) >= float(p2) and c2 != c1


def test_labels_from_dirs_that_name_no_class_stop_before_ray_and_say_why(
    tmp_path, tutorial_state_dict, caplog
):
    """The digits' ``zero``..``nine`` folders with a model of CIFAR-10's classes: an evaluation
    was asked for and none is possible (exit 2, the classes and the folders named); where some
    folders match, one line says how many files got a label and which folders did not."""
    words = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
    write_digits(tmp_path / "digits", np.random.default_rng(0), n_train=10, names=words)
    args = [sys.executable, "-m", "jobs.predict", "--model", str(tutorial_state_dict)]
    args += ["--input", str(tmp_path / "digits" / "val"), "--output", str(tmp_path / "o")]
    r = subprocess.run([*args, "--labels-from-dirs"], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "no folder below the input names one of the model's classes" in r.stderr
    assert "airplane, automobile, bird" in r.stderr and "eight, five, four" in r.stderr
    assert not (tmp_path / "o").exists()  # nothing started, nothing written
    (tmp_path / "digits" / "val" / "five").rename(tmp_path / "digits" / "val" / "cat")
    cfg = PredictConfig(
        model=str(tutorial_state_dict),
        input=[str(tmp_path / "digits" / "val")],
        output=str(tmp_path / "o"),
        labels_from_dirs=True,
    )
    with caplog.at_level(logging.WARNING):
        pre = preflight(cfg)
    cats = len(list((tmp_path / "digits" / "val" / "cat").iterdir()))
    assert len(pre.labels) - pre.labels.null_count == cats > 0
    [line] = [r.getMessage() for r in caplog.records if "--labels-from-dirs" in r.getMessage()]
    assert f"{cats} of {len(pre.labels)} files got a label" in line
    assert "eight, four, nine, one, seven, six, three, two, zero" in line


def test_decode_module_does_not_import_torch():
    # Ray Data's decode tasks import only this module: they start in a fraction of a second
    # instead of waiting ~1.5 s for torch, and decode while the actors are still loading it.
    code = "import sys, cifar.io.images; print([m for m in ('torch', 'ray') if m in sys.modules])"
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


def test_plan_decodes_small_inputs_in_the_actors_and_sizes_batches_for_the_model():
    """The CPU plan's rule (docs/results.md, Prediction): every CPU to the actors; inputs up
    to 64 px decoded in actors of one thread, larger ones by decode tasks beside actors of 2
    threads (where a node has 2 CPUs free); batches of about 32 x 224 x 224 pixels at most; no
    more actors than batches of the work."""
    from cifar.cluster.resources import ClusterInfo
    from cifar.predict.plan import plan_resources

    two = ClusterInfo(2, 0)
    small = plan_resources(PredictConfig(), two, 21000, input_size=32)
    assert small.decode_in_actors and small.actors == (1, 2, 2) and small.batch_size == 256
    assert "decoding their own batches" in small.describe()
    photos = plan_resources(PredictConfig(), two, 550, input_size=224)
    assert not photos.decode_in_actors and photos.decode_tasks == 1
    assert photos.actors == (1, 1, 1) and (photos.batch_size, photos.actor_cpus) == (32, 2)
    few = plan_resources(PredictConfig(), ClusterInfo(8, 0), 45, input_size=224)
    assert few.actors == (1, 2, 2)  # 45 photos are 2 batches: a third actor would idle
    assert plan_resources(PredictConfig(), ClusterInfo(16, 0), None, 224).actors == (1, 8, 8)
    ones = ClusterInfo(2, 0, largest_node_cpus=1)  # two 1-CPU nodes: actors of one thread
    busy = ClusterInfo(8, 0, free_cpus=1)  # one CPU free now: no actor waits for a second
    for cluster in (ones, busy):
        assert plan_resources(PredictConfig(), cluster, 550, input_size=224).actor_cpus == 1
    asked = plan_resources(PredictConfig(batch_size=8, cpus_per_actor=2), two, 550, 224)
    assert (asked.batch_size, asked.actors, asked.actor_cpus) == (8, (1, 1, 1), 2)


def test_batch_predictor_that_decodes_its_batch_keeps_one_row_per_file(tmp_path):
    """Decoding in the actor (small inputs): the same rows as decode tasks then the actor."""
    import pyarrow as pa

    from cifar.io.images import decode_batch
    from cifar.predict.predictor import BatchPredictor, PredictorSettings

    meta = {"arch": "cifar10_quick", "num_classes": 10, "classes": list("abcdefghij")}
    save_checkpoint(tmp_path / "run", CifarQuick(), meta)
    good, bad = make_image_tree(tmp_path / "imgs")
    paths = np.array([str(p) for p in [*good[:3], *bad[:2]]], dtype=object)
    batch = {"path": paths, "relpath": paths}
    settings = PredictorSettings(str(tmp_path / "run"), precision="fp32", batch_size=8)
    fused = BatchPredictor(settings, decode=decode_batch)(dict(batch))
    apart = BatchPredictor(settings)(decode_batch(dict(batch), 32))
    assert isinstance(fused, pa.Table) and fused.equals(apart)
    assert fused.column("path").to_pylist() == list(paths)
    assert fused.column("error").null_count == 3  # the good ones; the broken ones say why
