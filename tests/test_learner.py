"""The learner for real: DeepSpeed ranks as Ray actors over gloo, versions pushed to vLLM rollout actors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from actors.engine import Sampling
from actors.prompting import PromptSettings
from actors.rollout import RolloutWorker
from conf.schema import Config, EngineConfig, EnvConfig, LearnerConfig, ModelConfig, RolloutConfig
from core.episode import EpisodeSpec
from envs.corridor import CorridorEnv

pytestmark = pytest.mark.slow
PROMPT = PromptSettings(history_window=0)


def corridor():
    return CorridorEnv([1], {"train": 100}, max_steps=3)


class HFFactory:
    def __init__(self, model_dir):
        self.model_dir = model_dir

    def __call__(self):
        from actors.hf_engine import HFEngine

        return HFEngine(self.model_dir, max_versions=2, dtype="float32", num_threads=2)


def play(model_dir, count) -> list:
    worker = RolloutWorker(0, HFFactory(model_dir), corridor, model_dir, 4, Sampling(max_tokens=6, seed=1), PROMPT, 2048)
    return worker.run([EpisodeSpec("corridor-1", v // 4) for v in range(count)])


def learner_config(model_dir, **learner) -> Config:
    return Config(
        env=EnvConfig(name="corridor", tasks=["corridor-1"], max_steps=3, variations={"train": 100}),
        model=ModelConfig(path=model_dir, dtype="float32"),
        engine=EngineConfig(kind="vllm", max_model_len=2048),
        rollout=RolloutConfig(num_actors=1, envs_per_actor=4, max_tokens=6, history_window=0),
        learner=LearnerConfig(**{"bf16_autocast": False, "lr": 1e-3, **learner}),
    )


@pytest.mark.parametrize("zero_stage", [2, 3])
def test_two_ranks_end_with_identical_adapters(ray_local, warm_model_dir, zero_stage):
    from ray.util.queue import Queue

    from learner.ranks import make_learners

    episodes = play(warm_model_dir, 16)
    ranks, rendezvous = make_learners(learner_config(warm_model_dir, num_ranks=2, zero_stage=zero_stage, micro_batch_tokens=256), warm_model_dir)
    initial = ray_local.get([r.trainable_parameters.remote() for r in ranks])[0]  # a collective under ZeRO-3
    queue = Queue()
    for step in range(2):
        for episode in episodes[8 * step : 8 * step + 8]:
            queue.put(episode)
        metrics = ray_local.get([r.train_from_queue.remote(queue, 4) for r in ranks])
        assert [m["episodes"] for m in metrics] == [4, 4]
    weights = ray_local.get([r.trainable_parameters.remote() for r in ranks])
    assert weights[0].keys() == weights[1].keys() and len(weights[0]) > 0
    for name in weights[0]:
        assert torch.equal(weights[0][name], weights[1][name]), name
    changed = sum(not torch.equal(initial[n], weights[0][n]) for n in initial)
    assert changed == len(initial)  # every LoRA matrix moved
    # Publishing gathers full tensors on every rank (under ZeRO-3 each rank holds only a shard).
    adapters = ray_local.get([r.publish.remote() for r in ranks])
    assert adapters[0].version == adapters[1].version == 1
    for name, tensor in adapters[0].tensors.items():
        assert tensor.numel() > 0 and torch.equal(tensor, adapters[1].tensors[name]), name
    lora_a = next(t for n, t in adapters[0].tensors.items() if "q_proj.lora_A" in n)
    assert tuple(lora_a.shape) == (8, 128)  # rank x hidden of the tiny model
    # What the run publishes: rank 0 alone puts version 2 into the object store; the others only gather.
    shared = ray_local.get([r.share.remote() for r in ranks])
    assert shared[1] is None and shared[0].version == 2
    fetched = shared[0].fetch()
    assert fetched.version == 2 and fetched.tensors.keys() == adapters[0].tensors.keys()
    for r in ranks:
        ray_local.kill(r)


def test_after_publish_actors_sample_version_n_with_the_learners_logprobs(ray_local, warm_model_dir, tmp_path):
    from ray.util.queue import Queue

    from actors.pool import make_rollout_actors
    from learner.ranks import make_learners

    cfg = learner_config(warm_model_dir)
    (learner,), rendezvous = make_learners(cfg, warm_model_dir)
    (actor,) = make_rollout_actors(cfg, warm_model_dir)
    specs = [EpisodeSpec("corridor-1", v // 4) for v in range(8)]
    queue = Queue()
    first_batch = ray_local.get(actor.run.remote(specs))
    for episode in first_batch:
        queue.put(episode)
    ray_local.get(learner.train_from_queue.remote(queue, 8))
    published = ray_local.get(learner.share.remote())
    assert published.version == 1 and published.check is not None
    episodes = ray_local.get(actor.run.remote(specs[:4], published))  # the actor loads and checks it first
    (swap,) = ray_local.get(actor.report.remote())["swaps"]
    assert swap["version"] == 1 and swap["probe_diff"] < 1e-3  # float32 on both sides
    steps = [s for e in episodes for s in e.steps]
    assert {s.policy_version for s in steps} == {1}
    learner_logprobs = ray_local.get(learner.adapter_logprobs.remote([s.prompt_ids for s in steps], [s.action_ids for s in steps]))
    worst = max(abs(a - b) for s, lp in zip(steps, learner_logprobs) for a, b in zip(s.action_logprobs, lp))
    assert worst < 1e-3, worst

    # The checkpoint's adapter is a standard PEFT adapter giving the same log-probs.
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    ray_local.get(learner.save_checkpoint.remote(str(tmp_path / "ckpt")))
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(warm_model_dir, dtype=torch.float32), tmp_path / "ckpt" / "adapter")
    ids = torch.tensor([steps[0].prompt_ids + steps[0].action_ids])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, len(steps[0].prompt_ids) - 1 : -1]
    peft_logprobs = torch.log_softmax(logits, -1).gather(-1, torch.tensor(steps[0].action_ids)[:, None])[:, 0]
    assert torch.allclose(peft_logprobs, torch.tensor(learner_logprobs[0]), atol=1e-4)
    # Staleness: with S = 1, episodes of version 0 are dropped (and counted) once the learner is at 2.
    ray_local.get(learner.publish.remote())
    stale_queue = Queue()
    for episode in first_batch:
        stale_queue.put(episode)
    metrics = ray_local.get(learner.train_from_queue.remote(stale_queue, len(first_batch)))
    assert metrics["dropped_stale"] == len(first_batch) and metrics["trained_episodes"] == 0
    for handle in (learner, actor):
        ray_local.kill(handle)


def test_the_learner_can_hold_the_base_in_bf16_with_lora_and_adam_in_float32(ray_local, warm_model_dir):
    """model.dtype=bfloat16 (the default) used to be ignored: the base was loaded in float32 everywhere
    (28 GB per rank at 7B). The trained parts stay float32, as mixed-precision LoRA training keeps them."""
    import dataclasses

    from ray.util.queue import Queue

    from learner.ranks import learner_dtype, make_learners

    cfg = learner_config(warm_model_dir)
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, dtype="bfloat16"), learner=dataclasses.replace(cfg.learner, bf16_autocast=True))
    assert learner_dtype(cfg) == "float32"  # on CPU (see learner_dtype); a GPU rank takes model.dtype
    assert learner_dtype(dataclasses.replace(cfg, learner=dataclasses.replace(cfg.learner, num_gpus_per_rank=1))) == "bfloat16"
    (learner,), rendezvous = make_learners(cfg, warm_model_dir, dtype="bfloat16")  # the GPU path's dtypes, here on CPU
    queue = Queue()
    for episode in play(warm_model_dir, 4):
        queue.put(episode)
    metrics = ray_local.get(learner.train_from_queue.remote(queue, 4))
    assert metrics["trained_episodes"] == 4 and np.isfinite(metrics["loss"])
    assert ray_local.get(learner.dtypes.remote()) == {"base": ["bfloat16"], "lora": ["float32"], "optimizer_state": ["float32"]}
    ray_local.kill(learner)


def test_the_rendezvous_port_is_listening_before_any_rank_starts():
    """No gap between choosing the port and listening on it: another process binding the port the ranks
    are told fails at once (when rank 0 bound a port chosen earlier, a Ray worker starting meanwhile
    could take it, and the rank died with EADDRINUSE)."""
    import socket

    from learner.ranks import rendezvous_store

    store = rendezvous_store()
    with socket.socket() as other, pytest.raises(OSError, match="in use"):
        other.bind(("127.0.0.1", store.port))


def one_policy_step(model_dir: str, advantages: list[float]) -> tuple[dict, dict, dict]:
    """A fresh one-rank learner (seed 0) takes one policy step over six fixed random samples with these
    advantages; returns its adapter before and after, and the step's totals. Run in a process of its own
    (one process group, and one DeepSpeed engine, per process)."""
    import dataclasses

    from learner.learner import Learner
    from learner.samples import Sample
    from learner.warm_start import single_rank

    rng = np.random.default_rng(0)
    samples = [Sample(rng.integers(0, 1000, 40).tolist(), 34, rng.uniform(-3, -0.5, 6).tolist(), 0.0, 0) for _ in range(6)]
    with single_rank():
        learner = Learner(LearnerConfig(lr=1e-3, bf16_autocast=False, micro_batch_tokens=128), model_dir, seed=0)
        before = learner.trainable_parameters()
        totals = learner._optimizer_step([dataclasses.replace(s, advantage=a) for s, a in zip(samples, advantages)], "policy")
        return before, learner.trainable_parameters(), totals


def test_samples_with_zero_advantage_are_not_computed_and_the_step_is_the_same(warm_model_dir):
    """A GRPO group whose episodes all scored alike has advantage 0 at every token: without a KL term its
    loss and gradient are exactly 0, so the learner skips its forward and backward. The step must be the
    one computing every sample gives (those samples at advantage 1e-30 are computed: gradient ~0)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        initial, skipping, skip_totals = pool.submit(one_policy_step, warm_model_dir, [1.0, -1.0, 0.0, 0.0, 0.5, 0.0]).result()
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        _, computing, compute_totals = pool.submit(one_policy_step, warm_model_dir, [1.0, -1.0, 1e-30, 1e-30, 0.5, 1e-30]).result()
    assert skip_totals["skipped_samples"] == 3 and compute_totals["skipped_samples"] == 0
    assert skip_totals["micro_batches"] < compute_totals["micro_batches"]
    assert skip_totals["loss"] == pytest.approx(compute_totals["loss"], rel=1e-5)
    assert any(not torch.equal(initial[n], skipping[n]) for n in initial)  # the step moved the adapter
    for name in initial:
        assert torch.allclose(skipping[name], computing[name], atol=1e-7), name
