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
from omegaconf import DictConfig
from tqdm import tqdm

from actors.coordinator import RolloutCoordinator
from actors.pool import close_actors, make_rollout_actors, wait_until_ready
from actors.rollout import ThroughputStats
from conf.schema import register
from core.episode import Episode, outcome_figures, reply_figures
from core.ledger import EpisodeLedger
from envs.specs import episode_specs, prepare_env_assets
from launch.run_dir import begin_run
from pipeline.cluster import link_actor_logs, start_ray
from pipeline.models import resolve_model_dir

register()


def play(rollouts: RolloutCoordinator, specs: list, out_file, evaluation: bool = False) -> tuple[list[Episode], EpisodeLedger, float]:
    """Play the specs through the rollout coordinator (a dead actor's specs are issued again, and a
    restarted actor loads the published version first); write each final episode as it arrives. With
    ``evaluation`` the finished episodes count as dropped for evaluation. Returns (episodes, ledger, wall s)."""
    ledger = EpisodeLedger()
    start = time.perf_counter()
    episodes: list[Episode] = []
    with tqdm(total=len(specs), desc="episodes", unit="ep") as bar:

        def record(episode: Episode) -> None:
            episodes.append(episode)
            out_file.write(episode.to_json() + "\n")
            out_file.flush()  # a run that dies keeps every episode it played
            wins = sum(e.success for e in episodes)
            bar.set_postfix(success=f"{wins / len(episodes):.2f}", failed=sum(e.status == "failed" for e in episodes))
            bar.update()

        if evaluation:
            rollouts.evaluate(specs, ledger, record)
        else:
            for episode in rollouts.play(specs, ledger):
                record(episode)
    return episodes, ledger, time.perf_counter() - start


def coordinator(cfg, actors: list) -> RolloutCoordinator:
    """The rollout side of a job that only plays."""
    return RolloutCoordinator(actors, 4 * len(actors) * cfg.rollout.envs_per_actor, cfg.rollout.restart_timeout_s)


def summarize(episodes: list[Episode], ledger: EpisodeLedger, reports: list[dict], wall_s: float) -> dict:
    stats = ThroughputStats()
    for report in reports:
        stats = stats.add(report["stats"])
    figures = outcome_figures(episodes)
    return {
        **figures,
        "finished": figures["episodes"] - figures["failed"],
        "wall_s": wall_s,
        "generated_tokens": stats.generated_tokens,
        "tokens_per_s": stats.generated_tokens / wall_s,
        "env_steps": stats.env_steps,
        "env_steps_per_s": stats.env_steps / wall_s,
        "mean_batch_size": stats.batch_sum / max(stats.batch_count, 1),
        "prefix_cache_hit_rate": stats.cached_prompt_tokens / max(stats.prompt_tokens, 1),
        "env_wait_s": stats.wait_env_s,
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
    rollouts = coordinator(cfg, actors)
    with open(run_dir / "episodes.jsonl", "w") as out:
        episodes, ledger, wall_s = play(rollouts, specs, out)
    ledger.check(expect_idle=False)
    if ledger.in_flight != 0 or ledger.started != len(episodes) + ledger.retried:
        raise RuntimeError(f"episode accounting does not balance: {ledger.as_dict()} for {len(episodes)} episodes received")
    summary = summarize(episodes, ledger, rollouts.reports(), wall_s)
    ledger = summary["ledger"]
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    print(
        f"\nepisodes {summary['episodes']} (finished {summary['finished']}, failed {summary['failed']})  "
        f"success {summary['success_rate']:.3f}  mean score {summary['mean_score']:.3f}\n"
        f"{reply_figures(summary)}\n"
        f"generation {summary['tokens_per_s']:.1f} tokens/s  env {summary['env_steps_per_s']:.2f} steps/s  "
        f"mean batch {summary['mean_batch_size']:.1f}  wall {wall_s:.1f} s\n"
        f"ledger {ledger}\nrun dir {run_dir}"
    )
    close_actors(actors)
    rollouts.close()
    return summary


if __name__ == "__main__":
    main()
