"""Evaluate the base model or a saved LoRA adapter on held-out task variations, through the rollout actors.

    python -m launch.evaluate                                             # base SmolLM2, TextWorld valid games
    python -m launch.evaluate evaluate.adapter=runs/<run>/checkpoints/final/adapter evaluate.split=test
    python -m launch.evaluate env=scienceworld evaluate.split=valid evaluate.episodes_per_task=5   # seen (dev)

Variations 0..K-1 of the split (``evaluate.episodes_per_task``) for every task in ``env.tasks``, one
episode each, greedy unless ``evaluate.greedy=false``. For ScienceWorld, ``valid`` is the dev
variations ("seen") and ``test`` the test variations ("unseen"); for TextWorld, the valid and test seeds.
Writes ``evaluation.json`` and ``evaluation.md`` (per task and overall success rate, mean score, mean
steps; the replies that held no action, by reason, mapped to an admissible command, or not understood by
the env) and ``episodes.jsonl`` into the run dir, and prints the table and the wall time.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections import defaultdict

import hydra
import ray
from omegaconf import DictConfig

from actors.pool import close_actors, make_rollout_actors, wait_until_ready
from conf.schema import register
from core.adapter import AdapterWeights, Published
from core.episode import Episode, outcome_figures, reply_figures
from envs.specs import evaluation_specs, prepare_env_assets
from launch.rollout import coordinator, play
from launch.run_dir import begin_run
from pipeline.cluster import link_actor_logs, start_ray
from pipeline.models import resolve_model_dir

register()


def results(episodes: list[Episode], tasks: list[str]) -> dict:
    by_task: dict[str, list[Episode]] = defaultdict(list)
    for e in episodes:
        by_task[e.task].append(e)

    return {"tasks": {t: outcome_figures(by_task[t]) for t in tasks}, "overall": outcome_figures(episodes)}


def markdown(table: dict) -> str:
    lines = ["| task | episodes | success rate | mean score | mean steps | failed |", "|---|---:|---:|---:|---:|---:|"]
    for name, r in [*table["tasks"].items(), ("**overall**", table["overall"])]:
        lines.append(f"| {name} | {r['episodes']} | {r['success_rate']:.3f} | {r['mean_score']:.3f} | {r['mean_steps']:.1f} | {r['failed']} |")
    return "\n".join(lines) + "\n\n" + reply_figures(table["overall"]) + "\n"


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
def main(dict_cfg: DictConfig) -> dict:
    cfg, run_dir = begin_run(dict_cfg, "evaluate")
    start = time.perf_counter()
    adapter = AdapterWeights.load(cfg.evaluate.adapter) if cfg.evaluate.adapter else None  # fail before any actor starts
    if cfg.evaluate.greedy:
        cfg = dataclasses.replace(cfg, rollout=dataclasses.replace(cfg.rollout, temperature=0.0))
    specs = evaluation_specs(cfg)
    model_dir = resolve_model_dir(cfg)
    prepare_env_assets(cfg, specs)
    start_ray(cfg)
    link_actor_logs(run_dir)
    actors = make_rollout_actors(cfg, model_dir)
    wait_until_ready(actors)
    # As in training: the coordinator's every stream call carries the version, so an actor Ray restarts
    # mid-evaluation loads the adapter again before it plays (actors.rollout.RolloutWorker.catch_up).
    rollouts = coordinator(cfg, actors)
    published = Published(adapter.version, [ray.put(adapter)]) if adapter is not None else None
    rollouts.publish(published)
    with open(run_dir / "episodes.jsonl", "w") as out:
        episodes, ledger, _ = play(rollouts, specs, out, evaluation=True)
    ledger.check(expect_idle=True)
    close_actors(actors)
    rollouts.close()
    table = results(episodes, list(cfg.env.tasks))
    table.update(
        model=model_dir, adapter=cfg.evaluate.adapter, version=published.version if published else 0, env=cfg.env.name,
        split=cfg.evaluate.split, greedy=cfg.evaluate.greedy, wall_s=time.perf_counter() - start, ledger=ledger.as_dict(),
    )  # fmt: skip
    (run_dir / "evaluation.json").write_text(json.dumps(table, indent=2))
    text = markdown(table)
    (run_dir / "evaluation.md").write_text(text)
    policy = f"adapter {cfg.evaluate.adapter}" if adapter else (f"warm-started model {model_dir}" if cfg.model.warm_start else "base model")
    print(f"\n{cfg.env.name} {cfg.evaluate.split}, {policy}, "
          f"{'greedy' if cfg.evaluate.greedy else 'sampled'}\n{text}ledger {table['ledger']}\nwall {table['wall_s']:.0f} s; run dir {run_dir}")  # fmt: skip
    return table


if __name__ == "__main__":
    main()
