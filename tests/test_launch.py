"""Entry points, run as a user runs them: a subprocess, Hydra overrides, a fresh local Ray."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from launch.prepare_model import GGUF_SHA256, _manifest_ok, find_gguf, sha256_of

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_rollout_entry_point_writes_episodes_and_balances_the_ledger(tiny_model_dir, tmp_path):
    run_dir = tmp_path / "run"
    command = [
        sys.executable, "-m", "launch.rollout", "env=corridor", f"model.path={tiny_model_dir}",
        "model.dtype=float32", "rollout.num_actors=2", "rollout.envs_per_actor=2", "rollout.max_tokens=8",
        "episodes=8", "group_size=2", f"run_dir={run_dir}", "ray.num_cpus=2",
    ]  # fmt: skip
    env = dict(os.environ, RAY_AUTH_MODE="disabled")
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    lines = (run_dir / "episodes.jsonl").read_text().splitlines()
    assert len(lines) == summary["episodes"] == 8
    ledger = summary["ledger"]
    assert ledger["started"] == ledger["finished"] + sum(ledger["failed"].values()) == 8 and ledger["in_flight"] == 0
    assert 0 <= summary["success_rate"] <= 1 and summary["env_steps"] == sum(len(json.loads(l)["steps"]) for l in lines)
    assert summary["mean_batch_size"] > 1  # envs were batched into shared generation calls
    assert "success" in result.stdout and "tokens/s" in result.stdout
    assert (run_dir / "config.yaml").exists()


def test_rollout_entry_point_rejects_a_bad_config_before_starting_anything(tmp_path):
    command = [sys.executable, "-m", "launch.rollout", "rollout.num_actors=0", f"run_dir={tmp_path / 'run'}"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "rollout.num_actors=0 is invalid: an integer >= 1" in result.stderr
    assert not (tmp_path / "run").exists()


def test_embedded_model_is_checked_by_sha256(tmp_path):
    assert sha256_of(find_gguf()) == GGUF_SHA256
    (tmp_path / "model.safetensors").write_bytes(b"weights")
    manifest = {"gguf_sha256": GGUF_SHA256, "weights_sha256": sha256_of(tmp_path / "model.safetensors")}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    assert _manifest_ok(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"weights, truncated")  # a damaged copy is converted again
    assert not _manifest_ok(tmp_path)
