"""Every environment variable cifar-ray reads, in one table: its default and what it does.
The library reads them here and nowhere else (the shell scripts read their own, listed here
too); ``--help`` and the docs list this table."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import NamedTuple


class Knob(NamedTuple):
    default: str
    doc: str


KNOBS: dict[str, Knob] = {
    "CIFAR_RAY_CACHE": Knob(
        "",
        "the folder holding this node's cache, cifar-ray/ (default: the system's temp folder): "
        "object-storage copies of models and CIFAR files, decoded pixels of read-only or remote "
        "image folders, generated sets, measured precision timings",
    ),
    "CIFAR_RAY_DEBUG": Knob("", "1: a failure prints its Python traceback too"),
    "CIFAR_RAY_PROGRESS": Knob(
        "1",
        "0: no progress in a prediction job's log (1: Ray Data's bars on a terminal, else a "
        "line every 10 s)",
    ),
    "CIFAR_RAY_WAIT_REPORT_S": Knob(
        "30", "seconds between the 'waiting for ...' lines of a job waiting for resources"
    ),
    "CIFAR_RAY_CLUSTER_TMP": Knob(
        "/tmp/cifar-ray-cluster-PORT",
        "scripts/cluster-up.sh and cluster-down.sh: the local cluster's Ray temp folder and state",
    ),
}


def get(name: str) -> str:
    """The variable's value, or its default."""
    return os.environ.get(name) or KNOBS[name].default


def cache_root() -> Path:
    """This node's cache folder: ``$CIFAR_RAY_CACHE/cifar-ray``, else ``<tmp>/cifar-ray``."""
    return Path(get("CIFAR_RAY_CACHE") or tempfile.gettempdir()) / "cifar-ray"


def help_text() -> str:
    """The table as ``--help`` shows it."""
    import textwrap

    lines = ["environment variables:"]
    for name, knob in KNOBS.items():
        default = f" (default {knob.default})" if knob.default else ""
        lines.append(f"  {name}{default}")
        lines += textwrap.wrap(knob.doc, 94, initial_indent="      ", subsequent_indent="      ")
    return "\n".join(lines)
