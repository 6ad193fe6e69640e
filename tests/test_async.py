"""``mode=async``, the mode of both paper presets: the next batch is generated while the learner trains,
so every batch from step 2 on is exactly one version old, and nothing is dropped with learner.staleness=1.
A step whose whole batch is too old stops the run instead of training on nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conf.schema import Config, LearnerConfig

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_an_async_run_trains_every_batch_one_version_behind_and_balances_the_ledger(tmp_path):
    run_dir = tmp_path / "run"
    command = [
        sys.executable, "-m", "launch.train", "experiment=corridor_ablation", "reward=env", "mode=async", "learner.steps=3",
        "learner.episodes_per_step=8", "learner.staleness=1", "rollout.envs_per_actor=8", "eval_groups=0", "report=false",
        "ray.num_cpus=2", f"run_dir={run_dir}",
    ]  # fmt: skip
    result = subprocess.run(command, cwd=ROOT, env=dict(os.environ, RAY_AUTH_MODE="disabled"), capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    steps = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["policy_version"] for m in steps] == [0, 1, 2]  # the learner's version when it trained the step
    assert [m["published_version"] for m in steps] == [1, 2, 3]
    # Batch s+1 was generated while step s trained, before version s+1 existed: one version old.
    assert [m["episode_staleness_max"] for m in steps] == [0, 1, 1]
    assert [m["trained_episodes"] for m in steps] == [8, 8, 8] and all(m["dropped_stale"] == 0 for m in steps)
    summary = json.loads((run_dir / "summary.json").read_text())
    ledger = summary["ledger"]
    assert summary["mode"] == "async" and ledger["trained"] == 24 and ledger["dropped"].get("stale", 0) == 0
    assert ledger["started"] == ledger["finished"] + sum(ledger["failed"].values()) and ledger["in_flight"] == 0


def test_a_step_that_trained_on_no_episode_stops_the_run_with_why():
    """mode=async with learner.staleness=0 (now refused by validate): every batch from step 2 on is
    dropped; the run used to 'succeed' having trained on nothing."""
    from pipeline.trainer import NothingTrained, check_trained

    cfg = Config(mode="async", learner=LearnerConfig(staleness=0))
    check_trained(cfg, {"learner_step": 1, "episodes": 8, "trained_episodes": 8, "dropped_stale": 0, "policy_version": 0})
    check_trained(cfg, {"learner_step": 2, "episodes": 8, "trained_episodes": 1, "dropped_stale": 7, "policy_version": 1})
    with pytest.raises(NothingTrained, match=r"learner step 2 trained on none of its 8 episodes: 8 were dropped as stale .*learner.staleness=0, mode=async"):
        check_trained(cfg, {"learner_step": 2, "episodes": 8, "trained_episodes": 0, "dropped_stale": 8, "policy_version": 1})
