"""Benchmark: generation tokens/s with every env's prompt in one batched call vs one env at a time.

    python -m benchmarks.generation [--envs 8] [--max-tokens 24] [--repeats 3] [--engine vllm]

Prompts are real first-turn prompts of TextWorld cooking games. Decoding is greedy so both modes
generate exactly the same tokens; the figure is the ratio of the two throughputs in one process.
"""

from __future__ import annotations

import argparse
import statistics
import time

from actors.engine import Sampling, make_engine
from actors.prompting import PromptSettings, build_messages
from conf.schema import EngineConfig, EnvConfig
from core.paths import default_cache_dir
from envs import make_env
from envs.textworld_cooking import ensure_games
from pipeline.embedded_model import ensure_embedded_model


def first_turn_prompts(tokenizer, count: int) -> list[list[int]]:
    env_cfg = EnvConfig()
    ensure_games(default_cache_dir(), [(env_cfg.tasks[0], "train", v) for v in range(count)])
    env = make_env(env_cfg)
    prompts = []
    for variation in range(count):
        reset = env.reset(env_cfg.tasks[0], variation, "train")
        messages = build_messages(reset.goal, [], reset.observation, reset.info["admissible_actions"], PromptSettings())
        prompts.append(list(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)["input_ids"]))
    env.close()
    return prompts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--envs", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=24)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--engine", choices=["vllm", "hf"], default="vllm")
    parser.add_argument("--model", default=None, help="model dir (default: the embedded SmolLM2-135M-Instruct)")
    args = parser.parse_args()

    from transformers import AutoTokenizer

    model_dir = args.model or str(ensure_embedded_model())
    engine = make_engine(EngineConfig(kind=args.engine), model_dir, "bfloat16", 1, 0, None)
    prompts = first_turn_prompts(AutoTokenizer.from_pretrained(model_dir), args.envs)
    sampling = Sampling(temperature=0, max_tokens=args.max_tokens)
    engine.generate(prompts[:1], [0], sampling)  # warm-up

    def tokens_per_s(batches: list[list[list[int]]]) -> tuple[float, int]:
        start, tokens = time.perf_counter(), 0
        for batch in batches:
            tokens += sum(len(g.token_ids) for g in engine.generate(batch, [0] * len(batch), sampling))
        return tokens / (time.perf_counter() - start), tokens

    batched, one_by_one = [], []
    for _ in range(args.repeats):
        rate, tokens_batched = tokens_per_s([prompts])
        batched.append(rate)
        rate, tokens_single = tokens_per_s([[p] for p in prompts])
        one_by_one.append(rate)
        assert tokens_batched == tokens_single, "greedy decoding should produce the same tokens in both modes"
    b, s = statistics.median(batched), statistics.median(one_by_one)
    mean_prompt = sum(map(len, prompts)) / len(prompts)
    print(
        f"engine {args.engine}, {args.envs} envs, prompt {mean_prompt:.0f} tokens, {tokens_batched} generated tokens per pass, "
        f"median of {args.repeats}\n"
        f"batched: {b:.1f} tokens/s   one env at a time: {s:.1f} tokens/s   ratio: {b / s:.2f}x"
    )
    engine.close()


if __name__ == "__main__":
    main()
