"""cluster.yaml against the launcher schema shipped inside the ray package, plus the rules the
schema cannot express."""

import json
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml

ROOT = Path(__file__).resolve().parents[1]
# vCPUs and GPUs of the instance types cluster.yaml may use
INSTANCE_TYPES = {
    "m6i.xlarge": (4, 0),
    "m6i.2xlarge": (8, 0),
    "g5.xlarge": (4, 1),
    "g5.2xlarge": (8, 1),
    "g6.xlarge": (4, 1),
    "g5.12xlarge": (48, 4),
}


@pytest.fixture(scope="module")
def config():
    return yaml.safe_load((ROOT / "cluster.yaml").read_text())


def test_valid_against_rays_own_schema(config):
    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    jsonschema.validate(config, schema)


def test_schema_check_is_live(config):
    broken = dict(config, available_node_types={"head": {"resources": {"CPU": -1}}})
    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schema)


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
    assert any("pip install" in c and "cifar-ray" in c for c in config["setup_commands"])
