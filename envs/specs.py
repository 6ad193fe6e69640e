"""The episodes a job plays: (task, variation, split) specs drawn from the env's variations, and the
assets they need made ahead (TextWorld games)."""

from __future__ import annotations

import os
import random
import time
from concurrent.futures import Future, ThreadPoolExecutor

from conf.schema import Config, ConfigError
from core.episode import EpisodeSpec
from core.paths import default_cache_dir
from envs import variation_counts


def episode_specs(cfg: Config, num_groups: int, split: str, seed: int, uid_prefix: str) -> list[EpisodeSpec]:
    """``num_groups`` random (task, variation) pairs of ``split``, each repeated ``group_size`` times.
    Each spec gets a uid (``<prefix>-<index>``) and its own sampling seed drawn from ``seed``."""
    rng = random.Random(seed)
    counts = variation_counts(cfg.env, [split])[split]  # checked in this process, before any actor
    specs = []
    for g in range(num_groups):
        task = cfg.env.tasks[g % len(cfg.env.tasks)]
        variation = rng.randrange(counts[task])
        for _ in range(cfg.group_size):
            specs.append(EpisodeSpec(task, variation, split, uid=f"{uid_prefix}-{len(specs):05d}", seed=rng.randrange(2**31)))
    return specs


HELD_OUT_SEED = 1_000_003  # the held-out episodes' sampling seeds: the same for every run seed


def held_out_specs(cfg: Config) -> list[EpisodeSpec]:
    """``launch.train``'s before-and-after evaluation: ``eval_groups`` valid-split variations, the first
    ones of each task in turn (task 0 variation 0, task 1 variation 0, ...), each played ``group_size``
    times. The games and sampling seeds do not depend on the run's seed, so every seed of a config plays
    the same held-out episodes: one before-figure per config, and after-figures that compare."""
    if not cfg.eval_groups:
        return []
    counts = variation_counts(cfg.env, ["valid"])["valid"]  # checked in this process, before any actor
    tasks = cfg.env.tasks
    rng = random.Random(HELD_OUT_SEED)
    specs = []
    for g in range(cfg.eval_groups):
        task, variation = tasks[g % len(tasks)], g // len(tasks)
        if variation >= counts[task]:
            raise ConfigError(f"config eval_groups={cfg.eval_groups} is invalid: task {task!r} has {counts[task]} valid variations, {variation + 1} asked for")
        for _ in range(cfg.group_size):
            specs.append(EpisodeSpec(task, variation, "valid", uid=f"eval-{len(specs):05d}", seed=rng.randrange(2**31)))
    return specs


def step_specs(cfg: Config, step: int) -> list[EpisodeSpec]:
    """The training episodes of learner step ``step`` (a different draw of variations every step)."""
    groups = cfg.learner.episodes_per_step // cfg.group_size
    return episode_specs(cfg, groups, cfg.env.split, seed=cfg.seed * 100_003 + step, uid_prefix=f"step{step:05d}")


def prepare_env_assets(cfg: Config, specs: list[EpisodeSpec], workers: int | None = None) -> None:
    """Generate the TextWorld games the specs need before actors ask for them (``workers`` at once: all
    cores unless given)."""
    if cfg.env.name == "textworld":
        from envs.textworld_cooking import ensure_games

        cache = cfg.env.cache_dir or default_cache_dir()
        ensure_games(cache, sorted({(s.task, s.split, s.variation) for s in specs}), workers=workers or os.cpu_count() or 1)


class AssetsAhead:
    """Each learner step's env assets, made ahead: while step k plays, one background thread makes the
    games of steps k+1 .. k+``ahead`` (one ``tw-make`` at a time, so the rollouts keep the other cores),
    and ``ready(k + 1)`` then finds them made. Only the first step's (and a step the thread has not
    reached yet) are made on the critical path; ``wait_s`` is the time ``ready`` waited in all."""

    def __init__(self, cfg: Config, steps: int, ahead: int = 1) -> None:
        self.cfg, self.steps, self.ahead = cfg, steps, ahead
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="env-assets")
        self.made: dict[int, Future] = {}
        self.wait_s = 0.0

    def ready(self, step: int) -> None:
        """Return once step ``step``'s assets exist (an error making them is raised here), and start
        making the next ``ahead`` steps' in the background."""
        start = time.perf_counter()
        made = self.made.pop(step, None)
        if made is None:
            prepare_env_assets(self.cfg, step_specs(self.cfg, step))
        else:
            made.result()
        self.wait_s += time.perf_counter() - start
        for later in range(step + 1, min(step + self.ahead, self.steps - 1) + 1):
            if later not in self.made:
                self.made[later] = self.pool.submit(prepare_env_assets, self.cfg, step_specs(self.cfg, later), 1)

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


def evaluation_specs(cfg: Config) -> list[EpisodeSpec]:
    """``launch.evaluate``'s episodes: variations 0..K-1 of the split for every task (a task with fewer
    variations plays all it has)."""
    k, split = cfg.evaluate.episodes_per_task, cfg.evaluate.split
    counts = variation_counts(cfg.env, [split])[split]  # checks the env's limits here, for this split only
    return [EpisodeSpec(task, v, split, uid=f"{task}-{v}") for task in cfg.env.tasks for v in range(min(k, counts[task]))]
