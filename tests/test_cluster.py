"""Cluster entry points as a user runs them: `ray job submit` against a real Ray head, and a Hydra
multirun sweep collected into one table and plot."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tiny_run_overrides(model_dir: str, run_dir: Path | None) -> list[str]:
    overrides = [
        "env=corridor", "env.tasks=[corridor-1]", "env.max_steps=3", "engine=hf", f"model.path={model_dir}",
        "model.dtype=float32", "rollout.num_actors=1", "rollout.envs_per_actor=4", "rollout.max_tokens=8",
        "rollout.history_window=0", "learner.steps=2", "learner.episodes_per_step=4", "learner.bf16_autocast=false",
        "group_size=2",
    ]  # fmt: skip
    return overrides + ([f"run_dir={run_dir}"] if run_dir else [])


@pytest.fixture
def ray_head():
    """A Ray head started with `ray start`, stopped by killing exactly its processes (`ray stop` would
    also stop the other Ray instances of this machine, such as the test session's)."""
    temp_dir = Path(tempfile.mkdtemp(prefix="rayhead-", dir="/tmp"))  # Ray keeps sockets here: the path must stay short
    port, dashboard = free_port(), free_port()
    env = dict(os.environ, RAY_AUTH_MODE="disabled", PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    env.pop("RAY_ADDRESS", None)
    subprocess.run(
        ["ray", "start", "--head", f"--port={port}", f"--dashboard-port={dashboard}", "--include-dashboard=true",
         f"--dashboard-agent-listen-port={free_port()}",  # the default port is taken by any other Ray instance here
         "--num-cpus=3", f"--temp-dir={temp_dir}", "--disable-usage-stats"],
        check=True, env=env, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    yield f"http://127.0.0.1:{dashboard}", env
    for process in psutil.process_iter(["cmdline"]):
        if any(str(temp_dir) in part for part in process.info["cmdline"] or []):
            process.kill()


def test_ray_job_submit_runs_the_training_job_on_a_running_cluster(ray_head, tiny_model_dir, tmp_path):
    address, env = ray_head
    run_dir = tmp_path / "run"
    job_id = f"mise-test-{uuid.uuid4().hex[:8]}"
    submit = [
        "ray", "job", "submit", f"--address={address}", f"--submission-id={job_id}", "--working-dir=.",
        "--runtime-env=launch/runtime_env.yaml", "--", "python", "-m", "launch.train", *tiny_run_overrides(tiny_model_dir, run_dir),
    ]  # fmt: skip
    for _ in range(15):  # the head's job agent comes up a few seconds after `ray start` returns
        result = subprocess.run(submit, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
        if "No available agent to submit job" not in result.stderr:
            break
        time.sleep(2)
    status = subprocess.run(["ray", "job", "status", f"--address={address}", job_id], env=env, capture_output=True, text=True, timeout=60)
    assert f"Job '{job_id}' succeeded" in status.stdout, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["episodes_trained"] == 8 and summary["ledger"]["in_flight"] == 0
    assert (run_dir / "checkpoints" / "final" / "adapter" / "adapter_config.json").exists()
    assert "2 learner steps (sync)" in result.stdout  # the driver's output reached the submitting client


# basic: the runs one after another in this process; ray: hydra-ray-launcher runs each as a Ray task
# (its ray.init and task options take the `+hydra.launcher.ray.*` form).
LAUNCHERS = {
    "basic": ["ray.num_cpus=2"],
    "ray": [
        "hydra/launcher=ray",
        "+hydra.launcher.ray.init.num_cpus=4",
        "+hydra.launcher.ray.init.include_dashboard=false",
        "+hydra.launcher.ray.remote.num_cpus=0",
    ],  # fmt: skip
}


@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_hydra_multirun_runs_each_combination_and_the_report_collects_them(tiny_model_dir, tmp_path, launcher):
    sweep_dir = tmp_path / "sweep"
    command = [sys.executable, "-m", "launch.train", "-m", *tiny_run_overrides(tiny_model_dir, None),
               "reward=env", "seed=0,1", f"hydra.sweep.dir={sweep_dir}", *LAUNCHERS[launcher]]  # fmt: skip
    env = dict(os.environ, RAY_AUTH_MODE="disabled")
    env.pop("RAY_ADDRESS", None)
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    if launcher == "ray":
        assert "(_run_job pid=" in result.stdout + result.stderr  # the runs' output came from Ray task workers
    runs = sorted(p.parent for p in sweep_dir.rglob("summary.json"))
    assert [r.name for r in runs] == ["0", "1"]
    seeds = [int(next(line for line in (r / "config.yaml").read_text().splitlines() if line.startswith("seed:")).split(":")[1]) for r in runs]
    assert seeds == [0, 1]
    report = subprocess.run([sys.executable, "-m", "launch.sweep_report", str(sweep_dir)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert report.returncode == 0, report.stderr[-2000:]
    table = (sweep_dir / "results.md").read_text()
    assert "| env | 2 |" in table
    assert (sweep_dir / "curves.png").stat().st_size > 10_000
