"""Benchmark: what the reward pool's self-evaluation costs per episode as episodes get longer.

    python -m benchmarks.reward                      # embedded SmolLM2, vLLM engine
    python -m benchmarks.reward --engine hf --lengths 5 10 20

Episodes are real corridor games (a long corridor, random admissible moves, so every episode runs to
its step cap) recorded with the policy's real prompts. For each length T it prints the tokens the
evaluator's engine actually ran per episode (prompt tokens not served from a prefix cache, plus the
one decoded token per question) next to the tokens of all its prompts (what scoring each prompt from
scratch would cost), and fits the growth exponent b of tokens ~ T^b: about 1 with prefix sharing,
about 2 without.
"""

from __future__ import annotations

import argparse
import random
import time

import numpy as np

from actors.prompting import PromptSettings, build_messages
from core.episode import Episode, Step
from envs.corridor import CorridorEnv


def corridor_episode(tokenizer, length: int, seed: int, settings: PromptSettings) -> Episode:
    """A real corridor game of exactly ``length`` steps, played with random admissible moves."""
    rng = random.Random(seed)
    env = CorridorEnv([length + 10], {"train": 1000}, max_steps=length)
    task = f"corridor-{length + 10}"
    reset = env.reset(task, seed % 1000)
    episode = Episode(f"bench-{length}-{seed}", "corridor", task, seed % 1000, "train", reset.goal, reset.observation)
    history, observation = [], reset.observation
    while not env.done:
        messages = build_messages(reset.goal, history, observation, env.admissible_actions(), settings)
        prompt = list(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)["input_ids"])
        action = rng.choice(env.admissible_actions())
        result = env.step(action)
        action_ids = tokenizer.encode(action, add_special_tokens=False)
        episode.steps.append(Step(prompt, action_ids, [-1.0] * len(action_ids), action, action, None, result.observation, result.reward, 0))
        history.append((action, result.observation))
        observation = result.observation
    episode.status = "finished"
    return episode


def growth_exponent(lengths: list[int], costs: list[float]) -> float:
    """Slope of log(cost) against log(length) by least squares."""
    return float(np.polyfit(np.log(lengths), np.log(costs), 1)[0])


class _Factory:
    def __init__(self, kind: str, model_dir: str) -> None:
        self.kind, self.model_dir = kind, model_dir

    def __call__(self):
        from actors.engine import make_engine
        from conf.schema import EngineConfig

        return make_engine(EngineConfig(kind=self.kind, max_model_len=8192), self.model_dir, "bfloat16", 1, 0, None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engine", choices=["vllm", "hf"], default="vllm")
    parser.add_argument("--lengths", type=int, nargs="+", default=[5, 10, 20, 40])
    parser.add_argument("--episodes", type=int, default=2, help="episodes per length")
    parser.add_argument("--model", default=None, help="a Hugging Face model dir (default: the embedded SmolLM2)")
    args = parser.parse_args()

    from transformers import AutoTokenizer

    from pipeline.embedded_model import ensure_embedded_model
    from reward.evaluator import SelfEvaluator
    from reward.hindsight import HindsightSettings

    model_dir = args.model or str(ensure_embedded_model())
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    evaluator = SelfEvaluator(_Factory(args.engine, model_dir), model_dir, HindsightSettings(), follow_policy=False, max_model_len=8192)
    settings = PromptSettings(history_window=2)
    rows = []
    for length in args.lengths:
        episodes = [corridor_episode(tokenizer, length, seed, settings) for seed in range(args.episodes)]
        plans = [evaluator._plan(e) for e in episodes]
        unshared = sum(
            sum(len(q) for q in p["questions"]) + sum(len(w) + len(a) for w, a in zip(p["with_hindsight"] + p["without_hindsight"], p["actions"] * 2))
            for p in plans
        )  # fmt: skip
        start = time.perf_counter()
        judgements, computed = evaluator.evaluate(episodes)
        elapsed = time.perf_counter() - start
        bad = [j for j in judgements if isinstance(j, str)]
        if bad:
            raise RuntimeError(f"the evaluator refused an episode: {bad[0]}")
        rows.append((length, computed / len(episodes), unshared / len(episodes), elapsed / len(episodes)))
        print(f"T={length:3d}: {computed / len(episodes):9.0f} tokens computed per episode, "
              f"{unshared / len(episodes):9.0f} in its prompts, {elapsed / len(episodes):6.2f} s per episode")  # fmt: skip
    lengths = [r[0] for r in rows]
    print(f"\nengine {args.engine}, model {model_dir.rsplit('/', 1)[-1]}, {args.episodes} episodes per length")
    print("| steps T | tokens computed / episode | tokens in prompts / episode | computed / T | s / episode |")
    print("|---:|---:|---:|---:|---:|")
    for length, computed, unshared, seconds in rows:
        print(f"| {length} | {computed:.0f} | {unshared:.0f} | {computed / length:.0f} | {seconds:.2f} |")
    print(f"\ngrowth exponent b (tokens ~ T^b): computed {growth_exponent(lengths, [r[1] for r in rows]):.2f}, "
          f"prompts scored from scratch {growth_exponent(lengths, [r[2] for r in rows]):.2f}")  # fmt: skip
    evaluator.close()


if __name__ == "__main__":
    main()
