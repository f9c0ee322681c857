"""What :func:`cifar.device.resolve_compute` times to choose a precision: one step of the real
work (a training step, or classifying one batch) of a model spec, in a given Compute."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from cifar.data.transforms import model_batch
from cifar.device import Compute, sync
from cifar.models.registry import ModelSpec, inference_forward


def spec_key(spec: ModelSpec) -> str:
    """The model's shape, for cache keys of timings: what it computes, not its weights."""
    return f"arch={spec.arch}|size={spec.input_size}|classes={spec.num_classes}"


def step_probe(
    make_model: Callable[[], nn.Module],
    spec: ModelSpec,
    batch: int,
    train: bool,
    augment: bool = False,
    momentum: float = 0.0,
) -> Callable[[Compute], Callable[[], None]]:
    """For :func:`resolve_compute`: one step of the real work in a given Compute (of ``batch``
    images, or of the ``n`` the measurement asks for), on random uint8 images of the spec's
    size, touching no RNG state. ``train``: a forward, backward and
    SGD step at this batch (with the run's augmentation); else classifying one batch, with the
    forward prediction uses (:func:`~cifar.models.registry.inference_forward`)."""

    models: dict[str, nn.Module] = {}  # one per setting, whatever the batches timed

    def probe(c: Compute, n: int = batch) -> Callable[[], None]:
        if c.name not in models:
            with torch.random.fork_rng(devices=[]):
                models[c.name] = c.place(make_model())
        model = models[c.name]
        g = torch.Generator().manual_seed(0)
        side = spec.input_size
        images = torch.randint(0, 256, (n, 3, side, side), dtype=torch.uint8, generator=g)
        labels = torch.randint(0, spec.num_classes, (n,), generator=g).to(c.device)
        mean, std = spec.mean, spec.std
        if not train:
            forward = inference_forward(model.eval(), c.device)

            @torch.inference_mode()
            def classify() -> None:
                with c.autocast():
                    forward(model_batch(c, images, mean, std, size=side))
                sync(c.device)

            return classify
        opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=momentum)
        loss_fn = nn.CrossEntropyLoss()
        aug = torch.Generator(device=c.device).manual_seed(0)

        def step() -> None:
            x = model_batch(c, images, mean, std, augment, aug, side)
            with c.autocast():
                logits = model(x)
            loss = loss_fn(logits.float(), labels)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sync(c.device)

        return step

    return probe
