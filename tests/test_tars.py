"""The tar reader against the standard library's ``tarfile`` on archives written by the real
writers (webdataset, tarfile in each format, GNU tar), whole, cut short and corrupted."""

import io
import subprocess
import tarfile
from pathlib import Path

import pytest

from cifar.io import shards, tars

LONG = "a-folder-name-long-enough-" * 5  # 130 characters: a GNU long name or a ustar prefix


def _files() -> list[tuple[str, bytes]]:
    """Members with labels and images of several sizes, in folders, one with a long path and
    one with a name outside ASCII."""
    out = []
    for i in range(7):
        out.append((f"train/s{i:03d}.cls", str(i % 3).encode()))
        out.append((f"train/s{i:03d}.png", bytes([i]) * (100 + 700 * i)))
    out.append((f"{LONG}/deep.cls", b"2"))
    out.append((f"{LONG}/deep.jpg", b"\xff\xd8" + b"x" * 1500))
    out.append(("train/café.txt", b"cat"))
    out.append(("train/café.png", b"p" * 513))
    out.append(("train/big.png", bytes(range(256)) * 800))  # 200 KiB: more than a read's chunk
    out.append(("train/big.cls", b"1"))
    return out


def _write_tarfile(path: Path, fmt: int, extra: bool) -> None:
    pax = {"comment": "written for a test"} if fmt == tarfile.PAX_FORMAT else None
    with tarfile.open(path, "w", format=fmt, pax_headers=pax) as tf:
        if extra:  # a folder and a link: no samples, but members to step over
            d = tarfile.TarInfo("train")
            d.type = tarfile.DIRTYPE
            tf.addfile(d)
        for name, data in _files():
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), 1_700_000_000.25  # a float mtime: PAX records
            tf.addfile(info, io.BytesIO(data))
        if extra:
            link = tarfile.TarInfo("train/link.png")
            link.type, link.linkname = tarfile.SYMTYPE, "s000.png"
            tf.addfile(link)


def _write_webdataset(path: Path) -> None:
    import webdataset as wds

    with wds.TarWriter(str(path)) as w:
        for i in range(7):
            w.write({"__key__": f"s{i:03d}", "cls": i % 3, "png": bytes([i]) * (100 + 700 * i)})
        w.write({"__key__": "big", "cls": 1, "png": bytes(range(256)) * 800})


def _write_gnu_tar(path: Path, fmt: str) -> None:
    src = path.parent / f"src-{fmt}"
    for name, data in _files():
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_bytes(data)
    cmd = ["tar", f"--format={fmt}", "--sort=name", "-cf", str(path), "-C", str(src), "."]
    subprocess.run(cmd, check=True)


WRITERS = {
    "webdataset": _write_webdataset,
    "tarfile-pax": lambda p: _write_tarfile(p, tarfile.PAX_FORMAT, True),
    "tarfile-gnu": lambda p: _write_tarfile(p, tarfile.GNU_FORMAT, True),
    "tarfile-ustar": lambda p: _write_tarfile(p, tarfile.USTAR_FORMAT, False),
    "gnu-tar-posix": lambda p: _write_gnu_tar(p, "posix"),
    "gnu-tar-gnu": lambda p: _write_gnu_tar(p, "gnu"),
}


def _read(reader, path: Path, seekable: bool, want) -> tuple[list, str]:
    """Every member the reader gives before it stops, and the error it stopped with."""
    got = []
    with shards._open(str(path), seekable) as f:
        try:
            for m in reader(f, seekable, want):
                got.append(m)
        except tarfile.ReadError as e:
            return got, str(e) or "error"
    return got, ""


def _fast(f, seekable, want):
    return tars.members(tars.Blocks(f, seekable), want)


def _labels_only(name: str) -> bool:
    return name.endswith((".cls", ".txt"))


@pytest.fixture(scope="module", params=sorted(WRITERS))
def archive(request, tmp_path_factory) -> tuple[str, Path]:
    path = tmp_path_factory.mktemp(request.param) / "shard.tar"
    WRITERS[request.param](path)
    return request.param, path


@pytest.mark.parametrize("seekable", [True, False], ids=["seekable", "stream"])
def test_members_match_tarfiles_for_each_writer(archive, seekable):
    writer, archive = archive
    for want in (_labels_only, lambda name: True):
        fast, fast_error = _read(_fast, archive, seekable, want)
        slow, slow_error = _read(tars._tarfile_members, archive, seekable, want)
        assert (fast, fast_error) == (slow, slow_error)
        assert fast_error == "" and len(fast) >= 16
    names = {m[0].removeprefix("./") for m in fast}
    if writer != "webdataset":  # the others wrote _files
        assert {n for n, _ in _files()} <= names


def test_a_cut_or_corrupted_archive_stops_where_tarfile_does(tmp_path):
    whole = tmp_path / "whole.tar"
    _write_tarfile(whole, tarfile.PAX_FORMAT, True)
    data = whole.read_bytes()
    members = _read(_fast, whole, True, _labels_only)[0]
    last = members[-1][1] + members[-1][2]  # the end of the last member's data
    cut = tmp_path / "cut.tar"
    # every block boundary, and inside headers and data, up to the end-of-archive block
    for end in sorted({*range(0, last + 1, 512), *range(100, last, 1337), last}):
        cut.write_bytes(data[:end])
        for seekable in (True, False):
            fast = _read(_fast, cut, seekable, _labels_only)
            slow = _read(tars._tarfile_members, cut, seekable, _labels_only)
            assert fast[0] == slow[0], end
            assert fast[1] and slow[1], end  # both say the archive broke off
    # a header whose bytes changed after it was written fails its checksum
    broken = bytearray(data)
    second = members[1][1] - 512  # the second member's header
    broken[second + 10] ^= 0x01
    cut.write_bytes(bytes(broken))
    fast = _read(_fast, cut, True, _labels_only)
    assert fast == _read(tars._tarfile_members, cut, True, _labels_only)
    assert fast[1] == "bad checksum" and len(fast[0]) == 1


def test_a_sparse_member_is_read_by_tarfile_without_repeating_members(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.cls").write_bytes(b"1")
    (src / "a.png").write_bytes(b"p" * 700)
    with open(src / "b.png", "wb") as f:  # a file with a hole: GNU tar stores it sparse
        f.write(b"s" * 10)
        f.seek(10 * 2**20)
        f.write(b"e" * 10)
    path = tmp_path / "sparse.tar"
    cmd = ["tar", "--format=gnu", "--sparse", "--sort=name", "-cf", str(path), "-C", str(src)]
    subprocess.run([*cmd, "a.cls", "a.png", "b.png"], check=True)
    with pytest.raises(tars.Unsupported):
        _read(_fast, path, True, _labels_only)
    got = list(tars.read(lambda: shards._open(str(path)), True, _labels_only))
    assert [m[0] for m in got] == ["a.cls", "a.png", "b.png"]
    assert got == _read(tars._tarfile_members, path, True, _labels_only)[0]


def test_a_negative_size_is_an_invalid_header_not_a_loop(tmp_path):
    """A size field of -512 would move the reader back onto the same header: refused."""
    whole = tmp_path / "whole.tar"
    _write_tarfile(whole, tarfile.USTAR_FORMAT, False)
    data = bytearray(whole.read_bytes())
    h = _read(_fast, whole, True, _labels_only)[0][1][1] - 512  # the second member's header
    data[h + 124 : h + 136] = b"-0000001000\0"
    data[h + 148 : h + 156] = b" " * 8
    data[h + 148 : h + 156] = b"%06o\0 " % sum(data[h : h + 512])
    bad = tmp_path / "bad.tar"
    bad.write_bytes(bytes(data))
    for seekable in (True, False):
        got, error = _read(_fast, bad, seekable, _labels_only)
        assert (len(got), error) == (1, "invalid header")
