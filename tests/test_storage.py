"""The same calls on a local path and on a file:// URI (what s3:// and gs:// go through)."""

import pytest

from cifar import storage


@pytest.mark.parametrize("uri", [False, True])
def test_write_read_exists_copy(tmp_path, uri):
    base = f"file://{tmp_path}" if uri else str(tmp_path)
    target = f"{base}/a/b/config.json"
    assert not storage.exists(target)
    storage.write_text(target, '{"x": 1}')  # parents are created
    assert storage.exists(target) and storage.read_text(target) == '{"x": 1}'
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "model.pt").write_bytes(b"\x00\x01weights")
    storage.copy_files(str(tmp_path / "src"), ["model.pt"], f"{base}/run/model")
    assert (tmp_path / "run" / "model" / "model.pt").read_bytes() == b"\x00\x01weights"
    assert storage.read_bytes(f"{base}/run/model/model.pt") == b"\x00\x01weights"
