"""The built-in tiny corridor model: a 2-layer random Llama with SmolLM2's tokenizer and chat template,
warm-started (supervised, a few seconds) to reply in the action format on corridor prompts.

It is the policy of the corridor experiments and of the learning tests: it wins sometimes, so RL has
a signal to improve on, and it trains in seconds per step on a CPU. The embedded SmolLM2 itself scores
0 on the corridor (most replies are not actions), so it cannot serve there.

    python -m launch.tiny_model --length 3      # builds once into the cache, prints the folder
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
from pathlib import Path

import torch

from core.paths import default_cache_dir


def build_random_tiny(tokenizer_dir: str, out_dir: str | Path, seed: int = 0) -> str:
    """A 2-layer random Llama (hidden 128) with the tokenizer of ``tokenizer_dir``: fast, and vLLM serves it."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=4096,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True,
    )  # fmt: skip
    torch.manual_seed(seed)
    LlamaForCausalLM(config).to(torch.bfloat16).save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return str(out_dir)


def corridor_prompt(tokenizer, env, settings) -> list[int]:
    """The policy's prompt in ``env``'s current room (no history), as the rollout actors build it."""
    from actors.prompting import build_messages

    goal = f"Walk through the {len(env._exits)} rooms of the corridor and take the treasure in the last room."
    messages = build_messages(goal, [], env._describe(), env.admissible_actions(), settings)
    return list(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)["input_ids"])


def format_warm_start(model_dir: str, out_dir: str | Path, length: int, settings, p_correct: float = 0.3, steps: int = 150, seed: int = 0) -> str:
    """Supervised warm start on corridor prompts: the reply is the optimal action with probability
    ``p_correct``, otherwise an admissible action drawn uniformly, then end of turn. The result replies
    in the right format and reads the observation a little, so it wins sometimes; how much better it
    gets is left to RL."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from envs.corridor import CorridorEnv

    rng = random.Random(seed)
    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    env = CorridorEnv([length], {"train": 1000})
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(steps):
        rows = []
        for _ in range(16):
            env.reset(f"corridor-{length}", rng.randrange(1000))
            for _ in range(rng.randrange(length + 1)):
                env.step(env.optimal_action())
            prompt = corridor_prompt(tokenizer, env, settings)
            action = env.optimal_action() if rng.random() < p_correct else rng.choice(env.admissible_actions())
            target = tokenizer.encode(action, add_special_tokens=False) + [end]
            rows.append((prompt, target))
        width = max(len(p) + len(t) for p, t in rows)
        ids = torch.full((len(rows), width), tokenizer.pad_token_id)
        for i, (p, t) in enumerate(rows):
            ids[i, : len(p) + len(t)] = torch.tensor(p + t)
        hidden = model.model(input_ids=ids).last_hidden_state  # right padding: causal rows need no mask
        # Project only the positions that predict target tokens (the prompts need no vocabulary logits).
        rows_idx = torch.tensor([i for i, (p, t) in enumerate(rows) for _ in t])
        pos_idx = torch.tensor([len(p) - 1 + j for p, t in rows for j in range(len(t))])
        targets = torch.tensor([tok for _, t in rows for tok in t])
        loss = torch.nn.functional.cross_entropy(model.lm_head(hidden[rows_idx, pos_idx]), targets)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return str(out_dir)


def ensure_tiny_corridor_model(length: int, history_window: int = 0, cache_dir: str | Path | None = None) -> Path:
    """The warm-started tiny model for corridors of ``length`` rooms, built once into the cache."""
    from actors.prompting import PromptSettings
    from pipeline.embedded_model import ensure_embedded_model

    root = Path(cache_dir or default_cache_dir()) / "models"
    model_dir = root / f"tiny-corridor-{length}-h{history_window}"
    if (model_dir / "model.safetensors").exists():
        return model_dir
    tmp = root / f".tmp-tiny-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    build_random_tiny(str(ensure_embedded_model(cache_dir)), tmp / "random")
    format_warm_start(str(tmp / "random"), tmp / "warm", length, PromptSettings(history_window=history_window))
    shutil.rmtree(model_dir, ignore_errors=True)
    (tmp / "warm").rename(model_dir)
    shutil.rmtree(tmp, ignore_errors=True)
    return model_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--length", type=int, default=3, help="rooms of the corridor it is warm-started on")
    parser.add_argument("--history-window", type=int, default=0)
    parser.add_argument("--cache-dir", default=None, help="cache folder (default: $MISE_CACHE or ~/.cache/mise-rl)")
    args = parser.parse_args()
    print(ensure_tiny_corridor_model(args.length, args.history_window, args.cache_dir))


if __name__ == "__main__":
    main()
