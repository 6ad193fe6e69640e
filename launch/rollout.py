"""Play episodes with the rollout actors and write them to the run dir; no training.

    python -m launch.rollout                                 # 2 actors x 4 envs, SmolLM2, TextWorld cooking
    python -m launch.rollout env=corridor engine=hf episodes=8

Prints success rate, mean score, generation tokens/s and env steps/s; writes ``episodes.jsonl`` and
``summary.json`` into the run dir, and checks the episode ledger (started = finished + failed, one
final episode per spec).
"""

from __future__ import annotations

import json
import time

import hydra
import ray
from omegaconf import DictConfig
from ray.util.queue import Queue
from tqdm import tqdm

from actors.dispatch import RolloutDispatch
from actors.rollout import ThroughputStats
from conf.schema import register
from core.adapter import Published
from core.episode import Episode
from core.ledger import EpisodeLedger
from launch.build import (
    begin_run,
    close_actors,
    episode_specs,
    link_actor_logs,
    make_rollout_actors,
    prepare_env_assets,
    resolve_model_dir,
    start_ray,
    wait_until_ready,
)

register()


def play(cfg, actors: list, specs: list, out_file, adapter: Published | None = None) -> tuple[list[Episode], EpisodeLedger, float]:
    """Play the specs through the actors (a dead actor's specs are issued again, and a restarted actor
    loads ``adapter`` first); write each final episode as it arrives. Returns (episodes, ledger, wall s)."""
    queue = Queue(maxsize=4 * len(actors) * cfg.rollout.envs_per_actor)
    ledger = EpisodeLedger()
    dispatch = RolloutDispatch(actors, queue, cfg.rollout.restart_timeout_s)
    start = time.perf_counter()
    episodes: list[Episode] = []
    with tqdm(total=len(specs), desc="episodes", unit="ep") as bar:
        for episode in dispatch.play(specs, ledger, adapter):
            episodes.append(episode)
            out_file.write(episode.to_json() + "\n")
            out_file.flush()  # a run that dies keeps every episode it played
            wins = sum(e.success for e in episodes)
            bar.set_postfix(success=f"{wins / len(episodes):.2f}", failed=sum(e.status == "failed" for e in episodes))
            bar.update()
    queue.shutdown()
    return episodes, ledger, time.perf_counter() - start


def summarize(episodes: list[Episode], ledger: EpisodeLedger, reports: list[dict], wall_s: float) -> dict:
    stats = ThroughputStats()
    for report in reports:
        stats = stats.add(report["stats"])
    finished = [e for e in episodes if e.status == "finished"]
    steps = sum(len(e.steps) for e in episodes)
    return {
        "episodes": len(episodes),
        "finished": len(finished),
        "failed": len(episodes) - len(finished),
        "success_rate": sum(e.success for e in finished) / max(len(finished), 1),
        "mean_score": sum(e.score for e in finished) / max(len(finished), 1),
        "mean_steps": steps / max(len(episodes), 1),
        "invalid_reply_rate": sum(e.num_invalid for e in episodes) / max(steps, 1),
        "unrecognised_action_rate": sum(e.num_unrecognised for e in episodes) / max(steps, 1),
        "wall_s": wall_s,
        "generated_tokens": stats.generated_tokens,
        "tokens_per_s": stats.generated_tokens / wall_s,
        "env_steps": stats.env_steps,
        "env_steps_per_s": stats.env_steps / wall_s,
        "mean_batch_size": stats.env_steps / max(stats.generate_calls, 1),
        "time_split_s": {"generate": stats.generate_s, "env": stats.env_s},
        "ledger": ledger.as_dict(),
    }


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
def main(dict_cfg: DictConfig) -> dict:
    cfg, run_dir = begin_run(dict_cfg, "rollout")
    model_dir = resolve_model_dir(cfg)
    specs = episode_specs(cfg, cfg.episodes // cfg.group_size, cfg.env.split, cfg.seed, uid_prefix="rollout")
    prepare_env_assets(cfg, specs)
    start_ray(cfg)
    link_actor_logs(run_dir)
    actors = make_rollout_actors(cfg, model_dir)
    wait_until_ready(actors)
    with open(run_dir / "episodes.jsonl", "w") as out:
        episodes, ledger, wall_s = play(cfg, actors, specs, out)
    ledger.check(expect_idle=False)
    if ledger.in_flight != 0 or ledger.started != len(episodes) + ledger.retried:
        raise RuntimeError(f"episode accounting does not balance: {ledger.as_dict()} for {len(episodes)} episodes received")
    summary = summarize(episodes, ledger, ray.get([a.report.remote() for a in actors]), wall_s)
    ledger = summary["ledger"]
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    print(
        f"\nepisodes {summary['episodes']} (finished {summary['finished']}, failed {summary['failed']})  "
        f"success {summary['success_rate']:.3f}  mean score {summary['mean_score']:.3f}  "
        f"invalid replies {summary['invalid_reply_rate']:.1%}\n"
        f"generation {summary['tokens_per_s']:.1f} tokens/s  env {summary['env_steps_per_s']:.2f} steps/s  "
        f"mean batch {summary['mean_batch_size']:.1f}  wall {wall_s:.1f} s\n"
        f"ledger {ledger}\nrun dir {run_dir}"
    )
    close_actors(actors)
    return summary


if __name__ == "__main__":
    main()
