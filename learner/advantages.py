"""Advantages as plain functions over tensors (docs/mise.md, "Advantages and loss").

Episode level (GRPO): ``A_i = (R_i - mean_G) / (std_G + eps)`` over the G rollouts of one (task, variation).
Step level (GiGPO-shaped): the discounted return of the per-step rewards, normalised over the batch.
A step's advantage is ``A_episode + omega * A_step``.
"""

from __future__ import annotations

import torch


def group_advantages(returns: torch.Tensor, group_ids: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """(R_i - mean of its group) / (std of its group + eps); a group of one gets 0 (nothing to compare).

    ``std`` is the population std (divide by G), as in GRPO.
    """
    if returns.shape != group_ids.shape or returns.dim() != 1:
        raise ValueError(f"returns {tuple(returns.shape)} and group_ids {tuple(group_ids.shape)} must be equal 1-d shapes")
    returns = returns.to(torch.float64)
    _, inverse, counts = torch.unique(group_ids, return_inverse=True, return_counts=True)
    sums = torch.zeros(len(counts), dtype=torch.float64).index_add_(0, inverse, returns)
    means = sums / counts
    sq = torch.zeros(len(counts), dtype=torch.float64).index_add_(0, inverse, (returns - means[inverse]) ** 2)
    stds = (sq / counts).sqrt()
    advantages = (returns - means[inverse]) / (stds[inverse] + eps)
    advantages[counts[inverse] == 1] = 0.0
    return advantages.to(torch.float32)


def discounted_returns(rewards: torch.Tensor, gamma: float) -> torch.Tensor:
    """G_t = r_t + gamma * G_{t+1} over one episode's per-step rewards."""
    out = torch.zeros_like(rewards, dtype=torch.float64)
    running = 0.0
    for t in range(len(rewards) - 1, -1, -1):
        running = float(rewards[t]) + gamma * running
        out[t] = running
    return out.to(torch.float32)


def step_advantages(per_episode_rewards: list[torch.Tensor], gamma: float, eps: float = 1e-6) -> list[torch.Tensor]:
    """Discounted step returns of every episode, normalised together over the batch (zero mean, unit std)."""
    returns = [discounted_returns(r, gamma) for r in per_episode_rewards]
    flat = torch.cat(returns) if returns else torch.zeros(0)
    if flat.numel() < 2:
        return [torch.zeros_like(r) for r in returns]
    mean, std = flat.mean(), flat.std(unbiased=False)
    return [(r - mean) / (std + eps) for r in returns]


def combine(episode_advantage: torch.Tensor, per_step: list[torch.Tensor], omega: float) -> list[torch.Tensor]:
    """Per-step advantage of each episode: A_episode + omega * A_step."""
    return [episode_advantage[i] + omega * steps for i, steps in enumerate(per_step)]
