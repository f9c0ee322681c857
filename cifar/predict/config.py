"""The prediction job's config: every setting on one line. The command line
(``cifar-predict --help``) is generated from it."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

from cifar.config import STALL_TIMEOUT_S, Config, opt
from cifar.device import PRECISIONS
from cifar.predict.commit import ROWS_PER_FILE
from cifar.predict.formats import FORMATS
from cifar.predict.inputs import wanted_extensions

io_opt, scale_opt, output_opt = (partial(opt, group=g) for g in ("data", "scale", "results"))


@dataclass
class PredictConfig(Config):
    # fmt: off
    model: str | None = io_opt(None, "run dir, checkpoint dir, model/ dir, .pt/.pth file, or an .onnx file from cifar-export (classified by onnxruntime)")  # noqa: E501
    arch: str | None = io_opt(None, "what a bare .pt/.pth state_dict is: cifar10_quick (recognised by itself) or a torchvision name such as vgg16, resnet18 (its classes from the head's width); a run's model says it itself", metavar="NAME")  # noqa: E501
    image_size: int | None = io_opt(None, "classify at this size instead of the model's own (default: what the run trained at; a bare state_dict: the arch's, 32 for CIFAR10-quick, 224 for torchvision's)", metavar="PIXELS")  # noqa: E501
    input: list[str] | None = io_opt(None, "folder (recursive), file, glob or URI; repeatable", metavar="IN")  # noqa: E501, RUF009
    output: str | None = io_opt(None, "output folder", metavar="OUT")
    extensions: str | None = io_opt(None, "only these extensions, e.g. 'jpg,png' (others are skipped and counted); default: every file")  # noqa: E501
    labels_from_dirs: bool = io_opt(False, "folders are named after classes: report accuracy + confusion matrix")  # noqa: E501
    image_column: str | None = io_opt(None, "shards in Parquet: the image column (default: the first binary or struct{bytes, path} column)", metavar="NAME")  # noqa: E501
    label_column: str = io_opt("label", "shards in Parquet: the label column (integers, with names from classes.txt or the file's ClassLabel metadata, or names)", metavar="NAME")  # noqa: E501
    format: str = output_opt("parquet", "result format", choices=tuple(FORMATS))
    top_k: int = output_opt(3, "top-k classes to write")
    probs: bool = output_opt(False, "also a 'probs' column: every class's probability, in the order of the classes in the files' metadata (parquet, jsonl)")  # noqa: E501
    overwrite: bool = output_opt(False, "replace results already in OUT")
    resume: bool = output_opt(False, "continue a job that was killed, in the same OUT: keep the rows it committed, classify only the rest")  # noqa: E501
    rows_per_file: int = output_opt(ROWS_PER_FILE, "rows per result file (each is committed whole; a killed job redoes at most the files it was writing)")  # noqa: E501
    preview: int = output_opt(0, "also write OUT/_preview.png: the first N images with predicted class and confidence")  # noqa: E501
    verbose: bool = output_opt(False, "also Ray's and Ray Data's INFO lines")
    batch_size: int = scale_opt(256, "images per inference batch, at most: CPU actors take fewer of a large input (about 32 x 224 x 224 pixels a batch)")  # noqa: E501
    num_actors: str = scale_opt("auto", "inference actors: N, or MIN-MAX to autoscale (auto: 1 per GPU with GPUs, else 1 per --cpus-per-actor CPUs, no more than there are batches)")  # noqa: E501
    gpus_per_actor: float | None = scale_opt(None, "GPUs per actor, 0 for CPU (default: 1 if the cluster has GPUs)")  # noqa: E501
    cpus_per_actor: float | None = scale_opt(None, "CPUs per inference actor = its torch threads on CPU (default: 1; 2 for inputs over 64 px, decoded by tasks; decoding and writing ask for none)")  # noqa: E501
    stall_timeout: float = scale_opt(STALL_TIMEOUT_S, "end the job, saying what it waited for, after this many seconds without progress (0: wait for ever)")  # noqa: E501
    precision: str = scale_opt("auto", "auto: bf16 on GPUs that have it, else fp16; on CPUs the faster of fp32 and bf16, measured on this node at --batch-size; fp32: exactly the tutorial's arithmetic", choices=PRECISIONS)  # noqa: E501
    files_per_block: int = scale_opt(1024, "files per Ray Data block (decode task)")
    # fmt: on

    def checks(self) -> list[tuple[bool, str]]:
        try:
            parse_actors(self.num_actors)
            actors_error = ""
        except ValueError as e:
            actors_error = str(e)
        return [
            (bool(self.model), "--model is required"),
            (bool(self.input), "at least one --input is required"),
            (bool(self.output), "--output is required"),
            (self.batch_size >= 1, f"--batch-size must be at least 1 (got {self.batch_size})"),
            (self.top_k >= 1, f"--top-k must be at least 1 (got {self.top_k})"),
            (
                not self.probs or self.format not in FORMATS or FORMATS[self.format].lists,
                f"--probs writes a list per row, which --format {self.format} cannot hold: use "
                "parquet or jsonl",
            ),
            (
                self.gpus_per_actor is None or self.gpus_per_actor >= 0,
                "--gpus-per-actor must be >= 0",
            ),
            (
                self.cpus_per_actor is None or self.cpus_per_actor > 0,
                "--cpus-per-actor must be > 0",
            ),
            (self.files_per_block >= 1, "--files-per-block must be at least 1"),
            (self.rows_per_file >= 1, "--rows-per-file must be at least 1"),
            (
                self.extensions is None or bool(wanted_extensions(self.extensions)),
                f"--extensions {self.extensions!r} names no extension: pass e.g. 'jpg,png'",
            ),
            (
                not (self.resume and self.overwrite),
                "--resume keeps the results in --output and --overwrite replaces them: pass one",
            ),
            (0 <= self.preview <= 1000, f"--preview must be 0..1000 (got {self.preview})"),
            (self.stall_timeout >= 0, "--stall-timeout must be >= 0"),
            (not actors_error, actors_error),
        ]


def parse_actors(spec: str) -> tuple[int, int] | None:
    """'auto' -> None, 'N' -> (N, N), 'MIN-MAX' -> (MIN, MAX)."""
    if spec == "auto":
        return None
    try:
        lo, _, hi = spec.partition("-")
        lo_i, hi_i = int(lo), int(hi or lo)
    except ValueError:
        raise ValueError(f"--num-actors must be N, MIN-MAX or auto (got {spec!r})") from None
    if lo_i < 1 or hi_i < lo_i:
        raise ValueError(f"--num-actors {spec!r}: need 1 <= MIN <= MAX")
    return lo_i, hi_i
