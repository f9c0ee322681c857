"""A labelled image-folder tree to shards (``cifar-data pack TREE OUT``): WebDataset tars or
Parquet files that :mod:`cifar.data.shards` trains on and ``webdataset`` / Hugging Face
``datasets`` read.

    OUT/train/shard-000000.tar ...  (or .parquet)   TREE/train/<class>/... in a fixed shuffled
    OUT/val/shard-000000.tar ...                    order (a hash of each file's path), so
    OUT/classes.txt                                 a shard mixes the classes

The image files go in as they are (no re-encoding: the decoded pixels are the tree's). A tar
holds ``<key>.<ext>`` + ``<key>.cls`` (the class index) per sample; a Parquet file an ``image``
column ``struct{bytes, path}`` and a ``label`` column whose ``ClassLabel`` names sit in the
``huggingface`` schema metadata, as ``datasets`` writes them. Every shard is read back once
written: the samples of each class must be those packed.
"""

from __future__ import annotations

import io
import json
import logging
import tarfile
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from cifar.data.dataset import DataError
from cifar.data.folders import TRAIN_DIR, Tree, scan, split_rank
from cifar.io import shards as fmt
from cifar.io import storage

log = logging.getLogger(__name__)

FORMATS = {"webdataset": fmt.TAR, "parquet": fmt.PARQUET}
SAMPLES_PER_SHARD = 1000
_READERS = 8  # files read at once (object storage: one request each)


@dataclass
class Packed:
    """What ``pack`` wrote: samples and shards per split, and the files left out."""

    out: str
    classes: tuple[str, ...]
    samples: dict[str, int] = field(default_factory=dict)
    shards: dict[str, int] = field(default_factory=dict)
    skipped: list[dict[str, str]] = field(default_factory=list)


def pack(tree: str, out: str, format: str, per_shard: int = SAMPLES_PER_SHARD) -> Packed:
    """Write the image folders of ``tree`` (``train/<class>/...``, ``val/`` or ``test/``) as
    ``format`` shards of ``per_shard`` samples in ``out`` (an empty or new folder; path or URI),
    then read them back and check every class's count."""
    if storage.exists(out) and storage.has_entries(out):
        raise DataError(f"{out} is not empty: pack writes into an empty or new folder.")
    t = scan(tree)
    done = Packed(out, t.classes)
    for split in (TRAIN_DIR, t.eval_dir) if t.eval_dir else (TRAIN_DIR,):
        files, skipped = _split_files(t, split)
        done.skipped += skipped
        counts = Counter(c for _, c in files)
        for n, start in enumerate(range(0, len(files), per_shard)):
            chunk = files[start : start + per_shard]
            path = storage.join(out, f"{split}/shard-{n:06d}{FORMATS[format]}")
            storage.write_bytes(path, _shard(format, t.root, chunk, t.classes, start))
        done.samples[split] = len(files)
        done.shards[split] = -(-len(files) // per_shard)
        _check(out, split, done.shards[split], format, counts)
    storage.write_text(storage.join(out, fmt.CLASSES_FILE), "".join(f"{c}\n" for c in t.classes))
    return done


def _split_files(t: Tree, split: str) -> tuple[list[tuple[str, int]], list[dict[str, str]]]:
    """(rel path, class index) of the split's image files, in a fixed shuffled order; the files
    that cannot go in a shard, with why."""
    index = {c: i for i, c in enumerate(t.classes)}
    files, skipped = [], []
    for f in t.files:
        parts = f.rel.split("/")
        if parts[0] != split:
            continue
        ext = f.rel.rsplit(".", 1)[-1].lower() if "." in parts[-1] else ""
        reason = "" if len(parts) > 2 else "not inside a class folder"
        if not reason and ext not in fmt.image_extensions():
            reason = f"not an image file name (.{ext or '?'})"
        if reason:
            skipped.append({"path": storage.join(t.root, f.rel), "error": reason})
        else:
            files.append((f.rel, index[parts[1]]))
    files.sort(key=lambda fc: split_rank(fc[0]))
    return files, skipped


def _shard(
    format: str, root: str, files: Sequence[tuple[str, int]], classes: Sequence[str], first: int
) -> bytes:
    with ThreadPoolExecutor(_READERS) as pool:
        datas = list(pool.map(lambda fc: storage.read_bytes(storage.join(root, fc[0])), files))
    if format == "parquet":
        return parquet_shard([(r, d, c) for (r, c), d in zip(files, datas, strict=True)], classes)
    samples = [
        (f"{first + i:08d}", r.rsplit(".", 1)[-1].lower(), d, c)
        for i, ((r, c), d) in enumerate(zip(files, datas, strict=True))
    ]
    return tar_shard(samples)


def _check(out: str, split: str, n_shards: int, format: str, want: Counter) -> None:
    """Read the split's shards back: every class's count must be the one packed."""
    got: Counter = Counter()
    for n in range(n_shards):
        path = storage.join(out, f"{split}/shard-{n:06d}{FORMATS[format]}")
        ix = fmt.index_shard(path)
        bad = ix.error or next((s.problem for s in ix.samples if s.problem), "")
        if bad:
            raise DataError(f"{path} does not read back: {bad}. Pack again.")
        got.update(s.label for s in ix.samples)
    if got != want:
        raise DataError(
            f"the {split} shards in {out} read back {sum(got.values())} samples per class "
            f"{dict(sorted(got.items()))}, {sum(want.values())} were packed "
            f"{dict(sorted(want.items()))}. Pack again."
        )


def tar_shard(samples: Sequence[tuple[str, str, bytes, int]]) -> bytes:
    """A WebDataset tar of ``(key, image extension, image bytes, class index)``: members
    ``<key>.<ext>`` and ``<key>.cls``, as ``webdataset.TarWriter`` writes them (read-only,
    time 0, so the same samples give the same bytes)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tf:
        for key, ext, data, label in samples:
            for name, payload in ((f"{key}.{ext}", data), (f"{key}.cls", str(label).encode())):
                info = tarfile.TarInfo(name)
                info.size, info.mode, info.mtime = len(payload), 0o444, 0
                tf.addfile(info, io.BytesIO(payload))
    return buf.getvalue()


def parquet_shard(
    samples: Sequence[tuple[str, bytes, int]], classes: Sequence[str], row_group: int = 100
) -> bytes:
    """A Parquet file of ``(path, image bytes, class index)`` as Hugging Face ``datasets``
    writes an image dataset: ``image: struct{bytes, path}``, ``label: int64``, and the class
    names in the ``huggingface`` schema metadata (a ``ClassLabel``). Row groups of
    ``row_group`` rows (``datasets``' own for images) keep reading one row cheap."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    image = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    features = {
        "image": {"_type": "Image"},
        fmt.LABEL_COLUMN: {"names": list(classes), "_type": "ClassLabel"},
    }
    schema = pa.schema([("image", image), (fmt.LABEL_COLUMN, pa.int64())]).with_metadata(
        {"huggingface": json.dumps({"info": {"features": features}})}
    )
    table = pa.table(
        {
            "image": [{"bytes": data, "path": p} for p, data, _ in samples],
            fmt.LABEL_COLUMN: [label for _, _, label in samples],
        },
        schema=schema,
    )
    buf = io.BytesIO()
    pq.write_table(table, buf, row_group_size=row_group)
    return buf.getvalue()
