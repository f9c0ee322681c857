"""Memory, streaming or Ray Data: how a run's training data reaches the workers
(``--data-loading``).

``auto`` picks memory or stream, never ray: on the local 2-node cluster (benchmarks/ingest.py,
docs/results.md) Ray Data's win came from CPUs that the trainer had not reserved, and when the
data is loaded nothing says whether a run will have such CPUs (other nodes, CPU-only nodes) to
spare; ``--data-loading ray`` asks for it."""

from __future__ import annotations

from cifar.data.dataset import DataError, Loading

LOADINGS = ("auto", "memory", "stream", "ray")
STREAMED = ("stream", "ray")  # decoded as the run trains: the source hands over file lists
# auto: hold decoded images in memory up to this share of the node's memory (the driver, the
# object store and every worker on a node hold them)
MEMORY_SHARE = 0.1


def memory_budget(mb: float | None) -> tuple[int, str]:
    """(bytes, what set it): ``--data-memory-mb``, else a share of this node's memory."""
    if mb is not None:
        return int(mb * 2**20), f"--data-memory-mb {mb:g}"
    import psutil

    total = psutil.virtual_memory().total
    return int(total * MEMORY_SHARE), f"{MEMORY_SHARE:.0%} of this node's {size_text(total)}"


def size_text(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError


def choose_loading(
    files: int,
    size: int,
    loading: str = "auto",
    budget_mb: float | None = None,
    unit: str = "files",
) -> Loading:
    """Memory or streaming for ``files`` images (``unit``: what they are called: files, samples)
    decoded at ``size``, as ``--data-loading`` asks; ``auto``: memory while the decoded pixels
    fit the budget (:func:`memory_budget`)."""
    need = files * 3 * size * size
    what = f"{files} {unit} decoded at {size}x{size} take {size_text(need)}"
    if loading != "auto":
        return Loading(loading, f"--data-loading {loading} ({what})")
    budget, set_by = memory_budget(budget_mb)
    if need > budget:
        return Loading(
            "stream",
            f"{what}, over the memory budget of {size_text(budget)} ({set_by}); "
            "--data-loading memory holds them anyway",
        )
    return Loading("memory", f"{what}, within the memory budget of {size_text(budget)} ({set_by})")


def memory_only(loading: str, what: str) -> Loading:
    """Data that is always read into memory (CIFAR-format files): ``stream`` is refused."""
    if loading in STREAMED:
        raise DataError(
            f"--data-loading {loading} streams image folders (DIR/train/<class>/...) and shards "
            "(DIR/train/*.tar|*.parquet); CIFAR-format files are read into memory (150 MiB for "
            f"CIFAR-10). Drop --data-loading {loading}."
        )
    return Loading("memory", what)
