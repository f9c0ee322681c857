"""The pure training pieces, without Ray; distributed parts on a real gloo process group."""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from cifar.cifar10 import load_cifar10
from cifar.data import TensorImageDataset, eval_loader, train_loader
from cifar.model import build_model
from cifar.train import (
    Batching,
    TrainConfig,
    epoch_generator,
    evaluate,
    make_optimizer,
    make_scheduler,
    train_one_epoch,
)

CPU = torch.device("cpu")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _eval_worker(rank, world, port, root, weights, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    data = load_cifar10(root)
    model = build_model()
    model.load_state_dict(weights)
    loader = eval_loader(TensorImageDataset(data.test_images, data.test_labels), 64, rank, world)
    metrics = evaluate(model, loader, Batching(CPU, [0.5] * 3, [0.25] * 3))
    if rank == 0:
        out.put(metrics)
    dist.destroy_process_group()


def test_evaluation_is_identical_for_1_2_and_3_workers(synthetic_dir):
    torch.manual_seed(0)
    weights = build_model().state_dict()
    ctx = mp.get_context("spawn")
    results = {}
    for world in (1, 2, 3):
        q = ctx.Queue()
        mp.start_processes(
            _eval_worker,
            args=(world, _free_port(), str(synthetic_dir), weights, q),
            nprocs=world,
            start_method="spawn",
        )
        results[world] = q.get(timeout=60)
    assert {r["test_images"] for r in results.values()} == {600}  # no padding duplicates
    assert results[1]["test_correct"] == results[2]["test_correct"] == results[3]["test_correct"]
    assert results[1]["test_accuracy"] == results[3]["test_accuracy"]
    assert results[2]["test_loss"] == pytest.approx(results[1]["test_loss"], rel=1e-5)


def test_one_epoch_learns_and_restarting_mid_run_matches_an_uninterrupted_run(synthetic_dir):
    """Three epochs straight == two epochs, save state, fresh objects, epoch 3 (a resume)."""
    data = load_cifar10(synthetic_dir)
    mean, std = data.channel_stats()
    cfg = TrainConfig(epochs=3, batch_size=64)
    ds = TensorImageDataset(data.train_images, data.train_labels)
    el = eval_loader(TensorImageDataset(data.test_images, data.test_labels), 512, 0, 1)
    b = Batching(CPU, mean, std)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)

    def fresh():
        torch.manual_seed(cfg.seed)
        m = build_model()
        tl = train_loader(ds, cfg.batch_size, 0, 1, cfg.seed)
        opt = make_optimizer(m, cfg)
        return m, tl, opt, make_scheduler(opt, cfg, len(tl))

    def epoch(m, tl, opt, sch, e):
        tl.sampler.set_epoch(e)
        gen = epoch_generator(CPU, 0, 0, e)
        return train_one_epoch(m, tl, opt, sch, loss_fn, b, True, gen, grad_clip=cfg.grad_clip)

    m, tl, opt, sch = fresh()
    before = evaluate(m, el, b)["test_accuracy"]
    stats = [epoch(m, tl, opt, sch, e) for e in range(3)]
    after = evaluate(m, el, b)["test_accuracy"]
    assert stats[0].samples == 2000 and stats[0].steps == 32
    assert stats[2].loss_sum < stats[1].loss_sum < stats[0].loss_sum
    assert after > max(0.5, before + 0.3)

    m2, tl2, opt2, sch2 = fresh()
    epoch(m2, tl2, opt2, sch2, 0)
    epoch(m2, tl2, opt2, sch2, 1)
    saved = (m2.state_dict(), opt2.state_dict(), sch2.state_dict())
    m3, tl3, opt3, sch3 = fresh()
    m3.load_state_dict(saved[0])
    opt3.load_state_dict(saved[1])
    sch3.load_state_dict(saved[2])
    epoch(m3, tl3, opt3, sch3, 2)
    for k, v in m.state_dict().items():
        assert torch.equal(v, m3.state_dict()[k]), k


def test_onecycle_lr_never_goes_negative():
    m = build_model()
    cfg = TrainConfig(epochs=2)
    opt = make_optimizer(m, cfg)
    sch = make_scheduler(opt, cfg, 5)
    lrs = []
    for _ in range(10):
        opt.step()
        sch.step()
        lrs.append(opt.param_groups[0]["lr"])
    assert min(lrs) >= 0 and max(lrs) == pytest.approx(cfg.lr, rel=0.2)
