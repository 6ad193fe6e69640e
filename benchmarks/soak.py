"""Soak benchmark: the debug training run with a deliberately slow learner, for a fixed wall time, while
the resident memory of every process of the run is sampled. The queues between the stages are bounded,
so a slow learner must slow the rollouts down instead of piling episodes up: memory stays flat.

    python -m benchmarks.soak                          # 30 min, learner.slow_down_s=60, async mode, 60 steps at most
    python -m benchmarks.soak --minutes 10 -- env=corridor model=tiny_corridor engine=hf

Prints the peak RSS per role in the first 5 minutes and over the whole run, and writes every sample to
``<run dir>/soak.json``. Not part of the test suite (it runs for half an hour).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

# Ray names an actor's process after its class: ray::<Class>.<method> while busy, ray::<Class> when idle.
ROLES = {
    "driver": None,
    "queues": "ray::_QueueActor",
    "reward stage": "ray::RewardStage",
    "rollout actors": "ray::RolloutWorker",
    "evaluators": "ray::SelfEvaluator",
    "learner": "ray::Learner",
    "ray system": "raylet|gcs_server",  # the object store's shared memory is counted with the raylet
}


def role_rss(driver: psutil.Process, since: float) -> dict[str, float]:
    """Resident memory (MiB) per role: the sum over that role's processes (JVMs count with their actor)."""
    totals = dict.fromkeys(ROLES, 0.0)
    try:
        totals["driver"] = driver.memory_info().rss / 2**20
    except psutil.Error:
        pass
    for process in psutil.process_iter(["cmdline", "create_time"]):
        title = " ".join(process.info["cmdline"] or [])
        if process.info["create_time"] < since:
            continue
        for role, marker in ROLES.items():
            if marker and any(title.startswith(m) or f"/{m} " in f"{title} " for m in marker.split("|")):
                try:
                    totals[role] += process.memory_info().rss / 2**20
                    if role != "ray system":  # the raylet's children are the actors themselves
                        totals[role] += sum(c.memory_info().rss for c in process.children(recursive=True)) / 2**20
                except psutil.Error:
                    pass
    return totals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--slow-down-s", type=float, default=60.0, help="learner.slow_down_s: sleep after every learner step")
    parser.add_argument("--interval-s", type=float, default=10.0, help="seconds between memory samples")
    parser.add_argument("--steps", type=int, default=60, help="learner.steps: more than the time allows (their games are made up front)")
    parser.add_argument("--run-dir", default=f"runs/soak/{time.strftime('%Y-%m-%d_%H-%M-%S')}")
    parser.add_argument("overrides", nargs="*", help="more Hydra overrides for launch.train")
    args = parser.parse_args()
    run_dir = Path(args.run_dir)
    command = [
        sys.executable, "-m", "launch.train", "mode=async", f"learner.steps={args.steps}", f"learner.slow_down_s={args.slow_down_s}",
        "report=false", f"run_dir={run_dir}", *args.overrides,
    ]  # fmt: skip
    since = time.time() - 1
    driver = subprocess.Popen(command, env=dict(os.environ, RAY_AUTH_MODE=os.environ.get("RAY_AUTH_MODE", "disabled")))
    handle = psutil.Process(driver.pid)
    samples: list[dict] = []
    start = time.monotonic()
    try:
        while time.monotonic() - start < args.minutes * 60 and driver.poll() is None:
            elapsed = time.monotonic() - start
            steps = len((run_dir / "metrics.jsonl").read_text().splitlines()) if (run_dir / "metrics.jsonl").exists() else 0
            samples.append({"t_s": round(elapsed, 1), "learner_steps": steps, **role_rss(handle, since)})
            time.sleep(args.interval_s)
    finally:
        if driver.poll() is None:
            driver.send_signal(signal.SIGINT)  # the run's Ray instance goes down with it
            try:
                driver.wait(timeout=120)
            except subprocess.TimeoutExpired:
                driver.kill()
    if driver.returncode not in (None, 0, -signal.SIGINT, 1) and time.monotonic() - start < args.minutes * 60:
        raise SystemExit(f"the run failed early (exit {driver.returncode}); see its output above")
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "soak.json").write_text(json.dumps({"command": command, "samples": samples}, indent=2))
    first = [s for s in samples if s["t_s"] <= 300]
    print(f"\n{len(samples)} samples over {samples[-1]['t_s'] / 60:.1f} min, {samples[-1]['learner_steps']} learner steps")
    print(f"{'role':<16}{'peak RSS 0-5 min (MiB)':>24}{'peak RSS whole run (MiB)':>26}{'last (MiB)':>12}")
    for role in ROLES:
        print(f"{role:<16}{max(s[role] for s in first):>24.0f}{max(s[role] for s in samples):>26.0f}{samples[-1][role]:>12.0f}")
    print(f"samples: {run_dir / 'soak.json'}")


if __name__ == "__main__":
    main()
