"""Collect a sweep's run dirs into one results table (markdown) and one learning-curve plot (PNG).

    python -m launch.sweep_report runs/ablation_corridor            # writes results.md and curves.png there

Runs are grouped by ``reward.mode``; a judging mode run whose evaluator (``base``: a frozen judge),
dense weight, calibration weight or reward terms (``SETTING_KEYS``) are not its preset's
(``conf/reward/<mode>.yaml``) is a row of its own (the other overrides of a sweep, such as the seed,
are repeats).
Per mode: held-out success before and after training (mean and std over seeds, and each seed's), its
difference to the ``env`` run of the same seed (the modes share their random numbers seed by seed, so
this pairing is the comparison with the least noise), the training success at the end, and the env
steps each run needed to reach the ``env`` mode's final training success; the self-evaluation quality
and the calibration fit of the last steps; reward-pool cost and wall time.
The plot shows training success (moving average over 3 learner steps) against env steps, mean and
spread (min to max over seeds) per mode.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

from conf.schema import REWARD_MODES, RewardConfig
from pipeline.report import step_quality_signals

SMOOTH = 3  # learner steps in the moving average of the training success
PRESETS = Path(__file__).resolve().parents[1] / "conf" / "reward"  # each reward mode's defaults


def load_runs(root: Path) -> list[dict]:
    runs = []
    for summary_file in sorted(root.rglob("summary.json")):
        run_dir = summary_file.parent
        if not (run_dir / "metrics.jsonl").exists():  # not a training run (launch.rollout writes a summary too)
            continue
        config = OmegaConf.load(run_dir / "config.yaml")
        metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
        runs.append({"dir": run_dir, "mode": setting(config), "seed": config.seed, "summary": json.loads(summary_file.read_text()), "metrics": metrics})
    if not runs:
        raise SystemExit(f"no finished runs (summary.json) under {root}")
    return runs


SETTING_KEYS = ("evaluator", "dense_weight", "calibration_weight", "use_self_eval", "use_mi")  # reward keys that make a row of their own


@functools.cache
def preset(mode: str):
    """Reward mode ``mode``'s settings: its ``conf/reward/<mode>.yaml`` over the schema's defaults."""
    return OmegaConf.merge(OmegaConf.structured(RewardConfig), OmegaConf.load(PRESETS / f"{mode}.yaml"))


def setting(config) -> str:
    """The row a run belongs to: its reward mode and each of ``SETTING_KEYS`` whose value is not the
    mode's preset (``evaluator=base`` for a frozen judge)."""
    mode = config.reward.mode
    if mode == "env":  # pays no dense reward: no other setting changes what it trains on
        return mode
    parts = [mode]
    for key in SETTING_KEYS:
        value = config.reward.get(key)
        if value is not None and value != preset(mode).get(key):
            parts.append(f"{key}={str(value).lower() if isinstance(value, bool | str) else f'{value:g}'}")
    return ", ".join(parts)


MODES = (*REWARD_MODES, *(f"{mode}, evaluator=base" for mode in REWARD_MODES if mode != "env"))  # the usual rows, in order
COLORS = ("tab:gray", "tab:orange", "tab:green", "tab:blue", "tab:brown", "tab:olive", "tab:purple")  # one per usual row
OTHER_COLORS = ("tab:red", "tab:pink", "tab:cyan", "black")


def by_setting(runs: list[dict]) -> dict[str, list[dict]]:
    """The runs of each setting (each group by seed), in row order: the usual rows, then any others by name."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for run in sorted(runs, key=lambda r: r["seed"]):
        groups[run["mode"]].append(run)
    return {mode: groups[mode] for mode in [m for m in MODES if m in groups] + sorted(set(groups) - set(MODES))}


def curve(run: dict) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative env steps and the moving-average training success after each learner step."""
    steps = np.cumsum([m["env_steps"] for m in run["metrics"]])
    success = np.array([m["success_rate"] for m in run["metrics"]])
    smooth = np.array([success[max(0, i - SMOOTH + 1) : i + 1].mean() for i in range(len(success))])
    return steps, smooth


def steps_to_reach(run: dict, target: float) -> int | None:
    steps, smooth = curve(run)
    hit = np.nonzero(smooth >= target)[0]
    return int(steps[hit[0]]) if len(hit) else None


def _mean_std(values: list[float | None]) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "n/a"
    return f"{np.mean(values):.3f} ± {np.std(values):.3f}" if len(values) > 1 else f"{values[0]:.3f}"


def _last(run: dict, key: str, count: int = 3) -> float | None:
    values = [m[key] for m in run["metrics"][-count:] if m.get(key) is not None]
    return float(np.mean(values)) if values else None


def _held_out(run: dict, when: str = "after") -> float | None:
    """The run's held-out success ``before`` or ``after`` training (None where it was not evaluated)."""
    return run["summary"].get("evaluation", {}).get(when, {}).get("success_rate")


def per_seed(group: list[dict]) -> str:
    """Each run's held-out success after training, in seed order: ``0.531 / 0.469 / 0.531``."""
    return " / ".join("n/a" if (after := _held_out(r)) is None else f"{after:.3f}" for r in group)


def paired_with_env(group: list[dict], env_runs: list[dict]) -> str:
    """Each run's held-out success after training minus that of the env run with the same seed."""
    env_after = {r["seed"]: after for r in env_runs if (after := _held_out(r)) is not None}
    pairs = [after - env_after[r["seed"]] for r in group if (after := _held_out(r)) is not None and r["seed"] in env_after]
    return " / ".join(f"{d:+.3f}" for d in pairs) or "no env run of the same seed"


def signals(group: list[dict]) -> str:
    """Step-level AUROC of every judged signal against the env's progress label (each run's mean over
    its learner steps, then mean ± sd over the runs), e.g. ``r_se 0.31 ± 0.02; r_mi 0.62 ± 0.03``."""
    names = step_quality_signals([m for r in group for m in r["metrics"]])
    parts = []
    for name in names:
        per_run = [_last(r, f"step_quality/auroc_{name}", count=len(r["metrics"])) for r in group]
        parts.append(f"{name} {_mean_std(per_run)}")
    return "; ".join(parts) or "n/a"


def table(runs: list[dict]) -> str:
    groups = by_setting(runs)
    baseline = groups.get("env", [])
    target = float(np.mean([curve(r)[1][-1] for r in baseline])) if baseline else None
    lines = [
        f"Target for 'env steps to reach': the env-only runs' final training success "
        f"({f'{target:.3f}' if target is not None else 'no env-only runs'}, moving average over {SMOOTH} steps, mean over seeds).",
        "",
        "| reward mode | seeds | held-out success before | after | after, per seed | after − env's, same seed "
        "| training success, last 3 steps | env steps to reach target (per seed) "
        "| outcome AUROC (last 3) | Brier (last 3) | calibration R² held-out (last 3) | step AUROC of the dense reward (last 3) "
        "| step AUROC of each signal (all steps) "
        "| degraded | pool tokens / episode | wall s |",
        "|---|---:|---:|---:|---|---|---:|---|---:|---:|---:|---:|---|---:|---:|---:|",
    ]
    for mode, group in groups.items():
        reach = [steps_to_reach(r, target) if target is not None else None for r in group]
        lines.append(
            "| " + " | ".join([
                mode,
                str(len(group)),
                _mean_std([_held_out(r, "before") for r in group]),
                _mean_std([_held_out(r, "after") for r in group]),
                per_seed(group),
                paired_with_env(group, baseline) if mode != "env" else "",
                _mean_std([_last(r, "success_rate") for r in group]),
                ", ".join("not reached" if s is None else str(s) for s in reach),
                _mean_std([_last(r, "self_eval/auroc") for r in group]),
                _mean_std([_last(r, "self_eval/brier") for r in group]),
                _mean_std([_last(r, "calibration/r2_heldout") for r in group]),
                _mean_std([_last(r, "step_quality/auroc_dense") for r in group]),
                signals(group),
                _mean_std([_last(r, "reward/degraded_fraction", count=len(r["metrics"])) for r in group]),
                _mean_std([_last(r, "reward/pool_tokens_per_episode", count=len(r["metrics"])) for r in group]),
                f"{np.mean([r['summary']['wall_s'] for r in group]):.0f}",
            ]) + " |"
        )  # fmt: skip
    return "\n".join(lines) + "\n"


def plot(runs: list[dict], out: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    others = itertools.cycle(OTHER_COLORS)
    for mode, group in by_setting(runs).items():
        color = COLORS[MODES.index(mode)] if mode in MODES else next(others)
        length = min(len(r["metrics"]) for r in group)
        steps = np.mean([curve(r)[0][:length] for r in group], axis=0)
        values = np.array([curve(r)[1][:length] for r in group])
        ax.plot(steps, values.mean(axis=0), color=color, label=f"{mode} (n={len(group)})")
        ax.fill_between(steps, values.min(axis=0), values.max(axis=0), color=color, alpha=0.18)
    ax.set_xlabel("env steps (cumulative, training episodes)")
    ax.set_ylabel(f"training success (moving avg, {SMOOTH} steps)")
    ax.set_title(title)
    fig.text(0.01, 0.01, "line: mean over seeds; band: min to max over seeds", fontsize=7, color="dimgray")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("sweep_dir", type=Path)
    parser.add_argument("--title", default=None)
    args = parser.parse_args()
    runs = load_runs(args.sweep_dir)
    text = table(runs)
    (args.sweep_dir / "results.md").write_text(text)
    plot(runs, args.sweep_dir / "curves.png", args.title or f"reward modes: {args.sweep_dir.name}")
    print(text + f"\nwrote {args.sweep_dir / 'results.md'} and {args.sweep_dir / 'curves.png'}")


if __name__ == "__main__":
    main()
