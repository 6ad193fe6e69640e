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
