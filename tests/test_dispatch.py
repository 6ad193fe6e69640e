"""Rollout actors that die mid-batch: Ray restarts them, their owed specs are issued again, every spec
ends with exactly one final episode, and the ledger balances. Real actors, real engines, real kills."""

from __future__ import annotations

import threading
import time
from collections import Counter

import pytest

from actors.dispatch import ACTOR_DIED, RolloutDispatch, RolloutPoolDead
from actors.engine import Sampling
from actors.prompting import PromptSettings
from actors.rollout import RolloutActor
from core.adapter import Published
from core.episode import EpisodeSpec
from core.ledger import EpisodeLedger
from envs.base import EnvError
from envs.corridor import CorridorEnv
from tests.helpers import random_adapter

pytestmark = pytest.mark.slow
PROMPT = PromptSettings(history_window=0)


class SlowCorridor(CorridorEnv):
    """A corridor whose steps take 50 ms, so a kill lands mid-episode."""

    def __init__(self) -> None:
        super().__init__([3], {"train": 100, "valid": 10, "test": 10}, max_steps=6)

    def _check_running(self, action):
        time.sleep(0.05)
        super()._check_running(action)


class HFTiny:
    def __init__(self, model_dir: str) -> None:
        self.model_dir = model_dir

    def __call__(self):
        from actors.hf_engine import HFEngine

        return HFEngine(self.model_dir, max_versions=2, dtype="float32", num_threads=1)


def actors(model_dir: str, count: int, max_restarts: int) -> list:
    return [
        RolloutActor.options(num_cpus=0, max_restarts=max_restarts).remote(
            i, HFTiny(model_dir), SlowCorridor, model_dir, 2, Sampling(max_tokens=8), PROMPT, 2048
        )
        for i in range(count)
    ]


def specs(count: int) -> list[EpisodeSpec]:
    return [EpisodeSpec("corridor-3", v // 4, uid=f"s{v:03d}", seed=v) for v in range(count)]


def kill_when(actor, ledger: EpisodeLedger, finished: int, ray) -> threading.Thread:
    """Kill ``actor`` (Ray may restart it) once ``finished`` episodes have arrived: mid-batch."""

    def kill() -> None:
        while ledger.finished < finished:
            time.sleep(0.05)
        ray.kill(actor, no_restart=False)

    thread = threading.Thread(target=kill, daemon=True)
    thread.start()
    return thread


def test_a_killed_actor_is_restarted_catches_up_and_its_owed_specs_are_played_again(ray_local, tiny_model_dir):
    import ray
    from ray.util.queue import Queue

    pool = actors(tiny_model_dir, 2, max_restarts=1)
    adapter = random_adapter(tiny_model_dir, version=1, seed=2)
    published = Published(1, [ray.put(adapter)])
    ledger = EpisodeLedger()
    dispatch = RolloutDispatch(pool, Queue(maxsize=4), restart_timeout_s=120, poll_s=0.2)
    wanted = specs(16)
    killer = kill_when(pool[0], ledger, 2, ray)
    episodes = list(dispatch.play(wanted, ledger, published))
    killer.join()

    print(f"\nactor deaths {dispatch.actor_deaths}, ledger {ledger.as_dict()}")
    assert dispatch.actor_deaths == 1
    assert sorted(e.spec_uid for e in episodes) == [s.uid for s in wanted]  # one final episode per spec
    groups = Counter((e.task, e.variation) for e in episodes)
    assert set(groups.values()) == {4}  # every GRPO group whole
    assert all(e.status == "finished" for e in episodes)
    assert ledger.failed[ACTOR_DIED] >= 1 and ledger.retried == ledger.failed[ACTOR_DIED]
    assert ledger.started == ledger.finished + ledger.num_failed == 16 + ledger.retried and ledger.in_flight == 0
    # The restarted actor loaded the published version before playing: every step is on version 1.
    assert {s.policy_version for e in episodes for s in e.steps} == {1}
    assert ray.get(pool[0].report.remote())["version"] == 1
    for actor in pool:
        ray.kill(actor)


def test_specs_of_an_actor_without_restarts_go_to_the_others_and_an_empty_pool_is_an_error(ray_local, tiny_model_dir):
    import ray
    from ray.util.queue import Queue

    pool = actors(tiny_model_dir, 2, max_restarts=0)
    ledger = EpisodeLedger()
    dispatch = RolloutDispatch(pool, Queue(maxsize=4), restart_timeout_s=30, poll_s=0.2)
    killer = kill_when(pool[1], ledger, 1, ray)
    episodes = list(dispatch.play(specs(8), ledger))
    killer.join()
    assert len(episodes) == 8 and len({e.spec_uid for e in episodes}) == 8 and dispatch.live == [0]
    owed_to_the_dead = {s.uid for s in specs(8)[1::2]}
    assert any(e.episode_id.startswith("w0-") for e in episodes if e.spec_uid in owed_to_the_dead)  # taken over
    assert ledger.in_flight == 0 and ledger.started == ledger.finished + ledger.num_failed

    killer = kill_when(pool[0], ledger, ledger.finished + 1, ray)
    with pytest.raises(RolloutPoolDead, match="every rollout actor has died"):
        list(dispatch.play(specs(8), ledger))
    killer.join()


class MisconfiguredEnv:
    """Injected fault: an env factory whose construction fails on bad input, the same on every retry;
    each attempt leaves a line in ``log`` (the actors run in their own processes)."""

    def __init__(self, log) -> None:
        self.log = log

    def __call__(self):
        with open(self.log, "a") as f:
            f.write("built\n")
        raise EnvError("corridor task 'corridor-0' is not a corridor: valid corridor-N with N >= 1")


def test_a_bad_input_in_an_actor_constructor_is_reported_once_without_restarts(ray_local, tiny_model_dir, tmp_path):
    """Before, Ray restarted the actor into the same error max_restarts times and the job died as
    RolloutPoolDead, its cause buried in a traceback chain."""
    from actors.pool import wait_until_ready
    from actors.rollout import ActorSetupError

    log = tmp_path / "constructions"
    factory = MisconfiguredEnv(str(log))
    doomed = [
        RolloutActor.options(num_cpus=0, max_restarts=3).remote(i, HFTiny(tiny_model_dir), factory, tiny_model_dir, 2, Sampling(max_tokens=8), PROMPT, 2048)
        for i in range(2)
    ]
    with pytest.raises(ActorSetupError) as error:
        wait_until_ready(doomed)
    message = str(error.value)
    assert message.startswith(("rollout actor 0 could not start: EnvError: corridor task 'corridor-0' is not a corridor",
                               "rollout actor 1 could not start: EnvError: corridor task 'corridor-0' is not a corridor")), message  # fmt: skip
    assert "Traceback" not in message
    time.sleep(2)  # a restart, if any, would build again meanwhile
    assert 1 <= log.read_text().count("built") <= 2  # at most once per actor: no restarts
