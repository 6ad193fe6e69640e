"""Helpers the tests share (fixtures live in conftest.py)."""

from __future__ import annotations

import torch

from core.adapter import AdapterWeights

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def random_adapter(model_dir: str, version: int, seed: int, rank: int = 8) -> AdapterWeights:
    """A LoRA adapter with non-zero random A and B (PEFT's init would leave B at zero)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    config = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=LORA_TARGETS, init_lora_weights=False)
    return AdapterWeights.from_peft_model(get_peft_model(base, config), version)


def corridor_prompt(tokenizer, env, settings) -> list[int]:
    from actors.prompting import build_messages

    messages = build_messages(env_goal(env), [], env._describe(), env.admissible_actions(), settings)
    return list(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)["input_ids"])


def env_goal(env) -> str:
    return f"Walk through the {len(env._exits)} rooms of the corridor and take the treasure in the last room."


def format_warm_start(
    model_dir: str, out_dir: str, length: int, settings, p_correct: float = 0.3, steps: int = 150, seed: int = 0
) -> str:
    """Supervised warm start of a random model on corridor prompts: the reply is the optimal action with
    probability ``p_correct``, otherwise an admissible action drawn uniformly, then end of turn. The
    result replies in the right format and reads the observation a little, so it wins sometimes; how
    much better it gets is left to RL."""
    import random

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
    return out_dir
