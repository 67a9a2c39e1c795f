"""cluster.yaml and the on-premise example pass Ray's own cluster-config validation (the JSON
schema shipped inside the Ray wheel, after the launcher fills in its defaults)."""

from __future__ import annotations

import copy
from pathlib import Path

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def _validate(raw: dict) -> dict:
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = prepare_config(copy.deepcopy(raw))
    validate_config(config)
    return config


@pytest.mark.parametrize("path", ["cluster.yaml", "docs/cluster-local.yaml"])
def test_cluster_configs_pass_rays_validation(path):
    raw = yaml.safe_load((ROOT / path).read_text())
    config = _validate(raw)
    text = (ROOT / path).read_text()
    start = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in start, "the dashboard stays private"
    assert "RAY_AUTH_MODE" not in text, "token authentication stays on"
    for word in ("aws_access_key_id", "aws_secret_access_key", "password", "token:"):
        assert word not in text.lower()
    assert any("pip install -e" in c for c in config["setup_commands"]), "nodes install this project"


def test_aws_cluster_has_a_gpu_free_head_and_autoscaling_gpu_workers():
    raw = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    assert raw["docker"]["image"] == "rayproject/ray:2.60.0-py311-gpu"
    types = raw["available_node_types"]
    assert types[raw["head_node_type"]]["node_config"]["InstanceType"].startswith("m")
    worker = types["gpu_worker"]
    assert worker["min_workers"] == 0 < worker["max_workers"]
    assert worker["node_config"]["InstanceType"].startswith("g")


def test_the_validation_catches_a_broken_config():
    raw = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    raw["available_node_types"]["gpu_worker"]["min_wokers"] = 1
    with pytest.raises(jsonschema.ValidationError, match="min_wokers"):
        _validate(raw)
