"""The self-evaluator: one inference engine that judges finished episodes in hindsight.

A batch of episodes costs three engine calls: every step and outcome question (next-token Yes/No
log-probs, no sampling), and the action tokens teacher-forced with and without the hindsight (MI).
The evaluator follows the policy's adapter versions (the evaluator is the current policy) unless it is
frozen to the base model.
"""

from __future__ import annotations

import math

import ray

from actors.engine import load_checked
from actors.rollout import SETUP_ERRORS, ActorSetupError
from core.adapter import AdapterWeights, Published
from core.episode import Episode, SelfEvaluation
from reward.hindsight import HindsightPrompts, HindsightSettings
from reward.mise import yes_probability


class EvaluationError(ValueError):
    """A value the evaluator produced for an episode is unusable (non-finite, prompt too long)."""


class SelfEvaluator:
    def __init__(
        self, engine_factory, model_dir: str, settings: HindsightSettings, follow_policy: bool, max_model_len: int, ask_progress: bool = False
    ) -> None:
        from transformers import AutoTokenizer

        self.engine = None
        self.setup_error: str | None = None
        try:
            self.engine = engine_factory()
            self.prompts = HindsightPrompts(AutoTokenizer.from_pretrained(model_dir), settings)
        except SETUP_ERRORS as error:  # the same on every retry: reported once (ready), never restarted
            self.setup_error = f"{type(error).__name__}: {error}"
            self.close()
        self.follow_policy = follow_policy
        self.max_model_len = max_model_len
        self.ask_progress = ask_progress  # gain mode: q_t before every step, without hindsight
        self.version = 0

    def ready(self) -> bool:
        """True once built; raises ``ActorSetupError`` if the constructor failed on bad input."""
        if self.setup_error is not None:
            raise ActorSetupError(f"evaluator could not start: {self.setup_error}")
        return True

    def load_adapter(self, adapter: AdapterWeights) -> None:
        if self.follow_policy:
            self.engine.load_adapter(adapter)
            self.version = adapter.version

    def evaluate(self, episodes: list[Episode], adapter: Published | None = None) -> tuple[list[SelfEvaluation | str], int]:
        """One judgement per episode, or an error message naming the episode; and the tokens computed.

        ``adapter`` is the current policy version: an evaluator that does not hold it (restarted by
        Ray) loads it first. An episode whose prompts would not fit the engine gets an error and costs
        nothing; a non-finite value is caught here, at its source, with the episode id.
        """
        if self.follow_policy and adapter is not None and adapter.version > self.version:
            load_checked(self.engine, adapter)  # AdapterMismatch: this call fails, its episodes degrade
            self.version = adapter.version
        before = self.engine.computed_tokens
        results: list[SelfEvaluation | str | None] = [None] * len(episodes)
        plans = []
        for i, episode in enumerate(episodes):
            try:
                plans.append((i, self._plan(episode)))
            except EvaluationError as error:
                results[i] = str(error)
        questions = [q for _, p in plans for q in p["questions"]]
        with_h = [r for _, p in plans for r in p["with_hindsight"]]
        without_h = [r for _, p in plans for r in p["without_hindsight"]]
        actions = [a for _, p in plans for a in p["actions"]]
        versions = [self.version]
        answers = self.engine.next_token_logprobs(questions, self.prompts.answer_ids, versions * len(questions)) if questions else []
        scored_with = self.engine.score(with_h, actions, versions * len(with_h)) if with_h else []
        scored_without = self.engine.score(without_h, actions, versions * len(without_h)) if with_h else []
        q_at = a_at = 0
        for i, plan in plans:
            episode, n_q, n_a = episodes[i], len(plan["questions"]), len(plan["actions"])
            try:
                results[i] = self._judgement(episode, plan, answers[q_at : q_at + n_q], scored_with[a_at : a_at + n_a], scored_without[a_at : a_at + n_a])
            except EvaluationError as error:
                results[i] = str(error)
            q_at, a_at = q_at + n_q, a_at + n_a
        return results, self.engine.computed_tokens - before  # type: ignore[return-value]

    def _plan(self, episode: Episode) -> dict:
        step_questions, outcome_question = self.prompts.questions(episode)
        hindsight = self.prompts.step_hindsight(episode)
        acted = [(h, s) for h, s in zip(hindsight, episode.steps) if s.action_ids]
        progress = self.prompts.progress_questions(episode) if self.ask_progress else []
        plan = {
            "questions": step_questions + [outcome_question] + progress,
            "num_progress": len(progress),
            "with_hindsight": [h + s.prompt_ids for h, s in acted],
            "without_hindsight": [s.prompt_ids for _, s in acted],
            "actions": [s.action_ids for _, s in acted],
        }
        lengths = [len(q) + 1 for q in plan["questions"]] + [len(p) + len(a) for p, a in zip(plan["with_hindsight"], plan["actions"])]
        longest = max(lengths)
        if longest >= self.max_model_len:
            raise EvaluationError(f"episode {episode.episode_id}: a hindsight prompt has {longest} tokens, over engine.max_model_len={self.max_model_len}")
        return plan

    def _judgement(self, episode: Episode, plan: dict, answers, scored_with, scored_without) -> SelfEvaluation:
        num_steps = len(episode.steps)
        step_yes = [yes_probability(y, n) for y, n in answers[:num_steps]]
        outcome_logprobs = list(answers[num_steps])
        progress_yes = [yes_probability(y, n) for y, n in answers[num_steps + 1 :]]
        with_iter, without_iter = iter(scored_with), iter(scored_without)
        mi = []
        for step in episode.steps:  # a step without generated tokens has no action to score: MI 0
            mi.append(sum(next(with_iter)) - sum(next(without_iter)) if step.action_ids else 0.0)
        values = {
            "P(Yes) of a step question": step_yes,
            "MI term": mi,
            "outcome answer log-prob": outcome_logprobs,
            "P(Yes) of a progress question": progress_yes,
        }
        for name, numbers in values.items():
            bad = [x for x in numbers if not math.isfinite(x)]
            if bad:
                raise EvaluationError(f"episode {episode.episode_id}: non-finite {name} ({bad[0]}) at evaluator version {self.version}")
        return SelfEvaluation(
            evaluator_version=self.version,
            step_yes=step_yes,
            mi=mi,
            outcome_yes=yes_probability(*outcome_logprobs),
            outcome_prompt_ids=plan["questions"][num_steps],
            answer_ids=list(self.prompts.answer_ids),
            answer_logprobs=outcome_logprobs,
            progress_yes=progress_yes,
        )

    def restarted(self) -> bool:
        """Whether Ray restarted this actor (after its process died); call it only on the actor."""
        return ray.get_runtime_context().was_current_actor_reconstructed

    def close(self) -> None:
        if self.engine is not None:
            self.engine.close()


EvaluatorActor = ray.remote(SelfEvaluator)
