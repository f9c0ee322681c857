import json
import os
import pickle
from pathlib import Path

import pytest
import torch
from torch import nn

from cifar.models import checkpoint as C
from cifar.models.cifar_quick import CifarQuick
from cifar.models.loading import load_model
from tests.helpers.tutorial import MyNetwork


def test_round_trip_restores_identical_outputs_and_meta(tmp_path):
    torch.manual_seed(1)
    m = CifarQuick(relu=True)
    meta = {
        "arch": "cifar10_quick",
        "relu": True,
        "num_classes": 10,
        "classes": list("abcdefghij"),
        "normalize": {"mean": [0.5] * 3, "std": [0.2] * 3},
        "image_size": 32,
        "epoch": 3,
    }
    opt = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)
    m(torch.rand(2, 3, 32, 32)).sum().backward()
    opt.step()
    C.save_checkpoint(tmp_path, m, meta, {"optimizer": opt.state_dict(), "epoch": 2})
    loaded = load_model(tmp_path)
    x = torch.rand(4, 3, 32, 32)
    assert torch.equal(loaded.model(x), m.eval()(x))
    assert loaded.meta["epoch"] == 3 and loaded.classes == list("abcdefghij")
    assert loaded.spec.mean == (0.5,) * 3
    st = C.load_train_state(tmp_path)
    assert st["epoch"] == 2
    buf = st["optimizer"]["state"][0]["momentum_buffer"]
    assert torch.equal(buf, opt.state_dict()["state"][0]["momentum_buffer"])
    saved = json.loads((tmp_path / C.META_FILE).read_text())
    assert saved["format_version"] == C.FORMAT_VERSION


def test_wrappers_do_not_leak_prefixes_into_saved_weights(tmp_path):
    m = CifarQuick()
    compiled_like = nn.Module()
    compiled_like._orig_mod = m  # what torch.compile's OptimizedModule exposes

    class DDPLike(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.module = inner

    C.save_checkpoint(tmp_path, DDPLike(m), {"arch": "cifar10_quick"})
    keys = list(torch.load(tmp_path / C.MODEL_FILE, weights_only=True))
    assert keys[0] == "model1.0.weight"
    assert C.unwrap(compiled_like) is m
    prefixed = {"module._orig_mod." + k: v for k, v in m.state_dict().items()}
    assert list(C.clean_state_dict(prefixed)) == list(m.state_dict())


def test_tutorial_state_dict_loads_with_tutorial_preprocessing(tmp_path):
    torch.manual_seed(2)
    tut = MyNetwork()
    path = tmp_path / "mywork_10.pth"
    torch.save(tut.state_dict(), path)  # the tutorial's "method 2"
    loaded = load_model(path)
    assert loaded.meta["normalize"] is None and loaded.meta["relu"] is False
    assert loaded.classes[5] == "dog"
    x = torch.rand(3, 3, 32, 32)
    assert torch.equal(loaded.model(x), tut.eval()(x))


class _Boom:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_code_running_pickle_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "ran"
    boom = _Boom()
    boom.marker = marker
    bad = tmp_path / "evil.pth"
    with open(bad, "wb") as f:
        pickle.dump(boom, f)
    with pytest.raises(C.CheckpointError, match="refused"):
        load_model(bad)
    torch.save({"model1.0.weight": boom}, bad)  # torch zip format, same payload
    with pytest.raises(C.CheckpointError, match="refused"):
        load_model(bad)
    assert not marker.exists()


def test_whole_module_pickle_is_refused_with_resave_instructions(tmp_path):
    path = tmp_path / "mywork_1.pth"
    torch.save(MyNetwork(), path)  # the tutorial's "method 1"
    with pytest.raises(C.CheckpointError) as e:
        load_model(path)
    msg = str(e.value)
    assert "state_dict" in msg and "MyNetwork" in msg and "torch.save(model, path)" in msg


def test_wrong_architecture_names_the_mismatched_keys(tmp_path):
    sd = CifarQuick().state_dict()
    sd.pop("model1.8.bias")
    sd["model1.7.weight"] = torch.zeros(32, 1024)
    sd["fc.extra"] = torch.zeros(1)
    path = tmp_path / "x.pt"
    torch.save(sd, path)
    with pytest.raises(C.CheckpointError) as e:
        load_model(path)
    msg = str(e.value)
    assert "model1.8.bias" in msg and "fc.extra" in msg


def test_shape_mismatch_with_meta_is_named(tmp_path):
    m = CifarQuick()
    C.save_checkpoint(
        tmp_path,
        m,
        {
            "arch": "cifar10_quick",
            "relu": False,
            "num_classes": 10,
            "classes": [str(i) for i in range(10)],
        },
    )
    sd = torch.load(tmp_path / C.MODEL_FILE, weights_only=True)
    sd["model1.7.weight"] = torch.zeros(64, 512)
    torch.save(sd, tmp_path / C.MODEL_FILE)
    with pytest.raises(C.CheckpointError, match=r"model1\.7\.weight: file \(64, 512\)"):
        load_model(tmp_path)


def test_missing_truncated_and_non_state_dict_files(tmp_path):
    with pytest.raises(C.CheckpointError, match="does not exist"):
        load_model(tmp_path / "nope.pt")
    p = tmp_path / "t.pt"
    torch.save(CifarQuick().state_dict(), p)
    p.write_bytes(p.read_bytes()[:500])
    with pytest.raises(C.CheckpointError, match="not a readable PyTorch file"):
        load_model(p)
    torch.save([1, 2, 3], p)
    with pytest.raises(C.CheckpointError, match="not a state_dict"):
        load_model(p)
    (tmp_path / "emptydir").mkdir()
    with pytest.raises(C.CheckpointError, match="without a model"):
        load_model(tmp_path / "emptydir")


def test_run_directory_resolves_to_export_or_best_checkpoint(tmp_path):
    run = tmp_path / "run"
    for epoch, acc in ((1, 0.3), (2, 0.7), (3, 0.5)):
        C.save_checkpoint(
            run / f"checkpoint_epoch_{epoch:04d}",
            CifarQuick(),
            {"arch": "cifar10_quick", "epoch": epoch, "metrics": {"test_accuracy": acc}},
        )
    sd_path, meta = C.resolve_model(run)
    assert meta["epoch"] == 2 and Path(sd_path).parent.name == "checkpoint_epoch_0002"
    C.save_checkpoint(run / "model", CifarQuick(), {"arch": "cifar10_quick", "epoch": 9})
    sd_path, meta = C.resolve_model(run)
    assert meta["epoch"] == 9 and Path(sd_path).parent.name == "model"
