"""torchvision architectures: built with the data's head, trained, checkpointed, reloaded and
classified with (small images, CPU, no Ray); fine-tuning from weights files saved here from the
torchvision constructors (no download); the tutorial's vgg16 lesson."""

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from torch import nn

from cifar.config import ConfigError
from cifar.data.dataset import TensorSplits
from cifar.device import resolve_compute
from cifar.models.checkpoint import CheckpointError, model_meta, save_checkpoint
from cifar.models.loading import load_model, load_pretrained
from cifar.models.registry import ModelSpec, build_model, get_arch, head_name_of
from cifar.predict.predictor import Predictor, PredictorSettings
from cifar.train.config import TrainConfig, resolve_recipe
from cifar.train.engine import build, train_one_epoch

ARCHS = ["resnet18", "resnet50", "vgg16", "mobilenet_v3_small", "efficientnet_b0", "convnext_tiny"]
CLASSES = ["ant", "bee", "wasp"]
FP32 = resolve_compute("cpu", "fp32", False)


def _data(n: int = 6, side: int = 40, seed: int = 0) -> TensorSplits:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, side, side), dtype=torch.uint8, generator=g)
    labels = torch.arange(n) % len(CLASSES)
    return TensorSplits(
        {
            "train_images": images,
            "train_labels": labels,
            "test_images": images[:3],
            "test_labels": labels[:3],
        }
    )


def _cfg(arch: str, **kw) -> TrainConfig:
    base = {"arch": arch, "epochs": 1, "batch_size": 6, "image_size": 32, "precision": "fp32"}
    return resolve_recipe(TrainConfig(**{**base, **kw}), 6, 1)


@pytest.mark.parametrize("arch", ARCHS)
def test_arch_swaps_its_head_trains_a_step_and_round_trips_to_prediction(arch, tmp_path):
    spec = ModelSpec.of(arch, CLASSES, input_size=32)
    assert spec.input_size == 32 and ModelSpec.of(arch, CLASSES).input_size == 224
    reference = torchvision.models.get_model(arch)  # torchvision's own, 1000 classes
    head = head_name_of(arch)
    assert reference.get_submodule(head).out_features == 1000
    e = build(_cfg(arch), _data(side=40), spec, FP32)  # 40 px files, resized to 32 on the fly
    assert set(e.raw.state_dict()) == set(reference.state_dict())  # torchvision's names
    assert e.raw.get_submodule(head).out_features == len(CLASSES)
    before = {k: v.clone() for k, v in e.raw.state_dict().items()}
    stats = train_one_epoch(e, 0)
    assert stats.steps == 1 and np.isfinite(stats.loss_sum)
    after = e.raw.state_dict()
    assert not torch.equal(before[f"{head}.weight"], after[f"{head}.weight"])

    save_checkpoint(tmp_path, e.raw, model_meta(spec, epoch=1))
    loaded = load_model(tmp_path)
    assert loaded.spec == spec and loaded.classes == CLASSES
    images = _data(4, 32, seed=1).parts["train_images"]
    with torch.inference_mode():
        want = torch.softmax(e.raw.eval()(images.float() / 255), 1).numpy()
    settings = PredictorSettings("", device="cpu", precision="fp32", channels_last=False)
    got = Predictor(settings, loaded).probabilities(images.numpy())
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_unknown_arch_names_the_nearest_and_where_the_names_come_from():
    with pytest.raises(ConfigError, match="Did you mean resnet18") as e:
        get_arch("resnet81")
    assert "list_models" in str(e.value)
    with pytest.raises(ConfigError, match="224x224 images only"):
        ModelSpec.of("vit_b_16", CLASSES, input_size=64)
    assert "--arch" in " ".join(m for ok, m in TrainConfig(arch="resnt18").checks() if not ok)


@pytest.fixture(scope="module")
def resnet18_file(tmp_path_factory):
    """What `torch.save(torchvision.models.resnet18(weights=...).state_dict(), FILE)` writes
    (random weights here: no download)."""
    torch.manual_seed(7)
    path = tmp_path_factory.mktemp("w") / "resnet18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), path)
    return path


def test_fine_tuning_loads_the_backbone_and_drops_the_imagenet_head(resnet18_file):
    spec = ModelSpec.of("resnet18", CLASSES, input_size=32)
    pre = load_pretrained(str(resnet18_file), spec)
    assert "fc.weight" not in pre.state_dict and not pre.kept_head and not pre.from_run
    assert "1000-way head dropped for a new 3-way one" in pre.message
    assert pre.mean == (0.485, 0.456, 0.406)  # ImageNet's, as the weights were trained
    file = torch.load(resnet18_file, weights_only=True)
    cfg = _cfg("resnet18", weights=str(resnet18_file), backbone_lr=0.1)
    e = build(cfg, _data(), spec, FP32, initial=pre.state_dict)
    got = e.raw.state_dict()
    assert all(torch.equal(got[k], file[k]) for k in file if not k.startswith("fc."))
    assert got["fc.weight"].shape == (3, 512)
    groups = e.optimizer.param_groups  # --backbone-lr 0.1: the backbone at lr/10, the head at lr
    assert [g["max_lr"] for g in groups] == pytest.approx([e.cfg.lr * 0.1, e.cfg.lr])
    assert groups[1]["params"] == [e.raw.fc.weight, e.raw.fc.bias]


def test_frozen_backbone_is_unchanged_after_training_and_the_head_learns(resnet18_file):
    spec = ModelSpec.of("resnet18", CLASSES, input_size=32)
    pre = load_pretrained(str(resnet18_file), spec)
    cfg = _cfg("resnet18", weights=str(resnet18_file), freeze_backbone=True, epochs=2)
    e = build(cfg, _data(), spec, FP32, initial=pre.state_dict)
    head0 = e.raw.fc.weight.detach().clone()
    for epoch in range(2):
        train_one_epoch(e, epoch)
    file = torch.load(resnet18_file, weights_only=True)
    got = e.raw.state_dict()  # batch-norm statistics included: the backbone stays in eval mode
    assert all(torch.equal(got[k], file[k]) for k in file if not k.startswith("fc."))
    assert not torch.equal(e.raw.fc.weight, head0)


def test_a_wrong_arch_file_is_refused_naming_what_it_holds(resnet18_file, tmp_path):
    spec = ModelSpec.of("mobilenet_v3_small", CLASSES, input_size=32)
    with pytest.raises(CheckpointError) as e:
        load_pretrained(str(resnet18_file), spec)
    text = str(e.value)
    assert "does not hold mobilenet_v3_small weights" in text
    assert "resnet18 weights (pass --arch resnet18)" in text and "fc.bias" in text
    with pytest.raises(CheckpointError, match="does not exist"):
        load_pretrained(str(tmp_path / "missing.pth"), spec)
    # an earlier run of another architecture: its meta.json says which
    run = tmp_path / "run"
    quick = ModelSpec.of("cifar10_quick", CLASSES)
    save_checkpoint(run, build_model(quick), model_meta(quick))
    with pytest.raises(CheckpointError, match=r"is a cifar10_quick model .*--arch cifar10_quick"):
        load_pretrained(str(run), spec)


def test_tutorial_vgg16_state_dict_classifies_like_the_tutorial(tmp_path):
    """The tutorial's lesson: vgg16 with classifier[6] replaced by Linear(4096, 10), saved with
    `torch.save(vgg16.state_dict(), "vgg16_method2.pth")`, classified with `--arch vgg16`:
    the same predictions as the tutorial's own forward on its preprocessing."""
    torch.manual_seed(0)
    vgg16 = torchvision.models.vgg16()
    vgg16.classifier[6] = nn.Linear(4096, 10)
    path = tmp_path / "vgg16_method2.pth"
    torch.save(vgg16.state_dict(), path)
    rng = np.random.default_rng(0)
    files = []
    for i in range(6):
        f = tmp_path / "imgs" / f"{i}.png"
        f.parent.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (50 + i, 40, 3), dtype=np.uint8)).save(f)
        files.append(str(f))
    with pytest.raises(CheckpointError, match=r"bare state_dict of vgg16 .*Pass --arch vgg16"):
        load_model(path)
    classifier = Predictor.from_path(str(path), arch="vgg16", image_size=32, precision="fp32")
    assert classifier.classes[0] == "airplane" and classifier.spec.mean is None  # ToTensor()
    results = classifier.classify_files(files, top_k=1)

    to_tensor = torchvision.transforms.Compose(  # the tutorial's test.py preprocessing
        [torchvision.transforms.Resize((32, 32)), torchvision.transforms.ToTensor()]
    )
    vgg16.eval()
    with torch.inference_mode():
        x = torch.stack([to_tensor(Image.open(f).convert("RGB")) for f in files])
        probs = torch.softmax(vgg16(x), 1)
    assert [r.class_index for r in results] == probs.argmax(1).tolist()
    np.testing.assert_allclose([r.confidence for r in results], probs.max(1).values, rtol=1e-4)
