"""Build the warm start of a config: behaviour cloning of its env's expert solutions (learner/warm_start.py).

    python -m launch.warm_start                                     # SmolLM2 on the default TextWorld setting
    python -m launch.warm_start env=scienceworld warm_start.demonstrations=8

Prints the folder of the merged model (cached: a second call with the same settings returns at once)
and the demonstrations' NLL before and after. Start RL from it with ``model.warm_start=auto`` (the same
overrides find the same cache entry) or ``model.warm_start=<printed folder>``.
"""

from __future__ import annotations

import json

import hydra
from omegaconf import DictConfig

from conf.schema import register
from launch.run_dir import begin_run
from learner.warm_start import ensure_warm_start
from pipeline.models import base_model_dir

register()


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
def main(dict_cfg: DictConfig) -> str:
    cfg, _ = begin_run(dict_cfg, "warm_start")
    merged = ensure_warm_start(cfg, base_model_dir(cfg))
    figures = json.loads((merged.parent / "warm_start.json").read_text())
    nll = lambda key: " / ".join(f"{v:.3f}" for v in figures[key].values() if v is not None)  # noqa: E731
    print(f"warm start: {figures['demonstrations']} demonstrations, NLL per action token (train / held out) "
          f"{nll('nll_before')} -> {nll('nll_after')}\nmerged model: {merged}")  # fmt: skip
    return str(merged)


if __name__ == "__main__":
    main()
