"""The run dir of an entry point: the validated config, its folder and the config snapshot in it."""

from __future__ import annotations

from pathlib import Path

from conf.schema import Config, validate


def begin_run(dict_cfg, job: str) -> tuple[Config, Path]:
    """Validate the Hydra config for ``job`` (before anything starts), make the run dir, snapshot the
    config there."""
    from omegaconf import OmegaConf

    cfg = validate(dict_cfg, job)
    if cfg.resume:
        path = Path(cfg.resume)  # a resumed run goes on in its own run dir
        if (path / "config.yaml").exists():
            (path / "config.yaml").rename(path / f"config.before-resume-{len(list(path.glob('config.before-resume-*')))}.yaml")
    elif cfg.run_dir:
        path = Path(cfg.run_dir)
    else:
        from hydra.core.hydra_config import HydraConfig

        path = Path(HydraConfig.get().runtime.output_dir)
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.yaml").write_text(OmegaConf.to_yaml(dict_cfg))
    return cfg, path
