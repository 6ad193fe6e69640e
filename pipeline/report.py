"""One run's report: its key config, headline numbers and plots, in RUN_DIR/report/ (report.md and PNGs).

    python -m launch.report runs/ablation_corridor/6 [RUN_DIR ...]

Reads what launch.train writes into a run dir: metrics.jsonl (one line per learner step; required),
config.yaml, summary.json and self_eval.jsonl (one line per judged episode: the evaluator's P(success)
``q`` and the outcome ``z``). Whatever is missing is said in the report where its numbers or plot would be.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
from pathlib import Path

import numpy as np
from matplotlib.figure import (
    Figure,  # no pyplot: a bare Figure renders PNGs with Agg and holds no global state
)
from matplotlib.ticker import MaxNLocator
from omegaconf import OmegaConf

from reward.mise import auroc, brier_score, expected_calibration_error

SMOOTH = 3  # learner steps in the moving average of the learning curves (as in launch.sweep_report)
RELIABILITY_BINS = 10
REWARD_COMPONENTS = {
    "r_se": "self-evaluation r_SE",
    "r_mi": "mutual information r_MI",
    "dense": "dense reward used",
    "r_c": "calibration reward r_C",
}
DPI = 120


def read_jsonl(path: Path) -> list[dict]:
    records = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}:{number} is not a JSON line: {error}") from None
    return records


def load_run(run_dir: Path) -> dict:
    """The run dir's files as Python values; ``None`` for each optional file that is absent."""
    metrics_file = run_dir / "metrics.jsonl"
    if not metrics_file.is_file():
        raise FileNotFoundError(f"{metrics_file} does not exist: not a training run dir (launch.train writes it after each learner step)")
    metrics = read_jsonl(metrics_file)
    if not metrics:
        raise ValueError(f"{metrics_file} has no learner steps yet")
    for number, m in enumerate(metrics, start=1):
        m.setdefault("step", number)
    config_file, summary_file, self_eval_file = run_dir / "config.yaml", run_dir / "summary.json", run_dir / "self_eval.jsonl"
    return {
        "metrics": metrics,
        "config": OmegaConf.to_container(OmegaConf.load(config_file)) if config_file.is_file() else None,
        "summary": json.loads(summary_file.read_text()) if summary_file.is_file() else None,
        "self_eval": read_jsonl(self_eval_file) if self_eval_file.is_file() else None,
    }


def series(metrics: list[dict], key: str) -> tuple[np.ndarray, np.ndarray]:
    """Learner steps and values of ``key`` over the steps that logged it as a finite number."""
    points = [(m["step"], m[key]) for m in metrics if _is_number(m.get(key))]
    return np.array([p[0] for p in points], dtype=float), np.array([p[1] for p in points], dtype=float)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def moving_average(values: np.ndarray, window: int = SMOOTH) -> np.ndarray:
    return np.array([values[max(0, i - window + 1) : i + 1].mean() for i in range(len(values))])


def reliability_bins(q, z, bins: int = RELIABILITY_BINS) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per equal-width bin of q over [0, 1]: the mean q, the observed success frequency and the count.
    Bins as in reward.mise.expected_calibration_error (q = 1 falls in the last bin); empty bins give NaN."""
    q, z = np.asarray(q, dtype=float), np.asarray(z, dtype=float)
    index = np.minimum((np.clip(q, 0.0, 1.0) * bins).astype(int), bins - 1)
    counts = np.bincount(index, minlength=bins)
    with np.errstate(invalid="ignore"):
        mean_q = np.bincount(index, weights=q, minlength=bins) / counts
        observed = np.bincount(index, weights=z, minlength=bins) / counts
    return mean_q, observed, counts


def cumulative_env_steps(metrics: list[dict]) -> np.ndarray | None:
    """Env steps of the trained episodes up to and including each learner step (None if never logged)."""
    if not any(_is_number(m.get("env_steps")) and m["env_steps"] > 0 for m in metrics):
        return None
    return np.cumsum([m["env_steps"] if _is_number(m.get("env_steps")) else 0 for m in metrics])


# --- the figures: each section returns its markdown (the embedded PNG and a sentence, or why it is absent) ---


def _learner_step_axis(ax) -> None:
    ax.set_xlabel("learner step")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _figure(fig: Figure, out_dir: Path, name: str, title: str, sentence: str) -> str:
    fig.savefig(out_dir / name, dpi=DPI)
    return f"![{title}]({name})\n\n{sentence}\n"


def learning_curves(run: dict, out_dir: Path) -> str:
    metrics = run["metrics"]
    panels = [(key, label) for key, label in (("success_rate", "training success rate"), ("return_mean", "mean return")) if len(series(metrics, key)[0])]
    if not panels:
        return "No learning curves: metrics.jsonl logs neither `success_rate` nor `return_mean`.\n"
    env_steps = cumulative_env_steps(metrics)
    if env_steps is not None:
        # Learner step <-> cumulative env steps, piecewise linear; a far point past the last step keeps the
        # mapping going at the mean rate so that the axis margin is not squeezed onto one value.
        last_step, total = metrics[-1]["step"], env_steps[-1]
        step_axis = np.array([0, *(m["step"] for m in metrics), last_step + 1000], dtype=float)
        env_axis = np.array([0, *env_steps, total + 1000 * total / last_step], dtype=float)
        to_env_steps = (lambda x: np.interp(x, step_axis, env_axis), lambda x: np.interp(x, env_axis, step_axis))
    fig = Figure(figsize=(5.2 * len(panels), 4), layout="constrained")
    for ax, (key, label) in zip(fig.subplots(1, len(panels), squeeze=False)[0], panels):
        steps, values = series(metrics, key)
        ax.plot(steps, values, "o", color="tab:blue", alpha=0.35, markersize=4, label="per learner step")
        ax.plot(steps, moving_average(values), color="tab:blue", linewidth=2, label=f"moving average ({SMOOTH} steps)")
        _learner_step_axis(ax)
        ax.set_ylabel(label)
        ax.set_title(label)
        if key == "success_rate":
            ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="best")
        if env_steps is not None:
            top = ax.secondary_xaxis("top", functions=to_env_steps)
            top.set_xlabel("env steps (cumulative, trained episodes)", fontsize=9)
    shown = " and ".join(label for _, label in panels)
    axis_note = " The top axis gives the cumulative env steps of the trained episodes." if env_steps is not None else ""
    sentence = (
        f"{shown.capitalize()} of each learner step's batch (dots) and their moving average over {SMOOTH} steps (line), against the learner step.{axis_note}"
    )
    return _figure(fig, out_dir, "learning_curves.png", "learning curves", sentence)


def reward_components(run: dict, out_dir: Path) -> str:
    metrics = run["metrics"]
    mode = reward_mode(run)
    present = [name for name in REWARD_COMPONENTS if len(series(metrics, f"reward/{name}_mean")[0])]
    if not present:
        if mode == "env":
            return "No reward components: this run's reward mode is `env` (the environment's reward only, no dense reward).\n"
        return f"No reward components: metrics.jsonl logs none of {', '.join(f'`reward/{n}_mean`' for n in REWARD_COMPONENTS)}.\n"
    columns = 2 if len(present) > 1 else 1
    rows = math.ceil(len(present) / columns)
    fig = Figure(figsize=(5.2 * columns, 3.2 * rows), layout="constrained")
    axes = fig.subplots(rows, columns, squeeze=False).ravel()
    for ax, name in zip(axes, present):
        steps, mean = series(metrics, f"reward/{name}_mean")
        ax.plot(steps, mean, color="tab:orange", linewidth=2, marker="o", markersize=3, label="mean")
        std_steps, std = series(metrics, f"reward/{name}_std")
        if len(std_steps) == len(steps) and np.array_equal(std_steps, steps):
            ax.fill_between(steps, mean - std, mean + std, color="tab:orange", alpha=0.2, label="± 1 std within the batch")
        ax.axhline(0, color="gray", linewidth=0.8)
        ax.set_title(f"{REWARD_COMPONENTS[name]} (reward/{name})", fontsize=10)
        _learner_step_axis(ax)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8, loc="best")
    for ax in axes[len(present) :]:
        ax.set_visible(False)
    fig.suptitle(f"reward components per learner step (reward mode {mode or 'unknown'})")
    missing = [f"`reward/{n}_mean`" for n in REWARD_COMPONENTS if n not in present]
    sentence = "Mean of each reward component over the learner step's batch of episodes, with a band of one standard deviation where it was logged." + (
        f" Not logged in this run: {', '.join(missing)}." if missing else ""
    )
    return _figure(fig, out_dir, "reward_components.png", "reward components", sentence)


def reliability_diagram(run: dict, out_dir: Path) -> str:
    records = run["self_eval"]
    if records is None:
        return "No reliability diagram: the run dir has no self_eval.jsonl (reward mode `env`, or a run from before launch.train wrote it).\n"
    judged = [(r["q"], r["z"]) for r in records if _is_number(r.get("q")) and r.get("z") in (0, 1)]
    if not judged:
        return "No reliability diagram: self_eval.jsonl holds no episode with both `q` and `z`.\n"
    q, z = [j[0] for j in judged], [j[1] for j in judged]
    mean_q, observed, counts = reliability_bins(q, z)
    area = auroc(q, z)
    title = (
        f"ECE {expected_calibration_error(q, z, RELIABILITY_BINS):.3f}   Brier {brier_score(q, z):.3f}   "
        f"AUROC {'n/a (one class)' if area is None else f'{area:.3f}'}   ({len(q)} episodes)"
    )
    fig = Figure(figsize=(6, 6.2), layout="constrained")
    ax, hist = fig.subplots(2, 1, height_ratios=[3, 1], sharex=True)
    width = 1 / RELIABILITY_BINS
    lefts = np.arange(RELIABILITY_BINS) * width
    filled = counts > 0
    ax.bar(lefts[filled], observed[filled], width=width, align="edge", color="tab:blue", alpha=0.55, edgecolor="white", label="observed success frequency")
    ax.plot(mean_q[filled], observed[filled], "o", color="tab:red", markersize=5, label="(mean q, observed) per bin")
    ax.plot([0, 1], [0, 1], "--", color="gray", label="perfect calibration")
    ax.set(xlim=(0, 1), ylim=(0, 1.05), ylabel="observed success frequency")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    hist.bar(lefts, counts, width=width, align="edge", color="gray", edgecolor="white")
    for left, count in zip(lefts, counts):
        hist.text(left + width / 2, count, str(count), ha="center", va="bottom", fontsize=8)
    hist.set(xlabel="evaluator's P(success) q, binned", ylabel="episodes")
    hist.set_ylim(0, counts.max() * 1.25)
    fig.suptitle("self-evaluation reliability (all judged episodes)")
    steps = sorted({r["step"] for r in records if _is_number(r.get("step"))})
    span = f" from learner steps {steps[0]} to {steps[-1]}" if steps else ""
    sentence = (
        f"How well the evaluator's predicted P(success) q matches the outcome over all {len(q)} judged episodes{span}: "
        f"per bin of q, the share of successes (bar; the red dot at the bin's mean q), the diagonal where "
        f"they would be calibrated, and the episode count per bin below."
    )
    return _figure(fig, out_dir, "self_eval_reliability.png", "self-evaluation reliability diagram", sentence)


def self_eval_by_step(run: dict, out_dir: Path) -> str:
    metrics = run["metrics"]
    keys = [("self_eval/auroc", "AUROC", "tab:green"), ("self_eval/ece", "ECE", "tab:red"), ("self_eval/brier", "Brier", "tab:purple")]
    present = [k for k in keys if len(series(metrics, k[0])[0])]
    if not present:
        return "No self-evaluation quality per step: metrics.jsonl logs none of `self_eval/auroc`, `self_eval/ece`, `self_eval/brier`.\n"
    fig = Figure(figsize=(7, 3.8), layout="constrained")
    ax = fig.subplots()
    for key, label, color in present:
        steps, values = series(metrics, key)
        ax.plot(steps, values, marker="o", markersize=3, color=color, label=label)
    ax.set(ylabel="score on the step's batch", ylim=(0, 1.02))
    _learner_step_axis(ax)
    ax.set_title("self-evaluation quality per learner step (AUROC: higher is better; ECE, Brier: lower)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    sentence = "The evaluator's outcome prediction scored against the actual outcomes of each learner step's batch."
    return _figure(fig, out_dir, "self_eval_by_step.png", "self-evaluation quality per step", sentence)


def step_quality_signals(metrics: list[dict]) -> list[str]:
    """The signals a run logged a step-level AUROC for (``step_quality/auroc_<name>``), sorted."""
    return sorted({k.removeprefix("step_quality/auroc_") for m in metrics for k in m if k.startswith("step_quality/auroc_")})


def step_quality(run: dict, out_dir: Path) -> str:
    """Do the dense signals point at the steps that helped? AUROC of each against the env's progress
    label, per learner step, and each signal's correlation with the step's score change."""
    metrics = run["metrics"]
    names = step_quality_signals(metrics)
    corr = sorted({k for m in metrics for k in m if k.startswith("step_quality/corr_")})
    if not names and not corr:
        return "No step-level quality: metrics.jsonl logs no `step_quality/*` (reward mode `env`, or an env without step labels).\n"
    fig = Figure(figsize=(9, 3.8), layout="constrained")
    left, right = fig.subplots(1, 2)
    for name in names:
        steps, values = series(metrics, f"step_quality/auroc_{name}")
        left.plot(steps, values, marker="o", markersize=3, label=name)
    left.axhline(0.5, color="gray", lw=0.8, ls="--")
    left.set(ylabel="AUROC against the progress label", ylim=(0, 1.02))
    for key in corr:
        steps, values = series(metrics, key)
        right.plot(steps, values, marker="o", markersize=3, label=key.removeprefix("step_quality/corr_").removesuffix("_score_delta"))
    right.axhline(0.0, color="gray", lw=0.8, ls="--")
    right.set(ylabel="correlation with the score change", ylim=(-1.02, 1.02))
    for ax in (left, right):
        _learner_step_axis(ax)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8, loc="best")
    fig.suptitle("step-level quality of the dense signals per learner step (0.5 / 0: no better than chance)", fontsize=10)
    sentence = (
        "Each judged step's signal (r_SE, r_MI, r_IG, the dense reward) scored against the env's own label of that step: "
        "progress (the expert's remaining plan got shorter, or the step won) and the change of the env's score."
    )
    return _figure(fig, out_dir, "step_quality.png", "step-level quality of the dense signals", sentence)


def throughput(run: dict, out_dir: Path) -> str:
    metrics = run["metrics"]
    # The first step's wall_s also holds the start-up (actors, models) and the 'before' evaluation.
    rates = [
        (m["step"], m["env_steps"] / (m["wall_s"] - prev["wall_s"]))
        for prev, m in itertools.pairwise(metrics)
        if all(_is_number(x) for x in (prev.get("wall_s"), m.get("wall_s"), m.get("env_steps"))) and m["wall_s"] > prev["wall_s"]
    ]
    tokens = [
        (m["step"], m["train_tokens"] / m["train_s"])
        for m in metrics
        if _is_number(m.get("train_tokens")) and _is_number(m.get("train_s")) and m["train_s"] > 0
    ]
    panels = [
        (rates, "env steps / s (wall clock)", "tab:blue"),
        (tokens, "train tokens / s (learner)", "tab:green"),
    ]
    panels = [p for p in panels if p[0]]
    if not panels:
        return "No throughput: metrics.jsonl lacks `wall_s` with `env_steps` over two steps, and `train_tokens` with `train_s`.\n"
    fig = Figure(figsize=(7, 2.8 * len(panels)), layout="constrained")
    axes = fig.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
    for ax, (points, label, color) in zip(axes, panels):
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", markersize=3, color=color)
        ax.set_ylabel(label)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    _learner_step_axis(axes[-1])
    fig.suptitle("throughput per learner step")
    parts = []
    if rates:
        parts.append(
            "env steps of the trained episodes per wall-clock second between consecutive learner steps (from step 2: step 1's time includes the start-up)"
        )
    if tokens:
        parts.append("tokens through the learner per second of its training time (`train_tokens / train_s`)")
    return _figure(fig, out_dir, "throughput.png", "throughput", f"Throughput per learner step: {'; '.join(parts)}.")


def time_split(run: dict, out_dir: Path) -> str:
    summary = run["summary"] or {}
    split = {k: v for k, v in summary.get("time_split_s", {}).items() if _is_number(v)}
    if not split:
        return "No time split: " + ("summary.json is absent (the run did not finish).\n" if run["summary"] is None else "summary.json has no `time_split_s`.\n")
    names = list(split)[::-1]  # first entry on top
    fig = Figure(figsize=(7, 0.5 * len(names) + 1.6), layout="constrained")
    ax = fig.subplots()
    ax.barh(names, [split[n] for n in names], color=["tab:gray" if "actor sum" in n else "tab:blue" for n in names])
    for y, name in enumerate(names):
        ax.text(split[name], y, f" {split[name]:.1f} s", va="center", fontsize=8)
    wall = summary.get("wall_s")
    if _is_number(wall):
        ax.axvline(wall, color="tab:red", linestyle="--", linewidth=1, label=f"wall time {wall:.0f} s")
        ax.legend(fontsize=8, loc="lower right")
    ax.set_xlim(0, max(list(split.values()) + ([wall] if _is_number(wall) else [])) * 1.18)
    ax.set_xlabel("seconds")
    ax.set_title("where the time went")
    ax.grid(axis="x", alpha=0.3)
    sentence = (
        "Seconds per part of the run from summary.json: the driver's waits for episodes, training and publishing "
        "(blue) add up to at most the wall time; the actors' generation and env time (gray) are sums over actors that run in parallel."
    )
    return _figure(fig, out_dir, "time_split.png", "time split", sentence)


# --- the markdown ---------------------------------------------------------------------------------------


def reward_mode(run: dict) -> str | None:
    return ((run["config"] or {}).get("reward") or {}).get("mode")


def config_header(run: dict) -> str:
    config = run["config"]
    if config is None:
        return "config.yaml is absent: the run's config is unknown.\n"
    env, model, learner = config.get("env", {}), config.get("model", {}), config.get("learner", {})
    rows = [
        ("env", env.get("name")),
        ("tasks", ", ".join(env.get("tasks") or []) or None),
        ("model", model.get("path") or (f"built-in {model['builtin']}" if model.get("builtin") else None)),
        ("reward mode", reward_mode(run)),
        ("learner steps", learner.get("steps")),
        ("episodes per step", learner.get("episodes_per_step")),
        ("mode", config.get("mode")),
        ("seed", config.get("seed")),
    ]
    return _table(("config", "value"), [(k, "n/a" if v is None else str(v)) for k, v in rows])


def headline(run: dict) -> str:
    metrics, summary = run["metrics"], run["summary"] or {}
    rows = [("learner steps logged", str(len(metrics)))]
    steps, success = series(metrics, "success_rate")
    if len(success):
        rows.append(("training success, last step", f"{success[-1]:.3f} (step {steps[-1]:.0f})"))
        rows.append((f"training success, mean of last {SMOOTH} steps", f"{success[-SMOOTH:].mean():.3f}"))
    for key, label in (("self_eval/auroc", "self-eval AUROC"), ("self_eval/brier", "self-eval Brier"), ("calibration/r2_heldout", "calibration R² held-out")):
        steps, values = series(metrics, key)
        if len(values):
            rows.append((f"{label}, last step", f"{values[-1]:.3f} (step {steps[-1]:.0f})"))
    for when in ("before", "after"):
        result = summary.get("evaluation", {}).get(when)
        if result:
            rows.append((f"held-out success {when} training", f"{result['success_rate']:.3f} over {result['episodes']} episodes"))
    if run["summary"] is not None and not summary.get("evaluation"):
        rows.append(("held-out evaluation", "not run"))
    if _is_number(summary.get("wall_s")):
        rows.append(("wall time", f"{summary['wall_s']:.0f} s"))
    elif _is_number(metrics[-1].get("wall_s")):
        rows.append(("wall time to the last logged step", f"{metrics[-1]['wall_s']:.0f} s"))
    # summary.json's ledger has the full counts; without it, the learner's per-step counts.
    ledger = summary.get("ledger", {})
    trained = ledger.get("trained", summary.get("episodes_trained", _total(metrics, "trained_episodes")))
    dropped = ledger.get("dropped", summary.get("episodes_dropped", {"stale": _total(metrics, "dropped_stale")}))
    rows.append(("episodes trained", "n/a" if trained is None else str(trained)))
    rows.append(("episodes dropped", "n/a" if None in dropped.values() else _counts(dropped)))
    for event in ("token", "reply"):
        latencies = [v for v in summary.get(f"publish_to_first_{event}_s", {}).values() if _is_number(v)]
        if latencies:
            stats = f"median {np.median(latencies):.2f} s, max {max(latencies):.2f} s over {len(latencies)} versions"
            rows.append((f"publish → first {event} on the new version", stats))
    no_spread = [m["step"] for m in metrics if "step_advantage_abs_mean" in m and not m["step_advantage_abs_mean"]]
    if no_spread:
        rows.append(("**warning**: steps with every advantage 0 (no reward spread: they changed nothing)", f"{len(no_spread)} of {len(metrics)}: {no_spread}"))
    text = _table(("headline", "value"), rows)
    if run["summary"] is None:
        return text + "\nsummary.json is absent (the run did not finish): no evaluation, episode ledger or time split.\n"
    if not ledger:
        return text + "\nsummary.json has no episode ledger.\n"
    text += "\nEpisode ledger (every episode started, and where it ended up):\n\n"
    return text + _table(("ledger", "count"), [(k, _counts(v) if isinstance(v, dict) else str(v)) for k, v in ledger.items()])


def _total(metrics: list[dict], key: str) -> int | None:
    values = [m[key] for m in metrics if _is_number(m.get(key))]
    return int(sum(values)) if values else None


def _counts(counts: dict) -> str:
    return ", ".join(f"{reason} {n}" for reason, n in counts.items()) or "none"


def _table(header: tuple[str, str], rows: list[tuple[str, str]]) -> str:
    return "\n".join([f"| {header[0]} | {header[1]} |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows)]) + "\n"


def write_report(run_dir: Path) -> Path:
    """Write RUN_DIR/report/report.md and its PNGs; returns the report.md path."""
    run_dir = Path(run_dir)
    run = load_run(run_dir)
    out_dir = run_dir / "report"
    out_dir.mkdir(exist_ok=True)
    for old in out_dir.glob("*.png"):  # a plot that is now skipped must not linger from an earlier report
        old.unlink()
    sections = [
        ("Learning curves", learning_curves(run, out_dir)),
        ("Reward components", reward_components(run, out_dir)),
        ("Self-evaluation calibration", reliability_diagram(run, out_dir) + "\n" + self_eval_by_step(run, out_dir)),
        ("Step-level quality", step_quality(run, out_dir)),
        ("Throughput", throughput(run, out_dir)),
        ("Time split", time_split(run, out_dir)),
    ]
    text = f"# Run report: {run_dir.resolve().parent.name}/{run_dir.resolve().name}\n\n{config_header(run)}\n## Headline numbers\n\n{headline(run)}"
    text += "".join(f"\n## {title}\n\n{body}" for title, body in sections)
    report = out_dir / "report.md"
    report.write_text(text)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run_dirs", type=Path, nargs="+", metavar="RUN_DIR")
    args = parser.parse_args()
    failed = False
    for run_dir in args.run_dirs:
        try:
            print(f"wrote {write_report(run_dir)}")
        except (FileNotFoundError, ValueError) as error:
            print(f"no report for {run_dir}: {error}", file=sys.stderr)
            failed = True
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
