"""What `pip install` gives a user: the wheel built from this repository holds the library and
the jobs as ``cifar.jobs`` (no top-level ``jobs`` package to clash with anyone's), its commands
run from anywhere without the repository, and the license travels with it."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from cifar import __version__
from tests.paths import ROOT

COMMANDS = ("cifar-train", "cifar-predict", "cifar-classify", "cifar-data")


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(the wheel, a folder it is installed into as pip installs it, without dependencies)."""
    out = tmp_path_factory.mktemp("wheel")
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(out), str(ROOT)],
        check=True,
        capture_output=True,
    )
    wheel = next(out.glob("cifar_ray-*.whl"))
    target = out / "site"
    subprocess.run(
        [*pip, "install", "--no-deps", "--target", str(target), str(wheel)],
        check=True,
        capture_output=True,
    )
    return wheel, target


def test_the_wheel_holds_the_jobs_inside_the_package(installed):
    wheel, _ = installed
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert tops == {"cifar", f"cifar_ray-{__version__}.dist-info"}  # and no top-level jobs/
    assert not [n for n in names if "helpers" in n or "testing" in n]  # tests' own, not shipped
    for job in ("train", "predict", "classify", "data", "common"):
        assert f"cifar/jobs/{job}.py" in names
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    scripts = zipfile.ZipFile(wheel).read(entry).decode()
    for cmd in COMMANDS:
        assert f"{cmd} = cifar.jobs." in scripts
    assert any(n.endswith("licenses/LICENSE") for n in names)


def test_the_installed_commands_run_without_the_repository(installed, tmp_path):
    _, target = installed
    env = {"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"}
    for cmd in COMMANDS:
        r = subprocess.run(
            [str(target / "bin" / cmd), "--help"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert r.returncode == 0 and "usage" in r.stdout.lower(), (cmd, r.stderr[-2000:])
    where = subprocess.run(
        [sys.executable, "-c", "import cifar.jobs.train as t; print(t.__file__)"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert Path(where.stdout.strip()).is_relative_to(target)
    clash = subprocess.run(
        [sys.executable, "-c", "import jobs"], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert clash.returncode != 0 and "No module named 'jobs'" in clash.stderr
