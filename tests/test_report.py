"""pipeline.report on small run dirs written here, shaped like launch.train's (5 learner steps, seeded values)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from pipeline.report import reliability_bins, write_report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def make_run_dir(root: Path, reward_mode: str, steps: int = 5, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    run_dir = root / reward_mode
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text(
        f"env:\n  name: corridor\n  tasks: [corridor-2]\nmodel:\n  path: null\n  builtin: tiny-corridor\n"
        f"learner:\n  steps: {steps}\n  episodes_per_step: 8\nreward:\n  mode: {reward_mode}\nseed: {seed}\nmode: sync\n"
    )
    wall, lines, judged = 20.0, [], []
    for step in range(1, steps + 1):
        success = float(rng.integers(0, 9) / 8)
        wall += float(rng.uniform(5, 10))
        metrics = {
            "step": step, "wall_s": wall, "success_rate": success, "return_mean": success, "episodes": 8, "trained_episodes": 8,
            "dropped_stale": 0, "env_steps": int(rng.integers(30, 48)), "train_tokens": int(rng.integers(5000, 9000)),
            "train_s": float(rng.uniform(1, 2)), "queue_wait_s": 0.05, "loss": float(rng.normal()), "kl": 0.0, "clip_frac": 0.0,
            "reward/degraded_fraction": 0.0,
        }  # fmt: skip
        if reward_mode != "env":
            for name in ("r_se", "r_mi", "dense", "r_c"):
                metrics[f"reward/{name}_mean"], metrics[f"reward/{name}_std"] = float(rng.normal(-0.3, 0.1)), float(rng.uniform(0, 0.1))
            metrics.update(
                {"self_eval/auroc": float(rng.uniform(0.5, 1)), "self_eval/ece": float(rng.uniform(0, 0.3)), "self_eval/brier": float(rng.uniform(0.1, 0.3))}
            )
            for name in ("r_se", "r_mi", "dense"):
                metrics[f"step_quality/auroc_{name}"], metrics[f"step_quality/corr_{name}_score_delta"] = (
                    float(rng.uniform(0.3, 0.9)),
                    float(rng.uniform(-0.5, 0.5)),
                )
            for _ in range(8):
                z = int(rng.random() < success)
                judged.append({"step": step, "q": float(np.clip(rng.normal(0.3 + 0.4 * z, 0.2), 0, 1)), "z": z})
        lines.append(json.dumps(metrics))
    (run_dir / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    if judged:
        (run_dir / "self_eval.jsonl").write_text("".join(json.dumps(j) + "\n" for j in judged))
    summary = {
        "steps": steps, "mode": "sync", "wall_s": wall + 3, "episodes_trained": 8 * steps, "episodes_dropped": {"stale": 0, "evaluation": 16},
        "time_split_s": {"generate (actor sum)": 0.5 * wall, "env (actor sum)": 0.1, "wait_for_episodes": 0.6 * wall, "train": 0.3 * wall, "publish": 0.5},
        "ledger": {"started": 8 * steps + 16, "finished": 8 * steps + 16, "failed": {}, "retried": 0, "scored": 8 * steps, "degraded": 0,
                   "queued": 8 * steps, "trained": 8 * steps, "dropped": {"stale": 0, "evaluation": 16}, "in_flight": 0},
        "evaluation": {"before": {"success_rate": 0.25, "episodes": 8}, "after": {"success_rate": 0.5, "episodes": 8}},
        "publish_to_first_token_s": {str(v): 0.2 for v in range(1, steps + 1)},
        "publish_to_first_reply_s": {str(v): 0.2 + v for v in range(1, steps + 1)},
    }  # fmt: skip
    (run_dir / "summary.json").write_text(json.dumps(summary))
    return run_dir


def embedded_pngs(report: Path) -> list[str]:
    return re.findall(r"!\[[^\]]*\]\(([^)]+\.png)\)", report.read_text())


def assert_pngs_valid(report: Path) -> None:
    written = sorted(p.name for p in report.parent.glob("*.png"))
    assert sorted(embedded_pngs(report)) == written
    for name in written:
        data = (report.parent / name).read_bytes()
        assert data.startswith(PNG_SIGNATURE) and len(data) > 10_000, name


def test_reliability_bins_on_a_hand_computed_example():
    q = [0.05, 0.12, 0.15, 0.95, 1.0]
    z = [0, 0, 1, 1, 1]
    mean_q, observed, counts = reliability_bins(q, z, bins=10)
    assert counts.tolist() == [1, 2, 0, 0, 0, 0, 0, 0, 0, 2]  # q = 1 belongs to the last bin
    assert mean_q[0] == pytest.approx(0.05) and observed[0] == 0
    assert mean_q[1] == pytest.approx(0.135) and observed[1] == pytest.approx(0.5)
    assert mean_q[9] == pytest.approx(0.975) and observed[9] == 1
    assert np.isnan(mean_q[2:9]).all() and np.isnan(observed[2:9]).all()


def test_report_of_a_mise_run_embeds_every_plot(tmp_path):
    report = write_report(make_run_dir(tmp_path, "mise"))
    assert report == tmp_path / "mise" / "report" / "report.md"
    assert_pngs_valid(report)
    assert set(embedded_pngs(report)) == {
        "learning_curves.png", "reward_components.png", "self_eval_reliability.png", "self_eval_by_step.png", "step_quality.png", "throughput.png",
        "time_split.png",
    }  # fmt: skip
    text = report.read_text()
    assert "| reward mode | mise |" in text and "| held-out success after training | 0.500 over 8 episodes |" in text
    assert "| dropped | stale 0, evaluation 16 |" in text
    assert "over all 40 judged episodes" in text


def test_report_of_an_env_run_says_what_it_skips(tmp_path):
    report = write_report(make_run_dir(tmp_path, "env"))
    assert_pngs_valid(report)
    assert set(embedded_pngs(report)) == {"learning_curves.png", "throughput.png", "time_split.png"}
    text = report.read_text()
    assert "No reward components: this run's reward mode is `env`" in text
    assert "No reliability diagram: the run dir has no self_eval.jsonl" in text
    assert "No self-evaluation quality per step" in text
    assert "No step-level quality" in text
    assert "publish → first token on the new version | median 0.20 s, max 0.20 s over 5 versions" in text
    assert "publish → first reply on the new version | median 3.20 s, max 5.20 s over 5 versions" in text


def test_report_warns_about_steps_whose_advantages_were_all_zero(tmp_path):
    """The default job once trained 3 steps with every advantage 0 and its report never said so."""
    run_dir = make_run_dir(tmp_path, "env", steps=3)
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    for line, spread in zip(lines, (0.0, 0.4, 0.0)):
        line["step_advantage_abs_mean"] = spread
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    text = write_report(run_dir).read_text()
    assert "**warning**: steps with every advantage 0" in text and "2 of 3: [1, 3]" in text
    lines[0]["step_advantage_abs_mean"] = lines[2]["step_advantage_abs_mean"] = 0.1
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    assert "every advantage 0" not in write_report(run_dir).read_text()


def test_report_without_summary_or_config_still_renders(tmp_path):
    run_dir = make_run_dir(tmp_path, "prm")
    (run_dir / "summary.json").unlink()
    (run_dir / "config.yaml").unlink()
    text = write_report(run_dir).read_text()
    assert "config.yaml is absent" in text and "summary.json is absent (the run did not finish)" in text
    assert "No time split: summary.json is absent" in text
    assert "| episodes trained | 40 |" in text  # counted from metrics.jsonl instead
    assert not (run_dir / "report" / "time_split.png").exists()


def test_a_dir_without_metrics_is_refused_by_name(tmp_path):
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "metrics.jsonl"))):
        write_report(tmp_path)
