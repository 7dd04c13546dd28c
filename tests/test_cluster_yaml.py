"""cluster.yaml passes Ray's own offline validator (ray up has no dry run)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

ROOT = Path(__file__).resolve().parents[1]


def load() -> dict:
    return yaml.safe_load((ROOT / "cluster.yaml").read_text())


def test_cluster_yaml_is_valid_for_rays_launcher():
    validate_config(prepare_config(copy.deepcopy(load())))


def test_cluster_yaml_has_no_keys_and_scales_from_zero():
    text = (ROOT / "cluster.yaml").read_text()
    assert "aws_access_key_id" not in text.lower() and "aws_secret" not in text.lower()
    config = load()
    workers = {k: v for k, v in config["available_node_types"].items() if k != config["head_node_type"]}
    assert len(workers) >= 2 and all(v["min_workers"] == 0 for v in workers.values())


def test_validator_catches_a_broken_copy():
    config = load()
    config["head_node_type"] = "no.such.type"
    with pytest.raises(ValueError):
        validate_config(prepare_config(config))
