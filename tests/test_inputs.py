"""Listing a prediction job's inputs: sorted, each file once, in Arrow arrays."""

import pytest

from cifar.config import ConfigError
from cifar.inputs import list_inputs, walk_sorted


def _touch(root, rels):
    for rel in rels:
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x")


def test_the_walk_yields_sorted_paths_in_chunks(tmp_path):
    rels = ["a.txt", "a/b.png", "a-b/c.png", "a b/d.png", "é/e.png", ".hidden/f.png", "Z.png",
            "a/.DS_Store", "a/x/y/z.png", "b.png"]  # fmt: skip
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
