"""Hindsight prompts: the questions the evaluator answers about a finished episode, as token ids.

All questions about one episode start with the same tokens (the system prompt and the episode's
transcript), so an engine with a prefix cache, or one that runs a common prefix once, pays for the
episode once and for each question's few tokens after it: cost grows about linearly with length.
- step question t:  transcript + outcome + "did step t help?"  -> P(Yes) = p_t
- progress question t (``gain`` mode):  transcript up to step t, no outcome + "will it complete the task?"  -> q_t; the
  T+1 prompts nest (each extends the one before by a step)
- outcome question:  transcript + "did the agent complete the task?"  -> P(Yes) = q
  (the outcome line is left out here: the evaluator must judge it from the transcript)
- MI prompts: the hindsight h_t of step t (a system turn) followed by the exact prompt ids the policy
  saw at step t; the action tokens are scored after it and after the plain prompt. h_t is the outcome
  and what happened after step t, newest first: never a_t itself or anything before it, so a model
  cannot raise log pi(a_t | s_t, h_t) by copying a_t from its context (docs/mise.md, "The three dense
  signals"). Newest first, h_t is h_{t+1} with step t+1 appended, so the T prompts nest: with a prefix
  cache each costs its own step's tokens and its state, and an episode costs about O(T L) tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

from core.episode import Episode

_MARKER = "\u2063QUESTION\u2063"  # an invisible separator that no transcript contains


@dataclass(frozen=True)
class HindsightSettings:
    max_observation_chars: int = 300  # per observation in the transcript
    system_prompt: str = "You review, in hindsight, an episode of an agent playing a text game. Answer the question about it with Yes or No."
    step_question: str = "Given how the episode went, did step {step} ({action}) move the agent toward the goal? Answer Yes or No."
    outcome_question: str = "Did the agent complete the task? Answer Yes or No."
    hindsight_header: str = "Hindsight: how the episode ended, then what the agent did after the step you are about to take, latest first."
    progress_question: str = "Will the agent complete the task? Answer Yes or No."


def _clip(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


class HindsightPrompts:
    """Builds the evaluator's prompts for an episode with the model's own chat template."""

    def __init__(self, tokenizer, settings: HindsightSettings) -> None:
        self.tokenizer = tokenizer
        self.settings = settings
        rendered = tokenizer.apply_chat_template(
            [{"role": "system", "content": settings.system_prompt}, {"role": "user", "content": _MARKER}],
            add_generation_prompt=True,
            tokenize=False,
        )
        if rendered.count(_MARKER) != 1:
            raise ValueError("the model's chat template does not keep the user message as given")
        self._head, self._tail = rendered.split(_MARKER)
        system_turn = tokenizer.apply_chat_template([{"role": "system", "content": _MARKER}], tokenize=False)
        if system_turn.count(_MARKER) != 1:
            raise ValueError("the model's chat template does not keep the system message as given")
        self._system_head, self._system_tail = system_turn.split(_MARKER)
        self.answer_ids = [self._answer_token(word) for word in ("Yes", "No")]

    def _encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _answer_token(self, word: str) -> int:
        """The first token of ``word`` as the start of the assistant's reply."""
        prompt = self._encode(self._head + "?" + self._tail)
        answered = self._encode(self._head + "?" + self._tail + word)
        if answered[: len(prompt)] != prompt or len(answered) == len(prompt):
            raise ValueError(f"cannot find the token the model starts the answer {word!r} with")
        return answered[len(prompt)]

    def transcript(self, episode: Episode) -> str:
        limit = self.settings.max_observation_chars
        lines = [f"Goal: {_clip(episode.goal, limit)}", f"Start: {_clip(episode.first_observation, limit)}"]
        for t, step in enumerate(episode.steps, start=1):
            action = step.action or f"(no valid action: {step.invalid_reason})"
            lines.append(f"Step {t}: > {_clip(action, 80)}\n{_clip(step.observation, limit)}")
        return "\n".join(lines)

    @staticmethod
    def outcome(episode: Episode) -> str:
        done = "completed the task" if episode.success else "did not complete the task"
        return f"Outcome: the agent {done} (score {episode.score:.2f})."

    def questions(self, episode: Episode) -> tuple[list[list[int]], list[int]]:
        """Step questions (one per step) and the outcome question, as full prompts sharing a prefix."""
        prefix = self._encode(self._head + self.transcript(episode) + "\n\n")
        steps = [
            prefix + self._encode(
                self.outcome(episode) + "\n" + self.settings.step_question.format(step=t, action=_clip(s.action or "invalid reply", 80)) + self._tail
            )
            for t, s in enumerate(episode.steps, start=1)
        ]  # fmt: skip
        outcome = prefix + self._encode(self.settings.outcome_question + self._tail)
        return steps, outcome

    def progress_questions(self, episode: Episode) -> list[list[int]]:
        """q_t's question for t = 0..T: the transcript up to (not including) step t+1, then the question."""
        limit = self.settings.max_observation_chars
        question = self._encode("\n\n" + self.settings.progress_question + self._tail)
        ids = self._encode(f"{self._head}Goal: {_clip(episode.goal, limit)}\nStart: {_clip(episode.first_observation, limit)}")
        out = [ids + question]
        for t, step in enumerate(episode.steps, start=1):
            action = step.action or f"(no valid action: {step.invalid_reason})"
            ids = ids + self._encode(f"\nStep {t}: > {_clip(action, 80)}\n{_clip(step.observation, limit)}")
            out.append(ids + question)
        return out

    def step_hindsight(self, episode: Episode) -> list[list[int]]:
        """h_t for every step t, as a system turn of token ids to put before step t's own prompt ids.

        h_T is the outcome alone; h_t is h_{t+1} followed by step t+1 (its action and the env's answer):
        the outcome, then the later steps, newest first. The token ids of h_{t+1} are a prefix of h_t's."""
        limit = self.settings.max_observation_chars
        tail = self._encode(self._system_tail)
        ids = self._encode(f"{self._system_head}{self.settings.hindsight_header}\n{self.outcome(episode)}\n")
        out: list[list[int]] = [[] for _ in episode.steps]
        for t in range(len(episode.steps), 0, -1):
            out[t - 1] = ids + tail
            step = episode.steps[t - 1]
            action = step.action or f"(no valid action: {step.invalid_reason})"
            ids = ids + self._encode(f"Step {t}: > {_clip(action, 80)}\n{_clip(step.observation, limit)}\n")
        return out
