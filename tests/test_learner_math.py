"""Advantages, the policy loss and the training batches: small tensors with answers worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from core.episode import Episode, Step
from learner.advantages import discounted_returns, group_advantages, step_advantages
from learner.losses import LossConfig, policy_loss, token_logprobs
from learner.samples import Sample, collate, pack, return_rows, samples_for, step_advantages_for


def test_group_advantages_normalise_within_each_group():
    returns = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.5, 0.7, 0.7])
    groups = torch.tensor([0, 0, 1, 1, 2, 3, 3])
    adv = group_advantages(returns, groups, eps=0.0 + 1e-12)
    # groups 0 and 1: mean 0.5, population std 0.5 -> +-1; a group of one -> 0; equal returns -> 0
    assert adv.tolist() == pytest.approx([1.0, -1.0, -1.0, 1.0, 0.0, 0.0, 0.0], abs=1e-6)


def test_group_advantages_reject_mismatched_shapes():
    with pytest.raises(ValueError, match="equal 1-d shapes"):
        group_advantages(torch.zeros(3), torch.zeros(2))


def test_discounted_returns():
    assert discounted_returns(torch.tensor([0.0, 0.0, 1.0]), 0.5).tolist() == [0.25, 0.5, 1.0]
    assert discounted_returns(torch.tensor([1.0, 2.0]), 1.0).tolist() == [3.0, 2.0]


def test_step_advantages_are_normalised_over_the_batch():
    # step returns (gamma 1): [2, 2] and [1]; mean 5/3, population std sqrt(2/9)
    flat = torch.cat(step_advantages([torch.tensor([0.0, 2.0]), torch.tensor([1.0])], gamma=1.0))
    std = math.sqrt(2 / 9)
    assert flat.tolist() == pytest.approx([(2 - 5 / 3) / std, (2 - 5 / 3) / std, (1 - 5 / 3) / std], rel=1e-4)


def ones(*values):
    return torch.tensor([list(values)])


def test_policy_loss_on_policy_is_minus_the_advantage():
    lp = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    loss, stats = policy_loss(lp, lp.detach(), ones(2.0, 2.0), ones(1.0, 1.0), LossConfig())
    assert loss.item() == pytest.approx(-2.0) and stats["ratio_mean"] == pytest.approx(1.0)
    loss.backward()
    assert lp.grad[0].tolist() == pytest.approx([-1.0, -1.0])  # -A * ratio / tokens


@pytest.mark.parametrize(
    "ratio, advantage, expected",
    [
        (1.5, 1.0, -1.2),  # positive advantage: clipped at 1 + eps
        (0.5, 1.0, -0.5),  # below the clip range with A > 0: the unclipped term is larger
        (1.5, -1.0, 1.5),  # negative advantage: pessimistic max keeps the unclipped 1.5
        (5.0, -1.0, 3.0),  # dual clip: the importance weight is truncated at c = 3
    ],
)
def test_policy_loss_clipping(ratio, advantage, expected):
    old = torch.tensor([[-1.0]])
    loss, _ = policy_loss(old + math.log(ratio), old, ones(advantage), ones(1.0), LossConfig(clip_eps=0.2, dual_clip=3.0))
    assert float(loss) == pytest.approx(expected, rel=1e-5)


def test_policy_loss_masks_tokens_and_adds_k3_kl():
    lp = torch.tensor([[-1.0, -1.0, -5.0]])
    ref = torch.tensor([[-1.0, -1.5, 0.0]])
    mask = ones(1.0, 1.0, 0.0)
    loss, stats = policy_loss(lp, lp, ones(0.0, 0.0, 9.0), mask, LossConfig(kl_coef=0.5), ref_logprobs=ref)
    kl = math.exp(-0.5) + 0.5 - 1  # second token; the first has ref == logp; the third is masked
    assert float(loss) == pytest.approx(0.5 * kl / 2, rel=1e-5) and stats["kl"] == pytest.approx(kl / 2, rel=1e-5)


def test_token_logprobs_with_temperature():
    logits = torch.log(torch.tensor([[[0.5, 0.25, 0.25], [0.1, 0.1, 0.8]]]))
    targets = torch.tensor([[1, 2]])
    assert token_logprobs(logits, targets)[0].tolist() == pytest.approx([math.log(0.25), math.log(0.8)], rel=1e-5)
    hot = token_logprobs(logits, targets, temperature=2.0)[0, 0]
    weights = torch.tensor([0.5, 0.25, 0.25]) ** 0.5
    assert float(hot) == pytest.approx(math.log(weights[1] / weights.sum()), rel=1e-5)


def make_episode(task, variation, score, steps):
    ep = Episode("e", "corridor", task, variation, "train", "g", "o", score=score, success=score == 1.0, status="finished")
    for prompt, action, reward in steps:
        ep.steps.append(Step(prompt, action, [-0.1] * len(action), "r", "a", None, "o", reward, 0))
    return ep


def test_samples_carry_the_episode_advantage_on_action_tokens_only():
    eps = [make_episode("t", 0, 1.0, [([1, 2, 3], [4, 5], 0.0), ([1, 2], [6], 1.0)]), make_episode("t", 0, 0.0, [([7], [8], 0.0), ([9], [], 0.0)])]
    advantages, episode_adv = step_advantages_for(return_rows(eps), omega=0.0, gamma=1.0)
    assert episode_adv.tolist() == pytest.approx([1.0, -1.0], abs=1e-5)
    samples = samples_for(eps, advantages)
    assert [s.input_ids for s in samples] == [[1, 2, 3, 4, 5], [1, 2, 6], [7, 8]]  # the empty action is skipped
    assert [round(s.advantage, 4) for s in samples] == [1.0, 1.0, -1.0]
    batch = collate(samples[:2], pad_id=0)
    assert batch["input_ids"].tolist() == [[1, 2, 3, 4, 5], [0, 0, 1, 2, 6]]  # left padded
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 4], [0, 0, 0, 1, 2]]
    # keep = longest action + 1 = 3 logits (positions 2..4); positions 2, 3 predict the targets 4, 5
    assert int(batch["keep"]) == 3 and batch["targets"].tolist() == [[4, 5], [2, 6]]
    assert batch["loss_mask"].tolist() == [[1, 1], [0, 1]]
    assert batch["old_logprobs"][0].tolist() == pytest.approx([-0.1, -0.1])
    assert batch["advantages"][1].tolist() == pytest.approx([0.0, 1.0], abs=1e-5)


def test_step_level_term_adds_omega_times_normalised_step_return():
    eps = [make_episode("t", 0, 1.0, [([1], [2], 0.0), ([1], [3], 1.0)]), make_episode("t", 0, 0.0, [([1], [2], 0.0)])]
    with_steps, episode_adv = step_advantages_for(return_rows(eps), omega=0.5, gamma=1.0)
    # step returns [1, 1] and [0]: mean 2/3, std sqrt(2/9)
    z_hi, z_lo = (1 - 2 / 3) / math.sqrt(2 / 9), (0 - 2 / 3) / math.sqrt(2 / 9)
    assert with_steps[0].tolist() == pytest.approx([1 + 0.5 * z_hi] * 2, rel=1e-4)
    assert with_steps[1].tolist() == pytest.approx([-1 + 0.5 * z_lo], rel=1e-4)


def test_pack_keeps_each_micro_batch_within_the_token_budget():
    samples = [Sample([0] * n, 1, [0.0] * (n - 1), 0.0, 0) for n in (10, 9, 8, 3, 2, 2, 30)]
    bins = pack(samples, 20)
    assert [[s.num_tokens for s in b] for b in bins] == [[30], [10, 9], [8, 3], [2, 2]]
    assert all(len(b) * b[0].num_tokens <= 20 for b in bins[1:])  # only the over-long sample exceeds it


def test_the_episode_return_is_the_env_reward_not_the_game_score():
    # env.reward=success: no step paid anything in two failed episodes of one group, though the game
    # gave them partial scores (1 and 2 of 3 points). Their return is 0 alike: no advantage.
    failed = [make_episode("t", 0, 0.0, [([1], [2], 0.0), ([1], [3], 0.0)]) for _ in range(2)]
    failed[0].score, failed[1].score = 1 / 3, 2 / 3
    won = make_episode("t", 1, 1.0, [([1], [2], 0.0), ([1], [3], 1.0)])
    lost = make_episode("t", 1, 0.0, [([1], [2], 0.0)])
    lost.score = 2 / 3
    assert [row[1] for row in return_rows(failed + [won, lost])] == [0.0, 0.0, 1.0, 0.0]
    _, episode_adv = step_advantages_for(return_rows(failed + [won, lost]), omega=0.0, gamma=1.0)
    assert episode_adv.tolist() == pytest.approx([0.0, 0.0, 1.0, -1.0], abs=1e-5)
    # env.reward=score: the steps pay the score's changes, and the return is the score again
    scored = make_episode("t", 2, 2 / 3, [([1], [2], 1 / 3), ([1], [3], 1 / 3)])
    assert return_rows([scored])[0][1] == pytest.approx(2 / 3)
