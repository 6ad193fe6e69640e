"""Prompts for the acting policy and the parser that turns its reply into one action.

The prompt is built with the model's own chat template: goal, a window of recent history (sliding, or
moving in jumps so that the prompts of several turns share their history as a cached prefix), the current
observation and, when the env gives them, the admissible actions. Model output is arbitrary text; the
parser never raises: a reply it cannot use comes back with a reason and the env answers it.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

SYSTEM_PROMPT = (
    "You are an agent playing a text game. Read the goal and the observation, then reply with exactly "
    "one action: a short command on a single line, with no explanation."
)
# Wrappers a model puts around a command: "Action: ...", "> ...", a list marker, quotes or backticks.
_PREFIX = re.compile(r"^(?:(?:action|command|next action|your next action|answer)\s*:\s*|>\s*|[-*]\s+|\d+[.)]\s+)", re.IGNORECASE)
_ACTION_TAG = re.compile(r"<action>(.*?)</action>", re.IGNORECASE | re.DOTALL)
_FENCE = re.compile(r"^```[a-z]*$", re.IGNORECASE)  # a code-fence line (its language tag included)
_QUOTES = "\"'`*"
_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")
_WORD = re.compile(r"[a-z0-9]+")
_ARTICLES = frozenset({"a", "an", "the"})


@dataclass(frozen=True)
class ParsedAction:
    action: str  # the command for the env; "" when invalid
    invalid_reason: str | None
    command: str = ""  # the command as the reply wrote it (before matching to an admissible action)
    line: int = 0  # which non-empty line of the reply it came from (0: the first)
    matched: bool = False  # ``action`` is the admissible command ``command`` most resembles


@dataclass(frozen=True)
class PromptSettings:
    history_window: int = 4  # how many earlier (action, observation) pairs the prompt shows
    max_observation_chars: int = 1200
    show_admissible: bool = True
    max_action_chars: int = 80
    # exact: the env gets the command as written | admissible: the admissible command it most resembles
    action_match: str = "exact"
    # The history shown starts at a multiple of this many turns (1: a window sliding every turn); with J > 1
    # it shows history_window to history_window + J - 1 turns and stays the same prefix for J turns at a time
    history_jump: int = 1

    def shown(self, history: list) -> list:
        """The part of ``history`` (oldest first) a prompt shows."""
        if self.history_window <= 0:
            return []
        start = (max(0, len(history) - self.history_window) // self.history_jump) * self.history_jump
        return history[start:]

    @classmethod
    def from_rollout(cls, rollout) -> PromptSettings:
        """The settings of a ``rollout`` config group (conf/schema.RolloutConfig)."""
        r = rollout
        return cls(r.history_window, r.max_observation_chars, r.show_admissible, r.max_action_chars, r.action_match, r.history_jump)


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def build_messages(
    goal: str,
    history: list[tuple[str, str]],
    observation: str,
    admissible: list[str] | None,
    settings: PromptSettings,
) -> list[dict[str, str]]:
    """Chat messages for one turn. ``history`` holds the earlier turns' (action, observation it led to)
    pairs, oldest first: the newest pair's observation is ``observation``, shown once, as the current
    one (printing it in the history too made every prompt after the first carry it twice)."""
    parts = [f"Goal: {goal}"]
    recent = settings.shown(history)
    if recent:
        lines = [f"> {action}\n{_clip(obs, settings.max_observation_chars)}" for action, obs in recent[:-1]] + [f"> {recent[-1][0]}"]
        parts.append("Recent history:\n" + "\n".join(lines))
    parts.append(f"Current observation:\n{_clip(observation, settings.max_observation_chars)}")
    if settings.show_admissible and admissible:
        parts.append("Admissible actions: " + ", ".join(admissible))
    parts.append("Your next action:")
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": "\n\n".join(parts)}]


def encode_prompt(tokenizer, messages: list[dict[str, str]]) -> list[int]:
    """The token ids of a turn's prompt, ending with the assistant header the reply follows."""
    encoded = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    return list(encoded["input_ids"] if hasattr(encoded, "keys") else encoded)


def history_entry(action: str, reply: str, observation: str) -> tuple[str, str]:
    """What the next prompts' history shows of a turn: the action, or the start of a reply that held none."""
    return (action or reply.strip()[:40] or "<empty>", observation)


def _strip_wrappers(line: str) -> str:
    """``Action: "take apple".`` -> ``take apple``: prefixes, quotes, backticks, a final full stop."""
    for _ in range(3):  # wrappers nest: > "Action: `look`"
        line = _PREFIX.sub("", line).strip().strip(_QUOTES).strip().rstrip(".").strip()
    return " ".join(line.split())


def _reply_lines(reply: str, truncated: bool) -> list[str]:
    """The reply's non-empty lines, wrappers stripped; a line cut off at max_tokens is not one."""
    cleaned = _ANSI_ESCAPE.sub(" ", reply)  # terminal escapes, control and format characters are never part of a command
    cleaned = "".join(" " if unicodedata.category(c)[0] == "C" and c != "\n" else c for c in cleaned)
    tagged = _ACTION_TAG.findall(cleaned)
    if tagged:  # <action>...</action>: only what the tags hold
        cleaned = "\n".join(tagged)
    elif truncated:
        cleaned = cleaned.rsplit("\n", 1)[0] if "\n" in cleaned else ""
    lines = [line.strip() for line in cleaned.split("\n")]
    return [_strip_wrappers(line) for line in lines if line and not _FENCE.match(line)]


def _check_command(command: str, settings: PromptSettings) -> str | None:
    """Why ``command`` cannot be an action, or None."""
    if not command:
        return "empty reply"
    if len(command) > settings.max_action_chars:
        return f"action longer than {settings.max_action_chars} characters"
    if not any(c.isalpha() for c in command):
        return "no words in the reply"
    return None


def action_words(text: str) -> frozenset[str]:
    """The words a command is compared by: lower case, punctuation and articles dropped."""
    return frozenset(_WORD.findall(text.lower())) - _ARTICLES


def match_admissible(command: str, admissible: list[str]) -> tuple[str | None, str | None]:
    """The admissible command ``command`` most resembles (Jaccard overlap of their words), or None with
    the reason: no admissible command shares a word, or several resemble it equally."""
    words = action_words(command)
    if not words:
        return None, "no words in the reply"
    scored: dict[str, float] = {}
    for candidate in admissible:
        other = action_words(candidate)
        overlap = len(words & other)
        if overlap:
            scored[candidate] = overlap / len(words | other)
    if not scored:
        return None, "no admissible action resembles the reply"
    best = max(scored.values())
    tied = sorted(c for c, score in scored.items() if score == best)
    if len(tied) > 1:
        return None, f"reply resembles {len(tied)} admissible actions equally ({', '.join(tied[:3])})"
    return tied[0], None


def parse_action(reply: str, truncated: bool, settings: PromptSettings, admissible: list[str] | None = None) -> ParsedAction:
    """One action out of a model reply, or the reason there is none. Never raises.

    The first line that holds a usable command is taken (a reply of several lines is not rejected; a
    line cut off at max_tokens is never used). With ``settings.action_match == "admissible"`` and an
    ``admissible`` list, a command is mapped to the admissible command it most resembles, and a line
    counts as usable only if it resembles exactly one best.
    """
    lines = _reply_lines(reply, truncated)
    if not lines:
        return ParsedAction("", "reply cut off at max_tokens" if truncated else "empty reply")
    matching = settings.action_match == "admissible" and bool(admissible)
    first_reason = None
    for index, command in enumerate(lines):
        reason = _check_command(command, settings)
        action = command.lower()
        if reason is None and matching:
            exact = {a.lower(): a for a in admissible}.get(action)
            matched, reason = (exact, None) if exact else match_admissible(action, admissible)
            if matched is not None:
                return ParsedAction(matched, None, command=action, line=index, matched=matched != action)
        if reason is None:
            return ParsedAction(action, None, command=action, line=index)
        first_reason = first_reason or reason
    return ParsedAction("", first_reason)
