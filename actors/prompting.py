"""Prompts for the acting policy and the parser that turns its reply into one action.

The prompt is built with the model's own chat template: goal, a window of recent history, the current
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
_PREFIX = re.compile(r"^(?:action|command|next action|your next action)\s*:\s*|^>\s*", re.IGNORECASE)
_QUOTES = "\"'`*"
_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")


@dataclass(frozen=True)
class ParsedAction:
    action: str  # "" when invalid
    invalid_reason: str | None


@dataclass(frozen=True)
class PromptSettings:
    history_window: int = 4  # how many earlier (action, observation) pairs the prompt shows
    max_observation_chars: int = 1200
    show_admissible: bool = True
    max_action_chars: int = 80


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def build_messages(
    goal: str,
    history: list[tuple[str, str]],
    observation: str,
    admissible: list[str] | None,
    settings: PromptSettings,
) -> list[dict[str, str]]:
    """Chat messages for one turn. ``history`` holds earlier (action, observation) pairs, oldest first."""
    parts = [f"Goal: {goal}"]
    recent = history[-settings.history_window :] if settings.history_window > 0 else []
    if recent:
        lines = [f"> {action}\n{_clip(obs, settings.max_observation_chars)}" for action, obs in recent]
        parts.append("Recent history:\n" + "\n".join(lines))
    parts.append(f"Current observation:\n{_clip(observation, settings.max_observation_chars)}")
    if settings.show_admissible and admissible:
        parts.append("Admissible actions: " + ", ".join(admissible))
    parts.append("Your next action:")
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": "\n\n".join(parts)}]


def parse_action(reply: str, truncated: bool, settings: PromptSettings) -> ParsedAction:
    """One action out of a model reply, or the reason there is none. Never raises."""
    if truncated:
        return ParsedAction("", "reply cut off at max_tokens")
    # Terminal escapes, control and format characters are never part of a game command.
    cleaned = _ANSI_ESCAPE.sub(" ", reply)
    cleaned = "".join(" " if unicodedata.category(c)[0] == "C" and c != "\n" else c for c in cleaned)
    lines = [line.strip() for line in cleaned.split("\n") if line.strip()]
    if not lines:
        return ParsedAction("", "empty reply")
    if len(lines) > 1:
        return ParsedAction("", f"several lines ({len(lines)}) where one action was asked for")
    action = _PREFIX.sub("", lines[0]).strip().strip(_QUOTES).strip().rstrip(".").strip()
    action = " ".join(action.split())
    if not action:
        return ParsedAction("", "empty reply")
    if len(action) > settings.max_action_chars:
        return ParsedAction("", f"action longer than {settings.max_action_chars} characters")
    if not any(c.isalpha() for c in action):
        return ParsedAction("", "no words in the reply")
    return ParsedAction(action.lower(), None)
