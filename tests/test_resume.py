"""Stop and resume: a run whose driver is killed after step 1 and resumed from its checkpoint ends with
the same adapter as an uninterrupted run; a run whose learner dies, or whose reward stage dies with no
restarts left, stops with its last checkpoint intact and prints the command that resumes it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from tests.helpers import actor_processes

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow
ENV = dict(os.environ, RAY_AUTH_MODE="disabled")

# The tiny warm corridor policy (HF engine), sync mode, fixed seeds; reward=mise, so step 2 onwards is
# scored with the calibration map fitted on step 1 (which a resumed run must restore).
OVERRIDES = [
    "experiment=corridor_ablation", "reward=mise", "learner.steps=3", "learner.episodes_per_step=8",
    "rollout.envs_per_actor=8", "reward.calibration_min_episodes=8", "eval_groups=0", "learner.checkpoint_every=1",
    "report=false", "ray.num_cpus=2",
]  # fmt: skip


# Per-step metrics two runs of the same seeds must share: what was played, how it was rewarded, trained.
SAME_PER_STEP = [
    "episodes",
    "successes",
    "env_steps",
    "action_tokens",
    "return_mean",
    "reward/r_se_mean",
    "reward/r_mi_mean",
    "reward/dense_mean",
    "reward/dense_std",
    "loss",
    "policy_version",
]


def train(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "launch.train", *OVERRIDES, *args]
    return subprocess.run(command, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=timeout)


def start_and_kill(run_dir: Path, victim, *args: str) -> subprocess.CompletedProcess:
    """Start a run, wait for its step-1 checkpoint, then SIGKILL ``victim(driver_pid)``'s process."""
    command = [sys.executable, "-m", "launch.train", *OVERRIDES, *args, f"run_dir={run_dir}"]
    driver = subprocess.Popen(command, cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 600
    while not (run_dir / "checkpoints" / "step1").is_dir():
        assert driver.poll() is None and time.monotonic() < deadline, "the run ended before its step-1 checkpoint"
        time.sleep(0.5)
    os.kill(victim(driver.pid), signal.SIGKILL)
    out, err = driver.communicate(timeout=300)
    return subprocess.CompletedProcess(command, driver.returncode, out, err)


def adapter_tensors(run_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(run_dir / "checkpoints" / "final" / "adapter" / "adapter_model.safetensors")


def actor_pid(class_name: str):
    """``victim`` for ``start_and_kill``: the process of this driver's one actor of ``class_name``."""

    def pid(driver_pid: int) -> int:
        (process,) = actor_processes(class_name, since=psutil.Process(driver_pid).create_time(), driver_pid=driver_pid)
        return process.pid

    return pid


def test_a_killed_and_resumed_run_ends_with_the_same_adapter_as_an_uninterrupted_one(tmp_path):
    whole = train(f"run_dir={tmp_path / 'whole'}")
    assert whole.returncode == 0, whole.stderr[-3000:]

    killed = start_and_kill(tmp_path / "resumed", victim=lambda driver: driver)
    assert killed.returncode == -signal.SIGKILL
    assert not (tmp_path / "resumed" / "checkpoints" / "final").exists()
    resumed = train(f"resume={tmp_path / 'resumed'}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stdout

    # Where the runs parted, if they did: the episodes (env steps, successes, tokens), their rewards or
    # the training numbers of a step. Then the adapter itself, bit for bit.
    steps = [[json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()] for name in ("whole", "resumed")]
    for whole_step, resumed_step in zip(*steps, strict=True):
        for key in SAME_PER_STEP:
            assert whole_step.get(key) == resumed_step.get(key), (
                f"step {whole_step['step']}: {key} {whole_step.get(key)} (whole) != {resumed_step.get(key)} (resumed)"
            )
    expected, got = adapter_tensors(tmp_path / "whole"), adapter_tensors(tmp_path / "resumed")
    assert expected.keys() == got.keys()
    worst = max((expected[k] - got[k]).abs().max().item() for k in expected)
    assert worst == 0.0, f"the resumed run's adapter differs (largest difference {worst:.3g}) though every step's metrics agree"
    summaries = [json.loads((tmp_path / name / "summary.json").read_text()) for name in ("whole", "resumed")]
    assert summaries[0]["success_rate_by_step"] == summaries[1]["success_rate_by_step"]
    assert summaries[0]["ledger"] == summaries[1]["ledger"]  # the episode counters were restored, not restarted
    assert summaries[1]["ledger"]["trained"] == 3 * 8
    metrics = [json.loads(line) for line in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2, 3]
    assert metrics[1]["reward/dense_std"] > 0  # step 2 was scored with the calibration map restored from step 1


@pytest.mark.parametrize(
    "actor, who, args",
    [("Learner", "a learner rank", ()), ("RewardStage", "the reward stage", ("reward.max_restarts=0",))],  # with restarts, see test_chaos
)
def test_a_dead_learner_or_reward_stage_stops_the_run_with_its_last_checkpoint_and_the_resume_command(tmp_path, actor, who, args):
    from core.adapter import AdapterWeights

    run_dir = tmp_path / "run"
    result = start_and_kill(run_dir, actor_pid(actor), *args)
    assert result.returncode != 0
    assert f"{who} died" in result.stderr and "The run stopped." in result.stderr
    last = run_dir / "checkpoints" / ("step2" if (run_dir / "checkpoints" / "step2").exists() else "step1")
    assert f"The last complete checkpoint is {last}" in result.stderr
    assert f"resume={run_dir}" in result.stderr and "python -m launch.train" in result.stderr
    assert AdapterWeights.load(last / "adapter").tensors  # intact and loadable
    assert not list((run_dir / "checkpoints").glob("*.partial"))
