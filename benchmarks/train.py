"""Training throughput, time to accuracy and fixed cost: the tutorial's loop vs this project's.

    python -m benchmarks.train [--data DIR | --train 10000 --test 2000] [--epochs 4]
        [--target 0.6] [--device cpu|cuda] [--no-ray] [--processes]
        [--json benchmarks/results/train_cpu.json]

On one dataset (--data: a CIFAR-format folder or an image-folder tree; default: a generated
CIFAR-format set), it runs, in this process:
  tutorial: a faithful copy of the tutorial's loop: torchvision-style dataset (uint8 array ->
            PIL -> ToTensor per sample), DataLoader(batch_size=64), SGD(lr=0.01), no augmentation;
  plain:    the job's own loop (cifar.train.engine) at the job's defaults: the recipe resolved for
            this data, the precision chosen as the job chooses it (measured on this CPU);
  ray:      the job itself through Ray Train (cifar.train.driver.train, 1 worker), and Ray
            Train's own floor: a TorchTrainer whose function only reports.
With --processes, also whole processes, as a user starts them: the tutorial loop as a script
vs `python -m jobs.train` (Python start, ray.init, everything, shutdown), --epochs epochs.
Prints images/s, ratios against the tutorial loop, accuracy, time to --target, the machine.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from benchmarks.common import (
    describe,
    local_cluster,
    machine,
    parser,
    run_module,
    use_job_train_env,
    write_json,
)
from cifar.data.sources import load_data
from cifar.data.synthetic import write_synthetic
from cifar.models.cifar_quick import CifarQuick
from cifar.models.registry import ModelSpec
from cifar.train.config import TrainConfig, resolve_recipe
from cifar.train.engine import build, evaluate, job_compute, train_one_epoch


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


def tutorial_loop(data, device, epochs):
    torch.manual_seed(0)
    train = torch.utils.data.DataLoader(TutorialCIFAR(data.train_images, data.train_labels), 64)
    test = torch.utils.data.DataLoader(TutorialCIFAR(data.test_images, data.test_labels), 64)
    model = CifarQuick(len(data.classes)).to(device)
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


def project_loop(data, device, epochs):
    """The job's own loop (cifar.train.engine) as the Ray Train worker builds and runs it."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    cfg = resolve_recipe(TrainConfig(epochs=epochs), len(data.train_labels), 1)
    mean, std = data.channel_stats() if cfg.normalize else (None, None)
    spec = ModelSpec.of(cfg.arch, data.classes, mean, std)
    compute = job_compute(cfg, spec, device)
    e = build(cfg, data.splits(), spec, compute)
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
    setting = {"batch": cfg.batch_size, "lr": cfg.lr, **compute.describe()}
    return hist, setting


def ray_loop(data_dir, epochs, device, threads):
    """The job through Ray Train (ray.init timed apart), then Ray Train's floor."""
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from cifar.train.driver import train

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
    use_job_train_env(cfg)
    t0 = time.perf_counter()
    ray.init(include_dashboard=False, configure_logging=False, log_to_driver=False)
    init_s = time.perf_counter() - t0

    def only_report(config):
        import ray.train

        ray.train.report({"x": 1})

    t = time.perf_counter()
    s = train(cfg, local_cluster())
    fit_s = time.perf_counter() - t
    t = time.perf_counter()  # after the job: the floor of a Ray that has run Ray Train once
    TorchTrainer(
        only_report,
        scaling_config=ScalingConfig(num_workers=1, resources_per_worker={"CPU": threads}),
        run_config=RunConfig(storage_path=storage, name="floor"),
    ).fit()
    floor_s = time.perf_counter() - t
    ray.shutdown()
    spent = np.cumsum([h["train_seconds"] for h in s["history"]]).tolist()
    hist = [
        {"img_s": h["images_per_s"], "acc": h["test_accuracy"], "spent": sp}
        for h, sp in zip(s["history"], spent, strict=True)
    ]
    return hist, {"ray_init_s": init_s, "run_s": fit_s, "ray_train_floor_s": floor_s}


def processes(data_dir, epochs, device) -> dict:
    """Wall seconds of whole processes on the same data: the tutorial loop vs the job."""
    flags = ["--data", data_dir, "--epochs", epochs, "--device", device.type]
    runs = tempfile.mkdtemp(prefix="bench-job-")
    gpu = "--gpu" if device.type == "cuda" else "--no-gpu"
    job = ["--data-dir", data_dir, "--no-download", "--epochs", epochs, "--storage-path", runs, gpu]
    out = {
        "tutorial_process_s": run_module("benchmarks.train", "--tutorial-only", *flags)[1],
        "job_process_s": run_module("jobs.train", *job)[1],
    }
    out["ratio"] = out["job_process_s"] / out["tutorial_process_s"]
    return out


def to_target(hist, target):
    for i, h in enumerate(hist):
        if h["acc"] >= target:
            return {"epochs": i + 1, "train_seconds": h["spent"]}
    return {"epochs": None, "train_seconds": None}


def mean_img_s(hist):
    # first epoch includes warm-up (cudnn.benchmark, allocator): report it apart
    rest = hist[1:] or hist
    return sum(h["img_s"] for h in rest) / len(rest)


def measure(a: argparse.Namespace, data, root: Path, device: torch.device) -> dict:
    """Every loop on the same data: the figures as the JSON records them."""
    res = {
        "data": str(a.data or f"generated {a.train}/{a.test}"),
        "train_images": len(data.train_labels),
        "classes": len(data.classes),
        "epochs": a.epochs,
        "target_accuracy": a.target,
    }
    runs = {"tutorial": tutorial_loop(data, device, a.epochs)}
    runs["plain"], res["job_setting"] = project_loop(data, device, a.epochs)
    if not a.no_ray:
        runs["ray"], o = ray_loop(root, a.epochs, device, a.threads)
        # everything a job run adds to its epochs: Ray Train's own start and stop (the floor)
        # plus this project's (data to the workers, precision, checkpoints, pictures, export)
        o["extra_s"] = o["run_s"] - runs["plain"][-1]["wall"]
        o["ours_s"] = o["extra_s"] - o["ray_train_floor_s"]
        res["ray_overhead"] = o
    if a.processes:
        res["processes"] = processes(root, a.epochs, device)
    for k, h in runs.items():
        res[k] = {
            "img_s": mean_img_s(h),
            "first_epoch_img_s": h[0]["img_s"],
            "final_acc": h[-1]["acc"],
            "to_target": to_target(h, a.target),
            "history": h,
        }
    if "ray_overhead" in res:
        res["ray_overhead"]["per_epoch_ratio"] = res["ray"]["img_s"] / res["plain"]["img_s"]
    if device.type == "cuda":
        res["gpu_max_memory_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return res


def report(info: dict, res: dict) -> None:
    target, epochs = res["target_accuracy"], res["epochs"]
    s = res["job_setting"]
    print(f"[{describe(info)}]")
    print(
        f"  {res['data']}: {res['train_images']} train images, {res['classes']} classes, "
        f"{epochs} epochs; job's setting: batch {s['batch']}, lr {s['lr']}, {s['precision']}"
        f"{' + channels_last' if s['channels_last'] else ''} ({s['chosen_by']})"
    )
    for k in ("tutorial", "plain", "ray"):
        if k not in res:
            continue
        r, tt = res[k], res[k]["to_target"]
        reach = (
            f"{target:.0%} after {tt['epochs']} epochs / {tt['train_seconds']:.1f}s"
            if tt["epochs"]
            else f"{target:.0%} not reached"
        )
        print(
            f"  {k:8s} {r['img_s']:9.0f} img/s {r['img_s'] / res['tutorial']['img_s']:5.2f}x "
            f"tutorial  final acc {r['final_acc']:.3f}  {reach}"
        )
    if "ray_overhead" in res:
        o = res["ray_overhead"]
        print(
            f"  Ray Train: per-epoch img/s = {o['per_epoch_ratio']:.3f} x plain; a run adds "
            f"{o['extra_s']:.1f}s = Ray Train's floor {o['ray_train_floor_s']:.1f}s + this "
            f"project's {o['ours_s']:.1f}s (+ ray.init {o['ray_init_s']:.1f}s)"
        )
    if "processes" in res:
        q = res["processes"]
        print(
            f"  whole processes, {epochs} epochs: tutorial {q['tutorial_process_s']:.1f}s, "
            f"python -m jobs.train {q['job_process_s']:.1f}s ({q['ratio']:.2f}x)"
        )
    if "gpu_max_memory_mib" in res:
        print(f"  peak GPU memory: {res['gpu_max_memory_mib']:.0f} MiB")


def main() -> None:
    p = parser(__doc__, "train_cpu.json")
    p.add_argument("--data", help="a CIFAR-format folder or image-folder tree (default: generate)")
    p.add_argument("--train", type=int, default=10000)
    p.add_argument("--test", type=int, default=2000)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--target", type=float, default=0.6)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--no-ray", action="store_true")
    p.add_argument("--processes", action="store_true", help="also time whole processes")
    p.add_argument("--tutorial-only", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args()
    device = torch.device(a.device)
    torch.set_num_threads(a.threads)
    root = Path(a.data) if a.data else Path(tempfile.mkdtemp(prefix="bench-train-"))
    if not a.data:
        write_synthetic(root, a.train, a.test, seed=0)
    data = load_data(str(root), download=False)
    if a.tutorial_only:  # the --processes baseline: this process is the tutorial's script
        tutorial_loop(data, device, a.epochs)
        return
    info = machine()
    res = measure(a, data, root, device)
    report(info, res)
    write_json(a.json, info, res)


if __name__ == "__main__":
    main()
