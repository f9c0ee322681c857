"""Precision and memory format: chosen by measuring the real work, not by CPU flags."""

import pytest
import torch

from cifar.data.cifar10 import load_cifar10
from cifar.data.dataset import TensorSplits
from cifar.device import Work, resolve_compute
from cifar.models.probe import step_probe
from cifar.models.registry import ModelSpec, build_model
from cifar.train.config import TrainConfig, resolve_recipe
from cifar.train.engine import build, evaluate, train_one_epoch

CFG = TrainConfig(batch_size=32)


@pytest.fixture(autouse=True)
def one_thread():
    """Timings taken on one thread: with more threads than free cores (a busy CI machine),
    OpenMP's waiting makes steps erratic, which is noise this test does not need."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _slowed(when):
    """The real training probe, where each step of the settings ``when(compute)`` picks runs
    the real step 20 times: those must lose, whatever this CPU's relative speeds are (no
    precision or layout is 20x slower than another on any CPU)."""
    spec = ModelSpec.of(mean=[0.5] * 3, std=[0.25] * 3)
    real = step_probe(lambda: build_model(spec), spec, 16, True, CFG.augment, CFG.momentum)

    def probe(c):
        step = real(c)
        repeat = 20 if when(c) else 1

        def slowed_step():
            for _ in range(repeat):
                step()

        return slowed_step

    return probe


@pytest.mark.parametrize(
    ("slow", "want"),
    [
        (lambda c: c.precision == "bf16", ("fp32",)),
        (lambda c: c.precision == "fp32", ("bf16",)),
        (lambda c: c.channels_last, (False,)),
        (lambda c: not c.channels_last, (True,)),
    ],
)
def test_auto_picks_what_measures_fastest(slow, want):
    c = resolve_compute("cpu", "auto", None, probe=_slowed(slow))
    assert c.chosen_by == "measured" and len(c.ms_per_step) == 4
    got = c.precision if isinstance(want[0], str) else c.channels_last
    assert got == want[0]
    assert min(c.ms_per_step.values()) == c.ms_per_step[c.name]


def test_the_slowest_rank_decides():
    # this process finds bf16 slower; another rank reports fp32 far slower still
    def other_rank(times):
        return [max(t, 60.0) if i < 2 else t for i, t in enumerate(times)]

    probe = _slowed(lambda c: c.precision == "bf16")
    c = resolve_compute("cpu", "auto", None, probe=probe, reduce=other_rank)
    assert c.precision == "bf16"


def test_flags_and_gpus_need_no_measurement(monkeypatch):
    monkeypatch.setattr("cifar.device.gpu_has_bf16", lambda d: True)  # no GPU here to ask

    def never(c):
        raise AssertionError("measured although the choice was given")

    assert resolve_compute("cpu", "fp32", probe=never).precision == "fp32"
    c = resolve_compute("cpu", "bf16", False, probe=never)
    assert (c.precision, c.channels_last, c.chosen_by) == ("bf16", False, "flags")
    gpu = resolve_compute("cuda", "auto", probe=never)
    assert (gpu.precision, gpu.chosen_by) == ("bf16", "gpu")
    only_cl = resolve_compute("cpu", "auto", True, probe=_slowed(lambda c: False))
    assert set(only_cl.ms_per_step) == {"fp32 + channels_last", "bf16 + channels_last"}


def test_timings_are_measured_once_per_machine_and_work(tmp_path, monkeypatch):
    monkeypatch.setenv("CIFAR_RAY_CACHE", str(tmp_path))
    first = resolve_compute(
        "cpu", "auto", probe=_slowed(lambda c: c.precision == "bf16"), cache_key="k1"
    )
    assert first.chosen_by == "measured" and first.precision == "fp32"

    def never(c):
        raise AssertionError("measured again")

    again = resolve_compute("cpu", "auto", probe=never, cache_key="k1")
    assert again.chosen_by == "measured earlier on this node"
    assert (again.name, again.ms_per_step) == (first.name, first.ms_per_step)
    other = resolve_compute(
        "cpu", "auto", probe=_slowed(lambda c: c.precision == "fp32"), cache_key="k2"
    )
    assert other.chosen_by == "measured" and other.precision == "bf16"


def _counting(slow=lambda c: False):
    """The real inference probe of CIFAR10-quick, recording the batch of every step it makes;
    steps of the settings ``slow`` picks run 20 times over."""
    spec = ModelSpec.of(mean=[0.5] * 3, std=[0.25] * 3)
    real = step_probe(lambda: build_model(spec), spec, 64, train=False)
    asked: list[int] = []

    def probe(c, n=64):
        step = real(c, n)

        def counted():
            asked.append(n)
            for _ in range(20 if slow(c) else 1):
                step()

        return counted

    return probe, asked


def test_work_smaller_than_measuring_it_is_not_measured():
    """Two images to classify: an estimate of two tiny steps, then fp32 and the reason."""
    probe, asked = _counting()
    c = resolve_compute("cpu", "auto", None, probe=probe, work=Work(items=2, batch=256))
    assert asked == [2, 2]  # the estimate alone, at no more images than the work has
    assert c.precision == "fp32" and c.ms_per_step == {}
    assert c.chosen_by.startswith("not measured: the work (2 images, about ")


def test_measuring_stays_within_its_share_of_the_work_and_stops_when_one_is_ahead():
    """Large work: measured, at no larger a batch than the work needs; every other setting 20x
    slower: one round is enough (1 estimate + 4 warm-ups + 4 timed steps, not 4 rounds)."""
    probe, asked = _counting(slow=lambda c: c.name != "fp32")
    c = resolve_compute("cpu", "auto", None, probe=probe, work=Work(items=10**6, batch=32))
    assert c.chosen_by == "measured" and c.name == "fp32" and len(c.ms_per_step) == 4
    assert len(asked) == 2 + 4 + 4 and max(asked) <= 32
    probe, asked = _counting()
    budget = Work(items=2000, batch=512, share=0.1, budget_s=0.5)
    resolve_compute("cpu", "auto", None, probe=probe, work=budget)
    assert max(asked) < 512  # 512 images x 16 steps would cost far more than half a second


def test_ranks_join_in_one_collective_and_all_skip_when_one_does():
    """Every rank makes exactly one reduce call whether it measured, read the cache or skipped
    (a rank that read the cache while another measured must not wait on a second collective),
    and when one rank skips, all compute in fp32."""
    calls = []

    def other_rank_skipped(values):
        calls.append(len(values))
        return [1.0, *values[1:]]  # the flag first: another rank did not measure

    probe, _ = _counting()
    work = Work(items=10**6, batch=32)
    c = resolve_compute("cpu", "auto", None, probe=probe, reduce=other_rank_skipped, work=work)
    assert calls == [5] and c.precision == "fp32" and c.ms_per_step == {}
    assert c.chosen_by == "not measured: another rank's work was smaller than measuring it"


def test_accuracy_per_epoch_does_not_depend_on_the_precision(synthetic_dir):
    """Same data, seed and recipe in fp32 and in bf16 autocast: test accuracy after every
    epoch within 0.03 (600 test images: 18 images)."""
    data = load_cifar10(synthetic_dir)
    mean, std = data.channel_stats()
    cfg = resolve_recipe(TrainConfig(epochs=2, batch_size=64), len(data.train_labels), 1)
    curves = {}
    for precision in ("fp32", "bf16"):
        torch.manual_seed(0)
        spec = ModelSpec.of(classes=data.classes, mean=mean, std=std)
        e = build(cfg, data.splits(), spec, resolve_compute("cpu", precision))
        curves[precision] = []
        for epoch in range(cfg.epochs):
            train_one_epoch(e, epoch)
            curves[precision].append(evaluate(e)["test_accuracy"])
    assert curves["fp32"][-1] > 0.4
    for a, b in zip(curves["fp32"], curves["bf16"], strict=True):
        assert abs(a - b) <= 0.03, curves


def test_gpus_get_bf16_where_they_have_it_else_fp16_with_loss_scaling(monkeypatch):
    """The capability check faked both ways (no GPU here): Ampere and later train in bf16,
    T4/V100-class GPUs in fp16 with a gradient scaler."""
    import cifar.device as device

    for has_bf16, want in ((True, "bf16"), (False, "fp16")):
        monkeypatch.setattr(device, "gpu_has_bf16", lambda d, has=has_bf16: has)
        c = resolve_compute("cuda", "auto")
        assert (c.precision, c.chosen_by, c.needs_scaler) == (want, "gpu", want == "fp16")


def test_fp16_trains_with_a_gradient_scaler_and_resumes_its_scale(synthetic_dir):
    """The fp16 branch run for real on the CPU: the scaler scales, steps and records its scale;
    a restored engine continues from the same scale."""
    data = load_cifar10(synthetic_dir)
    mean, std = data.channel_stats()
    spec = ModelSpec.of(classes=data.classes, mean=mean, std=std)
    cfg = resolve_recipe(TrainConfig(epochs=1, batch_size=32), 192, 1)
    small = TensorSplits({k: v[:192] for k, v in data.tensors().items()})  # fp16 is slow here
    e = build(cfg, small, spec, resolve_compute("cpu", "fp16", False))
    assert e.scaler.is_enabled() and e.scaler.get_scale() == 65536.0
    before = [p.detach().clone() for p in e.raw.parameters()]
    stats = train_one_epoch(e, 0)
    state = e.scaler.state_dict()
    assert stats.steps == 6 and torch.isfinite(torch.tensor(stats.loss_sum)) and state["scale"] > 0
    assert any(not torch.equal(a, b) for a, b in zip(before, e.raw.parameters(), strict=True))
    assert 0 <= evaluate(e)["test_loss"] < 10
    again = build(cfg, small, spec, resolve_compute("cpu", "fp16", False))
    again.restore(e.raw.state_dict(), e.optimizer.state_dict(), None, state)
    assert again.scaler.get_scale() == e.scaler.get_scale()
    plain = build(cfg, small, spec, resolve_compute("cpu", "bf16", False))
    assert not plain.scaler.is_enabled()  # bf16 and fp32 train exactly as before
