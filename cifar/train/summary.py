"""What the driver says about a run: the dataset in the log and in every record, and at the end
the best model exported to ``<run>/model/`` and ``summary.json``."""

from __future__ import annotations

import logging
from typing import Any

from cifar.data.dataset import TrainingData
from cifar.io import storage
from cifar.models import checkpoint as ckpt
from cifar.plots import per_class_accuracy
from cifar.train.config import TrainConfig
from cifar.train.state import TrainState

log = logging.getLogger(__name__)
progress = logging.getLogger("cifar.progress")


def describe_data(data: TrainingData) -> dict[str, Any]:
    """What meta.json, summary.json and TensorBoard say about the dataset."""
    return {
        "kind": data.kind,
        "root": data.root,
        "classes": list(data.classes),
        "train_images": len(data.train_labels),
        "test_images": len(data.test_labels),
        "class_counts": data.class_counts(),
        **{k: v for k, v in data.info.items() if k != "skipped_files"},
    }


def log_data(data: TrainingData, d: dict[str, Any]) -> None:
    """The dataset in the job's log: where, how split, per-class counts, decode, skips."""
    what = {
        "folder": "image folders",
        "shards": "shards",
        "synthetic": "GENERATED CIFAR-format set (not CIFAR-10)",
    }
    split = f", evaluated on {d['eval_split']}" if d.get("eval_split") else ""
    progress.info(
        "[cifar] data: %s %s: %d classes, %d train / %d test images%s",
        what.get(data.kind, f"CIFAR-format ({data.kind})"),
        data.root,
        len(data.classes),
        d["train_images"],
        d["test_images"],
        split,
    )
    width = max(len(c) for c in data.classes)
    for c in data.classes:
        n_train, n_test = d["class_counts"]["train"][c], d["class_counts"]["test"][c]
        progress.info("[cifar]   %-*s %7d train %6d test", width, c, n_train, n_test)
    dec = d.get("decode")
    if dec:
        how = "read from cache" if dec["cache"] == "hit" else "decoded and cached"
        progress.info(
            "[cifar] %d files %s in %.1fs (%s img/s): %s",
            dec["files"],
            how,
            dec["seconds"],
            dec["images_per_s"],
            dec["cache_file"],
        )
    skipped = data.info.get("skipped_files") or []
    if skipped:
        shown = "; ".join(f"{s['path']} ({s['error']})" for s in skipped[:3])
        log.warning(
            "skipped %d unreadable file(s) in the training tree (all listed in summary.json): %s%s",
            data.info["skipped"],
            shown,
            " ..." if data.info["skipped"] > 3 else "",
        )


def world_sizes(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The worker counts a run trained with, as runs of epochs: ``[{"epochs": [1, 3],
    "workers": 1}, {"epochs": [4, 6], "workers": 2}]`` (``workers`` None for epochs recorded
    before runs kept it)."""
    spans: list[dict[str, Any]] = []
    for h in history:
        n = h.get("workers")
        if spans and spans[-1]["workers"] == n:
            spans[-1]["epochs"][1] = h["epoch"]
        else:
            spans.append({"epochs": [h["epoch"], h["epoch"]], "workers": n})
    return spans


def export_model(result, rdir: str) -> tuple[str, dict[str, Any]]:
    """Copy the best checkpoint's model.pt + meta.json to ``<run>/model/``."""
    best = result.get_best_checkpoint("test_accuracy", "max") or result.checkpoint
    target = f"{rdir}/model"
    with best.as_directory() as d:
        meta = ckpt.read_meta(d)
        storage.copy_files(d, [ckpt.MODEL_FILE, ckpt.META_FILE], target)
    return target, meta


def run_summary(
    result, cfg: TrainConfig, data: TrainingData, rdir: str, seconds: float
) -> dict[str, Any]:
    """What ``summary.json`` says about a finished run; exports the best model to ``model/``."""
    model_path, best_meta = export_model(result, rdir)
    with result.checkpoint.as_directory() as d:
        state = TrainState.from_checkpoint(d)
        last_meta = ckpt.read_meta(d)
    history = state.history
    ips = [h["images_per_s"] for h in history]
    return {
        "run_dir": rdir,
        "dataset": data.kind,
        "dataset_root": data.root,
        # classes, per-class counts, the evaluation split, decoding, every skipped file
        "data": {
            **describe_data(data),
            # unreadable files: found while listing or decoding, or (streamed) while training
            "skipped": data.info.get("skipped", 0) + len(state.skipped),
            "skipped_files": data.info.get("skipped_files", []) + state.skipped,
        },
        "best_test_accuracy": max(h["test_accuracy"] for h in history),
        "final_test_accuracy": last_meta["metrics"]["test_accuracy"],
        "final_test_loss": last_meta["metrics"]["test_loss"],
        "epochs_completed": int(last_meta["epoch"]),
        "epochs": cfg.epochs,
        "train_images_per_s": sum(ips) / len(ips) if ips else None,
        "seconds": seconds,
        "restarts": state.restarts,
        # the epoch whose checkpoint each restart (worker failure, resize, --resume) continued from
        "restored_from_epochs": state.restored_from,
        "best_epoch": int(best_meta["epoch"]),
        "best_per_class_accuracy": per_class_accuracy(state.best["confusion"], data.classes)
        if state.best
        else None,
        "best_confusion_matrix": state.best["confusion"] if state.best else None,
        "compute": last_meta.get("compute"),  # precision and layout, and why
        "model_path": model_path,
        "tensorboard_dir": f"{rdir}/tensorboard",
        "num_workers": cfg.num_workers,  # as asked: N, or [MIN, MAX] for an elastic run
        "world_sizes": world_sizes(history),  # as trained, epoch by epoch
        "history": history,
        "config": cfg.to_dict(),
    }
