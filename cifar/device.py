"""Where and how the model computes, for training and inference alike: device, precision
(one vocabulary: ``auto``, ``fp32``, ``bf16``), memory format, and uint8 batches -> inputs.

On a CPU, ``auto`` is decided by measurement, not by CPU flags: bf16 autocast is faster than
fp32 on one AVX512-BF16 CPU and slower on another that has the same flag (docs/results.md).
:func:`measure` times a few steps of the actual work (a training step, or an inference batch)
for each precision and memory format and keeps the fastest.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DTYPES: dict[str, torch.dtype | None] = {
    "fp32": None,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
}


def parse_precision(value: str) -> str:
    """A typed precision; ``off`` (the old ``--amp off``) means fp32."""
    return "fp32" if value == "off" else value


@dataclass(frozen=True)
class Compute:
    """A resolved device, autocast dtype (None: fp32) and memory format, and why."""

    device: torch.device
    amp_dtype: torch.dtype | None = None
    channels_last: bool = True
    chosen_by: str = "flags"  # "flags", "gpu" (bf16 where the GPU has it, else fp16), "measured"
    ms_per_step: dict[str, float] = field(default_factory=dict, compare=False)  # if measured

    @property
    def name(self) -> str:
        return f"{self.precision}{' + channels_last' if self.channels_last else ''}"

    def describe(self) -> dict:
        """For config/summary/meta JSON."""
        return {
            "device": self.device.type,
            "precision": self.precision,
            "channels_last": self.channels_last,
            "chosen_by": self.chosen_by,
            "ms_per_step": self.ms_per_step,
        }

    @property
    def precision(self) -> str:
        return next(name for name, dtype in DTYPES.items() if dtype == self.amp_dtype)

    @property
    def needs_scaler(self) -> bool:
        """fp16 gradients underflow without loss scaling (bf16 has fp32's range)."""
        return self.amp_dtype == torch.float16

    def scaler(self) -> torch.amp.GradScaler:
        """The gradient scaler training uses: active for fp16, a no-op pass-through otherwise."""
        return torch.amp.GradScaler(self.device.type, enabled=self.needs_scaler)

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def place(self, model: nn.Module) -> nn.Module:
        """The model on this device, in this memory format."""
        fmt = torch.channels_last if self.channels_last else torch.preserve_format
        return model.to(self.device, memory_format=fmt)


@dataclass(frozen=True)
class Work:
    """What a precision measurement is for, so that its cost stays a small share of it: the
    ``items`` (images) the process will compute at ``batch`` a step (inference: the files;
    training: epochs x this rank's images)."""

    items: int
    batch: int
    share: float = 0.1  # measuring may cost at most this share of the work's estimated time
    budget_s: float = 30.0  # and never more than this, whatever the work


def resolve_compute(
    device: torch.device | str,
    precision: str = "auto",
    channels_last: bool | None = None,
    probe: Callable[..., Callable[[], None]] | None = None,
    reduce: Callable[[list[float]], list[float]] | None = None,
    cache_key: str | None = None,
    work: Work | None = None,
) -> Compute:
    """The Compute for ``precision``/``channels_last`` as typed (``None``: not typed).

    ``auto`` on a GPU is bf16 (tensor cores; no measurement needed). On a CPU, with ``probe``
    (``probe(compute[, batch])`` returns one step of the real work in that setting), every
    candidate is timed and the fastest kept; without one, fp32. ``work`` bounds what the
    measurement costs (:func:`measure_bounded`): where the work is smaller than measuring it,
    fp32 is used unmeasured and the reason recorded. ``reduce`` combines the timings of several
    processes (training ranks: the slowest rank's), so all choose alike. ``cache_key`` names
    the work and the machine: timings measured once are kept in this node's cache folder and
    reused (delete ``compute-timings.json`` there to measure again)."""
    device = torch.device(device)
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    layouts = [channels_last] if channels_last is not None else [True, False]
    if precision != "auto":
        return Compute(device, DTYPES[precision], layouts[0])
    if device.type == "cuda":  # tensor cores: bf16 where the GPU has it (Ampere on), else fp16
        dtype = torch.bfloat16 if gpu_has_bf16(device) else torch.float16
        return Compute(device, dtype, layouts[0], chosen_by="gpu")
    if probe is None:
        return Compute(device, None, layouts[0])
    candidates = [Compute(device, d, cl) for d in (None, torch.bfloat16) for cl in layouts]
    key = f"{cache_key}|{[c.name for c in candidates]}" if cache_key else None
    times = _cached_times(key) if key else None
    how = "measured earlier on this node" if times else "measured"
    skipped = ""
    if times is None:
        if work is None:
            times = measure(candidates, probe)
        else:
            measured, skipped = measure_bounded(candidates, probe, work)
            times = measured or [0.0] * len(candidates)
        if key and not skipped:
            _store_times(key, times)
    if reduce is not None:  # one collective on every rank, whether it measured, read or skipped
        flag = [1.0 if skipped else 0.0] if work is not None else []
        joined = reduce(flag + times)
        other = "another rank's work was smaller than measuring it"
        skipped = skipped or (other if flag and joined[0] else "")
        times = joined[len(flag) :]
    if skipped:  # any rank's: all of them compute alike
        return Compute(device, None, layouts[0], chosen_by=f"not measured: {skipped}")
    best = min(range(len(candidates)), key=times.__getitem__)
    figures = {c.name: round(t * 1000, 2) for c, t in zip(candidates, times, strict=True)}
    chosen = candidates[best]
    return Compute(chosen.device, chosen.amp_dtype, chosen.channels_last, how, figures)


def measure_bounded(
    candidates: list[Compute],
    probe: Callable[..., Callable[[], None]],
    work: Work,
    rounds: int = 3,
) -> tuple[list[float] | None, str]:
    """:func:`measure` at a batch no larger than the work (nor than ``work.batch``), costing at
    most ``work.share`` of the work's estimated time and ``work.budget_s``: two steps of a few
    images estimate the time an image takes; the batch is halved until measuring fits; work
    too small for even a small measurement is not measured: (None, why). Returns each
    candidate's seconds per step of ``work.batch`` images (scaled from the batch measured), and
    "" or why it did not measure. No collective here: ranks join in :func:`resolve_compute`."""
    small = max(1, min(SMALL_BATCH, work.batch, work.items))
    step = probe(candidates[0], small)
    step()  # builds the kernels
    t0 = time.perf_counter()
    step()
    per_item = (time.perf_counter() - t0) / small
    allowed = min(work.share * per_item * work.items, work.budget_s)
    steps_needed = len(candidates) * (rounds + 1)
    batch = max(1, min(work.batch, work.items))
    while batch > small and steps_needed * per_item * batch > allowed:
        batch //= 2
    if steps_needed * per_item * batch > allowed:
        return None, (
            f"the work ({work.items} images, about {per_item * work.items:.1f} s) is smaller "
            f"than measuring {len(candidates)} settings would cost"
        )
    times = measure(candidates, lambda c: probe(c, batch), rounds, early_stop=True)
    return [t / batch * work.batch for t in times], ""


SMALL_BATCH = 4  # images a step of the first estimate takes


def gpu_has_bf16(device: torch.device) -> bool:
    """True on GPUs with native bf16 (compute capability 8.0 on); T4 and V100 have none."""
    with torch.cuda.device(device):
        return torch.cuda.is_bf16_supported()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(
    candidates: list[Compute],
    probe: Callable[[Compute], Callable[[], None]],
    rounds: int = 3,
    early_stop: bool = False,
) -> list[float]:
    """Seconds per step of ``probe(c)`` for each candidate: one warm-up step each (it builds
    the kernels), then ``rounds`` rounds of one step of every candidate in turn (so a change in
    the machine's load hits all alike), keeping each candidate's fastest step. ``early_stop``:
    no more rounds once one candidate is clearly ahead (every other at least 1.5x slower)."""
    steps = [probe(c) for c in candidates]
    for step in steps:
        step()
    best = [float("inf")] * len(steps)
    for _ in range(rounds):
        for i, step in enumerate(steps):
            t0 = time.perf_counter()
            step()
            best[i] = min(best[i], time.perf_counter() - t0)
        ordered = sorted(best)
        if early_stop and len(ordered) > 1 and ordered[1] > CLEARLY_AHEAD * ordered[0]:
            break
    return best


CLEARLY_AHEAD = 1.5


def machine_key() -> str:
    """This CPU and torch build, for cache keys: timings from elsewhere do not apply here."""
    model = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        model = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "")
    return f"{model}|{torch.__version__}|threads={torch.get_num_threads()}"


def _timings_file():
    from cifar.env import cache_root

    return cache_root() / "compute-timings.json"


def _cached_times(key: str) -> list[float] | None:
    import json

    with contextlib.suppress(OSError, ValueError):
        return json.loads(_timings_file().read_text()).get(key)
    return None


def _store_times(key: str, times: list[float]) -> None:
    import json

    from filelock import FileLock

    f = _timings_file()
    f.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(f) + ".lock"):
        known = {}
        with contextlib.suppress(OSError, ValueError):
            known = json.loads(f.read_text())
        known[key] = times
        tmp = f.with_suffix(".tmp")
        tmp.write_text(json.dumps(known, indent=1))
        tmp.replace(f)
