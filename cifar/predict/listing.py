"""A prefix of object storage listed while its files are classified.

Listing a million keys takes minutes (one LIST per thousand keys), so the job does not wait for
it: a :class:`Lister` actor walks the prefix folder by folder
(:func:`~cifar.predict.inputs.walk_uri`), drops what ``--extensions`` leaves out and, on
``--resume``, what is already committed, and hands out chunks of paths; the pipeline's read
tasks pull them until none are left. The driver holds no path at all; the actor holds one
folder's listing at a time.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from cifar.predict.inputs import extension_mask, label_from_dirs, relative, walk_uri


class Lister:
    """Run as a Ray actor (one call at a time): ``begin(reader)`` then ``next(reader)`` -> a
    pyarrow Table of ``path`` (+ ``label``) to classify, or None at the end; ``counts()`` ->
    what it listed.

    Each chunk goes to one reader, and a reader that starts again (Ray retries a read task
    whose worker died, or re-runs it to rebuild a lost block) is handed the same chunks in the
    same order before any new one: Ray skips the outputs of the retried task it has already
    seen, so no path is lost or repeated. The actor keeps the chunks it handed out (tens of MB
    per million paths). It is not restarted: a new one would list from the start."""

    def __init__(
        self,
        uri: str,
        extensions: str | None,
        classes: list[str] | None,  # with --labels-from-dirs
        done=None,  # pyarrow array of committed paths (--resume)
        chunk: int = 1024,
    ) -> None:
        self.uri, self.extensions, self.classes = uri, extensions, classes
        # one hash set for the whole walk (pc.is_in would rebuild it for every chunk)
        self.done = set(done.to_pylist()) if done is not None and len(done) else None
        self.files = self.skipped = self.already_done = 0
        self.finished = False
        self._chunks = self._generate(chunk)
        self._given: dict[int, list] = {}  # reader -> the chunks handed to it, in order
        self._cursor: dict[int, int] = {}

    def _generate(self, chunk: int):
        import pyarrow as pa

        for paths in walk_uri(self.uri, chunk):
            if self.extensions:
                kept = paths.filter(extension_mask(paths, self.extensions))
                self.skipped += len(paths) - len(kept)
                paths = kept
            self.files += len(paths)
            if self.done is not None:
                todo = pa.array([p not in self.done for p in paths.to_pylist()], pa.bool_())
                self.already_done += len(paths) - todo.true_count
                paths = paths.filter(todo)
            if not len(paths):
                continue
            cols: dict[str, Any] = {"path": paths, "relpath": relative(paths, [self.uri])}
            if self.classes is not None:
                cols["label"] = pa.array(
                    [label_from_dirs(p, self.uri, self.classes) for p in paths.to_pylist()],
                    pa.string(),
                )
            yield pa.table(cols)

    def begin(self, reader: int) -> None:
        self._cursor[reader] = 0
        self._given.setdefault(reader, [])

    def next(self, reader: int):
        given, i = self._given[reader], self._cursor[reader]
        if i < len(given):  # a reader started again: the same chunks first
            self._cursor[reader] = i + 1
            return given[i]
        if self.finished:
            return None
        try:
            table = next(self._chunks)
        except StopIteration:
            self.finished = True
            return None
        given.append(table)
        self._cursor[reader] = i + 1
        return table

    def counts(self) -> dict[str, Any]:
        return {
            "files": self.files,
            "skipped": self.skipped,
            "already_done": self.already_done,
            "finished": self.finished,
        }


def _pull(lister, reader: int):
    import ray

    ray.get(lister.begin.remote(reader))
    while (table := ray.get(lister.next.remote(reader))) is not None:
        yield table


def listed_dataset(lister, readers: int):
    """A Ray Data dataset of the paths ``lister`` hands out, read by ``readers`` tasks that ask
    for no CPU (as the decode tasks, which Ray Data fuses them with)."""
    import ray.data
    from ray.data.block import BlockMetadata
    from ray.data.datasource import Datasource, ReadTask

    class ListedFiles(Datasource):
        def estimate_inmemory_data_size(self) -> None:
            return None

        def get_read_tasks(self, parallelism, per_task_row_limit=None, data_context=None):
            meta = BlockMetadata(num_rows=None, size_bytes=None, input_files=None, exec_stats=None)
            return [ReadTask(partial(_pull, lister, i), meta) for i in range(readers)]

        def get_name(self) -> str:
            return "ListFiles"

    return ray.data.read_datasource(
        ListedFiles(), override_num_blocks=readers, num_cpus=0, concurrency=readers
    )
