"""Text environments behind one interface (envs.base.TextEnv) and the factory that builds them from config."""

from __future__ import annotations

from pathlib import Path

from core.paths import default_cache_dir
from envs.base import REWARDS, EnvError, TextEnv


def make_env(cfg, rollout=None) -> TextEnv:
    """Build one environment instance from an ``EnvConfig`` (``variation_counts`` has checked it), paying
    ``cfg.reward`` (envs.base.REWARDS). With
    the ``rollout`` config, it lists admissible actions only where the prompt shows them or replies
    are matched to them (ScienceWorld takes tens of ms to list them)."""
    if cfg.reward not in REWARDS:
        raise EnvError(f"env.reward={cfg.reward!r} is not a known reward; valid: {', '.join(REWARDS)}")
    env = _make_env(cfg)
    env.reward_kind = cfg.reward
    if rollout is not None:
        env.list_admissible = rollout.show_admissible or rollout.action_match == "admissible"
    return env


def _make_env(cfg) -> TextEnv:
    if cfg.name == "corridor":
        from envs.corridor import CorridorEnv, corridor_length

        return CorridorEnv([corridor_length(t) for t in cfg.tasks], dict(cfg.variations), max_steps=cfg.max_steps)
    if cfg.name == "textworld":
        from envs.textworld_cooking import TextWorldCookingEnv

        cache = Path(cfg.cache_dir) if cfg.cache_dir else default_cache_dir()
        return TextWorldCookingEnv(list(cfg.tasks), cache, dict(cfg.variations), max_steps=cfg.max_steps)
    if cfg.name == "scienceworld":
        from envs.scienceworld import ScienceWorldEnv

        return ScienceWorldEnv(list(cfg.tasks), cfg.simplification, cfg.max_steps, dict(cfg.step_caps), cfg.jvm_heap_mb, list(cfg.jvm_options))
    raise EnvError(f"env.name={cfg.name!r} is not a known environment; valid: corridor, textworld, scienceworld")


def variation_counts(cfg, splits) -> dict[str, dict[str, int]]:
    """How many variations each task of ``cfg.tasks`` offers in each of ``splits``: all it has, or
    ``cfg.variations[split]`` if that is a number (a cap per task, so it need not fit the smallest task).

    Builds one env instance in the calling process (for ScienceWorld one JVM, a few seconds, once per
    config), so every limit an env knows (task names, simplifications, counts) is checked here, in the
    driver, before any actor starts, and only for the splits the job plays."""
    splits = tuple(sorted(set(splits)))
    missing = [split for split in splits if split not in cfg.variations]
    if missing:
        raise EnvError(f"env.variations has no entry for split(s) {missing}: give a count (or null for all) per split played")
    key = (cfg.name, tuple(cfg.tasks), tuple((s, cfg.variations[s]) for s in splits), cfg.simplification, str(cfg.cache_dir))
    if key not in _COUNTS:
        _COUNTS[key] = _count_variations(cfg, splits)
    return _COUNTS[key]


_COUNTS: dict[tuple, dict[str, dict[str, int]]] = {}


def _count_variations(cfg, splits: tuple[str, ...]) -> dict[str, dict[str, int]]:
    tasks, caps = list(cfg.tasks), [(split, cfg.variations[split]) for split in splits]
    env = make_env(cfg)
    try:
        counts = {}
        for split, cap in caps:
            counts[split] = {task: env.num_variations(task, split) if cap is None else min(cap, env.num_variations(task, split)) for task in tasks}
            empty = [task for task, n in counts[split].items() if n == 0]
            if empty:
                raise EnvError(f"{cfg.name} task(s) {empty} have no variations in split {split!r}")
        return counts
    finally:
        env.close()
