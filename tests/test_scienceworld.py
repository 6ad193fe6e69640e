"""ScienceWorld adapter against the real simulator: one JVM per env, started for real (no mocks)."""

from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
from hydra import compose, initialize_config_dir

from conf.schema import ConfigError, register, validate
from envs import variation_counts
from envs.base import EnvError
from envs.scienceworld import ScienceWorldEnv
from tests.helpers import final, ledger_of

ROOT = Path(__file__).resolve().parents[1]
# A gold path of find-non-living-thing (4-2), train variation 0, "easy" simplifications (one of the package's).
GOLD_4_2 = ["open door to kitchen", "go to kitchen", "look around", "focus on glass jar", "move glass jar to red box"]
register()


@pytest.fixture(scope="module")
def env():
    env = ScienceWorldEnv(["find-living-thing", "4-2"], max_steps=20, step_caps={"find-living-thing": 3})
    yield env
    env.close()


def gateway_jvms() -> set[int]:
    """Process ids of this process's live py4j JVMs."""
    children = psutil.Process().children()
    return {p.pid for p in children if p.status() != psutil.STATUS_ZOMBIE and "py4j.GatewayServer" in p.cmdline()}


def test_gold_path_completes_with_full_score(env):
    reset = env.reset("4-2", 0, "train")
    assert "non-living thing" in reset.goal and "hallway" in reset.observation
    assert reset.info["score"] == 0.08  # 8 of 100 points at the start (round(100 / 12))
    rewards = []
    for action in GOLD_4_2:
        result = env.step(action)
        assert result.info["recognised"] and 0.0 <= result.info["score"] <= 1.0, action
        rewards.append(result.reward)
    assert result.done and result.info["won"] and not result.info["lost"] and not result.info["truncated"]
    assert result.info["score"] == 1.0 and sum(rewards) == pytest.approx(1.0 - reset.info["score"])
    assert env.num_steps == len(GOLD_4_2)


def test_package_gold_paths_win(env):
    path = env.gold_path("4-2", 0)  # a random non-living target each call: the generator is not seeded
    assert env.done  # the generator replayed the task: the episode is over
    env.reset("4-2", 0)
    assert [env.step(action).info["won"] for action in path][-1]


def test_unrecognised_action_is_answered_not_raised(env):
    env.reset("4-2", 0)
    result = env.step("xyzzy the moon")
    assert result.observation == "No known action matches that input."
    assert not result.info["recognised"] and env.num_unrecognised == 1
    assert not result.done and result.reward == 0.0


def test_failed_task_ends_as_lost_with_score_clamped_to_zero(env):
    reset = env.reset("find-living-thing", 0)
    result = env.step("focus on picture")  # a non-living thing: the simulator scores -100
    assert result.done and result.info["lost"] and not result.info["won"]
    assert result.info["score"] == 0.0 and result.reward == -reset.info["score"]


def test_per_task_step_cap(env):
    env.reset("find-living-thing", 0)
    results = [env.step("look around") for _ in range(3)]
    assert [r.done for r in results] == [False, False, True] and results[-1].info["truncated"]
    env.reset("4-2", 0)
    assert env.max_steps == 20  # the default cap for tasks without an override


def test_admissible_actions_are_listed_only_when_asked(env):
    env.list_admissible = False
    try:
        env.reset("4-2", 0)
        result = env.step("go to kitchen")
        assert result.info["admissible_actions"] is None and env._admissible is None  # nothing listed
        actions = env.admissible_actions()
        assert "focus on glass jar" in actions and actions == sorted(actions)
        assert env.admissible_actions() == actions and env._admissible is not None  # listed once, cached
        env.step("look around")
        assert env._admissible is None  # a step drops the list
    finally:
        env.list_admissible = True
    assert "look around" in env.step("look around").info["admissible_actions"]


def test_splits_map_to_distinct_package_variations(env):
    indices = {split: env.package_variation("find-living-thing", 0, split)[1] for split in ("train", "valid", "test")}
    assert indices == {"train": 0, "valid": 150, "test": 225} and env.package_variation("4-2", 1) == ("find-non-living-thing", 1)
    assert [env.num_variations("find-living-thing", s) for s in ("train", "valid", "test")] == [150, 75, 75]
    observations = {env.reset("find-living-thing", 0, split).observation for split in ("train", "valid", "test")}
    assert len(observations) == 3


def test_bad_task_and_variation_name_what_is_valid(env):
    before = gateway_jvms()
    with pytest.raises(EnvError, match=r"unknown ScienceWorld task 'boil-water'.*1-1 boil, 1-2 melt"):
        ScienceWorldEnv(["boil-water"])
    assert gateway_jvms() == before  # rejected before any JVM started
    with pytest.raises(EnvError, match=r"unknown task 'boil' .* valid tasks: find-living-thing, 4-2"):
        env.reset("boil", 0)
    with pytest.raises(EnvError, match=r"variation 75 out of range .* valid 0..74"):
        env.reset("4-2", 75, "valid")


def test_bad_simplification_is_named_and_its_jvm_killed():
    before = gateway_jvms()
    with pytest.raises(EnvError, match=r"simplification 'teleport'.*valid: easy, noElectricalAction"):
        ScienceWorldEnv(["4-2"], simplification="teleport")
    assert gateway_jvms() == before


def test_one_jvm_serves_every_episode_and_replays_exactly(env):
    pid = env.jvm_process.pid
    env.reset("4-2", 0)
    first = [env.step(a).observation for a in GOLD_4_2]
    env.reset("find-living-thing", 3, "test")  # another task in between
    env.step("look around")
    env.reset("4-2", 0)
    assert [env.step(a).observation for a in GOLD_4_2] == first
    assert env.jvm_process.pid == pid and env.jvm_process.poll() is None and gateway_jvms() == {pid}


def test_close_and_garbage_collection_kill_the_jvm():
    closed = ScienceWorldEnv(["4-2"])
    closed.reset("4-2", 0)
    process = closed.jvm_process
    closed.close()
    assert process.poll() is not None
    with pytest.raises(EnvError, match="after the episode ended"):
        closed.step("look around")
    with pytest.raises(EnvError, match="closed"):
        closed.reset("4-2", 0)
    dropped = ScienceWorldEnv(["4-2"])
    process = dropped.jvm_process
    del dropped
    gc.collect()
    assert process.poll() is not None and process.pid not in gateway_jvms()


def test_a_dead_jvm_gives_a_clear_error_and_closes_cleanly():
    env = ScienceWorldEnv(["4-2"])
    env.reset("4-2", 0)
    os.kill(env.jvm_process.pid, signal.SIGKILL)
    env.jvm_process.wait()
    with pytest.raises(RuntimeError, match=rf"ScienceWorld JVM \(pid {env.jvm_process.pid}\) exited with code -9"):
        env.step("look around")
    env.close()


def test_a_killed_python_process_takes_its_jvm_along():
    script = "from envs.scienceworld import ScienceWorldEnv; env = ScienceWorldEnv(['4-2']); print(env.jvm_process.pid, flush=True); input()"
    child = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    jvm = psutil.Process(int(child.stdout.readline()))
    child.kill()  # SIGKILL: no finaliser runs; the JVM sees its stdin close
    child.wait()
    jvm.wait(timeout=10)  # raises psutil.TimeoutExpired if the JVM outlives its parent


def test_another_scienceworld_release_is_refused_at_import():
    script = "import scienceworld; scienceworld.__version__ = '1.2.4'; import envs.scienceworld"
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode != 0
    assert "scienceworld==1.2.4 is installed but mise-rl pins scienceworld==1.2.3" in result.stderr


def test_config_group_builds_the_env_the_actors_build():
    from actors.pool import EnvFactory

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = validate(compose("config", overrides=["env=scienceworld", "rollout.show_admissible=false"]))
        corridor = compose("config", overrides=["env=corridor"])
        corridor.env.step_caps = {"corridor-3": 4}
        with pytest.raises(ConfigError, match="env.step_caps"):
            validate(corridor)
    env = EnvFactory(cfg)()  # what rollout actors build
    try:
        assert env.tasks("train") == list(cfg.env.tasks) and env.simplification == "easy"
        assert not env.list_admissible  # the prompt will not show them, so they are never listed
        env.reset("find-non-living-thing", 74, "valid")
        assert env.max_steps == cfg.env.step_caps["find-non-living-thing"]
    finally:
        env.close()


def test_variation_counts_are_per_task_checked_in_the_driver_for_the_splits_played():
    """The user's case: tasks with different counts, evaluating the test split. Before, every actor's
    env checked every split's count against every task and the run died as RolloutPoolDead."""
    from envs.specs import episode_specs, evaluation_specs

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        overrides = ["env=scienceworld", "env.tasks=[melt,identify-life-stages-1,chemistry-mix]", "evaluate.split=test", "evaluate.episodes_per_task=5"]
        cfg = validate(compose("config", overrides=overrides), "evaluate")
    counts = variation_counts(cfg.env, ["test", "valid"])
    sizes = {task: ScienceWorldEnv([task]) for task in cfg.env.tasks}
    try:
        for split in ("test", "valid"):  # null = all each task has
            assert counts[split] == {task: env.num_variations(task, split) for task, env in sizes.items()}
    finally:
        for env in sizes.values():
            env.close()
    assert counts["valid"]["identify-life-stages-1"] < 5  # 3: a count of 5 need not fit the smallest task
    specs = evaluation_specs(cfg)
    assert len(specs) == sum(min(5, n) for n in counts["test"].values())
    cfg.env.variations["train"] = 150  # a cap above melt's 14 train variations caps it per task
    assert variation_counts(cfg.env, ["train"])["train"]["melt"] == 14
    assert {s.variation for s in episode_specs(cfg, 300, "train", seed=0, uid_prefix="x") if s.task == "melt"} <= set(range(14))
    cfg.env.tasks = ["melt", "no-such-task"]
    with pytest.raises(EnvError, match="no-such-task"):  # in this process: no actor was started
        variation_counts(cfg.env, ["test"])


class JVMKilledMidEpisode(ScienceWorldEnv):
    """Injected fault: the first instance's JVM is killed (SIGKILL) during the episode's second step."""

    instances = 0

    def __init__(self) -> None:
        super().__init__(["find-living-thing"], max_steps=4)
        JVMKilledMidEpisode.instances += 1
        self.doomed = JVMKilledMidEpisode.instances == 1

    def _check_running(self, action):  # every step, valid reply or not, passes here
        if self.doomed and self.num_steps == 1:
            os.kill(self.jvm_process.pid, signal.SIGKILL)
            self.jvm_process.wait(10)
        super()._check_running(action)


@pytest.mark.slow
def test_a_jvm_killed_mid_episode_is_replaced_and_the_episode_replayed(tiny_model_dir):
    from actors.engine import Sampling
    from actors.prompting import PromptSettings
    from actors.rollout import RolloutWorker
    from core.episode import EpisodeSpec
    from tests.helpers import HFFactory

    JVMKilledMidEpisode.instances = 0
    before = gateway_jvms()
    worker = RolloutWorker(0, HFFactory(tiny_model_dir), JVMKilledMidEpisode, tiny_model_dir, 2, Sampling(max_tokens=8),
                           PromptSettings(show_admissible=False), 4096, env_step_timeout_s=30, max_episode_retries=1)  # fmt: skip
    killed_pid = worker.slots[0].env.jvm_process.pid
    attempts = worker.run([EpisodeSpec("find-living-thing", v) for v in range(3)])
    episodes = final(attempts)
    assert len(episodes) == 3 and all(e.status == "finished" for e in episodes)
    (attempt,) = [e for e in attempts if e.retried]
    assert f"ScienceWorld JVM (pid {killed_pid}) exited with code -9" in attempt.failure_reason
    ledger = ledger_of(3, attempts)
    assert ledger.started == 4 and ledger.finished == 3 and ledger.retried == 1 and ledger.in_flight == 0
    assert worker.slots[0].env.jvm_process.pid != killed_pid and JVMKilledMidEpisode.instances == 3
    worker.close()
    assert gateway_jvms() == before  # the replacement JVMs are gone too
