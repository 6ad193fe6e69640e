"""The MISE reward math with known answers (reward/mise.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from reward.mise import (
    RidgeCalibrator,
    auroc,
    brier_answer_advantages,
    brier_reward,
    brier_score,
    expected_calibration_error,
    fit_ridge,
    mi_rewards,
    self_eval_rewards,
    yes_probability,
)


def test_yes_no_normalisation():
    # P(Yes) = 0.3, P(No) = 0.1 over the full vocabulary: normalised 0.75.
    assert yes_probability(math.log(0.3), math.log(0.1)) == pytest.approx(0.75)
    assert yes_probability(math.log(0.2), math.log(0.2)) == pytest.approx(0.5)
    # Far apart log-probs neither overflow nor lose the answer.
    assert yes_probability(-1.0, -900.0) == pytest.approx(1.0)
    assert yes_probability(-900.0, -1.0) == pytest.approx(0.0, abs=1e-300)
    assert math.isnan(yes_probability(float("nan"), -1.0))  # caught downstream as non-finite


def test_self_eval_reward_is_log_p_clipped_at_log_eps():
    assert self_eval_rewards([1.0, 0.5, 1e-9, 0.0], eps=1e-3) == pytest.approx([0.0, math.log(0.5), math.log(1e-3), math.log(1e-3)])


def test_mi_term_on_a_hand_built_distribution():
    """Two steps. Step 1: the hindsight makes both action tokens twice as likely: MI = 2 log 2.
    Step 2: the hindsight halves the one token's probability: MI = -log 2."""
    with_h = [[math.log(0.5), math.log(0.8)], [math.log(0.1)]]
    without_h = [[math.log(0.25), math.log(0.4)], [math.log(0.2)]]
    assert mi_rewards(with_h, without_h) == pytest.approx([2 * math.log(2), -math.log(2)])
    with pytest.raises(ValueError, match="2 steps scored with hindsight but 1 without"):
        mi_rewards(with_h, without_h[:1])


def test_brier_reward():
    assert brier_reward(0.8, 1.0) == pytest.approx(-0.04)
    assert brier_reward(0.8, 0.0) == pytest.approx(-0.64)
    assert brier_reward(1.0, 1.0) == 0.0


@pytest.mark.parametrize("q_logit, z", [(0.3, 1.0), (-1.2, 1.0), (2.0, 0.0), (0.0, 0.0)])
def test_answer_token_advantages_give_the_exact_brier_gradient(q_logit, z):
    """A PG step with the two answer tokens' advantages equals gradient ascent on -(q - z)^2."""
    torch.manual_seed(0)
    logits = torch.randn(50, dtype=torch.float64)
    logits[3], logits[7] = logits[7] + q_logit, logits[7]  # token 3 = Yes, token 7 = No
    logits.requires_grad_(True)
    logprobs = torch.log_softmax(logits, -1)
    q = torch.sigmoid(logprobs[3] - logprobs[7])
    (brier_grad,) = torch.autograd.grad(-((q - z) ** 2), logits, retain_graph=True)
    a_yes, a_no = brier_answer_advantages(q.item(), z, weight=1.0)
    (pg_grad,) = torch.autograd.grad(a_yes * logprobs[3] + a_no * logprobs[7], logits)
    assert torch.allclose(pg_grad, brier_grad, atol=1e-12)
    assert a_yes * (z - q.item()) >= 0  # the Yes token is pushed toward the true outcome
    assert brier_answer_advantages(q.item(), z, weight=2.0)[0] == pytest.approx(2 * a_yes)


def test_ridge_recovers_a_planted_affine_map():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 2)) * [3.0, 0.5]
    y = 0.2 * x[:, 0] - 0.6 * x[:, 1] + 0.35
    fit = fit_ridge(x, y, alpha=1e-6)
    assert fit.weights == pytest.approx((0.2, -0.6), abs=1e-6)
    assert fit.bias == pytest.approx(0.35, abs=1e-6)
    assert fit.r2 == pytest.approx(1.0)
    # Per-step rewards of an episode sum to the predicted outcome.
    steps = [[1.0, 0.5], [-2.0, 0.1], [0.3, 0.0]]
    assert sum(fit.step_rewards(steps)) == pytest.approx(fit.predict(np.sum(steps, axis=0)))
    noisy = y + rng.normal(scale=0.5, size=len(y))
    assert 0.0 < fit_ridge(x, noisy, alpha=1.0).r2 < 0.9  # a noisy outcome is not fitted perfectly


def test_ridge_penalty_shrinks_the_weights():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(30, 2))
    y = x @ [1.0, -1.0] + 0.5
    assert np.linalg.norm(fit_ridge(x, y, alpha=100.0).weights) < 0.5 * np.linalg.norm(fit_ridge(x, y, alpha=1e-6).weights)


def test_calibrator_fits_only_what_it_was_given_per_key_and_window():
    calibrator = RidgeCalibrator(window=4, alpha=1e-6, min_episodes=3)
    for x in (0.0, 1.0):
        calibrator.add("corridor", [x], 2 * x)
    assert calibrator.maps() == {}  # below min_episodes: no map yet
    calibrator.add("corridor", [2.0], 4.0)
    assert calibrator.maps()["corridor"].weights == pytest.approx((2.0,))
    for x in (10.0, 11.0, 12.0, 13.0):  # a different relation pushes the old rows out of the window
        calibrator.add("corridor", [x], -x)
    fit = calibrator.maps()["corridor"]
    assert fit.num_episodes == 4 and fit.weights == pytest.approx((-1.0,))
    calibrator.add("textworld", [0.0], 0.0)
    assert set(calibrator.maps()) == {"corridor"}
    restored = RidgeCalibrator(window=4, alpha=1e-6, min_episodes=3)
    restored.load_state(calibrator.state())
    assert restored.maps() == calibrator.maps()
    with pytest.raises(ValueError, match="window >= min_episodes >= 2"):
        RidgeCalibrator(window=2, alpha=1.0, min_episodes=3)


def test_self_evaluation_quality_metrics():
    assert auroc([0.9, 0.8, 0.3, 0.1], [1, 1, 0, 0]) == 1.0
    assert auroc([0.1, 0.2, 0.8, 0.9], [1, 1, 0, 0]) == 0.0
    assert auroc([0.5, 0.5], [1, 0]) == 0.5
    assert auroc([0.5, 0.7], [1, 1]) is None
    # Bins: 0.15 (label 0) alone; 0.85, 0.85 (labels 1, 0) together: ECE = 1/3*0.15 + 2/3*|0.5-0.85|.
    assert expected_calibration_error([0.15, 0.85, 0.85], [0, 1, 0]) == pytest.approx(0.15 / 3 + 2 / 3 * 0.35)
    assert expected_calibration_error([1.0, 0.0], [1, 0]) == 0.0  # p = 1.0 falls in the last bin
    assert brier_score([1.0, 0.5], [1, 0]) == pytest.approx(0.125)


def test_information_gain_is_the_change_of_the_judged_completion_probability():
    from reward.mise import information_gain

    assert information_gain([0.2, 0.5, 0.4, 0.9]) == pytest.approx([0.3, -0.1, 0.5])  # q_0..q_3 for 3 steps
    assert sum(information_gain([0.2, 0.5, 0.4, 0.9])) == pytest.approx(0.9 - 0.2)  # telescopes to q_T - q_0


def test_step_quality_scores_each_signal_against_the_env_labels():
    """A judge whose P(Yes) is high exactly on the steps the env labels progress has step AUROC 1; its
    MI term, here inverted, has AUROC 0; both are correlated with the score change as constructed."""
    from conf.schema import RewardConfig
    from core.episode import Episode, SelfEvaluation, Step
    from reward.stage import RewardStage, _BatchRecord

    stage = RewardStage(RewardConfig(mode="prm"))
    record = _BatchRecord({})
    for e, progress in enumerate([[True, False, True], [False, False, True, True]]):
        episode = Episode(f"e{e}", "corridor", "corridor-2", 0, "train", "g", "o", status="finished", success=True, score=1.0)
        for p in progress:
            episode.steps.append(Step([1, 2], [3], [-1.0], "r", "go east", None, "o", 0.0, 0, progress=p, score_delta=0.5 if p else 0.0))
        episode.self_evaluation = SelfEvaluation(
            0, [0.9 if p else 0.1 for p in progress], [-1.0 if p else 1.0 for p in progress], 0.8, [1], [5, 6], [-0.2, -1.8]
        )
        stage.score(episode, record)
    metrics = record.metrics()
    assert metrics["step_quality/auroc_r_se"] == 1.0 and metrics["step_quality/auroc_dense"] == 1.0
    assert metrics["step_quality/auroc_r_mi"] == 0.0
    assert metrics["step_quality/corr_r_se_score_delta"] == pytest.approx(1.0) and metrics["step_quality/corr_r_mi_score_delta"] == pytest.approx(-1.0)
    assert metrics["step_quality/progress_fraction"] == pytest.approx(4 / 7)


def test_the_calibration_fits_the_env_return_not_the_game_score():
    # env.reward=success: a failed episode with a partial game score returns 0, and the ridge map is fit
    # (and its held-out R^2 measured) on that return, the reward the run trains on.
    from conf.schema import RewardConfig
    from core.episode import Episode, SelfEvaluation, Step
    from reward.stage import RewardStage, _BatchRecord

    episode = Episode("e", "corridor", "t", 0, "train", "g", "o", score=2 / 3, success=False, status="finished")
    for reward in (0.0, 0.0):
        episode.steps.append(Step([1], [2], [-0.1], "r", "a", None, "o", reward, 0))
    judgement = SelfEvaluation(0, [0.5, 0.5], [0.1, 0.2], 0.4, [1], [3, 4], [-0.9, -0.5])
    episode.self_evaluation = judgement
    batch = _BatchRecord({})
    RewardStage(RewardConfig(mode="mise")).score(episode, batch)
    assert [outcome for _, _, outcome in batch.fit_rows] == [0.0]
