"""Training throughput and time-to-accuracy: the tutorial's loop vs this project's, same data.

    .venv/bin/python scripts/bench_train.py [--train 10000 --test 2000 --epochs 4 --target 0.6]
                                            [--device cpu|cuda] [--no-ray] [--json out.json]

On one generated learnable CIFAR-format set, in one process, it runs
  (a) tutorial: a faithful copy of the tutorial's loop: torchvision-style dataset (uint8 array ->
      PIL -> ToTensor per sample), DataLoader(batch_size=64), SGD(lr=0.01), no augmentation;
  (b) plain:    this project's train_one_epoch/evaluate at the default recipe, 1 worker;
  (c) ray:      the same through Ray Train (TorchTrainer, 1 worker), via cifar.train.run;
and prints training images/s, ratios, Ray Train's start-up seconds and per-epoch overhead, and
the epochs/seconds each loop needs to reach --target test accuracy.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cifar.cifar10 import load_cifar10
from cifar.device import resolve_compute
from cifar.engine import build, evaluate, train_one_epoch
from cifar.model import build_model
from cifar.synthetic import write_synthetic
from cifar.train_config import TrainConfig


class TutorialCIFAR(torch.utils.data.Dataset):
    """What torchvision.datasets.CIFAR10(transform=ToTensor()) does per sample."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        import torchvision

        self.data = images.permute(0, 2, 3, 1).numpy()  # HWC uint8, as torchvision keeps it
        self.targets = labels.tolist()
        self.transform = torchvision.transforms.ToTensor()

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i):
        return self.transform(Image.fromarray(self.data[i])), self.targets[i]


def tutorial_loop(data, device, epochs, target):
    torch.manual_seed(0)
    train = torch.utils.data.DataLoader(TutorialCIFAR(data.train_images, data.train_labels), 64)
    test = torch.utils.data.DataLoader(TutorialCIFAR(data.test_images, data.test_labels), 64)
    model = build_model().to(device)
    loss_fn = nn.CrossEntropyLoss().to(device)
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    hist, spent = [], 0.0
    for _ in range(epochs):
        model.train()
        t, n = time.perf_counter(), 0
        for imgs, targets in train:
            imgs, targets = imgs.to(device), targets.to(device)
            loss = loss_fn(model(imgs), targets)
            opt.zero_grad()
            loss.backward()
            opt.step()
            n += len(targets)
        if device.type == "cuda":
            torch.cuda.synchronize()
        dt = time.perf_counter() - t
        spent += dt
        model.eval()
        correct = 0
        with torch.no_grad():
            for imgs, targets in test:
                correct += (model(imgs.to(device)).argmax(1).cpu() == targets).sum().item()
        hist.append({"img_s": n / dt, "acc": correct / len(data.test_labels), "spent": spent})
    return hist


def project_loop(data, device, epochs, cfg: TrainConfig):
    """The job's own loop (cifar.engine), built as the Ray Train worker builds it."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    mean, std = data.channel_stats()
    compute = resolve_compute(device, cfg.precision, cfg.channels_last)  # the job's defaults
    e = build(cfg, data.tensors(), len(data.classes), compute, mean, std)
    hist, spent, wall = [], 0.0, time.perf_counter()
    for epoch in range(epochs):
        st = train_one_epoch(e, epoch)
        acc = evaluate(e)["test_accuracy"]
        spent += st.seconds
        hist.append(
            {
                "img_s": st.samples / st.seconds,
                "acc": acc,
                "spent": spent,
                "wall": time.perf_counter() - wall,
            }
        )
    return hist


def ray_loop(data_dir, epochs, device, threads):
    import ray

    from cifar.raycluster import ClusterInfo
    from cifar.train import run

    t0 = time.perf_counter()
    ray.init(include_dashboard=False, configure_logging=False, log_to_driver=False)
    init_s = time.perf_counter() - t0
    storage = tempfile.mkdtemp(prefix="bench-ray-")
    cfg = TrainConfig(
        data_dir=str(data_dir),
        download=False,
        epochs=epochs,
        num_workers=1,
        use_gpu=device.type == "cuda",
        cpus_per_worker=threads,
        storage_path=storage,
        name="bench",
    )
    t = time.perf_counter()
    s = run(cfg, ClusterInfo(cpus=float(os.cpu_count()), gpus=float(torch.cuda.device_count())))
    fit_s = time.perf_counter() - t
    ray.shutdown()
    spent = np.cumsum([h["train_seconds"] for h in s["history"]]).tolist()
    hist = [
        {"img_s": h["images_per_s"], "acc": h["test_accuracy"], "spent": sp}
        for h, sp in zip(s["history"], spent, strict=True)
    ]
    return hist, {"ray_init_s": init_s, "run_s": fit_s}


def to_target(hist, target):
    for i, h in enumerate(hist):
        if h["acc"] >= target:
            return {"epochs": i + 1, "train_seconds": h["spent"]}
    return {"epochs": None, "train_seconds": None}


def mean_img_s(hist):
    # first epoch includes warm-up (cudnn.benchmark, allocator): report it apart
    rest = hist[1:] or hist
    return sum(h["img_s"] for h in rest) / len(rest)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train", type=int, default=10000)
    p.add_argument("--test", type=int, default=2000)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--target", type=float, default=0.6)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--no-ray", action="store_true")
    p.add_argument("--skip-tutorial", action="store_true")
    p.add_argument("--json")
    a = p.parse_args()
    device = torch.device(a.device)
    torch.set_num_threads(a.threads)
    root = Path(tempfile.mkdtemp(prefix="bench-train-"))
    write_synthetic(root, a.train, a.test, seed=0)
    data = load_cifar10(root)
    cfg = TrainConfig(epochs=a.epochs)
    machine = (
        f"{torch.cuda.get_device_name() if device.type == 'cuda' else platform.machine()}"
        f", {os.cpu_count()} CPUs, torch {torch.__version__}"
    )
    res = {
        "machine": machine,
        "device": a.device,
        "train_images": a.train,
        "epochs": a.epochs,
        "target_accuracy": a.target,
    }
    c = resolve_compute(device, cfg.precision, cfg.channels_last)
    res["project_precision"] = c.precision
    res["project_channels_last"] = c.channels_last
    runs = {}
    if not a.skip_tutorial:
        runs["tutorial"] = tutorial_loop(data, device, a.epochs, a.target)
    runs["plain"] = project_loop(data, device, a.epochs, cfg)
    if not a.no_ray:
        runs["ray"], res["ray_overhead"] = ray_loop(root, a.epochs, device, a.threads)
        # everything Ray Train adds to a run besides the epochs themselves: worker start-up,
        # data load in the worker, checkpoint upload, reporting (ray.init counted apart)
        res["ray_overhead"]["extra_s"] = res["ray_overhead"]["run_s"] - runs["plain"][-1]["wall"]
    for k, h in runs.items():
        res[k] = {
            "img_s": mean_img_s(h),
            "first_epoch_img_s": h[0]["img_s"],
            "final_acc": h[-1]["acc"],
            "to_target": to_target(h, a.target),
            "history": h,
        }
    if device.type == "cuda":
        res["gpu_max_memory_mib"] = torch.cuda.max_memory_allocated() / 2**20
        print(f"  peak GPU memory (tutorial + plain loops): {res['gpu_max_memory_mib']:.0f} MiB")
    base = res["tutorial"]["img_s"] if "tutorial" in res else None
    print(f"[{machine}] {a.train} train images, {a.epochs} epochs, device {a.device}")
    for k in runs:
        r = res[k]
        ratio = f"{r['img_s'] / base:5.2f}x tutorial" if base else ""
        tt = r["to_target"]
        reach = (
            f"{a.target:.0%} after {tt['epochs']} epochs / {tt['train_seconds']:.1f}s"
            if tt["epochs"]
            else f"{a.target:.0%} not reached"
        )
        print(
            f"  {k:8s} {r['img_s']:9.0f} img/s {ratio:16s} final acc {r['final_acc']:.3f}  {reach}"
        )
    if "ray" in res:
        o = res["ray_overhead"]
        o["per_epoch_ratio"] = res["ray"]["img_s"] / res["plain"]["img_s"]
        print(
            f"  Ray Train: per-epoch img/s = {o['per_epoch_ratio']:.3f} x plain; start-up and "
            f"per-run overhead {o['extra_s']:.1f}s (+ ray.init {o['ray_init_s']:.1f}s)"
        )
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
