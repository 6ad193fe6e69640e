"""Entry points, run as a user runs them: a subprocess, Hydra overrides, a fresh local Ray."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.embedded_model import GGUF_SHA256, _manifest_ok, find_gguf, sha256_of

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
    # the same reply figures as an evaluation's: invalid replies by reason, matched, not understood
    finished_steps = [s for record in map(json.loads, lines) if record["status"] == "finished" for s in record["steps"]]
    assert sum(summary["invalid_by_reason"].values()) == sum(s["invalid_reason"] is not None for s in finished_steps)
    assert summary["invalid_rate"] == sum(s["invalid_reason"] is not None for s in finished_steps) / len(finished_steps)
    assert "replies: invalid" in result.stdout
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


@pytest.mark.slow
def test_evaluate_entry_point_plays_the_adapter_even_after_an_actor_restart(tiny_model_dir, tmp_path):
    """The actor is killed (SIGKILL) mid-evaluation; Ray restarts it with the base model only. Before,
    the adapter was pushed once, so the restarted actor played on with the base model."""
    import signal
    import time

    from tests.helpers import actor_processes, random_adapter

    adapter_dir = random_adapter(tiny_model_dir, version=1, seed=3).save(tmp_path / "checkpoint" / "adapter")
    run_dir = tmp_path / "eval"
    command = [
        sys.executable, "-m", "launch.evaluate", "env=corridor", "env.tasks=[corridor-1,corridor-2]", "engine=hf",
        f"model.path={tiny_model_dir}", "model.dtype=float32", "rollout.num_actors=1", "rollout.envs_per_actor=1",
        "rollout.max_tokens=8", f"evaluate.adapter={adapter_dir}", "evaluate.split=test", "evaluate.episodes_per_task=12",
        f"run_dir={run_dir}", "ray.num_cpus=2",
    ]  # fmt: skip
    started = time.time() - 1
    driver = subprocess.Popen(command, cwd=ROOT, env=dict(os.environ, RAY_AUTH_MODE="disabled"), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 300
        played = run_dir / "episodes.jsonl"
        while not (played.exists() and len(played.read_text().splitlines()) >= 2):
            assert driver.poll() is None and time.monotonic() < deadline, "the evaluation ended before the kill"
            time.sleep(0.05)
        (victim,) = actor_processes("RolloutWorker", started, driver_pid=driver.pid)
        os.kill(victim.pid, signal.SIGKILL)
        output, _ = driver.communicate(timeout=600)
    finally:
        if driver.poll() is None:
            driver.kill()
    assert driver.returncode == 0, output[-3000:]
    table = json.loads((run_dir / "evaluation.json").read_text())
    assert set(table["tasks"]) == {"corridor-1", "corridor-2"} and table["overall"]["episodes"] == 24
    assert table["adapter"] == str(adapter_dir) and table["greedy"] and table["split"] == "test" and table["version"] == 1
    episodes = [json.loads(line) for line in (run_dir / "episodes.jsonl").read_text().splitlines()]
    assert sorted((e["task"], e["variation"]) for e in episodes) == [(t, v) for t in ("corridor-1", "corridor-2") for v in range(12)]
    assert all(s["policy_version"] == 1 for e in episodes for s in e["steps"])  # the adapter, before and after the restart
    ledger = table["ledger"]  # the killed actor's owed episodes were written off and played again
    assert ledger["failed"].get("rollout_actor_died", 0) >= 1 and ledger["retried"] == sum(ledger["failed"].values())
    assert ledger["started"] == ledger["finished"] + sum(ledger["failed"].values()) and ledger["in_flight"] == 0
    assert ledger["dropped"] == {"evaluation": ledger["finished"]} and ledger["finished"] == 24
    assert "| **overall** | 24 |" in output and "ledger" in output


def test_a_damaged_or_foreign_checkpoint_is_a_clear_error(tiny_model_dir, tmp_path):
    from core.adapter import AdapterWeights, CheckpointError
    from tests.helpers import random_adapter

    good = random_adapter(tiny_model_dir, version=1, seed=3).save(tmp_path / "good")
    assert AdapterWeights.load(good, version=4).version == 4
    with pytest.raises(CheckpointError, match="adapter_config.json is missing"):
        AdapterWeights.load(tiny_model_dir)  # a model folder, not an adapter
    truncated = tmp_path / "truncated"
    truncated.mkdir()
    (truncated / "adapter_config.json").write_text((good / "adapter_config.json").read_text())
    (truncated / "adapter_model.safetensors").write_bytes((good / "adapter_model.safetensors").read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="truncated or not safetensors"):
        AdapterWeights.load(truncated)
    (truncated / "adapter_config.json").write_text('{"peft_type": "PREFIX_TUNING"}')
    with pytest.raises(CheckpointError, match="only LoRA adapters"):
        AdapterWeights.load(truncated)


def test_train_stops_before_any_actor_when_ray_cannot_schedule_every_role(tiny_model_dir, tmp_path):
    command = [
        sys.executable, "-m", "launch.train", "env=corridor", f"model.path={tiny_model_dir}", "reward=mise",
        "rollout.num_actors=2", "rollout.num_cpus_per_actor=0.5", "reward.num_cpus_per_actor=0.5", "ray.num_cpus=2",
        f"run_dir={tmp_path / 'run'}",
    ]  # fmt: skip
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env=dict(os.environ, RAY_AUTH_MODE="disabled"), timeout=300)
    assert result.returncode != 0
    assert "the run needs 2.5 CPUs but the cluster has 2" in result.stderr
    assert "evaluator actors: 1 x 0.5 (reward.num_actors x reward.num_{cpus,gpus}_per_actor)" in result.stderr
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_a_gpu_preset_on_a_machine_without_gpus_stops_with_what_is_missing(tiny_model_dir, tmp_path):
    command = [
        sys.executable, "-m", "launch.train", "cluster=gpu8", "env=corridor", f"model.path={tiny_model_dir}", "reward=mise",
        "ray.num_cpus=32", f"run_dir={tmp_path / 'run'}",
    ]  # fmt: skip
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env=dict(os.environ, RAY_AUTH_MODE="disabled"), timeout=300)
    assert result.returncode != 0
    message = result.stderr[result.stderr.index("the run needs") :].splitlines()[0]
    print(message)
    assert "the run needs 8 GPUs but the cluster has 0" in message
    for role in ("rollout actors: 4 x 1", "learner ranks: 2 x 1", "evaluator actors: 2 x 1"):
        assert role in message
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_actor_logs_are_linked_into_a_run_dir_that_does_not_exist_yet(ray_local, tmp_path):
    """``pipeline.trainer.run(cfg, run_dir)`` called from Python (not through Hydra, which makes the run
    dir) stopped with FileNotFoundError while linking the actors' logs."""
    from pipeline.cluster import link_actor_logs

    link = link_actor_logs(tmp_path / "runs" / "new")
    assert link is not None and link.is_symlink() and link.resolve().is_dir()
    assert link_actor_logs(tmp_path / "runs" / "new") == link  # a second call keeps the link
