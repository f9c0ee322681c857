"""The tutorial's two ways to add a layer to torchvision's vgg16, each saved as it saves them
(``torch.save(vgg16.state_dict(), "vgg16_method2.pth")``, random weights: no download):
``vgg16.classifier.add_module('cadd_linear', nn.Linear(1000, 10))`` runs (its Sequential calls
it), so the model is rebuilt with it for prediction and fine-tuning; ``vgg16.add_module(
'add_linear', ...)`` never runs, so it is refused with the fix. vgg16's 528 MB are written once
per fixture; images are 32 px."""

import json
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from torch import nn

from cifar.config import ConfigError
from cifar.models.checkpoint import CheckpointError
from cifar.models.loading import load_model, load_pretrained
from cifar.models.registry import ModelSpec, build_model
from cifar.models.vision import Appended, guess_arch
from cifar.predict.predictor import Predictor
from tests.paths import ROOT

CADD = Appended("classifier", "cadd_linear", 1000, 10)
CIFAR10 = ModelSpec.of().classes
NEVER_CALLED = (
    "the layer add_linear (add_linear.weight, add_linear.bias) is never called by vgg16's forward"
)


@pytest.fixture(scope="module")
def appended(tmp_path_factory):
    """(file, the tutorial's model in eval mode): a layer appended to vgg16's classifier."""
    torch.manual_seed(0)
    vgg16 = torchvision.models.vgg16()
    vgg16.classifier.add_module("cadd_linear", nn.Linear(1000, 10))
    path = tmp_path_factory.mktemp("appended") / "vgg16_method2.pth"
    torch.save(vgg16.state_dict(), path)
    return path, vgg16.eval()


@pytest.fixture(scope="module")
def beside(tmp_path_factory):
    """A layer added beside vgg16's features/avgpool/classifier: its forward never calls it."""
    vgg16 = torchvision.models.vgg16()
    vgg16.add_module("add_linear", nn.Linear(1000, 10))
    path = tmp_path_factory.mktemp("beside") / "vgg16_method2.pth"
    torch.save(vgg16.state_dict(), path)
    return path


def _images(n: int = 3, side: int = 32) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, 256, (n, 3, side, side), dtype=torch.uint8, generator=g)


def test_appended_layer_is_rebuilt_and_answers_as_the_tutorial_model(appended):
    path, tutorial = appended
    loaded = load_model(path, arch="vgg16", image_size=32)
    assert loaded.spec.appended == (CADD,) and loaded.spec.head == "classifier.cadd_linear"
    assert loaded.classes == list(CIFAR10) and loaded.spec.mean is None  # as any 10-way file
    assert loaded.meta["appended"][0]["name"] == "cadd_linear"
    x = _images().float() / 255
    with torch.inference_mode():
        got, want = loaded.model(x), tutorial(x)
    assert got.shape == (3, 10)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    keys = list(tutorial.state_dict())  # without --arch, the error names it from these
    assert guess_arch(keys, ["resnet18", "vgg11", "vgg16"]) == "vgg16"


def test_predictor_from_path_matches_the_tutorial_forward(appended):
    path, tutorial = appended
    predictor = Predictor.from_path(
        str(path), "cpu", arch="vgg16", image_size=32, precision="fp32", channels_last=False
    )
    images = _images()
    got = predictor.probabilities(images.numpy())
    with torch.inference_mode():
        want = torch.softmax(tutorial(images.float() / 255), 1).numpy()  # ToTensor()
    assert got.shape == (3, 10)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_appended_layers_round_trip_through_meta_json():
    spec = ModelSpec.of("vgg16", CIFAR10, input_size=32, appended=[CADD])
    assert ModelSpec.from_meta(json.loads(json.dumps(spec.to_meta()))) == spec
    older = {k: v for k, v in spec.to_meta().items() if k != "appended"}
    assert ModelSpec.from_meta(older).appended == ()  # meta.json before appended layers
    assert "appended" not in ModelSpec.of("vgg16", CIFAR10).to_meta()
    with pytest.raises(ConfigError, match="3 classes, but the last appended layer"):
        ModelSpec.of("vgg16", ["a", "b", "c"], appended=[CADD])
    with pytest.raises(ConfigError, match="takes no appended layers"):
        ModelSpec.of("cifar10_quick", CIFAR10, appended=[CADD])


def test_fine_tuning_keeps_the_appended_layer_and_replaces_it_as_the_head(appended):
    path, tutorial = appended
    base = ModelSpec.of("vgg16", ["ant", "bee", "wasp"], input_size=32)
    pre = load_pretrained(str(path), base)
    assert pre.appended == (Appended("classifier", "cadd_linear", 1000, 3),)
    assert "vgg16 + classifier.cadd_linear loaded" in pre.message
    assert "its 10-way head dropped for a new 3-way one" in pre.message
    assert "classifier.cadd_linear.weight" not in pre.state_dict
    spec = ModelSpec.of("vgg16", base.classes, input_size=32, appended=pre.appended)
    assert spec.head == "classifier.cadd_linear"
    model = build_model(spec)
    missing, unexpected = model.load_state_dict(pre.state_dict, strict=False)
    assert missing == ["classifier.cadd_linear.weight", "classifier.cadd_linear.bias"]
    assert unexpected == []
    assert torch.equal(model.classifier[6].weight, tutorial.classifier[6].weight)  # 1000-way
    with torch.inference_mode():
        assert model.eval()(_images(1).float() / 255).shape == (1, 3)


def test_a_layer_the_forward_never_calls_is_refused_with_the_fix(beside):
    with pytest.raises(CheckpointError) as e:
        load_model(beside, arch="vgg16")
    text = str(e.value)
    assert "\n" not in text and NEVER_CALLED in text
    assert "so the model would still answer 1000 ImageNet classes" in text
    assert "vgg16.classifier.add_module('add_linear', nn.Linear(1000, 10))" in text
    assert "replace classifier[6]: vgg16.classifier[6] = nn.Linear(4096, 10)" in text
    spec = ModelSpec.of("vgg16", ["ant", "bee", "wasp"], input_size=32)
    with pytest.raises(CheckpointError, match=re.escape(NEVER_CALLED)):
        load_pretrained(str(beside), spec)


def test_classify_cli_runs_the_appended_layer_and_refuses_the_other(appended, beside, tmp_path):
    image = tmp_path / "cat.png"
    Image.fromarray(_images(1, 40)[0].permute(1, 2, 0).numpy()).save(image)
    cmd = [sys.executable, "-m", "jobs.classify", "--arch", "vgg16", "--image-size", "32"]
    cmd += ["--precision", "fp32", str(image), "--model"]
    ok = subprocess.run([*cmd, str(appended[0])], cwd=ROOT, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    path, name, confidence = ok.stdout.strip().split("\t")
    assert path == str(image) and name in CIFAR10 and 0 < float(confidence) <= 1
    refused = subprocess.run([*cmd, str(beside)], cwd=ROOT, capture_output=True, text=True)
    assert refused.returncode != 0 and refused.stdout == ""
    assert refused.stderr.startswith("error: ") and NEVER_CALLED in refused.stderr
    assert refused.stderr.count("\n") == 1 and "Traceback" not in refused.stderr
