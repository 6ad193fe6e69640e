"""Environments: the built-in corridor and TextWorld cooking games (generated for real with tw-make)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from envs.base import EnvError
from envs.corridor import CorridorEnv
from envs.textworld_cooking import CookingSettings, TextWorldCookingEnv, ensure_game, game_path

ROOT = Path(__file__).resolve().parents[1]

VARIATIONS = {"train": 50, "valid": 5, "test": 5}


def play(env, actions):
    results = [env.step(a) for a in actions]
    return results


def test_corridor_optimal_policy_wins_with_sparse_reward():
    env = CorridorEnv([4], VARIATIONS)
    reset = env.reset("corridor-4", 7, "train")
    assert "corridor" in reset.goal and reset.info["admissible_actions"]
    rewards = []
    while not env.done:
        rewards.append(env.step(env.optimal_action()).reward)
    assert len(rewards) == 5  # four rooms, then take the treasure
    assert rewards[:-1] == [0.0] * 4 and rewards[-1] == 1.0
    assert env.won and env.score == 1.0


def test_corridor_wrong_moves_cost_steps_and_hit_the_cap():
    env = CorridorEnv([3], VARIATIONS, max_steps=4)
    env.reset("corridor-3", 0)
    wrong = next(f"go {d}" for d in ("north", "south", "east", "west") if f"go {d}" != env.optimal_action())
    results = play(env, [wrong, "dance", wrong, wrong])
    assert "wall" in results[0].observation
    assert not results[1].info["recognised"] and env.num_unrecognised == 1
    assert results[-1].done and results[-1].info["truncated"] and not env.won and env.score == 0.0


def test_corridor_labels_moves_toward_the_treasure_as_progress():
    env = CorridorEnv([2], {"train": 5}, max_steps=10)
    env.reset("corridor-2", 0)
    wrong = next(f"go {d}" for d in ("north", "south", "east", "west") if f"go {d}" != env.optimal_action())
    assert env.step(wrong).info["progress"] is False
    assert env.step("take treasure").info["progress"] is False  # not in the treasure room yet
    labels = []
    while not env.done:
        labels.append(env.step(env.optimal_action()).info["progress"])
    assert labels == [True, True, True] and env.won


def test_corridor_splits_use_disjoint_seeds():
    env = CorridorEnv([6], VARIATIONS)
    layouts = {}
    for split in ("train", "valid", "test"):
        env.reset("corridor-6", 0, split)
        layouts[split] = tuple(env._exits)
    assert len(set(layouts.values())) == 3


def test_held_out_episodes_are_the_first_valid_variations_whatever_the_run_seed():
    """launch.train's before/after evaluation: every seed of a config plays the same held-out episodes
    (they used to be drawn from the run's seed, so seeds were scored on different games)."""
    from conf.schema import Config, ConfigError, EnvConfig
    from envs.specs import held_out_specs

    env = EnvConfig(name="corridor", tasks=["corridor-1", "corridor-2"], variations={"train": 100, "valid": 3})
    specs = {seed: held_out_specs(Config(env=env, eval_groups=5, group_size=2, seed=seed)) for seed in (0, 1)}
    assert specs[0] == specs[1]
    assert [(s.task, s.variation, s.split) for s in specs[0][::2]] == [
        ("corridor-1", 0, "valid"), ("corridor-2", 0, "valid"), ("corridor-1", 1, "valid"), ("corridor-2", 1, "valid"), ("corridor-1", 2, "valid"),
    ]  # fmt: skip
    assert len({s.seed for s in specs[0]}) == 10  # each episode samples with its own seed
    assert held_out_specs(Config(env=env, eval_groups=0)) == []
    with pytest.raises(ConfigError, match="eval_groups=7 is invalid: task 'corridor-1' has 3 valid variations, 4 asked for"):
        held_out_specs(Config(env=env, eval_groups=7))


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda e: e.reset("corridor-9", 0), "unknown task 'corridor-9'"),
        (lambda e: e.reset("corridor-3", 0, "dev"), "unknown split 'dev'"),
        (lambda e: e.reset("corridor-3", 50), "variation 50 out of range"),
        (lambda e: e.reset("corridor-3", -1), "variation -1 out of range"),
        (lambda e: e.step("go north"), "after the episode ended"),
    ],
)
def test_corridor_bad_input_names_the_value(call, message):
    env = CorridorEnv([3], VARIATIONS)
    with pytest.raises(EnvError, match=message):
        call(env)


def test_invalid_reply_is_answered_and_counts_as_a_step():
    env = CorridorEnv([3], VARIATIONS, max_steps=2)
    env.reset("corridor-3", 1)
    result = env.step_invalid("empty reply")
    assert "not a valid action (empty reply)" in result.observation
    assert env.num_steps == 1 and not result.done and result.reward == 0.0
    assert env.step_invalid("empty reply").done


# --- TextWorld ---------------------------------------------------------------------------------

TASK = "recipe1+take1+go1"


@pytest.fixture(scope="module")
def tw_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("tw-cache")


def walkthrough(path) -> list[str]:
    quests = json.loads(path.with_suffix(".json").read_text())["quests"]
    return max((q["commands"] for q in quests), key=len)


def test_textworld_walkthrough_wins_with_full_score(tw_cache):
    env = TextWorldCookingEnv([TASK], tw_cache, VARIATIONS, max_steps=30)
    reset = env.reset(TASK, 3, "train")
    assert "cook" in reset.goal.lower() and reset.info["admissible_actions"]
    assert "$$" not in reset.observation  # the title art is gone
    total = 0.0
    for command in walkthrough(game_path(tw_cache, TASK, "train", 3)):
        result = env.step(command)
        assert result.info["recognised"], command
        total += result.reward
    assert result.done and result.info["won"] and not result.info["lost"]
    assert result.info["score"] == pytest.approx(1.0) and total == pytest.approx(1.0)
    env.close()


def test_textworld_success_reward_pays_only_the_winning_step(tw_cache):
    """env.reward=success: the same walkthrough earns 0 at every step but the last, which earns 1; the
    score and its per-step change (the step-quality label) are the same as with env.reward=score."""
    from conf.schema import EnvConfig
    from envs import make_env

    played = {}
    for kind in ("score", "success"):
        env = make_env(EnvConfig(name="textworld", tasks=[TASK], max_steps=30, variations=VARIATIONS, cache_dir=str(tw_cache), reward=kind))
        env.reset(TASK, 3, "train")  # makes the game on first use
        commands = walkthrough(game_path(tw_cache, TASK, "train", 3))
        played[kind] = [(r.reward, r.info["score_delta"], r.info["score"]) for r in play(env, commands)]
        assert env.won
        env.close()
    dense = [reward for reward, _, _ in played["score"]]
    assert sum(reward > 0 for reward in dense[:-1]) >= 1  # the cooking games pay points before the end
    assert [reward for reward, _, _ in played["success"]] == [0.0] * (len(commands) - 1) + [1.0]
    assert [(delta, score) for _, delta, score in played["success"]] == [(delta, score) for _, delta, score in played["score"]]


def test_unknown_env_reward_is_refused_with_the_valid_ones():
    from conf.schema import EnvConfig
    from envs import make_env

    with pytest.raises(EnvError, match=r"env.reward='points'.*valid: score, success"):
        make_env(EnvConfig(name="corridor", tasks=["corridor-1"], reward="points"))


def test_textworld_labels_each_step_by_the_expert_plan_from_that_state(tw_cache):
    """Step-level ground truth: a step that shortens TextWorld's own winning plan from the state it was
    taken in is progress; looking around, an invalid reply or a command out of order is not."""
    env = TextWorldCookingEnv([TASK], tw_cache, VARIATIONS, max_steps=30)
    env.reset(TASK, 3, "train")
    plan = env.expert_distance()
    assert plan >= 2
    assert env.step("look").info["progress"] is False and env.expert_distance() == plan
    assert env.step_invalid("no action").info["progress"] is False
    assert env.step("eat meal").info["progress"] is False  # the plan's last command, out of order
    labels = []
    while not env.done:
        command = env._plan[0]
        result = env.step(command)
        labels.append((command, result.info["progress"], result.info["score_delta"]))
    assert result.info["won"] and all(progress for _, progress, _ in labels), labels
    assert sum(delta for _, _, delta in labels) == pytest.approx(1.0)
    env.close()


def test_textworld_unknown_command_is_an_answer_not_an_error(tw_cache):
    env = TextWorldCookingEnv([TASK], tw_cache, VARIATIONS, max_steps=2)
    env.reset(TASK, 3)
    result = env.step("dance wildly")
    assert "recognise" in result.observation and not result.info["recognised"]
    assert env.step("look").done  # the step cap ends the episode
    with pytest.raises(EnvError, match="after the episode ended"):
        env.step("look")


def test_textworld_games_are_cached_and_splits_disjoint(tw_cache):
    first = ensure_game(tw_cache, TASK, "train", 3)
    mtime = first.stat().st_mtime_ns
    assert ensure_game(tw_cache, TASK, "train", 3).stat().st_mtime_ns == mtime  # reused, not regenerated
    valid = ensure_game(tw_cache, TASK, "valid", 3)
    assert valid != first and "seed1000003" in valid.name


@pytest.mark.parametrize(
    "task, message",
    [
        ("recipe1+take2+go1", "take must be 0..recipe"),
        ("recipe1+take1+go5", "go must be one of"),
        ("recipe1+take1", "missing"),
        ("recipe1+take1+go1+fly", "part 'fly'"),
    ],
)
def test_textworld_bad_task_names_are_explained(task, message):
    with pytest.raises(EnvError, match=message):
        CookingSettings.parse(task)


def test_textworld_bad_variation_and_split(tw_cache):
    env = TextWorldCookingEnv([TASK], tw_cache, VARIATIONS)
    with pytest.raises(EnvError, match="variation 5 out of range .* valid 0..4"):
        env.reset(TASK, 5, "valid")
    with pytest.raises(EnvError, match="unknown task"):
        env.reset("recipe2+take1+go1", 0)
    with pytest.raises(EnvError, match="seed ranges must not overlap"):
        TextWorldCookingEnv([TASK], tw_cache, {"train": 2_000_000})


class NoisyCorridor(CorridorEnv):
    """Injected fault: the env answers with invalid UTF-8 bytes, control characters and a huge text."""

    def _step(self, action):
        observation, score, won, lost, recognised = super()._step(action)
        noise = b"\xff\xfe broken \x00\x07 bytes" if self.num_steps == 0 else "\ud800 lone surrogate " + "x" * 100_000
        return (noise + observation.encode() if isinstance(noise, bytes) else noise + observation), score, won, lost, recognised


def test_non_utf8_control_and_huge_observations_are_cleaned_and_counted():
    from envs.base import MAX_OBSERVATION_CHARS

    env = NoisyCorridor([3], VARIATIONS, max_steps=5)
    env.reset("corridor-3", 0)
    first = env.step("look")
    assert isinstance(first.observation, str) and "\ufffd" in first.observation and "\x00" not in first.observation
    first.observation.encode("utf-8")  # valid text now
    second = env.step("look")
    assert len(second.observation) < MAX_OBSERVATION_CHARS + 40 and second.observation.endswith("characters cut]")
    second.observation.encode("utf-8")
    assert second.info["cleaned_observations"] == 2
    clean = CorridorEnv([3], VARIATIONS)
    clean.reset("corridor-3", 0)
    assert clean.step("look").info["cleaned_observations"] == 0


def test_the_next_steps_games_are_made_in_the_background_while_a_step_plays(tmp_path):
    from conf.schema import Config, EnvConfig, LearnerConfig
    from envs.specs import AssetsAhead, step_specs

    cfg = Config(
        env=EnvConfig(name="textworld", tasks=[TASK], variations={"train": 64}, cache_dir=str(tmp_path)),
        learner=LearnerConfig(steps=3, episodes_per_step=4),
        group_size=4,
    )  # one game per step
    games = [{game_path(tmp_path, s.task, s.split, s.variation) for s in step_specs(cfg, step)} for step in range(3)]
    assets = AssetsAhead(cfg, steps=3)
    try:
        assets.ready(0)  # made now: nothing ran ahead of the first step
        assert all(p.exists() for p in games[0])
        assets.made[1].result(timeout=120)  # made meanwhile, by the background thread
        assert all(p.exists() for p in games[1]) and not any(p.exists() for p in games[2])
        assets.ready(1)  # finds them made, and starts step 2's
        assert 2 in assets.made and set(assets.made) == {2}
        assets.ready(2)
        assert all(p.exists() for p in games[2]) and not assets.made  # nothing beyond the last step
    finally:
        assets.close()


def test_textworld_envs_of_one_process_can_be_played_from_several_threads_at_once(tw_cache):
    """A rollout worker's continuous schedule resets and steps its envs in a thread pool. TextWorld's
    game loading shares module-level parsers: unguarded, the first resets of a fresh process, run at
    once, raised from inside them (``IndexError: pop from empty list`` in tatsu). So the threads run
    in a fresh process, and must see what one thread sees playing the same games alone."""
    from envs.textworld_cooking import ensure_games

    ensure_games(tw_cache, [(TASK, "train", v) for v in range(4)])
    script = f"""
import json, threading
from concurrent.futures import ThreadPoolExecutor
from envs.textworld_cooking import TextWorldCookingEnv
envs = [TextWorldCookingEnv([{TASK!r}], {str(tw_cache)!r}, {VARIATIONS!r}, max_steps=30) for _ in range(4)]
start = threading.Barrier(4)
def play(v, together=True):
    if together:
        start.wait(timeout=60)  # every thread loads its game at the same moment
    try:
        seen = [envs[v].reset({TASK!r}, v, "train").observation]
        return seen + [envs[v].step(c).observation for c in ["look", "inventory", "examine counter"]]
    except Exception as error:
        return f"{{type(error).__name__}}: {{error}}"
with ThreadPoolExecutor(max_workers=4) as pool:
    together = list(pool.map(play, range(4)))
print(json.dumps({{"together": together, "alone": [play(v, together=False) for v in range(4)]}}))
"""
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    played = json.loads(result.stdout.strip().splitlines()[-1])
    assert played["together"] == played["alone"]
