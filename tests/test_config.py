"""Configuration: Hydra composes it, the schema types it, ``validate`` names every bad key."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException

from conf.schema import Config, ConfigError, register, validate

CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")
register()


def load(*overrides: str) -> Config:
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return validate(compose("config", overrides=list(overrides)))


def test_default_config_is_valid():
    cfg = load()
    assert cfg.env.name == "textworld" and cfg.engine.kind == "vllm"
    assert cfg.rollout.num_actors == 2 and cfg.rollout.envs_per_actor == 4


@pytest.mark.parametrize(
    "override, key",
    [
        ("rollout.num_actors=-1", "rollout.num_actors=-1"),
        ("rollout.envs_per_actor=0", "rollout.envs_per_actor=0"),
        ("env.name=webshop2", "env.name='webshop2'"),
        ("env.split=dev", "env.split='dev'"),
        ("env.max_steps=0", "env.max_steps=0"),
        ("engine.kind=tgi", "engine.kind='tgi'"),
        ("engine.cpu_threads=all", "engine.cpu_threads='all'"),
        ("model.path=/no/such/model", "model.path='/no/such/model'"),
        ("model.dtype=int4", "model.dtype='int4'"),
        ("rollout.top_p=1.5", "rollout.top_p=1.5"),
        ("rollout.max_tokens=5000", "rollout.max_tokens=5000"),
        ("learner.staleness=-1", "learner.staleness=-1"),
        ("reward.mode=magic", "reward.mode='magic'"),
        ("reward.eps=0", "reward.eps=0"),
        ("reward.evaluator=oracle", "reward.evaluator='oracle'"),
        ("reward.calibration_window=4", "reward.calibration_window=4"),
        ("reward.step_question='Was it good?'", "reward.step_question='Was it good?'"),
        ("model.builtin=gpt5", "model.builtin='gpt5'"),
        ("episodes=10", "episodes=10"),
    ],
)
def test_bad_values_name_key_value_and_what_is_valid(override, key):
    with pytest.raises(ConfigError, match="invalid: ") as err:
        load(override)
    assert key in str(err.value)


@pytest.mark.parametrize("override", ["rollout.bogus=1", "rollout.num_actors=two", "nosuchgroup.x=1"])
def test_unknown_keys_and_wrong_types_are_rejected_by_hydra(override):
    with pytest.raises(ConfigCompositionException) as err:
        load(override)
    assert override.split("=")[0].split(".")[-1] in str(err.value) + str(err.value.__cause__)


def test_corridor_group_switches_the_env():
    cfg = load("env=corridor", "engine=hf")
    assert cfg.env.name == "corridor" and cfg.env.tasks == ["corridor-3"] and cfg.engine.kind == "hf"


def test_reward_presets_and_the_cross_field_rules():
    cfg = load("reward=mise")
    assert cfg.reward.mode == "mise" and cfg.reward.use_mi and cfg.reward.calibration_weight > 0
    assert load("reward=prm").reward.mode == "prm"
    # Training the evaluator's answer needs log-probs at temperature 1 on both sides.
    with pytest.raises(ConfigError, match="rollout.temperature=0.7"):
        load("reward=mise", "rollout.temperature=0.7")
    assert load("reward=mise", "rollout.temperature=0.7", "reward.calibration_weight=0").reward.calibration_weight == 0
    with pytest.raises(ConfigError, match="reward.use_mi=False"):
        load("reward=mise", "reward.use_self_eval=false", "reward.use_mi=false")
    with pytest.raises(ConfigError, match="model.builtin='tiny-corridor'"):
        load("model=tiny_corridor")  # warm-started on corridor prompts, not TextWorld


def test_experiment_presets_compose():
    cfg = load("experiment=corridor_ablation", "reward=mise")
    assert cfg.env.name == "corridor" and cfg.model.builtin == "tiny-corridor" and cfg.engine.kind == "hf"
    assert cfg.reward.mode == "mise" and cfg.learner.omega == 1.0
    cfg = load("experiment=textworld_ablation", "reward=prm")
    assert cfg.env.name == "textworld" and cfg.reward.mode == "prm" and cfg.learner.omega == 1.0
