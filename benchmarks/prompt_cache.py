"""Benchmark: how many prompt tokens each prompt layout makes the engine compute, with a prefix cache.

    python -m benchmarks.prompt_cache                      # 16 TextWorld walkthroughs of the main job's games
    python -m benchmarks.prompt_cache --episodes 8 env.max_steps=20   # Hydra overrides last

The rollout's prompt is rebuilt every turn. With a sliding history window (``rollout.history_window``,
today's layout) the history part shifts each turn, so a prompt shares with the previous one only the
part before its history. This plays the env's expert walkthroughs (real env, no model: the same turns
for every layout) and encodes each turn's prompt under each layout with the model's chat template:
- ``window W``: the single user message with the last W turns (``rollout.history_window=W``);
- ``anchored W/J``: the same message, but the history starts at a multiple of J turns (it shows W to
  W + J - 1 turns) and so stays a stable prefix for J turns at a time (``rollout.history_jump=J``);
- ``transcript W/W`` and ``transcript B tok``: a multi-turn chat (goal and first observation, then each
  reply as an assistant message and each observation as a user message), append-only; the oldest turns
  go in one jump: from a multiple of W turns (it shows W to 2W - 1), or past B tokens (down to B/2).
Computed tokens are counted as vLLM's prefix cache would compute them: a prompt's leading full blocks
(``--block`` tokens each; vLLM's CPU backend uses 128 unless told, GPUs 16) that an earlier prompt or
reply of any episode already filled are read, not computed. The cache is taken as large enough to
hold them all (the default KV cache holds about 46k SmolLM2 tokens per GiB). Printed per layout: prompt
tokens, computed tokens, their ratio to today's, and how many earlier turns a prompt shows on average.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib

from actors.prompting import SYSTEM_PROMPT, PromptSettings, build_messages, encode_prompt
from benchmarks.step_quality import benchmark_config, distinct_game_specs
from envs import make_env
from envs.specs import prepare_env_assets
from pipeline.models import resolve_model_dir


def walkthrough_turns(cfg, specs) -> list[dict]:
    """Each spec's expert episode as the states a prompt is built from: goal, then per turn the
    observation, admissible commands and the command the expert took."""
    env = make_env(cfg.env, cfg.rollout)
    episodes = []
    try:
        for spec in specs:
            commands = env.expert_actions(spec.task, spec.variation, spec.split)  # it may play the game: first
            reset = env.reset(spec.task, spec.variation, spec.split)
            turns, observation, admissible = [], reset.observation, reset.info.get("admissible_actions")
            for command in commands:
                if env.done:
                    break
                result = env.step(command)
                turns.append({"observation": observation, "admissible": admissible, "action": command, "next": result.observation})
                observation, admissible = result.observation, result.info.get("admissible_actions")
            episodes.append({"goal": reset.goal, "turns": turns})
    finally:
        env.close()
    return episodes


def window_prompts(tokenizer, episode: dict, settings: PromptSettings, window: int, jump: int = 1) -> list[tuple[list[int], int]]:
    """(prompt ids, turns shown) per turn: the rollout's single-message layout (``rollout.history_window``
    = ``window``, ``rollout.history_jump`` = ``jump``)."""
    layout = dataclasses.replace(settings, history_window=window, history_jump=jump)
    out, history = [], []
    for turn in episode["turns"]:
        ids = encode_prompt(tokenizer, build_messages(episode["goal"], history, turn["observation"], turn["admissible"], layout))
        out.append((ids, len(layout.shown(history))))
        history.append((turn["action"], turn["next"]))
    return out


def _user_turn(observation: str, admissible, settings: PromptSettings) -> str:
    parts = [observation[: settings.max_observation_chars]]
    if settings.show_admissible and admissible:
        parts.append("Admissible actions: " + ", ".join(admissible))
    return "\n\n".join([*parts, "Your next action:"])


def _chat(goal: str, pairs: list[tuple[str, str]], now: str) -> list[dict]:
    """System, then each shown turn as a user and an assistant message, then the current user message;
    the goal leads the first user message shown."""
    body = [m for u, a in pairs for m in ({"role": "user", "content": u}, {"role": "assistant", "content": a})]
    body.append({"role": "user", "content": now})
    body[0] = {**body[0], "content": f"Goal: {goal}\n\n" + body[0]["content"]}
    return [{"role": "system", "content": SYSTEM_PROMPT}, *body]


def transcript_prompts(tokenizer, episode: dict, settings: PromptSettings, budget: int = 0, window: int = 0) -> list[tuple[list[int], int]]:
    """(prompt ids, turns shown) per turn: a multi-turn chat, append-only until the oldest turns go in
    one jump: past ``budget`` tokens (down to half of it), or, with ``window`` W, from a multiple of W
    turns (it shows W to 2W - 1 earlier turns)."""
    out, pairs, first = [], [], 0  # pairs: (user text, assistant text) of the turns played; first shown
    for turn in episode["turns"]:
        now = _user_turn(turn["observation"], turn["admissible"], settings)
        if window:
            first = (max(0, len(pairs) - window) // window) * window
        ids = encode_prompt(tokenizer, _chat(episode["goal"], pairs[first:], now))
        if budget and len(ids) > budget:
            while first < len(pairs) and len(ids) > budget // 2:
                first += 1
                ids = encode_prompt(tokenizer, _chat(episode["goal"], pairs[first:], now))
        out.append((ids, len(pairs) - first))
        pairs.append((now, turn["action"]))
    return out


def blocks(ids: list[int], size: int) -> list[str]:
    """The chained hashes of the full blocks of ``ids`` (a block is cached with everything before it)."""
    h, out = hashlib.sha1(), []
    for end in range(size, len(ids) + 1, size):
        h.update(str(ids[end - size : end]).encode())
        out.append(h.hexdigest())
    return out


def computed_tokens(prompts_per_episode: list[list[tuple[list[int], int]]], replies: list[list[list[int]]], block: int) -> int:
    """Prompt tokens not read from the prefix cache, episodes played one after another."""
    cache: set[str] = set()
    total = 0
    for prompts, episode_replies in zip(prompts_per_episode, replies, strict=True):
        for (ids, _), reply in zip(prompts, episode_replies, strict=True):
            hit = 0
            for digest in blocks(ids, block):
                if digest not in cache:
                    break
                hit += block
            total += len(ids) - hit
            cache.update(blocks(ids + reply, block))  # the reply's tokens are in the cache after it
    return total


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=16)
    parser.add_argument("--block", type=int, nargs="+", default=[128, 32, 16])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides (default experiment=textworld_debug)")
    args = parser.parse_args(argv)
    from transformers import AutoTokenizer

    _, cfg = benchmark_config(args.overrides)
    specs = distinct_game_specs(cfg, "train", args.episodes, args.seed, prefix="prompt")
    prepare_env_assets(cfg, specs)
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_dir(cfg))
    settings = PromptSettings.from_rollout(cfg.rollout)
    episodes = walkthrough_turns(cfg, specs)
    end = [tokenizer.eos_token_id]
    replies = [[tokenizer.encode(t["action"], add_special_tokens=False) + end for t in e["turns"]] for e in episodes]
    w, j = cfg.rollout.history_window, cfg.rollout.history_jump
    today = f"window {w}" if j == 1 else f"anchored {w}/{j}"  # the configured layout: the ratios' baseline
    layouts = {
        f"window {w}": [window_prompts(tokenizer, e, settings, w) for e in episodes],
        f"anchored {w}/4": [window_prompts(tokenizer, e, settings, w, jump=4) for e in episodes],
        f"anchored {w}/8": [window_prompts(tokenizer, e, settings, w, jump=8) for e in episodes],
        f"transcript {w}/{w}": [transcript_prompts(tokenizer, e, settings, window=w) for e in episodes],
        f"transcript {2 * w}/{2 * w}": [transcript_prompts(tokenizer, e, settings, window=2 * w) for e in episodes],
        "transcript 2048 tok": [transcript_prompts(tokenizer, e, settings, budget=2048) for e in episodes],
    }
    if today not in layouts:  # a jump the list above does not try
        layouts = {today: [window_prompts(tokenizer, e, settings, w, j) for e in episodes], **layouts}
    turns = sum(len(e["turns"]) for e in episodes)
    print(f"{len(episodes)} walkthroughs, {turns} turns ({cfg.env.name}: {', '.join(cfg.env.tasks)}); history_window={w}, history_jump={j}")
    header = f"{'layout':<20} {'turns shown':>11} {'prompt tok':>10} {'mean len':>8} " + " ".join(f"{f'computed@{b}':>12} {'ratio':>6}" for b in args.block)
    print(header)
    baseline = {b: computed_tokens(layouts[today], replies, b) for b in args.block}
    for name, prompts in layouts.items():
        flat = [p for episode in prompts for p in episode]
        prompt_tokens = sum(len(ids) for ids, _ in flat)
        shown = sum(n for _, n in flat) / len(flat)
        cells = []
        for b in args.block:
            computed = computed_tokens(prompts, replies, b)
            cells.append(f"{computed:>12} {computed / baseline[b]:>6.2f}")
        name = f"{name} (today)" if name == today else name
        print(f"{name:<20} {shown:>11.2f} {prompt_tokens:>10} {prompt_tokens / len(flat):>8.0f} " + " ".join(cells))


if __name__ == "__main__":
    main()
