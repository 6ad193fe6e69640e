"""The reward stage: between the rollout actors and the learner queue (docs/mise.md, "The reward the learner sees").

One ``pump`` call is one learner step's batch: it hands the step's specs to the rollout actors
(``actors.dispatch``: a dead actor's specs are issued again), sends the finished episodes in batches to
the evaluator pool (reward actors, each with its own engine), turns the judgements into per-step
rewards and puts the episodes into the learner queue. ``env`` mode passes the environment's rewards
through unchanged. Every attempt of the batch is counted in the ledger the call returns.

- One calibration state for the whole pool: the ridge maps are fitted before a batch (one ``pump``
  call = one learner step) is scored, and the batch joins the fit's window only afterwards.
- An evaluator call that fails (its actor died) or runs past ``reward.timeout_s`` degrades its episodes
  to env-only reward: counted, logged with the reason, never blocking the pipeline. Ray restarts a dead
  evaluator (``reward.max_restarts``) and it catches up to the current adapter on its next call.
- Failed episodes stop here (counted); they are never trained on.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import ray

from actors.dispatch import RolloutDispatch
from conf.schema import RewardConfig
from core.adapter import Published
from core.episode import AnswerSample, Episode, EpisodeSpec, SelfEvaluation
from core.ledger import EpisodeLedger
from reward.hindsight import HindsightSettings
from reward.mise import (
    RidgeCalibrator,
    auroc,
    brier_answer_advantages,
    brier_reward,
    brier_score,
    expected_calibration_error,
    r_squared,
    self_eval_rewards,
)

log = logging.getLogger(__name__)


def hindsight_settings(cfg: RewardConfig) -> HindsightSettings:
    """The prompts of the config; a null prompt keeps the built-in one."""
    overrides = {k: getattr(cfg, k) for k in ("system_prompt", "step_question", "outcome_question", "hindsight_header") if getattr(cfg, k) is not None}
    return HindsightSettings(max_observation_chars=cfg.max_observation_chars, **overrides)


def answer_samples(judgement: SelfEvaluation, z: float, weight: float) -> list[AnswerSample]:
    """The Yes and No tokens of the outcome answer, with advantages that ascend r_C = -(q - z)^2."""
    advantages = brier_answer_advantages(judgement.outcome_yes, z, weight)
    return [
        AnswerSample(judgement.outcome_prompt_ids, token, logprob, advantage, judgement.evaluator_version)
        for token, logprob, advantage in zip(judgement.answer_ids, judgement.answer_logprobs, advantages)
    ]


class RewardStage:
    def __init__(self, cfg: RewardConfig, evaluators: list | None = None, dispatch: RolloutDispatch | None = None) -> None:
        if cfg.mode != "env" and not evaluators:
            raise ValueError(f"reward.mode={cfg.mode!r} needs at least one evaluator actor (reward.num_actors >= 1)")
        self.cfg = cfg
        self.evaluators = evaluators or []
        self.dispatch = dispatch
        self.calibrator = RidgeCalibrator(cfg.calibration_window, cfg.calibration_alpha, cfg.calibration_min_episodes)
        self.ledger = EpisodeLedger()  # the current call's counts
        self.adapter: Published | None = None
        self._next_evaluator = 0

    # --- the pump: one learner step's worth of episodes ---------------------------------------
    def pump(self, specs: list[EpisodeSpec], learner_queue, adapter: Published | None = None) -> dict:
        """Play ``specs`` and forward the finished episodes, scored, to the learner queue. Returns
        ``queued`` (how many went on), ``ledger`` (this batch's counts) and the step's reward metrics."""
        return self.forward(self._play(specs, adapter), learner_queue)

    def play(self, specs: list[EpisodeSpec], adapter: Published | None = None) -> tuple[list[Episode], EpisodeLedger]:
        """Play ``specs`` for evaluation: the final episodes (never trained on) and their counts."""
        episodes = list(self._play(specs, adapter))
        self.ledger.dropped["evaluation"] += sum(e.status == "finished" for e in episodes)
        return episodes, self._take_ledger()

    def _play(self, specs: list[EpisodeSpec], adapter: Published | None):
        if self.dispatch is None:
            raise RuntimeError("this reward stage was built without rollout actors (dispatch=None)")
        self.adapter = adapter
        return self.dispatch.play(specs, self.ledger, adapter)

    def _take_ledger(self) -> EpisodeLedger:
        ledger, self.ledger = self.ledger, EpisodeLedger()
        return ledger

    def forward(self, episodes, learner_queue) -> dict:
        """Score the finished ones of ``episodes`` (an iterable: scoring overlaps their arrival) into
        the learner queue."""
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
                pending[self._submit(waiting)] = (waiting, time.monotonic())
                waiting = []
            self._collect(pending, batch, learner_queue, block=False)
        if waiting:
            pending[self._submit(waiting)] = (waiting, time.monotonic())
        while pending:
            self._collect(pending, batch, learner_queue, block=True)
        for key, features, outcome in batch.fit_rows:
            self.calibrator.add(key, features, outcome)
        return {"queued": batch.forwarded, "ledger": self._take_ledger(), "self_eval": batch.judged(), **batch.metrics()}

    def _submit(self, episodes: list[Episode]) -> ray.ObjectRef:
        evaluator = self.evaluators[self._next_evaluator % len(self.evaluators)]
        self._next_evaluator += 1
        return evaluator.evaluate.remote(episodes, self.adapter)

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
            self.ledger.degraded += 1
            batch.degraded += 1
        self.score(episode, batch)
        learner_queue.put(episode)
        self.ledger.scored += 1
        self.ledger.queued += 1
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

    def stats(self) -> dict:
        deaths = self.dispatch.actor_deaths if self.dispatch else 0
        failures = list(self.dispatch.failures)[-20:] if self.dispatch else []
        return {"rollout_actor_deaths": deaths, "last_failures": failures}


class _BatchRecord:
    """What one pump call saw, for the step's metrics and the calibration window."""

    def __init__(self, maps: dict) -> None:
        self.maps = maps
        self.forwarded = self.degraded = self.pool_tokens = 0
        self.values: dict[str, list[float]] = {"r_se": [], "r_mi": [], "dense": [], "r_c": []}
        self.q: list[float] = []
        self.z: list[int] = []
        self.fit_rows: list[tuple[str, list[float], float]] = []
        self.heldout: list[tuple[float, float]] = []  # (predicted, actual) outcome under the frozen maps

    def record(self, stage: RewardStage, episode: Episode, judgement: SelfEvaluation, features: list[list[float]], dense: list[float]) -> None:
        self.values["r_se"] += self_eval_rewards(judgement.step_yes, stage.cfg.eps)
        self.values["r_mi"] += judgement.mi
        self.values["dense"] += dense
        self.values["r_c"].append(brier_reward(judgement.outcome_yes, float(episode.success)))
        self.q.append(judgement.outcome_yes)
        self.z.append(int(episode.success))
        key = stage.calibration_key(episode)
        sums = [float(sum(column)) for column in zip(*features)] or [0.0] * (stage.cfg.use_self_eval + stage.cfg.use_mi)
        self.fit_rows.append((key, sums, episode.score))
        if key in self.maps:
            self.heldout.append((self.maps[key].predict(sums), episode.score))

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
        fits = [m.r2 for m in self.maps.values() if m.r2 is not None]
        if fits:
            out["calibration/r2_fit"] = float(np.mean(fits))
        if len(self.heldout) >= 2:
            predicted, actual = (np.array(c) for c in zip(*self.heldout))
            out["calibration/r2_heldout"] = r_squared(predicted, actual)
        return out


RewardActor = ray.remote(RewardStage)
