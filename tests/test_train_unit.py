"""The pure training pieces, without Ray; distributed parts on a real gloo process group."""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from cifar.cifar10 import load_cifar10
from cifar.device import resolve_compute
from cifar.engine import build, evaluate, make_scheduler, train_one_epoch
from cifar.model import build_model
from cifar.train_config import TrainConfig

CPU = resolve_compute("cpu", "fp32", channels_last=False)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _eval_worker(rank, world, port, root, weights, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    data = load_cifar10(root)
    e = build(TrainConfig(), data.tensors(), 10, CPU, [0.5] * 3, [0.25] * 3, rank, world)
    e.raw.load_state_dict(weights)
    metrics = evaluate(e)
    if rank == 0:
        out.put(metrics)
    dist.barrier()  # no rank leaves the group while another still talks to it
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

    def fresh():
        return build(cfg, data.tensors(), 10, CPU, mean, std)

    e = fresh()
    before = evaluate(e)["test_accuracy"]
    stats = [train_one_epoch(e, epoch) for epoch in range(3)]
    after = evaluate(e)["test_accuracy"]
    assert stats[0].samples == 2000 and stats[0].steps == 32
    assert stats[2].loss_sum < stats[1].loss_sum < stats[0].loss_sum
    assert after > max(0.5, before + 0.3)

    e2 = fresh()
    train_one_epoch(e2, 0)
    train_one_epoch(e2, 1)
    saved = (e2.raw.state_dict(), e2.optimizer.state_dict(), e2.scheduler.state_dict())
    e3 = fresh()
    e3.restore(*saved)
    train_one_epoch(e3, 2)
    for k, v in e.raw.state_dict().items():
        assert torch.equal(v, e3.raw.state_dict()[k]), k


def test_onecycle_lr_never_goes_negative():
    cfg = TrainConfig(epochs=2, lr=0.02)
    opt = torch.optim.SGD(build_model().parameters(), lr=cfg.lr)
    sch = make_scheduler(opt, cfg, 5)
    lrs = []
    for _ in range(10):
        opt.step()
        sch.step()
        lrs.append(opt.param_groups[0]["lr"])
    assert min(lrs) >= 0 and max(lrs) == pytest.approx(cfg.lr, rel=0.2)
