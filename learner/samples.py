"""Training samples from stored episodes: token ids as sampled, loss only on the action tokens.

Each step of an episode becomes one sample: ``prompt_ids + action_ids``, with the prompt (goal, history,
observation) as context and the action tokens carrying the loss, their stored sampling log-probs and the
step's advantage. Samples are packed into micro-batches under a token budget.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from core.episode import Episode
from learner.advantages import combine, group_advantages, step_advantages


@dataclass
class Sample:
    input_ids: list[int]
    num_prompt: int  # the first num_prompt tokens are context
    old_logprobs: list[float]  # one per action token
    advantage: float
    policy_version: int

    @property
    def num_tokens(self) -> int:
        return len(self.input_ids)


ReturnRow = tuple[object, float, list[float]]  # (group key, episode return, per-step rewards)


def return_rows(episodes: list[Episode]) -> list[ReturnRow]:
    """What advantages need from an episode; small enough to all-gather across learner ranks."""
    return [(e.group_key, e.env_return, [s.step_reward if s.step_reward is not None else s.env_reward for s in e.steps]) for e in episodes]


def step_advantages_for(rows: list[ReturnRow], omega: float, gamma: float) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Per-step advantages of every episode (A_episode + omega * A_step) and the episode advantages."""
    if not rows:
        return [], torch.zeros(0)
    keys = {k: i for i, k in enumerate(sorted({row[0] for row in rows}, key=str))}
    returns = torch.tensor([row[1] for row in rows], dtype=torch.float32)
    episode_adv = group_advantages(returns, torch.tensor([keys[row[0]] for row in rows], dtype=torch.long))
    rewards = [torch.tensor(row[2], dtype=torch.float32) for row in rows]
    per_step = step_advantages(rewards, gamma) if omega else [torch.zeros(len(r)) for r in rewards]
    return combine(episode_adv, per_step, omega), episode_adv


def samples_for(episodes: list[Episode], advantages: list[torch.Tensor]) -> list[Sample]:
    """One sample per step that generated tokens, and one per answer token of the evaluator that the
    reward stage attached (the calibration reward r_C, with its own advantage)."""
    steps = [
        Sample(step.prompt_ids + step.action_ids, len(step.prompt_ids), list(step.action_logprobs), float(adv), step.policy_version)
        for episode, advs in zip(episodes, advantages, strict=True)
        for step, adv in zip(episode.steps, advs.tolist(), strict=True)
        if step.action_ids
    ]
    answers = [
        Sample(a.prompt_ids + [a.token_id], len(a.prompt_ids), [a.logprob], a.advantage, a.policy_version)
        for episode in episodes
        for a in episode.answer_samples
    ]
    return steps + answers


def demonstration_samples(demonstrations: list[Episode]) -> list[Sample]:
    """One sample per demonstrated step, its action tokens the imitation target (no advantage)."""
    return [Sample(s.prompt_ids + s.action_ids, len(s.prompt_ids), [0.0] * len(s.action_ids), 0.0, s.policy_version) for e in demonstrations for s in e.steps]


def pack(samples: list[Sample], token_budget: int) -> list[list[Sample]]:
    """Micro-batches whose padded size (rows x longest row) stays within ``token_budget``: longest
    samples first, each micro-batch filled until the next sample would exceed the budget. A sample
    longer than the budget gets a micro-batch of its own."""
    bins: list[list[Sample]] = []
    for sample in sorted(samples, key=lambda s: s.num_tokens, reverse=True):
        if bins and (len(bins[-1]) + 1) * bins[-1][0].num_tokens <= token_budget:
            bins[-1].append(sample)
        else:
            bins.append([sample])
    return bins


def collate(samples: list[Sample], pad_id: int) -> dict[str, torch.Tensor]:
    """Left-padded tensors for one micro-batch, so that every row's action tokens sit at the end.

    Only the last ``keep`` positions need logits (the longest action + 1): ``targets`` and the per-token
    tensors are aligned with ``logits[:, -keep:-1]``; prompts cost no vocabulary projection.
    """
    width = max(s.num_tokens for s in samples)
    keep = max(len(s.old_logprobs) for s in samples) + 1
    ids = torch.full((len(samples), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(samples), width), dtype=torch.long)
    mask = torch.zeros((len(samples), keep - 1))
    old = torch.zeros((len(samples), keep - 1))
    adv = torch.zeros((len(samples), keep - 1))
    for i, s in enumerate(samples):
        n, a = s.num_tokens, len(s.old_logprobs)
        ids[i, width - n :] = torch.tensor(s.input_ids)
        attention[i, width - n :] = 1
        if a:
            mask[i, keep - 1 - a :] = 1.0
            old[i, keep - 1 - a :] = torch.tensor(s.old_logprobs)
            adv[i, keep - 1 - a :] = s.advantage
    positions = (attention.cumsum(-1) - 1).clamp(min=0)
    return {
        "input_ids": ids,
        "attention_mask": attention,
        "position_ids": positions,
        "targets": ids[:, width - keep + 1 :],
        "loss_mask": mask,
        "old_logprobs": old,
        "advantages": adv,
        "keep": torch.tensor(keep),
    }
