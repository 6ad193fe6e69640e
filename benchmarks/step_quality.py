"""Benchmark: do the dense rewards point at the steps that helped?

    python -m benchmarks.step_quality                                  # warm-started SmolLM2 on TextWorld
    python -m benchmarks.step_quality --episodes 48 --seed 1 engine=hf # more episodes; Hydra overrides last

Plays ``--episodes`` episodes of one config (default ``experiment=textworld_debug``: the warm-started
SmolLM2 on TextWorld cooking, sampled at the rollout temperature, on unseen ``--split`` games), then has
each evaluator judge every episode, asking the questions of every mode at once (the step questions for
r_SE, the hindsight scoring for r_MI, the progress questions q_t for r_IG, the outcome question q). Per
evaluator it prints, against what the env knows about each step (``Step.progress``: the step shortened
the expert's remaining plan, or won; ``Step.score_delta``):

- the AUROC of r_SE, r_MI, r_IG and of MISE's calibrated dense reward against ``progress``, with its
  spread over a bootstrap of the episodes (the calibration map is cross-fitted: each half of the
  episodes is scored by the ridge map fitted on the other half's outcomes, as the reward stage never
  scores a batch with a fit that saw it);
- Pearson's r of each signal with the score delta;
- the AUROC and Brier score of q against the episode's outcome.

Evaluators: ``base`` is the untuned base model (``model.path`` / ``model.builtin``), ``policy`` the
model the episodes were played with (the warm start), which is what ``reward.evaluator=base`` judges
with in an RL run that starts from it, and what ``policy`` judges with at version 0.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import numpy as np

from actors.engine import Sampling
from actors.pool import EngineFactory, EnvFactory, engine_threads
from actors.prompting import PromptSettings
from actors.rollout import RolloutWorker
from conf.schema import Config, validate
from core.episode import Episode, EpisodeSpec
from envs import variation_counts
from pipeline.models import base_model_dir, resolve_model_dir
from reward.evaluator import SelfEvaluator
from reward.mise import auroc, brier_score, fit_ridge, information_gain, self_eval_rewards, step_label_quality
from reward.stage import hindsight_settings

CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")
SIGNALS = ("r_se", "r_mi", "r_ig", "dense")


def load_config(overrides: list[str]) -> Config:
    from hydra import compose, initialize_config_dir

    from conf.schema import register

    register()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return validate(compose("config", overrides=overrides), job="rollout")


def benchmark_config(overrides: list[str]) -> tuple[list[str], Config]:
    """The benchmarks' config: the Hydra overrides, ``experiment=textworld_debug`` unless they name one."""
    if not any(o.startswith("experiment=") for o in overrides):
        overrides = ["experiment=textworld_debug", *overrides]
    return overrides, load_config(overrides)


def distinct_game_specs(cfg: Config, split: str, num_episodes: int, seed: int, prefix: str) -> list[EpisodeSpec]:
    """Seeded specs of up to ``num_episodes`` distinct games of ``split``, drawn with ``seed``."""
    counts = variation_counts(cfg.env, [split])[split]
    games = [(task, v) for task, n in counts.items() for v in range(n)]
    chosen = random.Random(seed).sample(games, min(num_episodes, len(games)))
    return [EpisodeSpec(task, v, split, uid=f"{prefix}{i}", seed=seed * 100_003 + i) for i, (task, v) in enumerate(chosen)]


def play(cfg: Config, model_dir: str, split: str, num_episodes: int, seed: int) -> list[Episode]:
    """Episodes of the policy on distinct games of ``split`` (one attempt each; failures dropped)."""
    r = cfg.rollout
    worker = RolloutWorker(
        0, EngineFactory(cfg, model_dir, engine_threads(cfg, 1, 0), seed), EnvFactory(cfg), model_dir,
        r.envs_per_actor * r.num_actors, Sampling(temperature=r.temperature, top_p=r.top_p, max_tokens=r.max_tokens),
        PromptSettings.from_rollout(r), cfg.engine.max_model_len,
    )  # fmt: skip
    try:
        specs = distinct_game_specs(cfg, split, num_episodes, seed, "q")
        return [e for e in worker.run(specs) if e.status == "finished" and not e.retried]
    finally:
        worker.close()


def judge(cfg: Config, model_dir: str, episodes: list[Episode]) -> list:
    factory = EngineFactory(cfg, model_dir, engine_threads(cfg, 1, 0), cfg.seed + 1000)
    evaluator = SelfEvaluator(
        factory, model_dir, hindsight_settings(cfg.reward), follow_policy=False, max_model_len=cfg.engine.max_model_len, ask_progress=True
    )
    try:
        evaluator.ready()
        judgements = []
        for at in range(0, len(episodes), cfg.reward.batch_episodes):
            batch, _ = evaluator.evaluate(episodes[at : at + cfg.reward.batch_episodes])
            judgements += batch
        return judgements
    finally:
        evaluator.close()


def signals(cfg: Config, episodes: list[Episode], judgements: list) -> list[dict[str, list[float]]]:
    """Per episode: each signal's value at every step, the calibrated dense reward cross-fitted."""
    per_episode = []
    for judgement in judgements:
        per_episode.append(
            {"r_se": self_eval_rewards(judgement.step_yes, cfg.reward.eps), "r_mi": list(judgement.mi), "r_ig": information_gain(judgement.progress_yes)}
        )
    features = [np.array([e["r_se"], e["r_mi"]]).T for e in per_episode]
    outcomes = np.array([e.env_return for e in episodes])  # R, as the reward stage fits it
    folds = [list(range(0, len(episodes), 2)), list(range(1, len(episodes), 2))]
    for scored, fitted in (folds, folds[::-1]):
        fit = fit_ridge(np.array([features[i].sum(axis=0) for i in fitted]), outcomes[fitted], cfg.reward.calibration_alpha)
        for i in scored:
            per_episode[i]["dense"] = fit.step_rewards(features[i].tolist())
    return per_episode


def quality(episodes: list[Episode], values: list[dict[str, list[float]]], judgements: list, indices: list[int]) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for name in SIGNALS:
        rows = [(v, s.progress, s.score_delta) for i in indices for v, s in zip(values[i][name], episodes[i].steps)]
        out[f"auroc_{name}"], out[f"corr_{name}_score_delta"] = step_label_quality(rows)
    q, z = [judgements[i].outcome_yes for i in indices], [int(episodes[i].success) for i in indices]
    out["outcome_auroc"], out["outcome_brier"] = auroc(q, z), brier_score(q, z)
    return out


def bootstrap_sd(episodes, values, judgements, rounds: int, seed: int) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    draws: dict[str, list[float]] = {}
    for _ in range(rounds):
        sample = rng.integers(0, len(episodes), len(episodes)).tolist()
        for key, value in quality(episodes, values, judgements, sample).items():
            if value is not None:
                draws.setdefault(key, []).append(value)
    return {key: float(np.std(v)) for key, v in draws.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--episodes", type=int, default=32)
    parser.add_argument("--split", default="valid")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--evaluators", nargs="+", choices=["base", "policy"], default=["base", "policy"])
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap rounds over episodes for the spreads")
    parser.add_argument("--out", default=None, help="write the figures as JSON here")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides (default: experiment=textworld_debug)")
    args = parser.parse_args()

    overrides, cfg = benchmark_config(args.overrides)
    policy_dir = resolve_model_dir(cfg)
    episodes = play(cfg, policy_dir, args.split, args.episodes, args.seed)
    labels = [s.progress for e in episodes for s in e.steps if s.progress is not None]
    if not labels:
        raise SystemExit(f"env {cfg.env.name!r} labels no step's progress: nothing to measure against")
    print(f"{len(episodes)} episodes of {cfg.env.name} {list(cfg.env.tasks)} ({args.split}, seed {args.seed}): "
          f"success {np.mean([e.success for e in episodes]):.3f}, {sum(len(e.steps) for e in episodes)} steps, "
          f"{len(labels)} labelled, progress fraction {np.mean(labels):.3f}")  # fmt: skip
    results = {"overrides": overrides, "split": args.split, "seed": args.seed, "episodes": len(episodes),
               "success": float(np.mean([e.success for e in episodes])), "progress_fraction": float(np.mean(labels)), "evaluators": {}}  # fmt: skip
    for name in args.evaluators:
        model_dir = base_model_dir(cfg) if name == "base" else policy_dir
        judgements = judge(cfg, model_dir, episodes)
        failed = [j for j in judgements if isinstance(j, str)]
        if failed:
            raise SystemExit(f"evaluator {name}: {len(failed)} episodes not judged, first: {failed[0]}")
        values = signals(cfg, episodes, judgements)
        figures = quality(episodes, values, judgements, list(range(len(episodes))))
        spreads = bootstrap_sd(episodes, values, judgements, args.bootstrap, args.seed)
        results["evaluators"][name] = {"model": model_dir, **figures, "bootstrap_sd": spreads}
        print(f"\nevaluator {name} ({model_dir})")
        for key, value in figures.items():
            shown = "n/a" if value is None else f"{value:.3f}" + (f" ± {spreads[key]:.3f}" if key in spreads else "")
            print(f"  {key:28s} {shown}")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
