"""launch.sweep_report groups a sweep's runs into one row per reward setting."""

import json
import subprocess
import sys
from pathlib import Path

from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]


def table(sweep_dir: Path) -> str:
    """The results table ``python -m launch.sweep_report`` writes for ``sweep_dir``."""
    report = subprocess.run([sys.executable, "-m", "launch.sweep_report", str(sweep_dir)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert report.returncode == 0, report.stderr[-2000:]
    return (sweep_dir / "results.md").read_text()


def write_run(path, mode: str, evaluator: str, seed: int, success: list[float], after: float, **reward_keys) -> None:
    path.mkdir(parents=True)
    reward = {"mode": mode, "evaluator": evaluator, **reward_keys}
    OmegaConf.save(OmegaConf.create({"seed": seed, "reward": reward}), path / "config.yaml")
    (path / "metrics.jsonl").write_text("".join(json.dumps({"step": i + 1, "env_steps": 40, "success_rate": s}) + "\n" for i, s in enumerate(success)))
    summary = {"wall_s": 100.0, "evaluation": {"before": {"success_rate": 0.5}, "after": {"success_rate": after}}}
    (path / "summary.json").write_text(json.dumps(summary))


def test_a_frozen_evaluator_is_its_own_row(tmp_path):
    write_run(tmp_path / "0", "env", "policy", 0, [0.25, 0.5], after=0.5)
    write_run(tmp_path / "1", "mise", "policy", 0, [0.25, 0.75], after=0.75)
    write_run(tmp_path / "2", "mise", "base", 0, [0.0, 0.25], after=0.25)
    text = table(tmp_path)
    rows = {line.split("|")[1].strip(): line for line in text.splitlines() if line.startswith("| ") and "---" not in line}
    assert set(rows) >= {"env", "mise", "mise, evaluator=base"}, text
    assert "| 0.750 |" in rows["mise"] and "| 0.250 |" in rows["mise, evaluator=base"]
    # the env mode judges nothing: its evaluator setting does not split it
    write_run(tmp_path / "3", "env", "base", 1, [0.5, 0.5], after=0.25)
    rows = [line for line in table(tmp_path).splitlines() if line.startswith("| env")]
    assert len(rows) == 1 and "| env | 2 |" in rows[0], rows


def test_the_step_auroc_of_every_judged_signal_is_reported(tmp_path):
    write_run(tmp_path / "0", "mise", "policy", 0, [0.25, 0.75], after=0.75)
    lines = [json.loads(line) for line in (tmp_path / "0" / "metrics.jsonl").read_text().splitlines()]
    for line, r_mi in zip(lines, (0.6, 0.8)):
        line.update({"step_quality/auroc_r_mi": r_mi, "step_quality/auroc_r_se": 0.2})
    (tmp_path / "0" / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    row = next(line for line in table(tmp_path).splitlines() if line.startswith("| mise"))
    assert "r_mi 0.700; r_se 0.200" in row, row


def test_held_out_success_is_given_per_seed_and_paired_with_env_by_seed(tmp_path):
    """The modes share their random numbers seed by seed (every request samples with its own seed), so
    the difference to env on the same seed is the comparison with the least noise."""
    for seed, (env, mise) in enumerate([(0.5, 0.625), (0.75, 0.75), (0.25, 0.5)]):
        write_run(tmp_path / f"env{seed}", "env", "policy", seed, [0.5, 0.5], after=env)
        write_run(tmp_path / f"mise{seed}", "mise", "policy", seed, [0.5, 0.5], after=mise)
    write_run(tmp_path / "prm3", "prm", "policy", 3, [0.5, 0.5], after=0.5)  # no env run of seed 3
    rows = {line.split("|")[1].strip(): line for line in table(tmp_path).splitlines() if line.startswith("| ")}
    assert "| 0.500 / 0.750 / 0.250 |" in rows["env"] and "| 0.625 / 0.750 / 0.500 |" in rows["mise"], rows
    assert "| +0.125 / +0.000 / +0.250 |" in rows["mise"], rows["mise"]
    assert "| no env run of the same seed |" in rows["prm"], rows["prm"]


def test_a_dense_weight_other_than_the_modes_preset_is_its_own_row(tmp_path):
    """A dense_weight sweep (reward.dense_weight=1,4,16) is a sweep of settings, not repeats of one."""
    write_run(tmp_path / "env", "env", "policy", 0, [0.25, 0.5], after=0.5)
    write_run(tmp_path / "w1", "mise", "policy", 0, [0.25, 0.5], after=0.5, dense_weight=1.0)  # conf/reward/mise.yaml's own
    write_run(tmp_path / "w4", "mise", "policy", 0, [0.25, 0.75], after=0.625, dense_weight=4.0)
    write_run(tmp_path / "w16", "mise", "base", 0, [0.25, 0.75], after=0.75, dense_weight=16.0)
    write_run(tmp_path / "prm", "prm", "policy", 0, [0.25, 0.75], after=0.75, dense_weight=0.1)  # conf/reward/prm.yaml's own
    text = table(tmp_path)
    rows = {line.split("|")[1].strip(): line for line in text.splitlines() if line.startswith("| ") and "---" not in line}
    assert {"mise", "mise, dense_weight=4", "mise, evaluator=base, dense_weight=16", "prm"} <= set(rows), text
    assert "| mise | 1 |" in rows["mise"] and "| +0.125 |" in rows["mise, dense_weight=4"], text
    assert (tmp_path / "curves.png").stat().st_size > 0  # one curve per row, however many rows


def test_a_reward_term_switched_off_is_its_own_row(tmp_path):
    """mise without the evaluator's training (calibration_weight=0) or without its MI term is another
    setting; a key the whole sweep shares but no preset names as a setting (calibration_min_episodes) is not."""
    write_run(tmp_path / "env", "env", "policy", 0, [0.25, 0.5], after=0.5, calibration_min_episodes=8)
    write_run(tmp_path / "mise", "mise", "policy", 0, [0.25, 0.5], after=0.5, calibration_weight=1.0, calibration_min_episodes=8)
    write_run(tmp_path / "cw0", "mise", "policy", 0, [0.25, 0.75], after=0.625, calibration_weight=0.0, calibration_min_episodes=8)
    write_run(tmp_path / "nomi", "mise", "policy", 0, [0.25, 0.75], after=0.75, use_mi=False, calibration_min_episodes=8)
    text = table(tmp_path)
    rows = {line.split("|")[1].strip(): line for line in text.splitlines() if line.startswith("| ") and "---" not in line}
    assert {"env", "mise", "mise, calibration_weight=0", "mise, use_mi=false"} <= set(rows), text
    assert "| +0.125 |" in rows["mise, calibration_weight=0"] and "| +0.250 |" in rows["mise, use_mi=false"], text
