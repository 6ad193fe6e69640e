"""Text environments behind one interface (envs.base.TextEnv) and the factory that builds them from config."""

from __future__ import annotations

from pathlib import Path

from core.paths import default_cache_dir
from envs.base import EnvError, TextEnv


def make_env(cfg) -> TextEnv:
    """Build one environment instance from an ``EnvConfig``."""
    if cfg.name == "corridor":
        from envs.corridor import CorridorEnv, corridor_length

        return CorridorEnv([corridor_length(t) for t in cfg.tasks], dict(cfg.variations), max_steps=cfg.max_steps)
    if cfg.name == "textworld":
        from envs.textworld_cooking import TextWorldCookingEnv

        cache = Path(cfg.cache_dir) if cfg.cache_dir else default_cache_dir()
        return TextWorldCookingEnv(list(cfg.tasks), cache, dict(cfg.variations), max_steps=cfg.max_steps)
    if cfg.name == "scienceworld":
        from envs.scienceworld import ScienceWorldEnv

        env = ScienceWorldEnv(
            list(cfg.tasks), cfg.simplification, cfg.max_steps, dict(cfg.step_caps), cfg.jvm_heap_mb, list(cfg.jvm_options)
        )
        # Episode specs draw variations 0..env.variations[split]-1 for every task; each task must have that many.
        for split, count in cfg.variations.items():
            for task in cfg.tasks:
                if count > env.num_variations(task, split):
                    env.close()
                    raise EnvError(
                        f"env.variations.{split}={count} but ScienceWorld task {task!r} has only "
                        f"{env.num_variations(task, split)} {split} variations; use at most that many"
                    )
        return env
    raise EnvError(f"env.name={cfg.name!r} is not a known environment; valid: corridor, textworld, scienceworld")
