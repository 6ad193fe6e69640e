"""The policy loss as a plain function over token tensors (docs/mise.md, "Advantages and loss").

Token-level clipped policy gradient against the stored sampling log-probs (PPO-clip, GRPO family),
with dual-clip truncation of the importance weight (Ye et al. 2020) and a KL penalty to the reference
policy (the base model: the LoRA adapter disabled), estimated per token with k3 (Schulman 2020):

    rho_t   = exp(log pi_theta(a_t) - log mu(a_t))                  mu = the policy that sampled a_t
    L_clip  = max(-A rho_t, -A clip(rho_t, 1 - eps, 1 + eps))
    L_t     = min(L_clip, -A c)  where A < 0                          (dual clip: rho is truncated at c)
    kl_t    = exp(ref_t - logp_t) - (ref_t - logp_t) - 1
    loss    = sum_t mask_t (L_t + beta kl_t) / sum_t mask_t
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class LossConfig:
    clip_eps: float = 0.2
    dual_clip: float = 3.0  # c > 1: cap on the importance weight for negative advantages
    kl_coef: float = 0.0  # beta


def policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    cfg: LossConfig,
    ref_logprobs: torch.Tensor | None = None,
    normaliser: float | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Loss over masked tokens, divided by ``normaliser`` (default: the mask's token count).

    All tensors share one shape (e.g. [batch, tokens]); advantages are per token.
    Returns (loss, stats) where stats are detached means over the masked tokens.
    """
    mask = mask.to(logprobs.dtype)
    tokens = mask.sum().clamp(min=1.0)
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - cfg.clip_eps, 1.0 + cfg.clip_eps)
    per_token = torch.maximum(unclipped, clipped)
    per_token = torch.where(advantages < 0, torch.minimum(per_token, -advantages * cfg.dual_clip), per_token)
    kl = torch.zeros_like(per_token)
    if ref_logprobs is not None and cfg.kl_coef > 0:
        delta = ref_logprobs - logprobs
        kl = torch.exp(delta) - delta - 1.0
        per_token = per_token + cfg.kl_coef * kl
    loss = (per_token * mask).sum() / (normaliser if normaliser is not None else tokens)
    with torch.no_grad():
        clip_frac = ((ratio - 1.0).abs() > cfg.clip_eps).to(mask.dtype)
        stats = {
            "ratio_mean": float((ratio * mask).sum() / tokens),
            "clip_frac": float((clip_frac * mask).sum() / tokens),
            "kl": float((kl * mask).sum() / tokens),
            "approx_kl_to_behaviour": float((-log_ratio * mask).sum() / tokens),
        }
    return loss, stats


def imitation_loss(logprobs: torch.Tensor, mask: torch.Tensor, normaliser: float | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """Negative log-likelihood of the masked (demonstrated) tokens: behaviour cloning, the warm start's
    objective. Divided by ``normaliser`` (default: the mask's token count), as ``policy_loss``."""
    mask = mask.to(logprobs.dtype)
    tokens = mask.sum().clamp(min=1.0)
    loss = -(logprobs * mask).sum() / (normaliser if normaliser is not None else tokens)
    return loss, {"nll": float(-(logprobs.detach() * mask).sum() / tokens)}


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log pi(target | context) for logits already aligned with their targets ([batch, n, vocab] and
    [batch, n]). Logits are divided by the sampling temperature, so the result is the distribution the
    rollout actually sampled from."""
    logits = logits.float()
    if temperature not in (0.0, 1.0):
        logits = logits / temperature
    return torch.log_softmax(logits, dim=-1).gather(-1, targets[..., None]).squeeze(-1)
