"""The reward pool on real engines: hindsight prompts, the evaluator's signals, the reward stage's modes,
calibration without leakage, and degradation when an evaluator fails (faults injected on purpose)."""

from __future__ import annotations

import copy
import math
import os
import time

import pytest

from actors.engine import Sampling
from actors.prompting import PromptSettings, build_messages
from actors.rollout import RolloutWorker
from conf.schema import RewardConfig
from core.episode import EpisodeSpec
from envs.corridor import CorridorEnv
from reward.evaluator import SelfEvaluator
from reward.hindsight import HindsightSettings
from reward.mise import yes_probability
from tests.helpers import HFFactory

pytestmark = pytest.mark.slow
VARIATIONS = {"train": 100, "valid": 10, "test": 10}


class VLLMFactory(HFFactory):
    def __call__(self):
        from actors.vllm_engine import VLLMEngine

        return VLLMEngine(self.model_dir, max_versions=2, dtype="float32", max_model_len=2048)


def corridor():
    return CorridorEnv([1], VARIATIONS, max_steps=4)


@pytest.fixture(scope="module")
def episodes(warm_model_dir):
    """Real corridor episodes of the warm-started tiny model: some won, some lost."""
    worker = RolloutWorker(0, HFFactory(warm_model_dir), corridor, warm_model_dir, 8,
                           Sampling(temperature=1.0, max_tokens=8), PromptSettings(history_window=0), max_model_len=2048)  # fmt: skip
    played = worker.run([EpisodeSpec("corridor-1", v % 6) for v in range(24)])
    assert {e.success for e in played} == {True, False}
    return played


@pytest.fixture(scope="module")
def evaluator(warm_model_dir):
    return SelfEvaluator(HFFactory(warm_model_dir), warm_model_dir, HindsightSettings(), follow_policy=True, max_model_len=2048)


def fresh(episodes):
    return [copy.deepcopy(e) for e in episodes]


def test_questions_share_the_episode_as_prefix(evaluator, episodes, warm_model_dir):
    from transformers import AutoTokenizer

    prompts = evaluator.prompts
    tokenizer = AutoTokenizer.from_pretrained(warm_model_dir)
    assert [tokenizer.decode([t]).strip() for t in prompts.answer_ids] == ["Yes", "No"]
    episode = max(episodes, key=lambda e: len(e.steps))
    steps, outcome = prompts.questions(episode)
    assert len(steps) == len(episode.steps)
    shared = min(next((i for i, (a, b) in enumerate(zip(p, outcome)) if a != b), len(p)) for p in steps)
    transcript = tokenizer.decode(outcome[:shared])
    assert episode.goal in transcript and f"Step {len(episode.steps)}:" in transcript
    assert "Outcome:" not in tokenizer.decode(outcome)  # q is judged from the transcript alone
    assert all("Outcome:" in tokenizer.decode(p[shared:]) for p in steps)
    assert max(len(p) - shared for p in steps) < 90  # what a question adds is short: cost ~ linear in T


def test_evaluator_signals_equal_direct_engine_calls(evaluator, episodes):
    batch = fresh(episodes[:4])
    judgements, tokens = evaluator.evaluate(batch)
    engine, prompts = evaluator.engine, evaluator.prompts
    for episode, judgement in zip(batch, judgements):
        assert judgement.evaluator_version == 0 and len(judgement.step_yes) == len(judgement.mi) == len(episode.steps)
        steps, outcome = prompts.questions(episode)
        for question, p in zip(steps + [outcome], judgement.step_yes + [judgement.outcome_yes]):
            y, n = engine.next_token_logprobs([question], prompts.answer_ids, [0])[0]
            assert p == pytest.approx(yes_probability(y, n), abs=1e-5) and 0 < p < 1
        for step, hindsight, mi in zip(episode.steps, prompts.step_hindsight(episode), judgement.mi):
            with_h = engine.score([hindsight + step.prompt_ids], [step.action_ids], [0])[0]
            without_h = engine.score([step.prompt_ids], [step.action_ids], [0])[0]
            assert mi == pytest.approx(sum(with_h) - sum(without_h), abs=1e-4)
    assert tokens > 0


class CopyingPolicy:
    """A policy built to copy: an action whose text appears in its context is certain (log-prob 0 per
    token), any other costs log(1/1000) per token. The judge a hindsight that holds a_t would reward."""

    computed_tokens = 0

    def __init__(self, model_dir: str) -> None:
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)

    def score(self, prompts, continuations, versions):
        seen = lambda p, c: self.tokenizer.decode(c).strip() in self.tokenizer.decode(p)  # noqa: E731
        return [[0.0] * len(c) if seen(p, c) else [-math.log(1000)] * len(c) for p, c in zip(prompts, continuations)]

    def next_token_logprobs(self, prompts, candidates, versions):
        return [[-0.7, -0.7] for _ in prompts]

    def close(self):
        pass


def test_a_copying_policy_gets_no_mi_reward_from_a_hindsight_without_the_action(warm_model_dir):
    """r_MI_t = log pi(a_t | s_t, h_t) - log pi(a_t | s_t). With the whole episode as hindsight (the
    layout before), a policy that copies from its context scores every taken action high; with h_t =
    the outcome and the later steps only, copying earns nothing."""
    from transformers import AutoTokenizer

    from core.episode import Episode, Step

    tokenizer = AutoTokenizer.from_pretrained(warm_model_dir)
    settings = PromptSettings(history_window=0, show_admissible=False)
    goal, turns = "Leave the house.", [("open the red box", "The lid creaks."), ("take the brass key", "Got it."),
                                       ("unlock the oak door", "Click."), ("walk outside", "You are out. You won!")]  # fmt: skip
    episode = Episode("copy-0", "textworld", "house", 0, "train", goal, "You are in the hall.", status="finished", success=True, score=1.0)
    observation = episode.first_observation
    for action, answer in turns:
        messages = build_messages(goal, [], observation, None, settings)
        prompt = list(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)["input_ids"])
        ids = tokenizer.encode(action, add_special_tokens=False)
        episode.steps.append(Step(prompt, ids, [-1.0] * len(ids), action, action, None, answer, 0.0, 0))
        observation = answer
    judge = SelfEvaluator(lambda: CopyingPolicy(warm_model_dir), warm_model_dir, HindsightSettings(), follow_policy=False, max_model_len=4096)
    prompts = judge.prompts
    whole = f"{prompts.settings.hindsight_header}\n{prompts.transcript(episode)}\n{prompts.outcome(episode)}"  # the layout before
    whole_ids = list(tokenizer.apply_chat_template([{"role": "system", "content": whole}], tokenize=True)["input_ids"])
    before = [sum(judge.engine.score([whole_ids + s.prompt_ids], [s.action_ids], [0])[0]) - sum(judge.engine.score([s.prompt_ids], [s.action_ids], [0])[0])
              for s in episode.steps]  # fmt: skip
    (judgement,), _ = judge.evaluate([episode])
    print(f"r_MI per step of a copying policy: whole episode as hindsight {before}, h_t {judgement.mi}")
    assert all(mi > 6 * len(s.action_ids) for mi, s in zip(before, episode.steps))  # log 1000 per copied token
    assert judgement.mi == [0.0] * len(episode.steps)


def test_gain_mode_rewards_each_steps_change_of_the_judged_completion_probability(episodes, warm_model_dir):
    """reward.mode=gain: q_t = P(the task will be completed) after the transcript up to step t, asked
    without the outcome; r_IG_t = q_{t+1} - q_t."""
    from reward.stage import RewardStage

    judge = SelfEvaluator(HFFactory(warm_model_dir), warm_model_dir, HindsightSettings(), follow_policy=True, max_model_len=2048, ask_progress=True)
    batch = fresh(episodes[:4])
    judgements, _ = judge.evaluate(batch)
    stage = RewardStage(RewardConfig(mode="gain", dense_weight=1.0, clip=1.0))
    for episode, judgement in zip(batch, judgements):
        questions = judge.prompts.progress_questions(episode)
        assert len(judgement.progress_yes) == len(questions) == len(episode.steps) + 1
        direct = [yes_probability(*judge.engine.next_token_logprobs([q], judge.prompts.answer_ids, [0])[0]) for q in questions]
        assert judgement.progress_yes == pytest.approx(direct, abs=1e-5)
        outcome = judge.engine.next_token_logprobs([judge.prompts.questions(episode)[1]], judge.prompts.answer_ids, [0])[0]
        assert judgement.outcome_yes == pytest.approx(yes_probability(*outcome), abs=1e-5)  # the other answers did not shift
        episode.self_evaluation = judgement
        q = judgement.progress_yes
        scored = stage.score(copy.deepcopy(episode))
        assert [s.step_reward for s in scored.steps] == pytest.approx([s.env_reward + (b - a) for s, a, b in zip(episode.steps, q, q[1:])])
        assert scored.answer_samples == []  # r_C is mise's alone


def test_non_finite_values_are_caught_with_the_episode_id(warm_model_dir, episodes):
    class CorruptingEngine(HFFactory):  # injected fault: the engine returns NaN for every Yes/No
        def __call__(self):
            engine = super().__call__()
            engine.next_token_logprobs = lambda prompts, candidates, versions: [[math.nan, -1.0] for _ in prompts]
            return engine

    evaluator = SelfEvaluator(CorruptingEngine(warm_model_dir), warm_model_dir, HindsightSettings(), True, 2048)
    batch = fresh(episodes[:2])
    judgements, _ = evaluator.evaluate(batch)
    for episode, judgement in zip(batch, judgements):
        assert isinstance(judgement, str) and episode.episode_id in judgement and "non-finite" in judgement


def test_too_long_episodes_are_refused_not_truncated(evaluator, episodes):
    episode = max(episodes, key=lambda e: len(e.steps))
    plan = evaluator._plan(episode)
    longest = max([len(q) + 1 for q in plan["questions"]] + [len(p) + len(a) for p, a in zip(plan["with_hindsight"], plan["actions"])])
    short = SelfEvaluator.__new__(SelfEvaluator)
    short.__dict__.update(evaluator.__dict__, max_model_len=longest)  # the longest prompt would need one more position
    judgements, tokens = short.evaluate(fresh([episode]))
    assert f"has {longest} tokens, over engine.max_model_len={longest}" in judgements[0] and tokens == 0
    roomy = SelfEvaluator.__new__(SelfEvaluator)
    roomy.__dict__.update(evaluator.__dict__, max_model_len=longest + 1)
    judgements, tokens = roomy.evaluate(fresh([episode]))
    assert not isinstance(judgements[0], str) and tokens > 0


def pump(stage, batch, evaluators=(), **kwargs):
    """Score ``batch`` as one learner step's episodes; returns the step's result and the learner queue's content."""
    from ray.util.queue import Queue

    learner_q = Queue()
    result = stage.forward(batch, learner_q, list(evaluators), **kwargs)
    return result, [learner_q.get() for _ in range(result["queued"])]


def test_env_mode_reproduces_env_rewards_exactly(ray_local, episodes):
    from learner.samples import return_rows
    from reward.stage import RewardStage

    result, out = pump(RewardStage(RewardConfig(mode="env")), fresh(episodes))
    assert result["queued"] == len(episodes)
    for episode in out:
        assert [s.step_reward for s in episode.steps] == [s.env_reward for s in episode.steps]
        assert episode.answer_samples == [] and episode.self_evaluation is None
    assert [row[2] for row in return_rows(out)] == [[s.env_reward for s in e.steps] for e in out]


def test_mise_pool_calibrates_on_earlier_batches_only_and_degrades_on_faults(ray_local, episodes, warm_model_dir):
    import ray
    from ray.util.queue import Queue

    from reward.evaluator import EvaluatorActor
    from reward.stage import RewardStage, _BatchRecord

    cfg = RewardConfig(mode="mise", calibration_min_episodes=4, calibration_window=64, calibration_alpha=1e-3, batch_episodes=3)
    actor = EvaluatorActor.options(num_cpus=0).remote(VLLMFactory(warm_model_dir), warm_model_dir, HindsightSettings(), True, 2048)
    stage = RewardStage(cfg)
    first, second, third = fresh(episodes[:8]), fresh(episodes[8:16]), fresh(episodes[16:])

    metrics, out = pump(stage, first, [actor])
    assert metrics["queued"] == 8 and metrics["reward/degraded_fraction"] == 0
    for episode in out:  # no map before the first batch: env reward, but the evaluator's answer is trained
        assert [s.step_reward for s in episode.steps] == [s.env_reward for s in episode.steps]
        assert [a.token_id for a in episode.answer_samples] == episode.self_evaluation.answer_ids
    for key in ("self_eval/auroc", "self_eval/ece", "self_eval/brier", "reward/r_se_mean", "reward/r_mi_std", "reward/pool_tokens_per_episode"):
        assert metrics[key] is not None and math.isfinite(metrics[key]), key

    before = stage.calibrator.maps()["corridor"]
    assert before.num_episodes == 8
    # The stage holds no state but this calibration: a new stage (a restarted one) handed the first
    # batch's state scores the second batch's judgements exactly as the stage that saw the first batch.
    restarted = RewardStage(cfg)
    restarted.forward([], Queue(), [actor], calibration=metrics["calibration"])
    metrics, out = pump(stage, second, [actor])
    for episode in out:
        replayed = restarted.score(copy.deepcopy(episode), _BatchRecord(restarted.calibrator.maps()))
        assert [s.step_reward for s in replayed.steps] == pytest.approx([s.step_reward for s in episode.steps])
    assert "calibration/r2_fit" in metrics and "calibration/r2_heldout" in metrics
    leaked = stage.calibrator.maps()["corridor"]  # now fitted on both batches
    assert leaked.num_episodes == 16
    for episode in out:
        features = stage.features(episode.self_evaluation)
        expected = [s.env_reward + cfg.dense_weight * d for s, d in zip(episode.steps, before.step_rewards(features))]
        assert [s.step_reward for s in episode.steps] == pytest.approx(expected)
    assert any(
        [s.step_reward for s in e.steps] != pytest.approx([s.env_reward + d for s, d in zip(e.steps, leaked.step_rewards(stage.features(e.self_evaluation)))])
        for e in out
    )  # a fit that had seen the batch would have given other rewards

    ray.kill(actor)  # injected fault: the only evaluator dies
    metrics, out = pump(stage, third, [actor])
    assert metrics["queued"] == len(third) and metrics["reward/degraded_fraction"] == 1.0
    for episode in out:
        assert "evaluator failed" in episode.reward_note
        assert [s.step_reward for s in episode.steps] == [s.env_reward for s in episode.steps]
    assert metrics["scored"] == metrics["queued"] == len(third) and metrics["degraded"] == len(third)


def test_a_frozen_base_evaluator_trains_no_calibration_answers_into_the_policy(evaluator, episodes):
    """r_C trains the policy's own answer; with reward.evaluator=base the judge never reads those
    weights, so training them would only pull the policy toward a task it is not used for."""
    from reward.stage import RewardStage

    judged = fresh(episodes[:4])
    judgements, _ = evaluator.evaluate(judged)
    for episode, judgement in zip(judged, judgements):
        episode.self_evaluation = judgement
    frozen = RewardStage(RewardConfig(mode="mise", evaluator="base"))
    policy = RewardStage(RewardConfig(mode="mise", evaluator="policy"))
    for episode in judged:
        assert frozen.score(copy.deepcopy(episode)).answer_samples == []
        assert len(policy.score(copy.deepcopy(episode)).answer_samples) == 2  # the Yes and the No token


class SlowEvaluator(SelfEvaluator):
    def evaluate(self, episodes, adapter=None):  # injected fault: a call that hangs
        time.sleep(60)
        return super().evaluate(episodes, adapter)


def test_a_hanging_evaluator_times_out_and_the_episodes_keep_env_reward(ray_local, episodes, warm_model_dir):
    import ray

    from reward.stage import RewardStage

    actor = ray.remote(SlowEvaluator).options(num_cpus=0).remote(HFFactory(warm_model_dir), warm_model_dir, HindsightSettings(), True, 2048)
    stage = RewardStage(RewardConfig(mode="prm", timeout_s=3.0, batch_episodes=4))
    start = time.monotonic()
    metrics, out = pump(stage, fresh(episodes[:4]), [actor])
    assert time.monotonic() - start < 30
    assert metrics["reward/degraded_fraction"] == 1.0 and all("timed out after 3 s" in e.reward_note for e in out)
    ray.kill(actor)


def test_a_restarted_reward_stage_judges_with_the_evaluators_each_call_hands_in(ray_local, capfd, episodes, warm_model_dir):
    """The stage actor is built from its config alone. Before, it took the evaluators' handles in its
    constructor, which Ray keeps in the object store to restart it with, and every dense-mode run
    printed Ray's warning that such a restart fails once they are gone (ray issue 53727)."""
    import ray
    from ray.exceptions import ActorUnavailableError
    from ray.util.queue import Queue

    from reward.evaluator import EvaluatorActor
    from reward.pool import make_reward_stage

    actor = EvaluatorActor.options(num_cpus=0).remote(HFFactory(warm_model_dir), warm_model_dir, HindsightSettings(), True, 2048)
    stage = make_reward_stage(RewardConfig(mode="prm", max_restarts=1))

    def pid():
        return ray.get(stage.__ray_call__.remote(lambda _: os.getpid()))

    first = pid()
    ray.kill(stage, no_restart=False)  # injected fault: Ray restarts the stage
    deadline = time.monotonic() + 60
    while True:
        try:
            if pid() != first:
                break
        except (ActorUnavailableError, ray.exceptions.RayActorError):  # restarting
            pass
        assert time.monotonic() < deadline, "the reward stage was not restarted within 60 s"
        time.sleep(0.5)
    learner_q = Queue()
    result = ray.get(stage.forward.remote(fresh(episodes[:2]), learner_q, [actor]))
    assert result["queued"] == 2 and result["degraded"] == 0
    assert all(e.self_evaluation is not None for e in (learner_q.get() for _ in range(2)))
    assert "53727" not in capfd.readouterr().err
    with pytest.raises(ray.exceptions.RayTaskError, match="reward.mode='prm' needs at least one evaluator actor"):
        ray.get(stage.forward.remote([], learner_q, []))
    ray.kill(actor)


def test_training_on_the_calibration_reward_makes_the_evaluator_more_right(ray_local, episodes, warm_model_dir):
    """The answer samples alone (no action tokens), through the real DeepSpeed learner and adapter
    publishing: the evaluator's Brier score on these episodes' outcomes goes down."""
    import dataclasses

    from conf.schema import Config, EnvConfig, LearnerConfig, ModelConfig
    from learner.ranks import make_learners
    from reward.stage import answer_samples

    cfg = Config(env=EnvConfig(name="corridor", tasks=["corridor-1"]), model=ModelConfig(path=warm_model_dir, dtype="float32"),
                 learner=LearnerConfig(lr=1e-2, bf16_autocast=False))  # fmt: skip
    (learner,), rendezvous = make_learners(cfg, warm_model_dir)
    evaluator = SelfEvaluator(HFFactory(warm_model_dir), warm_model_dir, HindsightSettings(), follow_policy=True, max_model_len=2048)

    def judge():
        judgements, _ = evaluator.evaluate(fresh(episodes))
        return judgements, sum((j.outcome_yes - e.success) ** 2 for j, e in zip(judgements, episodes)) / len(episodes)

    judgements, before = judge()
    for _ in range(5):
        answers_only = [dataclasses.replace(e, steps=[], answer_samples=answer_samples(j, float(e.success), weight=1.0)) for e, j in zip(episodes, judgements)]
        ray_local.get(learner.train_step.remote(answers_only))
        evaluator.load_adapter(ray_local.get(learner.publish.remote()))
        judgements, after = judge()
    print(f"evaluator Brier on {len(episodes)} outcomes: before {before:.3f}, after 5 steps {after:.3f}")
    assert evaluator.version == 5 and after < before - 0.02


class MisconfiguredEngine:
    """Fault injected on purpose: an engine factory that fails on its input, counting its calls."""

    def __init__(self, log: str) -> None:
        self.log = log

    def __call__(self):
        with open(self.log, "a") as f:
            f.write("built\n")
        raise ValueError("engine.max_model_len=16 is below the model's shortest prompt")


def test_a_bad_input_in_an_evaluator_constructor_is_reported_once_without_restarts(ray_local, tiny_model_dir, tmp_path):
    """Before, Ray restarted the evaluator into the same error and every episode of the run was
    silently degraded to env-only reward."""
    from actors.pool import wait_until_ready
    from actors.rollout import ActorSetupError
    from reward.evaluator import EvaluatorActor

    log = tmp_path / "constructions"
    doomed = [EvaluatorActor.options(num_cpus=0, max_restarts=3).remote(MisconfiguredEngine(str(log)), tiny_model_dir, HindsightSettings(), True, 2048)]
    with pytest.raises(ActorSetupError) as error:
        wait_until_ready(doomed)
    message = str(error.value)
    assert message.startswith("evaluator could not start: ValueError: engine.max_model_len=16"), message
    assert "Traceback" not in message
    time.sleep(2)  # a restart, if any, would build again meanwhile
    assert log.read_text().count("built") == 1
