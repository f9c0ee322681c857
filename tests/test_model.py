import pytest
import torch
from torch import nn

from cifar.data.cifar10 import CIFAR10_CLASSES
from cifar.models.cifar_quick import CifarQuick, max_pool_2x2
from cifar.models.registry import match_state_dict
from tests.helpers.tutorial import MyNetwork


def test_output_shape_matches_tutorial():
    out = CifarQuick()(torch.ones(64, 3, 32, 32))
    assert out.shape == (64, 10)


def test_parameter_names_and_shapes_equal_the_tutorials():
    ours = CifarQuick().state_dict()
    theirs = MyNetwork().state_dict()
    assert list(ours) == list(theirs)
    names = list(ours)
    assert names[0] == "model1.0.weight" and names[-1] == "model1.8.bias"
    assert all(ours[k].shape == theirs[k].shape for k in ours)


def test_tutorial_weights_give_identical_outputs():
    torch.manual_seed(0)
    tut = MyNetwork().eval()
    ours = CifarQuick().eval()
    ours.load_state_dict(tut.state_dict(), strict=True)
    x = torch.rand(8, 3, 32, 32)
    assert torch.equal(ours(x), tut(x))


def test_relu_variant_is_nonlinear_and_recorded_by_key_names():
    m = CifarQuick(relu=True)
    assert sum(isinstance(layer, nn.ReLU) for layer in m.model1) == 4
    assert match_state_dict(m.state_dict()) == ("cifar10_quick_relu", 10)
    assert match_state_dict(CifarQuick().state_dict()) == ("cifar10_quick", 10)
    assert match_state_dict({"fc.weight": torch.zeros(1)}) is None
    # without ReLU the conv stack is piecewise linear only through max-pool; with ReLU,
    # negating the input does not negate the output
    x = torch.rand(2, 3, 32, 32)
    assert not torch.allclose(m(x) - m(torch.zeros_like(x)), -(m(-x) - m(torch.zeros_like(x))))


def test_class_names():
    assert len(CIFAR10_CLASSES) == 10 and CIFAR10_CLASSES[3] == "cat"


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("bf16", [False, True])
def test_inference_forward_gives_bit_identical_logits(relu, bf16):
    torch.manual_seed(1)
    model = CifarQuick(relu=relu).eval().to(memory_format=torch.channels_last)
    x = torch.rand(64, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        assert torch.equal(model.forward_inference(x), model(x))
    ties = torch.randint(-2, 3, (4, 5, 16, 16)).float()  # many windows with repeated maxima
    assert torch.equal(max_pool_2x2(ties), torch.nn.functional.max_pool2d(ties, 2))
