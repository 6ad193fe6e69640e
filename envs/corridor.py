"""A tiny built-in environment with a known optimal policy, for fast tests and learning checks.

The agent walks a corridor of ``length`` rooms. Each room names the direction of its exit; going that
way moves on, any other direction bumps into a wall. In the last room, ``take treasure`` wins. The only
reward is the final one (score 1 on a win), so the env is multi-step with a sparse outcome, and the
optimal policy (``optimal_action``) is: copy the exit direction, then take the treasure.
Variations are seeds drawn from disjoint ranges per split.
"""

from __future__ import annotations

import random
import re

from envs.base import EnvError, TextEnv, check_split

DIRECTIONS = ("north", "south", "east", "west")
SPLIT_SEED_OFFSET = {"train": 0, "valid": 1_000_000, "test": 2_000_000}


def corridor_length(task: str) -> int:
    """The number of rooms a corridor task names (``corridor-3`` -> 3)."""
    match = re.fullmatch(r"corridor-(\d+)", task)
    if not match:
        raise EnvError(f"env.tasks: {task!r} is not a corridor task; valid: corridor-N with N >= 1")
    return int(match.group(1))


class CorridorEnv(TextEnv):
    name = "corridor"

    def __init__(self, lengths: list[int], variations: dict[str, int], max_steps: int | None = None) -> None:
        if not lengths or any(n < 1 for n in lengths):
            raise EnvError(f"corridor lengths must be a non-empty list of integers >= 1, got {lengths!r}")
        for split, count in variations.items():
            check_split(split)
            if count < 1:
                raise EnvError(f"variations[{split!r}] must be >= 1, got {count}")
        # Default cap: twice the optimal episode length, so a few mistakes are survivable.
        super().__init__(max_steps or 2 * (max(lengths) + 1))
        self.lengths = sorted(set(lengths))
        self.variations = dict(variations)
        self._exits: list[str] = []
        self._room = 0

    def tasks(self, split: str) -> list[str]:
        check_split(split)
        return [f"corridor-{n}" for n in self.lengths]

    def num_variations(self, task: str, split: str) -> int:
        return self.variations.get(split, 0)

    def _reset(self, task: str, variation: int, split: str) -> tuple[str, str, float]:
        length = int(task.rsplit("-", 1)[1])
        rng = random.Random(SPLIT_SEED_OFFSET[split] + variation)
        self._exits = [rng.choice(DIRECTIONS) for _ in range(length)]
        self._room = 0
        goal = f"Walk through the {length} rooms of the corridor and take the treasure in the last room."
        return goal, self._describe(), 0.0

    def _describe(self) -> str:
        if self._room == len(self._exits):
            return "You are in the treasure room. A treasure lies on the floor."
        return f"You are in room {self._room + 1}. There is an exit to the {self._exits[self._room]}."

    def admissible_actions(self) -> list[str]:
        return [f"go {d}" for d in DIRECTIONS] + ["take treasure"]

    def expert_distance(self) -> int:
        """The rooms still to walk, plus taking the treasure."""
        return len(self._exits) - self._room + 1

    def optimal_action(self) -> str:
        if self._room == len(self._exits):
            return "take treasure"
        return f"go {self._exits[self._room]}"

    def expert_actions(self, task: str, variation: int, split: str = "train") -> list[str]:
        self.reset(task, variation, split)
        self.done = True
        return [f"go {d}" for d in self._exits] + ["take treasure"]

    def _step(self, action: str) -> tuple[str, float, bool, bool, bool]:
        command = " ".join(action.lower().split())
        if command not in self.admissible_actions():
            return f"I don't understand {action!r}. " + self._describe(), self.score, False, False, False
        if command == "take treasure":
            if self._room == len(self._exits):
                return "You take the treasure. You won!", 1.0, True, False, True
            return "There is no treasure here. " + self._describe(), self.score, False, False, True
        if self._room < len(self._exits) and command == f"go {self._exits[self._room]}":
            self._room += 1
            return self._describe(), self.score, False, False, True
        return "You bump into a wall. " + self._describe(), self.score, False, False, True
