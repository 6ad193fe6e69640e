"""One interface for text environments.

``reset(task, variation)`` gives the goal and the first observation; ``step(action)`` gives the next
observation, the reward, ``done`` and an ``info`` dict with the score, max score, won/lost, the score's
change and, where the env has them, the admissible actions. Scores are normalised to [0, 1]. The reward
is the change of the normalised score (``reward="score"``), or 1 on the winning step and 0 otherwise
(``reward="success"``: the sparse setting, no intermediate points).

A malformed model reply is normal input for an agent: ``step_invalid(reason)`` lets the environment
answer it like any other action (it uses up a step and the observation says what was wrong).
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field

SPLITS = ("train", "valid", "test")
REWARDS = ("score", "success")


MAX_OBSERVATION_CHARS = 20_000  # longer env output is cut (the prompt shows far less; this bounds memory)


def clean_text(text: str | bytes, limit: int = MAX_OBSERVATION_CHARS) -> tuple[str, bool]:
    """Env output as safe text: bytes decoded as UTF-8 with replacement, lone surrogates and control
    characters (other than newline and tab) replaced, cut to ``limit`` characters. Returns the text and
    whether anything was changed."""
    raw = text.decode("utf-8", errors="replace") if isinstance(text, bytes) else str(text)
    cleaned = raw.encode("utf-8", errors="replace").decode("utf-8")  # lone surrogates -> "?"
    cleaned = "".join(c if c.isprintable() or c in "\n\t" else " " for c in cleaned)
    if len(cleaned) > limit:
        cut = len(cleaned) - limit
        cleaned = cleaned[:limit] + f" ... [{cut} characters cut]"
    return cleaned, cleaned != text


class EnvError(ValueError):
    """Bad input to an environment: unknown task or split, variation out of range, step after done."""


@dataclass
class Reset:
    goal: str
    observation: str
    info: dict = field(default_factory=dict)


@dataclass
class StepResult:
    observation: str
    reward: float
    done: bool
    info: dict = field(default_factory=dict)


def check_split(split: str) -> None:
    if split not in SPLITS:
        raise EnvError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")


class TextEnv(abc.ABC):
    """Base class: keeps score, step count and done-ness so each adapter only talks to its game.

    Adapters implement ``_reset`` and ``_step``; both return the normalised score so far.
    """

    name: str = "text-env"
    # Whether each info dict lists the admissible actions; off when the prompt does not show them (ScienceWorld
    # takes tens of ms to list them).
    list_admissible: bool = True
    reward_kind: str = "score"  # one of REWARDS (env.reward)

    def __init__(self, max_steps: int) -> None:
        if max_steps <= 0:
            raise EnvError(f"max_steps must be > 0, got {max_steps}")
        self.max_steps = max_steps
        self.num_steps = 0
        self.score = 0.0
        self.done = True
        self.won = False
        self.lost = False
        self.num_unrecognised = 0
        self.num_cleaned = 0  # observations that were not clean text or too long (counted, then cleaned)

    # --- what adapters implement -------------------------------------------------------------
    @abc.abstractmethod
    def tasks(self, split: str) -> list[str]:
        """Task names available in a split."""

    @abc.abstractmethod
    def num_variations(self, task: str, split: str) -> int:
        """How many variations (or seeds) a task has in a split."""

    @abc.abstractmethod
    def _reset(self, task: str, variation: int, split: str) -> tuple[str, str, float]:
        """Start the game; return (goal, first observation, normalised score)."""

    @abc.abstractmethod
    def _step(self, action: str) -> tuple[str, float, bool, bool, bool]:
        """Play one action; return (observation, normalised score, won, lost, recognised)."""

    def admissible_actions(self) -> list[str] | None:
        """Actions the game accepts now, or None when the env does not enumerate them."""
        return None

    def expert_distance(self) -> int | None:
        """How many steps an expert needs to win from the current state, or None when the env cannot
        tell from every state (it labels each step's ``progress``; see ``StepResult.info``)."""
        return None

    def expert_actions(self, task: str, variation: int, split: str = "train") -> list[str]:
        """An expert's commands that solve (task, variation) from its reset (behaviour-cloning data).
        It may play the game to find them, so the current episode ends."""
        raise EnvError(f"env {self.name!r} has no expert demonstrations")

    def close(self) -> None:
        self.done = True

    # --- the interface -------------------------------------------------------------------------
    def reset(self, task: str, variation: int, split: str = "train") -> Reset:
        check_split(split)
        valid_tasks = self.tasks(split)
        if task not in valid_tasks:
            raise EnvError(f"unknown task {task!r} for env {self.name!r} split {split!r}; valid tasks: {', '.join(valid_tasks)}")
        n = self.num_variations(task, split)
        if not isinstance(variation, int) or not 0 <= variation < n:
            raise EnvError(f"variation {variation!r} out of range for task {task!r} split {split!r}: valid 0..{n - 1}")
        goal, observation, score = self._reset(task, variation, split)
        self.num_steps, self.score = 0, score
        self.done = self.won = self.lost = False
        self.num_unrecognised = self.num_cleaned = 0
        goal, _ = clean_text(goal)
        observation = self._clean(observation)
        return Reset(goal=goal, observation=observation, info=self._info())

    def step(self, action: str) -> StepResult:
        self._check_running(action)
        before = self.expert_distance()
        observation, score, won, lost, recognised = self._step(action)
        self.num_unrecognised += not recognised
        after = self.expert_distance() if not (won or lost) else None
        progress = None if before is None else (won or (not lost and after is not None and after < before))
        return self._advance(observation, score, won, lost, recognised, progress)

    def step_invalid(self, reason: str) -> StepResult:
        """Answer a reply that held no usable action: it costs a step, the score does not change."""
        self._check_running(f"<invalid: {reason}>")
        observation = f"Your reply was not a valid action ({reason}). Reply with exactly one action."
        return self._advance(observation, self.score, False, False, False, None if self.expert_distance() is None else False)

    def _check_running(self, action: str) -> None:
        if self.done:
            raise EnvError(f"env {self.name!r} got action {action!r} after the episode ended; call reset() first")

    def _clean(self, observation) -> str:
        observation, changed = clean_text(observation)
        self.num_cleaned += changed
        return observation

    def _advance(self, observation: str, score: float, won: bool, lost: bool, recognised: bool, progress: bool | None) -> StepResult:
        observation = self._clean(observation)
        self.num_steps += 1
        score_delta = score - self.score
        reward = score_delta if self.reward_kind == "score" else float(won and not self.won)
        self.score, self.won, self.lost = score, won, lost
        self.done = won or lost or self.num_steps >= self.max_steps
        info = self._info()
        info["recognised"] = recognised
        info["progress"] = progress  # the step's ground-truth label (core.episode.Step.progress)
        info["score_delta"] = score_delta
        return StepResult(observation=observation, reward=reward, done=self.done, info=info)

    def _info(self) -> dict:
        return {
            "score": self.score,
            "max_score": 1.0,
            "won": self.won,
            "lost": self.lost,
            "steps": self.num_steps,
            "truncated": self.done and not (self.won or self.lost),
            "cleaned_observations": self.num_cleaned,
            "admissible_actions": self.admissible_actions() if self.list_admissible and not self.done else None,
        }
