"""The episode record: the one data type every component reads and writes.

Rollout actors fill it (token ids, sampling logprobs, env answers), the reward stage adds per-step
rewards, the learner trains on the stored token ids. Nothing downstream re-tokenises text.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Literal

EpisodeStatus = Literal["running", "finished", "failed"]


@dataclass(frozen=True)
class EpisodeSpec:
    """What to play: a (task, variation) of a split. G specs with the same key form a GRPO group.

    ``uid`` names the spec within a run (its attempts carry it). With a ``seed``, every turn samples
    with a seed derived from it, so a resumed run plays the same episodes again (with vLLM whatever
    else is batched with it; with the HF engine, given the same batch).
    """

    task: str
    variation: int
    split: str = "train"
    uid: str = ""
    seed: int | None = None


@dataclass
class Step:
    """One turn: the prompt the policy saw, what it sampled, and what the environment answered."""

    prompt_ids: list[int]
    action_ids: list[int]  # generated token ids, exactly as sampled (EOS included when emitted)
    action_logprobs: list[float]  # log-prob of each generated token under the sampling distribution
    reply_text: str  # the model's raw reply, decoded
    action: str  # the command sent to the env; "" when the reply held none
    invalid_reason: str | None  # why the reply could not be parsed, None when it could
    observation: str  # the environment's answer to this action
    env_reward: float  # the env's reward for this step (env.reward: the normalised score's change, or 1 on the winning step)
    policy_version: int  # adapter version that generated action_ids (0 = base model)
    recognised: bool = True  # False when the env did not understand the action
    step_reward: float | None = None  # dense reward, filled by the reward stage
    command: str = ""  # the command as the reply wrote it (rollout.action_match=admissible may map it)
    matched: bool = False  # ``action`` is the admissible command that ``command`` most resembles
    reply_line: int = 0  # the reply's line the command came from (0: the first; later lines skip chatter)
    # Ground truth the env knows about this step (never read by the policy or the reward): whether it
    # brought the agent closer to winning (the expert's remaining plan got shorter, or it won; None where
    # the env has no expert plan from every state), and the change of the env's own score.
    progress: bool | None = None
    score_delta: float = 0.0

    def __post_init__(self) -> None:
        if len(self.action_ids) != len(self.action_logprobs):
            raise ValueError(f"step has {len(self.action_ids)} action ids but {len(self.action_logprobs)} logprobs")


@dataclass
class SelfEvaluation:
    """The evaluator's hindsight judgement of one episode (reward pool, docs/mise.md "The three dense signals")."""

    evaluator_version: int  # adapter version that judged (0 = base model)
    step_yes: list[float]  # p_t = P(Yes) / (P(Yes) + P(No)) for "did step t help?", one per step
    mi: list[float]  # r_MI_t = log pi(a_t | s_t, h) - log pi(a_t | s_t), one per step
    outcome_yes: float  # q = P(Yes) / (P(Yes) + P(No)) for "did the agent complete the task?"
    outcome_prompt_ids: list[int]  # the outcome question, to train the evaluator's answer on
    answer_ids: list[int]  # the [Yes, No] token ids
    answer_logprobs: list[float]  # log P(Yes), log P(No) over the full vocabulary
    progress_yes: list[float] = field(default_factory=list)  # q_t = P(will complete) before step t, t = 0..T (gain mode)


@dataclass
class AnswerSample:
    """One answer token to train with the policy-gradient loss (the calibration reward r_C)."""

    prompt_ids: list[int]
    token_id: int
    logprob: float  # under the evaluator that produced it
    advantage: float
    policy_version: int


@dataclass
class Episode:
    """A whole trajectory of one agent in one environment instance."""

    episode_id: str
    env: str
    task: str
    variation: int
    split: str
    goal: str
    first_observation: str
    steps: list[Step] = field(default_factory=list)
    score: float = 0.0  # final normalised score in [0, 1]
    success: bool = False
    status: EpisodeStatus = "running"
    failure_reason: str | None = None
    timings: dict[str, float] = field(default_factory=lambda: {"generate_s": 0.0, "env_s": 0.0})
    self_evaluation: SelfEvaluation | None = None  # filled by the reward pool in prm / mise mode
    answer_samples: list[AnswerSample] = field(default_factory=list)  # extra training tokens (r_C)
    reward_note: str | None = None  # why the episode got env-only reward in a dense mode (degraded)
    spec_uid: str = ""  # the spec this is an attempt at (envs.specs.step_specs names them)
    retried: bool = False  # a failed attempt whose spec is being played again

    @property
    def group_key(self) -> tuple[str, str, int]:
        """Episodes with the same key form one advantage-normalisation group."""
        return (self.env, self.task, self.variation)

    @property
    def env_return(self) -> float:
        """``R``, the return of the env's reward (``env.reward``): the final normalised score with
        ``score`` rewards (when the game starts at 0), 1 or 0 with ``success`` rewards. What the episode
        advantage and MISE's calibration use; ``score`` stays the game's own figure either way."""
        return float(sum(s.env_reward for s in self.steps))

    @property
    def policy_versions(self) -> list[int]:
        return sorted({s.policy_version for s in self.steps})

    @property
    def num_invalid(self) -> int:
        return sum(s.invalid_reason is not None for s in self.steps)

    @property
    def num_unrecognised(self) -> int:
        return sum(not s.recognised for s in self.steps)

    @property
    def num_matched(self) -> int:
        return sum(s.matched for s in self.steps)

    @property
    def num_generated_tokens(self) -> int:
        return sum(len(s.action_ids) for s in self.steps)

    def to_dict(self) -> dict[str, Any]:
        record = dataclasses.asdict(self)
        record["policy_versions"] = self.policy_versions
        record["num_invalid"] = self.num_invalid
        record["num_unrecognised"] = self.num_unrecognised
        record["num_matched"] = self.num_matched
        return record

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False)

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> Episode:
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in record.items() if k in names}
        kwargs["steps"] = [Step(**s) for s in record.get("steps", [])]
        if record.get("self_evaluation"):
            kwargs["self_evaluation"] = SelfEvaluation(**record["self_evaluation"])
        kwargs["answer_samples"] = [AnswerSample(**a) for a in record.get("answer_samples", [])]
        return cls(**kwargs)


def outcome_figures(episodes: list[Episode]) -> dict[str, float | int]:
    """What an evaluation reports of ``episodes``: how many, how many failed, and over the finished
    ones the success rate, mean score, mean steps and the shares of invalid and matched replies."""
    finished = [e for e in episodes if e.status == "finished"]
    n, turns = max(len(finished), 1), max(sum(len(e.steps) for e in finished), 1)
    return {
        "episodes": len(episodes),
        "failed": len(episodes) - len(finished),
        "success_rate": sum(e.success for e in finished) / n,
        "mean_score": sum(e.score for e in finished) / n,
        "mean_steps": sum(len(e.steps) for e in finished) / n,
        "invalid_rate": sum(e.num_invalid for e in finished) / turns,
        "matched_rate": sum(e.num_matched for e in finished) / turns,  # replies mapped to an admissible command
        "unrecognised_rate": sum(e.num_unrecognised for e in finished) / turns,  # parsed, but the env did not understand
        "invalid_by_reason": invalid_by_reason(finished),
    }


def reason_kind(reason: str) -> str:
    """An invalid reply's reason without its particulars: ``reply resembles 3 admissible actions equally
    (a, b, c)`` -> ``reply resembles N admissible actions equally``."""
    return re.sub(r"\d+", "N", reason.split(" (")[0])


def invalid_by_reason(episodes: list[Episode]) -> dict[str, int]:
    """How many replies of ``episodes`` held no action, by kind of reason, most frequent first."""
    counts = Counter(reason_kind(s.invalid_reason) for e in episodes for s in e.steps if s.invalid_reason is not None)
    return dict(counts.most_common())


def reply_figures(r: dict) -> str:
    """One line on the replies: how many held no action (by reason), were mapped, or the env did not understand."""
    reasons = ", ".join(f"{kind} {count}" for kind, count in r["invalid_by_reason"].items()) or "none"
    return (f"replies: invalid {r['invalid_rate']:.1%} ({reasons}), matched to an admissible command {r['matched_rate']:.1%}, "
            f"not understood by the env {r['unrecognised_rate']:.1%}")  # fmt: skip
