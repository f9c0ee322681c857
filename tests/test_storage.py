"""The same calls on a local path and on a file:// URI (what s3:// and gs:// go through)."""

import pytest

from cifar.io import faults, storage


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


def test_a_file_uri_is_not_a_folder_and_names_in_messages_are_not_faults(tmp_path):
    (tmp_path / "x.png").write_bytes(b"x")
    assert not storage.is_dir(f"file://{tmp_path}/x.png")
    assert storage.is_dir(f"file://{tmp_path}") and storage.is_file(f"file://{tmp_path}/x.png")
    denied = OSError(
        "When reading information for key 'runs/premature-stop/model.pt' in bucket 'b': "
        "AWS Error ACCESS_DENIED during HeadObject operation: No response body."
    )
    skewed = OSError("AWS Error UNKNOWN during PutObject operation: RequestTimeTooSkewed")
    assert not faults.is_transient(denied) and not faults.is_transient(skewed)
    assert faults.is_transient(OSError("AWS Error SLOW_DOWN during GetObject operation: x"))


def test_a_torn_stamp_means_download_again(tmp_path, monkeypatch):
    monkeypatch.setenv("CIFAR_RAY_CACHE", str(tmp_path / "cache"))
    (tmp_path / "m.pt").write_bytes(b"weights")
    uri = f"file://{tmp_path}/m.pt"
    local = storage.local_copy(uri)
    (local.parent / "source.json").write_text('{"uri": ')  # killed mid-write
    assert storage.local_copy(uri).read_bytes() == b"weights"
