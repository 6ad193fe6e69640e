"""TextWorld cooking games: the First TextWorld Problems family, generated offline with ``tw-make``.

A task names the difficulty settings, in the FTWP style: ``recipe1+take1+go1`` or
``recipe2+take2+go6+open+cook+cut``. A variation is an index into the split's seed range (the three
ranges are disjoint), and ``tw-make --split`` keeps FTWP's food/preparation split as well. Games are
generated once into a cache folder keyed by settings, split and seed, and reused afterwards.
"""

from __future__ import annotations

import fcntl
import os
import re
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from envs.base import EnvError, TextEnv, check_split

MAX_VARIATIONS = 1_000_000
SPLIT_SEED_OFFSET = {"train": 0, "valid": MAX_VARIATIONS, "test": 2 * MAX_VARIATIONS}
GO_CHOICES = (1, 6, 9, 12)
FLAGS = ("open", "cook", "cut", "drop")
_BANNER_LINE = re.compile(r"^[\s$_|\\/<>=-]*$")  # lines of the ASCII-art title
_TASK_PART = re.compile(r"^(recipe|take|go)(\d+)$")


@dataclass(frozen=True)
class CookingSettings:
    recipe: int
    take: int
    go: int
    flags: tuple[str, ...] = ()

    @classmethod
    def parse(cls, task: str) -> CookingSettings:
        """Parse ``recipe2+take1+go6+open+cut`` (any order); errors say what is valid."""
        numbers: dict[str, int] = {}
        flags: list[str] = []
        for part in task.split("+"):
            match = _TASK_PART.match(part)
            if match:
                numbers[match.group(1)] = int(match.group(2))
            elif part in FLAGS:
                flags.append(part)
            else:
                raise EnvError(f"bad TextWorld cooking task {task!r}: part {part!r} is not recipeN, takeN, goN or one of {FLAGS}")
        missing = {"recipe", "take", "go"} - numbers.keys()
        if missing:
            raise EnvError(f"bad TextWorld cooking task {task!r}: missing {sorted(missing)} (e.g. recipe1+take1+go1)")
        settings = cls(numbers["recipe"], numbers["take"], numbers["go"], tuple(f for f in FLAGS if f in flags))
        if not 1 <= settings.recipe <= 5:
            raise EnvError(f"bad TextWorld cooking task {task!r}: recipe must be 1..5")
        if not 0 <= settings.take <= settings.recipe:
            raise EnvError(f"bad TextWorld cooking task {task!r}: take must be 0..recipe ({settings.recipe})")
        if settings.go not in GO_CHOICES:
            raise EnvError(f"bad TextWorld cooking task {task!r}: go must be one of {GO_CHOICES}")
        return settings

    @property
    def name(self) -> str:
        return "+".join([f"recipe{self.recipe}", f"take{self.take}", f"go{self.go}", *self.flags])

    def tw_make_args(self) -> list[str]:
        args = ["--recipe", str(self.recipe), "--take", str(self.take), "--go", str(self.go)]
        return args + [f"--{flag}" for flag in self.flags]


def game_path(cache_dir: str | Path, task: str, split: str, variation: int) -> Path:
    settings = CookingSettings.parse(task)
    seed = SPLIT_SEED_OFFSET[split] + variation
    return Path(cache_dir) / "textworld" / "cooking" / settings.name / split / f"seed{seed}.z8"


def ensure_game(cache_dir: str | Path, task: str, split: str, variation: int) -> Path:
    """Generate the game once (under a file lock: several actors may ask at once) and return its path."""
    path = game_path(cache_dir, task, split, variation)
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if path.exists():
            return path
        tmp = path.with_name(f"tmp-{os.getpid()}-{path.name}")
        command = [
            str(Path(sys.executable).with_name("tw-make")), "tw-cooking",
            *CookingSettings.parse(task).tw_make_args(),
            "--split", split, "--seed", str(SPLIT_SEED_OFFSET[split] + variation),
            "--output", str(tmp), "--silent", "-f",
        ]  # fmt: skip
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"tw-make failed for {task} {split} variation {variation}: {result.stderr[-2000:]}")
        for suffix in (".json", ".z8"):  # the .z8 last: its presence means the game is complete
            tmp.with_suffix(suffix).rename(path.with_suffix(suffix))
        tmp.with_suffix(".ni").unlink(missing_ok=True)
    return path


def ensure_games(cache_dir: str | Path, games: list[tuple[str, str, int]], workers: int = 2) -> list[Path]:
    """Generate many (task, split, variation) games in parallel before actors need them."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda g: ensure_game(cache_dir, *g), games))


def clean_feedback(text: str) -> str:
    """Drop the title art, the trailing prompt/status line and runs of blank lines."""
    text = text.split("\n>")[0]
    lines = [line.rstrip() for line in text.splitlines()]
    lines = [line for line in lines if line.strip() and not _BANNER_LINE.match(line)]
    return "\n".join(lines).strip()


# TextWorld's game loading and state tracking share module-level parsers (tatsu): two envs of one
# process loading games at once fail inside them. Every call into the library holds this lock, so a
# rollout worker may reset and step its envs from a thread pool (they then take turns in the library).
_LIBRARY = threading.RLock()


class TextWorldCookingEnv(TextEnv):
    name = "textworld"

    def __init__(
        self,
        tasks: list[str],
        cache_dir: str | Path,
        variations: dict[str, int],
        max_steps: int = 50,
    ) -> None:
        super().__init__(max_steps)
        import textworld  # imported here so that other envs do not pay for it

        for task in tasks:
            CookingSettings.parse(task)
        for split, count in variations.items():
            check_split(split)
            if not 1 <= count <= MAX_VARIATIONS:
                raise EnvError(f"variations[{split!r}]={count} must be in 1..{MAX_VARIATIONS} (seed ranges must not overlap)")
        self._textworld = textworld
        self._tasks = list(tasks)
        self._variations = dict(variations)
        self.cache_dir = Path(cache_dir)
        self._game = None
        self._admissible: list[str] = []
        self._max_score = 1
        self._walkthrough: list[str] = []
        self._plan: list[str] = []  # TextWorld's winning commands from the current state

    def tasks(self, split: str) -> list[str]:
        check_split(split)
        return list(self._tasks)

    def num_variations(self, task: str, split: str) -> int:
        return self._variations.get(split, 0)

    def _reset(self, task: str, variation: int, split: str) -> tuple[str, str, float]:
        path = ensure_game(self.cache_dir, task, split, variation)
        self.close()
        infos = self._textworld.EnvInfos(
            admissible_commands=True,
            max_score=True,
            won=True,
            lost=True,
            objective=True,
            score=True,
            policy_commands=True,  # the expert's plan from the current state: labels each step's progress
            extras=["walkthrough"],
        )
        with _LIBRARY:
            self._game = self._textworld.start(str(path), request_infos=infos)
            state = self._game.reset()
        self._max_score = max(int(state.max_score), 1)
        self._admissible = list(state.admissible_commands)
        self._walkthrough = list(state.get("extra.walkthrough") or [])
        self._plan = list(state.policy_commands or [])
        # The intro repeats the objective, which the prompt already shows as the goal.
        observation = clean_feedback(state.feedback).removeprefix(state.objective).strip()
        return state.objective, observation, state.score / self._max_score

    def _step(self, action: str) -> tuple[str, float, bool, bool, bool]:
        command = " ".join(action.split())
        recognised = command.lower() in self._admissible
        with _LIBRARY:
            state, score, _ = self._game.step(command)
        self._admissible = list(state.admissible_commands or [])
        self._plan = list(state.policy_commands or [])
        return clean_feedback(state.feedback) or "Nothing happens.", score / self._max_score, bool(state.won), bool(state.lost), recognised

    def admissible_actions(self) -> list[str]:
        return list(self._admissible)

    def expert_distance(self) -> int:
        return len(self._plan)

    def expert_actions(self, task: str, variation: int, split: str = "train") -> list[str]:
        """The walkthrough ``tw-make`` stored in the game."""
        self.reset(task, variation, split)
        self.done = True
        if not self._walkthrough:
            raise EnvError(f"TextWorld game {task} {split} variation {variation} has no walkthrough")
        return list(self._walkthrough)

    def close(self) -> None:
        super().close()
        if self._game is not None:
            with _LIBRARY:
                self._game.close()
            self._game = None
