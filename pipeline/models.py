"""The model directory every engine and the learner of a run load."""

from __future__ import annotations

from conf.schema import Config


def resolve_model_dir(cfg: Config) -> str:
    """The model every engine and the learner load: ``model.warm_start``'s merged model when set (``auto``
    builds it once from this config's env), else ``model.path`` or the built-in ``model.builtin``."""
    if cfg.model.warm_start == "auto":
        from learner.warm_start import ensure_warm_start

        return str(ensure_warm_start(cfg, base_model_dir(cfg)))
    if cfg.model.warm_start:
        return cfg.model.warm_start
    return base_model_dir(cfg)


def base_model_dir(cfg: Config) -> str:
    if cfg.model.path:
        return cfg.model.path
    if cfg.model.builtin == "tiny-corridor":
        from envs.corridor import corridor_length
        from pipeline.tiny_model import ensure_tiny_corridor_model

        longest = max(corridor_length(task) for task in cfg.env.tasks)
        return str(ensure_tiny_corridor_model(longest, cfg.rollout.history_window))
    from pipeline.embedded_model import ensure_embedded_model

    return str(ensure_embedded_model())
