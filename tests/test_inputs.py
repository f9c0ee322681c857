"""Listing a prediction job's inputs: sorted, each file once, in Arrow arrays."""

import pytest

from cifar.config import ConfigError
from cifar.predict.inputs import list_inputs, walk_sorted


def _touch(root, rels):
    for rel in rels:
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x")


def test_the_walk_yields_sorted_paths_in_chunks(tmp_path):
    rels = [
        "a.txt",
        "a/b.png",
        "a-b/c.png",
        "a b/d.png",
        "é/e.png",
        ".hidden/f.png",
        "Z.png",
        "a/.DS_Store",
        "a/x/y/z.png",
        "b.png",
    ]
    _touch(tmp_path, rels)
    (tmp_path / "empty").mkdir()
    chunks = list(walk_sorted(str(tmp_path), chunk=3))
    assert [len(c) for c in chunks] == [3, 3, 3, 1]
    paths = [p for c in chunks for p in c.to_pylist()]
    assert paths == sorted(f"{tmp_path}/{r}" for r in rels)  # hidden files too, as before


def test_overlapping_inputs_give_each_file_once_under_the_first_root(tmp_path):
    _touch(tmp_path, ["in/a/1.png", "in/a/2.JPG", "in/b/3.png", "in/b/notes.txt"])
    specs = [str(tmp_path / "in/a"), str(tmp_path / "in"), str(tmp_path / "in/b/3.png")]
    found = list_inputs(specs, "png,jpg")
    assert found.files.to_pylist() == [
        f"{tmp_path}/in/a/1.png",
        f"{tmp_path}/in/a/2.JPG",  # extensions match in any case
        f"{tmp_path}/in/b/3.png",
    ]
    assert found.root_list() == [f"{tmp_path}/in/a", f"{tmp_path}/in/a", f"{tmp_path}/in"]
    assert found.skipped == 1  # notes.txt
    with pytest.raises(ConfigError, match="no files found"):
        list_inputs([str(tmp_path / "nothing")], None)


def test_the_lister_hands_a_restarted_reader_the_same_chunks_first(tmp_path):
    """A read task Ray retries gets the chunks it had, in order, then new ones; each chunk goes
    to one reader; committed paths and other extensions are counted and left out."""
    import pyarrow as pa

    from cifar.predict.listing import Lister

    _touch(tmp_path, [f"d{i}/{j}.png" for i in range(3) for j in range(4)] + ["d0/x.txt"])
    done = pa.array([f"file://{tmp_path}/d1/0.png"])
    lister = Lister(f"file://{tmp_path}", "png", None, done, chunk=2)
    lister.begin(0)
    first = [lister.next(0)["path"].to_pylist() for _ in range(2)]
    lister.begin(1)
    other = lister.next(1)["path"].to_pylist()
    lister.begin(0)  # reader 0 starts again
    assert [lister.next(0)["path"].to_pylist() for _ in range(2)] == first
    rest = []
    while (t := lister.next(0)) is not None:
        rest += t["path"].to_pylist()
    seen = first[0] + first[1] + other + rest
    assert sorted(seen) == sorted(
        f"file://{tmp_path}/d{i}/{j}.png" for i in range(3) for j in range(4) if (i, j) != (1, 0)
    )  # each once
    assert lister.counts() == {"files": 12, "skipped": 1, "already_done": 1, "finished": True}


def test_a_glob_names_each_file_once_and_extensions_must_name_one(tmp_path):
    from cifar.predict.config import PredictConfig

    _touch(tmp_path, ["g/a/x.png", "g/y.png"])
    found = list_inputs([f"{tmp_path}/g/**/**/*.png"], None)
    assert found.files.to_pylist() == [f"{tmp_path}/g/a/x.png", f"{tmp_path}/g/y.png"]
    cfg = PredictConfig(model="m", input=["i"], output="o", extensions=",")
    with pytest.raises(ConfigError, match="names no extension"):
        cfg.validate()
