"""The reward stage: a consumer between the rollout side and the learner queue (docs/mise.md, "The
reward the learner sees").

One ``consume`` call is one learner step's batch: it reads finished episodes from a queue until the end
marker (``None``), sends them in batches to the evaluator pool (evaluator actors, each with its own
engine), turns the judgements into per-step rewards and puts the episodes into the learner queue.
``env`` mode passes the environment's rewards through unchanged. It plays nothing: rollouts are the
rollout coordinator's (``actors.coordinator``).

- The stage holds only the calibration state, and the caller may hand it in with each call (the driver
  does, and keeps the state each call returns): a stage that Ray restarts goes on with the same maps.
  The ridge maps are fitted before a batch is scored, and the batch joins the fit's window only afterwards.
- The evaluator actors, and the policy version they judge with, are arguments of each call, never
  state of the stage. (Ray would keep actor handles given to the constructor in the object store to
  restart the stage with, and warns that a restart fails once they go out of scope: ray issue 53727.)
- An evaluator call that fails (its actor died) or runs past ``reward.timeout_s`` degrades its episodes
  to env-only reward: counted, logged with the reason, never blocking the pipeline. Ray restarts a dead
  evaluator (``reward.max_restarts``) and it catches up to the given adapter version on its next call.
  An evaluator whose engine fails the swap check (``AdapterMismatch``) stops the run instead: it would
  degrade every batch from then on.
- Each call returns how many episodes it scored and degraded; the run's one ledger is the driver's.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import ray

from conf.schema import RewardConfig
from core.adapter import AdapterMismatch, Published
from core.episode import AnswerSample, Episode, SelfEvaluation
from reward.hindsight import HindsightSettings
from reward.mise import (
    RidgeCalibrator,
    auroc,
    brier_answer_advantages,
    brier_reward,
    brier_score,
    expected_calibration_error,
    information_gain,
    r_squared,
    self_eval_rewards,
    step_label_quality,
)

log = logging.getLogger(__name__)


def hindsight_settings(cfg: RewardConfig) -> HindsightSettings:
    """The prompts of the config; a null prompt keeps the built-in one."""
    overrides = {
        k: getattr(cfg, k)
        for k in ("system_prompt", "step_question", "outcome_question", "hindsight_header", "progress_question")
        if getattr(cfg, k) is not None
    }
    return HindsightSettings(max_observation_chars=cfg.max_observation_chars, **overrides)


def answer_samples(judgement: SelfEvaluation, z: float, weight: float) -> list[AnswerSample]:
    """The Yes and No tokens of the outcome answer, with advantages that ascend r_C = -(q - z)^2."""
    advantages = brier_answer_advantages(judgement.outcome_yes, z, weight)
    return [
        AnswerSample(judgement.outcome_prompt_ids, token, logprob, advantage, judgement.evaluator_version)
        for token, logprob, advantage in zip(judgement.answer_ids, judgement.answer_logprobs, advantages)
    ]


class RewardStage:
    def __init__(self, cfg: RewardConfig) -> None:
        self.cfg = cfg
        self.calibrator = RidgeCalibrator(cfg.calibration_window, cfg.calibration_alpha, cfg.calibration_min_episodes)
        self._next_evaluator = 0

    def consume(self, episode_queue, learner_queue, evaluators: list, adapter: Published | None = None, calibration: dict | None = None) -> dict:
        """``forward`` the episodes of ``episode_queue`` up to its end marker (``None``)."""
        return self.forward(_until_end(episode_queue), learner_queue, evaluators, adapter, calibration)

    def forward(self, episodes, learner_queue, evaluators: list, adapter: Published | None = None, calibration: dict | None = None) -> dict:
        """Score the finished ones of ``episodes`` (an iterable: scoring overlaps their arrival) into the
        learner queue, judged by ``evaluators`` (evaluator actors; none in ``env`` mode) at policy
        version ``adapter``, in turn. ``calibration`` (a
        ``state_dict``) replaces the calibration state first. Returns ``queued``, ``scored`` and
        ``degraded`` (counts), ``self_eval`` ((q, z) per judged episode), ``calibration`` (the state
        after this batch) and the batch's reward metrics."""
        if self.cfg.mode != "env" and not evaluators:
            raise ValueError(f"reward.mode={self.cfg.mode!r} needs at least one evaluator actor (reward.num_actors >= 1)")
        if calibration is not None:
            self.load_state_dict(calibration)
        batch = _BatchRecord(self.calibrator.maps() if self.cfg.mode != "env" else {})
        pending: dict[ray.ObjectRef, tuple[list[Episode], float]] = {}
        waiting: list[Episode] = []
        for episode in episodes:
            if episode.status != "finished":
                continue
            if self.cfg.mode == "env":
                self._forward(episode, None, batch, learner_queue)
                continue
            waiting.append(episode)
            if len(waiting) >= self.cfg.batch_episodes:
                pending[self._submit(evaluators, waiting, adapter)] = (waiting, time.monotonic())
                waiting = []
            self._collect(pending, batch, learner_queue, block=False)
        if waiting:
            pending[self._submit(evaluators, waiting, adapter)] = (waiting, time.monotonic())
        while pending:
            self._collect(pending, batch, learner_queue, block=True)
        for key, features, outcome in batch.fit_rows:
            self.calibrator.add(key, features, outcome)
        return {
            "queued": batch.forwarded,
            "scored": batch.forwarded,
            "degraded": batch.degraded,
            "self_eval": batch.judged(),
            "calibration": self.state_dict(),
            **batch.metrics(),
        }

    def _submit(self, evaluators: list, episodes: list[Episode], adapter: Published | None) -> ray.ObjectRef:
        evaluator = evaluators[self._next_evaluator % len(evaluators)]
        self._next_evaluator += 1
        return evaluator.evaluate.remote(episodes, adapter)

    def _collect(self, pending: dict, batch: _BatchRecord, learner_queue, block: bool) -> None:
        """Forward every finished evaluator call; with ``block``, wait for one (or its deadline)."""
        timeout = 0.0
        if block:
            oldest = min(started for _, started in pending.values())
            timeout = max(0.0, oldest + self.cfg.timeout_s - time.monotonic())
        ready, _ = ray.wait(list(pending), num_returns=1 if block else len(pending), timeout=timeout)
        for ref in ready:
            episodes, _ = pending.pop(ref)
            try:
                judgements, tokens = ray.get(ref)
            except AdapterMismatch:  # an evaluator that cannot serve the policy would degrade every batch
                raise
            except Exception as error:  # the actor died or raised: these episodes keep their env reward
                reason = f"evaluator failed: {type(error).__name__}: {str(error).splitlines()[0][:200]}"
                for episode in episodes:
                    self._forward(episode, reason, batch, learner_queue)
                continue
            batch.pool_tokens += tokens
            for episode, judgement in zip(episodes, judgements, strict=True):
                if isinstance(judgement, str):
                    self._forward(episode, judgement, batch, learner_queue)
                else:
                    episode.self_evaluation = judgement
                    self._forward(episode, None, batch, learner_queue)
        now = time.monotonic()
        for ref in [r for r, (_, started) in pending.items() if now - started >= self.cfg.timeout_s]:
            episodes, _ = pending.pop(ref)
            ray.cancel(ref)
            for episode in episodes:
                self._forward(episode, f"evaluator call timed out after {self.cfg.timeout_s:.0f} s", batch, learner_queue)

    def _forward(self, episode: Episode, degraded: str | None, batch: _BatchRecord, learner_queue) -> None:
        if degraded is not None:
            log.warning("episode %s gets env-only reward: %s", episode.episode_id, degraded)
            episode.reward_note = degraded
            batch.degraded += 1
        self.score(episode, batch)
        learner_queue.put(episode)
        batch.forwarded += 1

    # --- rewards ---------------------------------------------------------------------------------
    def calibration_key(self, episode: Episode) -> str:
        return f"{episode.env}/{episode.task}" if self.cfg.calibration_per_task else episode.env

    def features(self, judgement: SelfEvaluation) -> list[list[float]]:
        """Per-step inputs of the calibration map: r_SE_t and/or r_MI_t."""
        columns = []
        if self.cfg.use_self_eval:
            columns.append(self_eval_rewards(judgement.step_yes, self.cfg.eps))
        if self.cfg.use_mi:
            columns.append(judgement.mi)
        return [list(row) for row in zip(*columns)]

    def score(self, episode: Episode, batch: _BatchRecord | None = None) -> Episode:
        """Per-step rewards: r_t = env_reward_t + lambda * dense_t (dense_t = 0 without a judgement)."""
        judgement = episode.self_evaluation
        dense = [0.0] * len(episode.steps)
        features = self.features(judgement) if judgement is not None else []
        if judgement is not None and self.cfg.mode == "prm":
            dense = self_eval_rewards(judgement.step_yes, self.cfg.eps)
        elif judgement is not None and self.cfg.mode == "gain":
            dense = information_gain(judgement.progress_yes)
        elif judgement is not None and self.cfg.mode == "mise":
            calibration = batch.maps.get(self.calibration_key(episode)) if batch else None
            if calibration is not None:
                dense = calibration.step_rewards(features)
            if self.cfg.calibration_weight > 0 and self.cfg.evaluator == "policy":
                # r_C trains the policy as a judge; a frozen base evaluator never reads those weights.
                episode.answer_samples = answer_samples(judgement, float(episode.success), self.cfg.calibration_weight)
        dense = [float(np.clip(d, -self.cfg.clip, self.cfg.clip)) for d in dense]
        for step, d in zip(episode.steps, dense, strict=True):
            step.step_reward = step.env_reward + self.cfg.dense_weight * d
        if batch is not None and judgement is not None:
            batch.record(self, episode, judgement, features, dense)
        return episode

    # --- resume ---------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """What a resumed run needs: the calibration window."""
        return {"calibrator": self.calibrator.state()}

    def load_state_dict(self, state: dict) -> None:
        self.calibrator.load_state(state["calibrator"])


def _until_end(queue):
    """The items of a ``ray.util.queue.Queue`` up to its end marker, ``None``."""
    while (item := queue.get()) is not None:
        yield item


class _BatchRecord:
    """What one batch saw, for the step's metrics and the calibration window."""

    def __init__(self, maps: dict) -> None:
        self.maps = maps
        self.forwarded = self.degraded = self.pool_tokens = 0
        self.values: dict[str, list[float]] = {"r_se": [], "r_mi": [], "dense": [], "r_c": []}
        self.q: list[float] = []
        self.z: list[int] = []
        self.fit_rows: list[tuple[str, list[float], float]] = []
        self.heldout: list[tuple[float, float]] = []  # (predicted, actual) outcome under the frozen maps
        self.steps: dict[str, list[tuple[float, bool | None, float]]] = {}  # signal -> (value, progress, score delta) per step

    def record(self, stage: RewardStage, episode: Episode, judgement: SelfEvaluation, features: list[list[float]], dense: list[float]) -> None:
        signals = {"r_se": self_eval_rewards(judgement.step_yes, stage.cfg.eps), "r_mi": judgement.mi, "dense": dense}
        if judgement.progress_yes:
            signals["r_ig"] = information_gain(judgement.progress_yes)
        for name, values in signals.items():
            self.values.setdefault(name, [])
            self.values[name] += values
            self.steps.setdefault(name, [])
            self.steps[name] += [(v, s.progress, s.score_delta) for v, s in zip(values, episode.steps)]
        self.values["r_c"].append(brier_reward(judgement.outcome_yes, float(episode.success)))
        self.q.append(judgement.outcome_yes)
        self.z.append(int(episode.success))
        key = stage.calibration_key(episode)
        sums = [float(sum(column)) for column in zip(*features)] or [0.0] * (stage.cfg.use_self_eval + stage.cfg.use_mi)
        outcome = episode.env_return
        self.fit_rows.append((key, sums, outcome))
        if key in self.maps:
            self.heldout.append((self.maps[key].predict(sums), outcome))

    def judged(self) -> list[tuple[float, int]]:
        """(q, z) of every judged episode: the evaluator's P(success) and the outcome."""
        return list(zip(self.q, self.z))

    def metrics(self) -> dict:
        out: dict = {"reward/degraded_fraction": self.degraded / max(self.forwarded, 1)}
        judged = self.forwarded - self.degraded
        if judged and self.values["r_c"]:
            out["reward/pool_tokens_per_episode"] = self.pool_tokens / judged
        for name, values in self.values.items():
            if values:
                out[f"reward/{name}_mean"] = float(np.mean(values))
                out[f"reward/{name}_std"] = float(np.std(values))
        if self.q:
            out["self_eval/auroc"] = auroc(self.q, self.z)
            out["self_eval/ece"] = expected_calibration_error(self.q, self.z)
            out["self_eval/brier"] = brier_score(self.q, self.z)
        for name, rows in self.steps.items():  # does the dense signal point at the steps that helped?
            score, value = step_label_quality(rows)
            if score is not None:
                out[f"step_quality/auroc_{name}"] = score
            if value is not None:
                out[f"step_quality/corr_{name}_score_delta"] = value
        labels = [y for _, y, _ in next(iter(self.steps.values()), []) if y is not None]
        if labels:
            out["step_quality/progress_fraction"] = sum(labels) / len(labels)
        fits = [m.r2 for m in self.maps.values() if m.r2 is not None]
        if fits:
            out["calibration/r2_fit"] = float(np.mean(fits))
        if len(self.heldout) >= 2:
            predicted, actual = (np.array(c) for c in zip(*self.heldout))
            out["calibration/r2_heldout"] = r_squared(predicted, actual)
        return out


RewardActor = ray.remote(RewardStage)
