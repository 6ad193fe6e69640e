"""Benchmark: the rollout actor's throughput against its own engine's offline throughput.

    python -m benchmarks.rollout                               # warm-started SmolLM2, TextWorld, 8 envs
    python -m benchmarks.rollout --envs 4 --episodes 8 env.max_steps=6   # Hydra overrides last

One engine, one set of seeded episode specs (default ``experiment=textworld_debug``: the main job's
model and games). It plays them with a rollout worker under each schedule (``lockstep``: one batched
call per turn, then every env steps; ``continuous``: requests join and leave the running batch, envs
step in a pool meanwhile), then replays the very same requests offline: every recorded prompt with its
seed, in batches of ``--envs`` in turn order, no env in between. A seeded request samples from its own
generator, so the runs do nearly the same work: only a reply whose sampling is tipped by the batch's
rounding differs (the count is printed), and with it the rest of its episode.

Printed per schedule, all from one process:
- decode tokens/s (generated) and prefill tokens/s (prompt tokens computed, i.e. not read from the
  prefix cache) over the rollout's wall time, and the ratio of rollout to offline decode throughput;
- the prefix-cache hit rate: prompt tokens read from the cache / prompt tokens;
- lockstep idle per env: the time an env with its answer ready waited for other envs' steps before its
  next request went in (measured), and the time a finished reply waited for longer replies of its batch
  (lockstep: estimated from the reply lengths; continuous: none, a request leaves when it is done).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from actors.engine import Sampling
from actors.pool import EngineFactory, EnvFactory, engine_threads
from actors.prompting import PromptSettings
from actors.rollout import RolloutWorker, turn_seed
from benchmarks.step_quality import benchmark_config, distinct_game_specs
from core.episode import Episode
from envs.specs import prepare_env_assets
from pipeline.models import resolve_model_dir


def reset_prefix_cache(engine) -> None:
    """Every run starts with a cold prefix cache (vLLM), so no run reads what an earlier one computed."""
    llm = getattr(engine, "llm", None)
    if llm is not None:
        llm.reset_prefix_cache()


def offline(engine, episodes: list[Episode], seeds: dict[str, int], sampling: Sampling, batch: int) -> tuple[float, int, int]:
    """Replay every step's request (prompt, seed, version) in batches of ``batch``, turn by turn;
    return (wall s, generated tokens, tokens that differ from the rollout's)."""
    requests = sorted(
        ((t, i, step, turn_seed(seeds[e.spec_uid], t)) for i, e in enumerate(episodes) for t, step in enumerate(e.steps)),
        key=lambda r: (r[0], r[1]),
    )
    reset_prefix_cache(engine)
    start, generated, differ = time.perf_counter(), 0, 0
    for k in range(0, len(requests), batch):
        chunk = requests[k : k + batch]
        out = engine.generate([s.prompt_ids for _, _, s, _ in chunk], [s.policy_version for _, _, s, _ in chunk], sampling, [seed for *_, seed in chunk])
        generated += sum(len(g.token_ids) for g in out)
        differ += sum(g.token_ids != s.action_ids for (_, _, s, _), g in zip(chunk, out))
    return time.perf_counter() - start, generated, differ


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--episodes", type=int, default=16)
    parser.add_argument("--envs", type=int, default=8, help="env instances of the one worker (the main job: 2 actors x 4)")
    parser.add_argument("--split", default="train")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--schedules", nargs="+", choices=["lockstep", "continuous"], default=["lockstep", "continuous"])
    parser.add_argument("--out", default=None, help="write the figures as JSON here")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides (default: experiment=textworld_debug)")
    args = parser.parse_args()

    overrides, cfg = benchmark_config(args.overrides)
    model_dir = resolve_model_dir(cfg)
    specs = distinct_game_specs(cfg, args.split, args.episodes, args.seed, "b")
    prepare_env_assets(cfg, specs)  # games made before any clock starts
    r = cfg.rollout
    sampling = Sampling(temperature=r.temperature, top_p=r.top_p, max_tokens=r.max_tokens)
    engine = EngineFactory(cfg, model_dir, engine_threads(cfg, 1, 0), args.seed)()
    engine.generate([[1, 2, 3]], [0], Sampling(max_tokens=2))  # warm-up
    results: dict = {"overrides": overrides, "model": model_dir, "envs": args.envs, "episodes": len(specs), "schedules": {}}
    print(f"{cfg.engine.kind} engine, {model_dir}, {cfg.env.name} {list(cfg.env.tasks)}: {len(specs)} episodes on {args.envs} envs")
    for schedule in args.schedules:
        worker = RolloutWorker(0, lambda: engine, EnvFactory(cfg), model_dir, args.envs, sampling, PromptSettings.from_rollout(r),
                               cfg.engine.max_model_len, r.env_step_timeout_s, 0, schedule)  # fmt: skip
        worker.ready()
        reset_prefix_cache(engine)
        start = time.perf_counter()
        episodes = sorted(worker.run(specs), key=lambda e: e.spec_uid)
        wall = time.perf_counter() - start
        for slot in worker.slots:  # the engine is shared by the runs: close the envs only
            slot.env.close()
        s = worker.stats
        off_wall, off_tokens, differ = offline(engine, episodes, {spec.uid: spec.seed for spec in specs}, sampling, args.envs)
        computed_prompt = s.prompt_tokens - s.cached_prompt_tokens
        figures = {
            "wall_s": wall, "env_steps": s.env_steps, "env_s": s.env_s, "generate_s": s.generate_s,
            "generated_tokens": s.generated_tokens, "decode_tokens_per_s": s.generated_tokens / wall,
            "prompt_tokens": s.prompt_tokens, "prefill_tokens_per_s": computed_prompt / wall,
            "prefix_cache_hit_rate": s.cached_prompt_tokens / max(s.prompt_tokens, 1),
            "mean_batch": s.batch_sum / max(s.batch_count, 1),
            "wait_env_s_per_env": s.wait_env_s / args.envs, "wait_reply_s_per_env": s.wait_reply_s / args.envs,
            "offline_wall_s": off_wall, "offline_decode_tokens_per_s": off_tokens / off_wall,
            "offline_prefill_tokens_per_s": computed_prompt / off_wall,
            "ratio_decode": (s.generated_tokens / wall) / (off_tokens / off_wall), "replies_that_differ_offline": differ,
            "success": sum(e.success for e in episodes) / max(len(episodes), 1),
            "failed": sum(e.status == "failed" for e in episodes),
        }  # fmt: skip
        results["schedules"][schedule] = figures
        print(
            f"\n{schedule}: {len(episodes)} episodes, {s.env_steps} env steps in {wall:.1f} s (env {s.env_s:.1f} s, engine {s.generate_s:.1f} s), "
            f"mean batch {figures['mean_batch']:.1f}, success {figures['success']:.3f}, failed {figures['failed']}\n"
            f"  rollout: decode {figures['decode_tokens_per_s']:.1f} tok/s, prefill {figures['prefill_tokens_per_s']:.1f} tok/s\n"
            f"  offline, the same requests in batches of {args.envs}: decode {figures['offline_decode_tokens_per_s']:.1f} tok/s, "
            f"prefill {figures['offline_prefill_tokens_per_s']:.1f} tok/s ({off_wall:.1f} s; {differ} of {s.env_steps} replies differ)\n"
            f"  rollout / offline decode throughput: {figures['ratio_decode']:.2f}\n"
            f"  prefix-cache hit rate: {figures['prefix_cache_hit_rate']:.3f} of {s.prompt_tokens} prompt tokens\n"
            f"  lockstep idle per env: waiting for other envs' steps {figures['wait_env_s_per_env']:.2f} s, "
            f"for longer replies {figures['wait_reply_s_per_env']:.2f} s ({100 * (s.wait_env_s + s.wait_reply_s) / args.envs / wall:.0f}% of the wall time)"
        )  # fmt: skip
    engine.close()
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
