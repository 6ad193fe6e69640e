"""Learner memory benchmark: does the learner's resident memory level off over many steps?

The soak benchmark gets through only a handful of learner steps in half an hour. This one trains the
real learner (DeepSpeed + PEFT LoRA on the embedded SmolLM2 by default) step after step on episodes whose
lengths vary from step to step, as agent episodes do, and records the RSS after each step: once with
``learner.trim_memory=true`` (freed heap pages go back to the OS after each step) and once without, each
in a fresh process, on the same episodes.

    python -m benchmarks.learner_memory                 # 12 steps of 4 episodes, both settings
    python -m benchmarks.learner_memory --steps 30 --model-dir PATH

Prints the RSS after every step for both settings, the growth over each half of the steps, the peak and
the training speed, and writes the samples to ``--out`` (JSON). Not part of the test suite (about 12
minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import psutil


def synthetic_episodes(rng: random.Random, count: int, vocab: int, step: int, version: int):
    """``count`` finished episodes in GRPO groups of two, 3-8 turns each, prompts of 100-500 tokens and
    actions of 4-24 tokens, sampled by policy ``version``: every step brings new sequence lengths, as a
    real run does."""
    from core.episode import Episode, Step

    episodes = []
    for i in range(count):
        turns = []
        for _ in range(rng.randint(3, 8)):
            action = [rng.randrange(vocab) for _ in range(rng.randint(4, 24))]
            turns.append(
                Step(
                    prompt_ids=[rng.randrange(vocab) for _ in range(rng.randint(100, 500))],
                    action_ids=action,
                    action_logprobs=[-rng.uniform(0.1, 3.0) for _ in action],
                    reply_text="",
                    action="look",
                    invalid_reason=None,
                    observation="",
                    env_reward=0.0,
                    policy_version=version,
                    step_reward=rng.uniform(-1, 1),
                )  # fmt: skip
            )
        success = rng.random() < 0.5
        episodes.append(
            Episode(
                episode_id=f"s{step}-{i}",
                env="synthetic",
                task="t",
                variation=i // 2,
                split="train",
                goal="",
                first_observation="",
                steps=turns,
                score=float(success),
                success=success,
                status="finished",
                spec_uid=f"s{step}-{i:03d}",
            )  # fmt: skip
        )
    return episodes


def measure(steps: int, episodes: int, model_dir: str, trim: bool) -> list[dict]:
    """Train ``steps`` steps in this process; the RSS, tokens and seconds after each."""
    from transformers import AutoConfig

    from conf.schema import LearnerConfig
    from learner.learner import Learner
    from learner.ranks import rendezvous_store

    store = rendezvous_store()
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(store.port), RANK="0", LOCAL_RANK="0", WORLD_SIZE="1")
    learner = Learner(LearnerConfig(trim_memory=trim), model_dir)
    vocab = AutoConfig.from_pretrained(model_dir).vocab_size
    process, rng = psutil.Process(), random.Random(0)
    samples = [{"step": 0, "rss_mib": process.memory_info().rss / 2**20, "tokens": 0, "train_s": 0.0}]
    for step in range(1, steps + 1):
        start = time.perf_counter()
        metrics = learner.train_step(synthetic_episodes(rng, episodes, vocab, step, learner.version))
        learner.publish()
        assert metrics["trained_episodes"] == episodes, metrics
        samples.append({"step": step, "rss_mib": process.memory_info().rss / 2**20, "tokens": metrics["train_tokens"], "train_s": time.perf_counter() - start})
        print(
            f"trim_memory={trim}: step {step:3d}: {metrics['train_tokens']:6d} tokens in {samples[-1]['train_s']:5.1f} s, "
            f"RSS {samples[-1]['rss_mib']:6.0f} MiB",
            file=sys.stderr,
            flush=True,
        )
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--episodes", type=int, default=4, help="episodes per learner step")
    parser.add_argument("--model-dir", default=None, help="a Hugging Face model folder (default: the embedded SmolLM2)")
    parser.add_argument("--out", default="learner_memory.json")
    parser.add_argument("--only", choices=["trim", "no-trim"], help=argparse.SUPPRESS)  # one setting, samples to --out
    args = parser.parse_args()
    if args.steps < 4 or args.episodes < 2 or args.episodes % 2:
        parser.error(f"--steps={args.steps} --episodes={args.episodes}: use at least 4 steps and an even number of episodes >= 2")
    if args.model_dir is None:
        from pipeline.embedded_model import ensure_embedded_model

        args.model_dir = str(ensure_embedded_model())
    if args.only:
        Path(args.out).write_text(json.dumps(measure(args.steps, args.episodes, args.model_dir, args.only == "trim")))
        return

    runs = {}
    for setting in ("no-trim", "trim"):  # each in a fresh process: the allocator starts clean
        part = Path(f"{args.out}.{setting}")
        command = [sys.executable, "-m", "benchmarks.learner_memory", "--only", setting, "--steps", str(args.steps),
                   "--episodes", str(args.episodes), "--model-dir", args.model_dir, "--out", str(part)]  # fmt: skip
        subprocess.run(command, check=True)
        runs[setting] = json.loads(part.read_text())
        part.unlink()
    half = args.steps // 2
    print(f"\nlearner RSS (MiB) after each step, {args.episodes} episodes per step\n")
    print("| step | tokens | trim_memory=false | trim_memory=true |\n|---|---|---|---|")
    for a, b in zip(runs["no-trim"], runs["trim"]):
        print(f"| {a['step']} | {a['tokens']} | {a['rss_mib']:.0f} | {b['rss_mib']:.0f} |")
    print()
    for setting, samples in runs.items():
        rss = [s["rss_mib"] for s in samples]
        speed = sum(s["tokens"] for s in samples) / sum(s["train_s"] for s in samples)
        print(f"{setting:8s}: growth steps 1-{half} {rss[half] - rss[1]:+.0f} MiB, steps {half}-{args.steps} {rss[-1] - rss[half]:+.0f} MiB; "
              f"peak {max(rss):.0f} MiB; {speed:.0f} tokens/s")  # fmt: skip
    ratio = max(s["rss_mib"] for s in runs["trim"]) / max(s["rss_mib"] for s in runs["no-trim"])
    print(f"peak RSS with trim / without: {ratio:.2f}")
    with open(args.out, "w") as f:
        json.dump(runs, f, indent=1)


if __name__ == "__main__":
    main()
