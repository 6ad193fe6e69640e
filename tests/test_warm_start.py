"""Warm start: expert demonstrations through the rollout's prompt path, cloned by the learner, merged."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from actors.engine import Sampling
from actors.expert import end_of_reply_ids, replay
from actors.prompting import PromptSettings
from actors.rollout import RolloutWorker
from conf.schema import register, validate
from core.episode import EpisodeSpec
from envs.corridor import CorridorEnv
from tests.helpers import HFFactory

pytestmark = pytest.mark.slow
CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")
VARIATIONS = {"train": 100, "valid": 10, "test": 10}


def corridor():
    return CorridorEnv([2], VARIATIONS, max_steps=6)


def test_a_demonstration_has_the_prompt_ids_a_rollout_actor_builds(warm_model_dir):
    """Replaying the commands a rollout actor played gives token for token the prompts it built."""
    from transformers import AutoTokenizer

    settings = PromptSettings(history_window=2)
    worker = RolloutWorker(0, HFFactory(warm_model_dir), corridor, warm_model_dir, 4, Sampling(max_tokens=8), settings, 2048)
    episodes = worker.run([EpisodeSpec("corridor-2", v, seed=v) for v in range(6)])
    worker.close()
    played = [e for e in episodes if e.status == "finished" and e.num_invalid == 0 and len(e.steps) >= 3]
    assert played, "no episode of 3+ valid steps to compare"
    tokenizer, env = AutoTokenizer.from_pretrained(warm_model_dir), corridor()
    for episode in played:
        demo = replay(
            env, tokenizer, settings, EpisodeSpec("corridor-2", episode.variation), [s.action for s in episode.steps], end_of_reply_ids(warm_model_dir)
        )
        assert [s.prompt_ids for s in demo.steps] == [s.prompt_ids for s in episode.steps]
        assert [s.observation for s in demo.steps] == [s.observation for s in episode.steps]
        assert (demo.success, demo.score) == (episode.success, episode.score)
        for step in demo.steps:  # the expert's command, then the token every engine stops at
            assert tokenizer.decode(step.action_ids, skip_special_tokens=True) == step.action
            assert step.action_ids[-1] == tokenizer.convert_tokens_to_ids("<|im_end|>")


def warm_start_config(model_dir: str, cache_dir: Path, *overrides: str):
    register()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        dict_cfg = compose("config", overrides=[
            "env=corridor", "env.tasks=[corridor-2]", f"env.cache_dir={cache_dir}", f"model.path={model_dir}",
            "engine=hf", "rollout.history_window=0", "learner.bf16_autocast=false", "warm_start.demonstrations=16",
            "warm_start.held_out=8", "warm_start.epochs=4", "warm_start.batch_demonstrations=8", "warm_start.lr=3e-3", *overrides,
        ])  # fmt: skip
    return validate(dict_cfg, "warm_start")


def test_the_warm_start_lowers_the_demonstrations_nll_and_is_built_once(warm_model_dir, tmp_path):
    """The format-warm tiny model (it picks the right exit 30% of the time) imitates the corridor's expert: NLL per action token falls on the train
    demonstrations and on held-out (valid) ones; the merged model is cached by what made it."""
    import json

    from learner.warm_start import ensure_warm_start, warm_start_dir

    cfg = warm_start_config(warm_model_dir, tmp_path)
    merged = ensure_warm_start(cfg, warm_model_dir, quiet=True)
    figures = json.loads((merged.parent / "warm_start.json").read_text())
    assert figures["demonstrations"] == 16 and figures["held_out"] == 8 and figures["left_out"] == []
    print(f"demonstration NLL per token: train {figures['nll_before']['train']:.3f} -> {figures['nll_after']['train']:.3f}, "
          f"held out {figures['nll_before']['held_out']:.3f} -> {figures['nll_after']['held_out']:.3f}")  # fmt: skip
    assert figures["nll_after"]["train"] < 0.95 * figures["nll_before"]["train"]  # measured: 0.486 -> 0.438
    assert figures["nll_after"]["held_out"] < 0.95 * figures["nll_before"]["held_out"]  # 0.493 -> 0.445
    assert (merged / "config.json").exists() and (merged.parent / "adapter" / "adapter_config.json").exists()
    built = (merged / "model.safetensors").stat().st_mtime_ns
    assert ensure_warm_start(cfg, warm_model_dir, quiet=True) == merged  # cached: not built again
    assert (merged / "model.safetensors").stat().st_mtime_ns == built
    other = warm_start_config(warm_model_dir, tmp_path, "warm_start.lr=1e-3")
    assert warm_start_dir(other, warm_model_dir) != warm_start_dir(cfg, warm_model_dir)  # another recipe, another entry
    sparse = warm_start_config(warm_model_dir, tmp_path, "env.reward=success", "env.split=valid")
    assert warm_start_dir(sparse, warm_model_dir) == warm_start_dir(cfg, warm_model_dir)  # the same demonstrations: one entry


def test_the_merged_model_gives_the_same_greedy_tokens_in_vllm_and_hf(warm_model_dir, tmp_path):
    """The merged directory is a plain model both engines load alike (no adapter left to apply)."""
    from transformers import AutoTokenizer

    from actors.hf_engine import HFEngine
    from actors.vllm_engine import VLLMEngine
    from learner.warm_start import ensure_warm_start
    from pipeline.tiny_model import corridor_prompt

    merged = str(ensure_warm_start(warm_start_config(warm_model_dir, tmp_path, "warm_start.held_out=0"), warm_model_dir, quiet=True))
    tokenizer, env, settings = AutoTokenizer.from_pretrained(merged), CorridorEnv([2], VARIATIONS), PromptSettings(history_window=0)
    prompts = []
    for variation in range(4):
        env.reset("corridor-2", variation)
        prompts.append(corridor_prompt(tokenizer, env, settings))
    greedy = Sampling(temperature=0.0, max_tokens=6)
    hf = HFEngine(merged, max_versions=1, dtype="float32", num_threads=2)
    hf_tokens = [g.token_ids for g in hf.generate(prompts, [0] * 4, greedy)]
    hf.close()
    vllm = VLLMEngine(merged, max_versions=1, dtype="float32", max_model_len=1024, kv_cache_gib=1)
    vllm_tokens = [g.token_ids for g in vllm.generate(prompts, [0] * 4, greedy)]
    vllm.close()
    assert vllm_tokens == hf_tokens
    assert all(tokenizer.decode(t, skip_special_tokens=True).startswith(("go ", "take")) for t in hf_tokens)  # it learnt the format


def test_a_matched_action_keeps_the_generated_token_ids(smollm2_dir):
    """With action_match=admissible the env gets the admissible command a reply resembles, while the
    step keeps what was sampled: its token ids decode to the raw reply, one log-prob per token."""
    settings = PromptSettings(history_window=0, action_match="admissible")
    env_factory = lambda: CorridorEnv([2], VARIATIONS, max_steps=4)  # noqa: E731
    worker = RolloutWorker(0, HFFactory(smollm2_dir), env_factory, smollm2_dir, 4, Sampling(max_tokens=16), settings, 2048)
    episodes = worker.run([EpisodeSpec("corridor-2", v, seed=v) for v in range(8)])
    tokenizer = worker.tokenizer
    worker.close()
    steps = [s for e in episodes for s in e.steps]
    matched = [s for s in steps if s.matched]
    assert matched, f"no reply was mapped in {len(steps)} steps: {[s.reply_text for s in steps][:5]}"
    admissible = set(CorridorEnv([2], VARIATIONS).admissible_actions())
    for step in matched:
        assert step.action in admissible and step.action != step.command and step.invalid_reason is None
        assert tokenizer.decode(step.action_ids, skip_special_tokens=True) == step.reply_text
        assert len(step.action_logprobs) == len(step.action_ids)
        assert step.recognised  # the env understood the mapped command


def test_the_ablation_seeds_and_modes_start_from_the_main_jobs_warm_start(tmp_path):
    """experiment=textworld_ablation differs from the main job only where the warm start does not
    depend on it (env.reward, the reward mode, the RL seed and budget): one cache entry serves all."""
    register()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        main = validate(compose("config", overrides=["experiment=textworld_debug"]), "train")
        runs = [validate(compose("config", overrides=["experiment=textworld_ablation", f"reward={mode}", f"seed={seed}"]), "train")
                for mode in ("env", "mise") for seed in (0, 2)]  # fmt: skip
        moved = validate(compose("config", overrides=["experiment=textworld_ablation", "warm_start.seed=1"]), "train")
    from learner.warm_start import warm_start_dir

    assert {warm_start_dir(run, str(tmp_path)) for run in runs} == {warm_start_dir(main, str(tmp_path))}
    assert warm_start_dir(moved, str(tmp_path)) != warm_start_dir(main, str(tmp_path))
    assert all(run.env.reward == "success" for run in runs) and main.env.reward == "score"
