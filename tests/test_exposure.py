"""Exposure settings: cluster.yaml starts every Ray node with token authentication and ships the token."""
from __future__ import annotations

import os

import yaml

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_cluster_yaml_turns_token_auth_on_for_head_and_workers():
    with open(os.path.join(REPO, "cluster.yaml"), encoding="utf-8") as f:
        cfg = yaml.safe_load(f)
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        starts = [c for c in cfg[key] if "ray start" in c]
        assert starts and all("RAY_AUTH_MODE=token" in c.split("ray start")[0] for c in starts), key
    assert cfg["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    assert any("RAY_AUTH_MODE=token" in c for c in cfg["setup_commands"])  # drivers on the nodes too
    head = next(c for c in cfg["head_start_ray_commands"] if "ray start" in c)
    assert "--dashboard-host=127.0.0.1" in head
