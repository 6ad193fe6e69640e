"""The MISE reward math as plain functions (docs/mise.md); the reward stage wires them to the evaluator.

Dense signals per step t of an episode with outcome R (in [0, 1]) and completion z (0 or 1):
- self-evaluation ("PRM"):   r_SE_t = log max(p_t, eps),  p_t = P(Yes) / (P(Yes) + P(No))
- mutual information:        r_MI_t = log pi(a_t | s_t, h) - log pi(a_t | s_t)
- calibration reward:        r_C = -(q - z)^2 (Brier) on the evaluator's outcome answer q
Reward used: r_t = env_reward_t + lambda * dense_t, where dense_t is r_SE_t (``prm``) or the ridge
calibration map applied to (r_SE_t, r_MI_t) (``mise``); the env rewards of an episode sum to R.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


def yes_probability(logprob_yes: float, logprob_no: float) -> float:
    """P(Yes) / (P(Yes) + P(No)) from the two full-vocabulary log-probs (a logistic of their difference)."""
    diff = logprob_no - logprob_yes
    if diff > 0:
        e = math.exp(-diff)
        return e / (1.0 + e)
    return 1.0 / (1.0 + math.exp(diff))


def self_eval_rewards(step_yes: Sequence[float], eps: float) -> list[float]:
    """r_SE_t = log p_t, clipped below at log eps."""
    floor = math.log(eps)
    return [max(math.log(p) if p > 0 else floor, floor) for p in step_yes]


def mi_rewards(with_hindsight: Sequence[Sequence[float]], without_hindsight: Sequence[Sequence[float]]) -> list[float]:
    """r_MI_t = log pi(a_t | s_t, h) - log pi(a_t | s_t): each action's token log-probs summed, per step."""
    if len(with_hindsight) != len(without_hindsight):
        raise ValueError(f"{len(with_hindsight)} steps scored with hindsight but {len(without_hindsight)} without")
    return [sum(w) - sum(wo) for w, wo in zip(with_hindsight, without_hindsight)]


def brier_reward(q: float, z: float) -> float:
    """r_C = -(q - z)^2."""
    return -((q - z) ** 2)


def brier_answer_advantages(q: float, z: float, weight: float) -> tuple[float, float]:
    """Advantages for the Yes and No answer tokens whose policy-gradient step is the ascent step on r_C.

    q = sigmoid(l_yes - l_no) with l the answer tokens' log-probs, so
    d r_C / d l_yes = -2 (q - z) q (1 - q) = -d r_C / d l_no. A token-level PG loss -A * ratio has the
    gradient -A * d l at ratio 1: these advantages make it the exact Brier gradient (times ``weight``).
    """
    slope = -2.0 * (q - z) * q * (1.0 - q) * weight
    return slope, -slope


# --- calibration: a running ridge fit of outcomes on the per-episode sums of the dense signals ---------


@dataclass(frozen=True)
class CalibrationMap:
    """R ~ weights . x + bias for the per-episode feature sums x; per step: weights . x_t + bias / T."""

    weights: tuple[float, ...]
    bias: float
    r2: float | None  # on the window it was fitted on; None when the outcomes there had no spread
    num_episodes: int

    def step_rewards(self, features: Sequence[Sequence[float]]) -> list[float]:
        """Calibrated dense reward of each step; over the episode they sum to the predicted outcome."""
        if not features:
            return []
        share = self.bias / len(features)
        return [float(np.dot(self.weights, x)) + share for x in features]

    def predict(self, episode_features: Sequence[float]) -> float:
        return float(np.dot(self.weights, episode_features)) + self.bias


def fit_ridge(features: np.ndarray, outcomes: np.ndarray, alpha: float) -> CalibrationMap:
    """Ridge regression with an unpenalised intercept (centre, solve (Xc'Xc + alpha I) w = Xc'yc)."""
    if features.ndim != 2 or len(features) != len(outcomes) or len(outcomes) == 0:
        raise ValueError(f"ridge fit needs an (n, k) feature matrix and n outcomes, got {features.shape} and {outcomes.shape}")
    x_mean, y_mean = features.mean(axis=0), outcomes.mean()
    xc, yc = features - x_mean, outcomes - y_mean
    weights = np.linalg.solve(xc.T @ xc + alpha * np.eye(features.shape[1]), xc.T @ yc)
    bias = float(y_mean - x_mean @ weights)
    return CalibrationMap(tuple(float(w) for w in weights), bias, r_squared(features @ weights + bias, outcomes), len(outcomes))


def r_squared(predicted: np.ndarray, actual: np.ndarray) -> float | None:
    total = float(((actual - actual.mean()) ** 2).sum())
    if total == 0.0:
        return None
    return 1.0 - float(((actual - predicted) ** 2).sum()) / total


class RidgeCalibrator:
    """Windows of (features, outcome) per key (env, or env and task); ``maps()`` fits each window.

    The reward stage takes the maps before it scores a batch and adds the batch afterwards, so a batch
    is never scored with a fit that saw it. A key with fewer than ``min_episodes`` has no map yet.
    """

    def __init__(self, window: int, alpha: float, min_episodes: int) -> None:
        if window < min_episodes or min_episodes < 2:
            raise ValueError(f"calibration needs window >= min_episodes >= 2, got window={window}, min_episodes={min_episodes}")
        self.window, self.alpha, self.min_episodes = window, alpha, min_episodes
        self.history: dict[str, deque[tuple[tuple[float, ...], float]]] = {}

    def add(self, key: str, features: Sequence[float], outcome: float) -> None:
        self.history.setdefault(key, deque(maxlen=self.window)).append((tuple(features), float(outcome)))

    def maps(self) -> dict[str, CalibrationMap]:
        out = {}
        for key, rows in self.history.items():
            if len(rows) >= self.min_episodes:
                x = np.array([r[0] for r in rows], dtype=np.float64)
                y = np.array([r[1] for r in rows], dtype=np.float64)
                out[key] = fit_ridge(x, y, self.alpha)
        return out

    def state(self) -> dict[str, list]:
        return {key: [list(r[0]) + [r[1]] for r in rows] for key, rows in self.history.items()}

    def load_state(self, state: dict[str, list]) -> None:
        self.history = {k: deque(((tuple(r[:-1]), r[-1]) for r in rows), maxlen=self.window) for k, rows in state.items()}


# --- self-evaluation quality against ground truth ----------------------------------------------------


def information_gain(progress_yes: Sequence[float]) -> list[float]:
    """r_IG_t = q_{t+1} - q_t: how much step t raised the evaluator's P(the task will be completed),
    judged without hindsight (``progress_yes`` holds q_0..q_T, one more than there are steps)."""
    return [after - before for before, after in zip(progress_yes, progress_yes[1:])]


def correlation(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Pearson's r; None with fewer than two points or a constant side."""
    if len(x) < 2:
        return None
    a, b = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if a.std() == 0 or b.std() == 0:
        return None
    return float(np.corrcoef(a, b)[0, 1])


def auroc(scores: Sequence[float], labels: Sequence[int]) -> float | None:
    """Probability that a positive outranks a negative (ties count half); None without both classes."""
    pos = [s for s, y in zip(scores, labels) if y]
    neg = [s for s, y in zip(scores, labels) if not y]
    if not pos or not neg:
        return None
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def step_label_quality(rows: Sequence[tuple[float, bool | None, float]]) -> tuple[float | None, float | None]:
    """How well a per-step signal points at the steps that helped, from (value, progress, score_delta)
    rows: its AUROC against the env's progress label (rows without a label left out) and its Pearson
    correlation with the score change. Either is None where it is undefined."""
    labelled = [(v, int(y)) for v, y, _ in rows if y is not None]
    score = auroc([v for v, _ in labelled], [y for _, y in labelled])
    return score, correlation([v for v, _, _ in rows], [d for _, _, d in rows])


def expected_calibration_error(probabilities: Sequence[float], labels: Sequence[int], bins: int = 10) -> float | None:
    """Sum over equal-width bins of (bin share) * |mean label - mean probability|."""
    if not probabilities:
        return None
    p, y = np.asarray(probabilities, dtype=np.float64), np.asarray(labels, dtype=np.float64)
    index = np.minimum((p * bins).astype(int), bins - 1)
    error = 0.0
    for b in range(bins):
        members = index == b
        if members.any():
            error += members.mean() * abs(y[members].mean() - p[members].mean())
    return float(error)


def brier_score(probabilities: Sequence[float], labels: Sequence[int]) -> float | None:
    if not probabilities:
        return None
    return float(np.mean([(p - y) ** 2 for p, y in zip(probabilities, labels)]))
