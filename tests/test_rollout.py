"""Rollout workers and Ray rollout actors: batched turns, token-in/token-out records, versions, faults."""

from __future__ import annotations

import threading
import time

import pytest

from actors.engine import Sampling
from actors.prompting import PromptSettings, build_messages
from actors.rollout import RolloutWorker
from core.episode import EpisodeSpec
from envs.corridor import CorridorEnv
from tests.helpers import final, ledger_of, random_adapter

pytestmark = pytest.mark.slow
VARIATIONS = {"train": 100, "valid": 10, "test": 10}
PROMPT = PromptSettings(history_window=2)


class HFTinyEngine:
    def __init__(self, model_dir: str, max_versions: int = 2) -> None:
        self.model_dir, self.max_versions = model_dir, max_versions

    def __call__(self):
        from actors.hf_engine import HFEngine

        return HFEngine(self.model_dir, max_versions=self.max_versions, dtype="float32", num_threads=2)


class FlakyCorridor(CorridorEnv):
    """Injected fault: the first instance built breaks on its second step."""

    instances = 0

    def __init__(self) -> None:
        super().__init__([3], VARIATIONS, max_steps=6)
        FlakyCorridor.instances += 1
        self.breaks = FlakyCorridor.instances == 1

    def _check_running(self, action):  # every step, valid reply or not, passes here
        if self.breaks and self.num_steps == 1:
            raise RuntimeError("injected env crash")
        super()._check_running(action)


def corridor():
    return CorridorEnv([3], VARIATIONS, max_steps=6)


class HangingCorridor(CorridorEnv):
    """Injected fault: the first instance built hangs on its second step (until it is closed)."""

    instances = 0

    def __init__(self) -> None:
        super().__init__([3], VARIATIONS, max_steps=6)
        HangingCorridor.instances += 1
        self.hangs = HangingCorridor.instances == 1
        self.closed = threading.Event()

    def _check_running(self, action):  # every step, valid reply or not, passes here
        if self.hangs and self.num_steps == 1:
            self.closed.wait(120)  # closing the env ends the hang, as killing a JVM does
        super()._check_running(action)

    def close(self):
        self.closed.set()
        super().close()


def make_worker(tiny_model_dir, env_factory=corridor, num_envs=3, max_tokens=8, **faults):
    return RolloutWorker(0, HFTinyEngine(tiny_model_dir), env_factory, tiny_model_dir, num_envs,
                         Sampling(temperature=1.0, max_tokens=max_tokens, seed=0), PROMPT, max_model_len=2048, **faults)  # fmt: skip


def test_episodes_keep_exact_tokens_and_malformed_replies_are_answered(tiny_model_dir):
    from transformers import AutoTokenizer

    worker = make_worker(tiny_model_dir)
    specs = [EpisodeSpec("corridor-3", v) for v in (0, 0, 1, 1, 2)]
    episodes = worker.run(specs)
    assert sorted((e.task, e.variation) for e in episodes) == sorted((s.task, s.variation) for s in specs)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    for episode in episodes:
        assert episode.status == "finished" and 1 <= len(episode.steps) <= 6
        history = []
        observation = episode.first_observation
        for step in episode.steps:
            # The stored prompt is exactly the chat-templated prompt of that turn (no re-tokenising later).
            messages = build_messages(episode.goal, history, observation, CorridorEnv([3], VARIATIONS).admissible_actions(), PROMPT)
            assert step.prompt_ids == list(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)["input_ids"])
            assert tokenizer.decode(step.action_ids, skip_special_tokens=True) == step.reply_text
            assert len(step.action_logprobs) == len(step.action_ids) and all(lp <= 0 for lp in step.action_logprobs)
            assert step.policy_version == 0
            if step.invalid_reason:  # a random model mostly emits garbage: answered, never raised
                assert "not a valid action" in step.observation and step.action == ""
            history.append((step.action or step.reply_text.strip()[:40] or "<empty>", step.observation))
            observation = step.observation
    assert sum(e.num_invalid for e in episodes) > 0
    ledger = ledger_of(len(specs), episodes)
    assert ledger.started == ledger.finished == len(specs) and ledger.in_flight == 0
    # Several envs were served per generation call.
    assert worker.stats.generate_calls < worker.stats.env_steps


def test_a_crashing_env_fails_its_episode_is_replaced_and_the_run_goes_on(tiny_model_dir):
    FlakyCorridor.instances = 0
    worker = make_worker(tiny_model_dir, env_factory=FlakyCorridor, num_envs=2)
    episodes = worker.run([EpisodeSpec("corridor-3", v) for v in range(4)])
    failed = [e for e in episodes if e.status == "failed"]
    assert len(failed) == 1 and "env_step_error: RuntimeError: injected env crash" in failed[0].failure_reason
    assert FlakyCorridor.instances == 3  # two slots + one replacement
    ledger = ledger_of(4, episodes)
    assert ledger.started == 4 and ledger.finished == 3 and dict(ledger.failed) == {"env_step_error": 1}
    assert ledger.in_flight == 0


def test_a_crashed_env_is_replaced_and_its_episode_replayed_from_the_start(tiny_model_dir):
    FlakyCorridor.instances = 0
    worker = make_worker(tiny_model_dir, env_factory=FlakyCorridor, num_envs=2, max_episode_retries=1)
    specs = [EpisodeSpec("corridor-3", v) for v in range(4)]
    attempts = worker.run(specs)
    episodes = final(attempts)
    # One episode per spec, all finished: the crashed attempt was replayed on a fresh env.
    assert sorted(e.variation for e in episodes) == [0, 1, 2, 3] and all(e.status == "finished" for e in episodes)
    (attempt,) = [e for e in attempts if e.retried]
    assert (attempt.task, attempt.variation) == ("corridor-3", 0) and "injected env crash" in attempt.failure_reason
    ledger = ledger_of(len(specs), attempts)
    assert ledger.started == 5 and ledger.finished == 4 and dict(ledger.failed) == {"env_step_error": 1} and ledger.retried == 1
    assert ledger.in_flight == 0


def test_a_hung_env_times_out_is_replaced_and_the_episode_replayed(tiny_model_dir):
    HangingCorridor.instances = 0
    worker = make_worker(tiny_model_dir, env_factory=HangingCorridor, num_envs=2, env_step_timeout_s=2.0, max_episode_retries=2)
    start = time.monotonic()
    attempts = worker.run([EpisodeSpec("corridor-3", v) for v in range(3)])
    assert time.monotonic() - start < 60  # the hang cost the timeout, not the 120 s it would have lasted
    check_one_timeout_replayed(attempts, specs=3)


def check_one_timeout_replayed(attempts, specs: int) -> None:
    """One attempt hung past the 2 s timeout and was replayed; every spec finished once."""
    episodes = final(attempts)
    assert len(episodes) == specs and all(e.status == "finished" for e in episodes)
    assert "env_timeout: EnvTimeout: no answer within 2 s" in [e for e in attempts if e.retried][0].failure_reason
    ledger = ledger_of(specs, attempts)
    assert dict(ledger.failed) == {"env_timeout": 1} and ledger.retried == 1
    assert ledger.started == ledger.finished + ledger.num_failed == specs + 1


def test_bad_spec_is_an_error_not_an_episode(tiny_model_dir):
    worker = make_worker(tiny_model_dir, num_envs=1)
    with pytest.raises(Exception, match="unknown task 'corridor-7'"):
        worker.run([EpisodeSpec("corridor-7", 0)])


def test_ray_actors_stream_episodes_and_tag_new_versions(ray_local, tiny_model_dir):
    """Two Ray actors with vLLM engines; after an adapter is pushed, new episodes run on version 1 and
    their sampling log-probs match an HF+PEFT teacher-forced pass with the same adapter."""
    import ray
    from ray.util.queue import Queue

    from actors.engine import make_engine
    from actors.hf_engine import HFEngine
    from actors.rollout import RolloutActor
    from conf.schema import EngineConfig

    class VLLMTiny:
        def __call__(self):
            return make_engine(EngineConfig(kind="vllm", max_model_len=2048), tiny_model_dir, "float32", 2, 0, "0")

    actors = [RolloutActor.options(num_cpus=1).remote(i, VLLMTiny(), corridor, tiny_model_dir, 2, Sampling(max_tokens=8), PROMPT, 2048) for i in range(2)]
    queue = Queue(maxsize=4)  # smaller than the episode count: back-pressure on the actors
    specs = [EpisodeSpec("corridor-3", v) for v in range(4)]
    counts = [a.stream.remote(specs[i::2], queue) for i, a in enumerate(actors)]
    first = [queue.get(timeout=120) for _ in specs]
    assert sum(ray.get(counts)) == 4 and {s.policy_version for e in first for s in e.steps} == {0}

    adapter = random_adapter(tiny_model_dir, version=1, seed=5)
    ref = ray.put(adapter)  # one copy in the object store, read by every actor
    assert ray.get([a.load_adapter.remote(ref) for a in actors]) == [1, 1]
    second = [e for batch in ray.get([a.run.remote(specs[:2]) for a in actors]) for e in batch]
    assert {s.policy_version for e in second for s in e.steps} == {1}

    reference = HFEngine(tiny_model_dir, max_versions=2, dtype="float32")
    reference.load_adapter(adapter)
    steps = [s for e in second for s in e.steps][:6]
    rescored = reference.score([s.prompt_ids for s in steps], [s.action_ids for s in steps], [1] * len(steps))
    for step, logprobs in zip(steps, rescored):
        assert max(abs(a - b) for a, b in zip(step.action_logprobs, logprobs)) < 1e-4

    reports = ray.get([a.report.remote() for a in actors])
    assert len(first) + len(second) == 8 and all(e.status == "finished" for e in first + second)
    assert sum(r["stats"].env_steps for r in reports) == sum(len(e.steps) for e in first + second)
    for a in actors:
        ray.kill(a)
