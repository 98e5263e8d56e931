"""The cluster: cluster.yaml against Ray's own schema, and a real two-node Ray cluster on loopback running a grid
submitted with `harness submit` (token auth on, each node with its own temp dir, memory caps and logical GPUs)."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from harness.results import store
from harness.run.plan import expand
from harness.registry import load_registry
from raynodes import auth_env, start_head, start_worker, wait_for_nodes

ROOT = Path(__file__).resolve().parent.parent
TINY = "tests/grids/tiny.toml"


def test_cluster_yaml_is_valid_for_the_ray_launcher():
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    config = prepare_config(raw)
    validate_config(config)
    head = config["available_node_types"][config["head_node_type"]]
    assert head["resources"] == {"CPU": 0}  # trials go to GPU workers only
    workers = {k: v for k, v in config["available_node_types"].items() if k != config["head_node_type"]}
    assert workers and all(w["min_workers"] == 0 for w in workers.values())  # autoscaled from zero
    assert any("pip install" in c and "/home/ubuntu/harness" in c for c in config["setup_commands"])
    start = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in start and "0.0.0.0" not in start
    for command in config["head_start_ray_commands"][1:] + config["worker_start_ray_commands"][1:]:
        assert "RAY_AUTH_MODE=token" in command  # every node, head and workers, requires the token
    assert "/home/ubuntu/.ray/auth_token" in config["file_mounts"]
    assert "IpPermissions" not in yaml.safe_dump(raw)  # no inbound rule beyond Ray's default SSH + intra-cluster


@pytest.mark.slow
def test_submitted_grid_runs_on_both_nodes_of_a_two_node_cluster(tmp_path):
    env = {**auth_env(), "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    head, address, dashboard = start_head(env, num_cpus=1, num_gpus=1, dashboard=True, memory=3 * 1024**3)
    nodes = [head]
    try:
        nodes.append(start_worker(env, address, num_cpus=1, num_gpus=1))
        wait_for_nodes(env, address, 2, nodes[1])
        results = tmp_path / "results"
        backbones = "demo-mae-tiny,demo-dino-tiny"
        run = subprocess.run(
            [sys.executable, "-m", "harness.cli", "submit", "--grid", TINY, "--backbones", backbones, "--address",
             dashboard, "--results-dir", str(results), "--no-leaderboard", "--wait"],
            cwd=ROOT, env={k: v for k, v in {**os.environ, **env}.items() if k != "RAY_AUTH_MODE"},  # token alone
            capture_output=True, text=True, timeout=480)
        out = run.stdout + run.stderr
        assert run.returncode == 0, out
        assert "ray job logs --address" in out and "SUCCEEDED" in out
        assert "WARNING" not in run.stderr and "INFO" not in run.stderr, run.stderr  # Ray's client chatter is quiet
        reg = load_registry()
        grid = reg.grid(TINY)
        trials = expand(dataclasses.replace(grid, backbones=tuple(backbones.split(","))), reg)
        rows = store.read_results(results)
        assert sorted(rows.config_hash) == sorted(h.config_hash for t in trials for h in t.heads)
        assert set(rows.status) == {"ok"}
        nodes_used = {d.split("ray node ")[1].split(",")[0] for d in rows.device}
        assert len(nodes_used) == 2, rows.device.tolist()  # 1 GPU per trial, 1 GPU per node: one trial each
    finally:
        for node in reversed(nodes):
            node.stop()
