"""The reward pool's actors: the evaluators and the reward stage that hands them the episodes."""

from __future__ import annotations

from collections.abc import Callable

import ray
from ray.exceptions import RayActorError

from actors.pool import ACTOR_ENV_VARS, EngineFactory, engine_threads
from conf.schema import Config, RewardConfig
from reward.evaluator import EvaluatorActor
from reward.stage import RewardActor, hindsight_settings


def make_evaluators(cfg: Config, model_dir: str, bundles: Callable[[int], dict] | None = None) -> list:
    """The reward pool's evaluator actors (none in ``env`` mode), each with an engine of the rollout's kind."""
    if cfg.reward.mode == "env":
        return []
    evaluators = []
    for i in range(cfg.reward.num_actors):
        factory = EngineFactory(cfg, model_dir, engine_threads(cfg, cfg.reward.num_actors, i), seed=cfg.seed + 1000 + i)
        evaluators.append(
            EvaluatorActor.options(
                num_cpus=cfg.reward.num_cpus_per_actor,
                num_gpus=cfg.reward.num_gpus_per_actor,
                max_restarts=cfg.reward.max_restarts,
                runtime_env={"env_vars": ACTOR_ENV_VARS},
                **(bundles(i) if bundles else {}),
            ).remote(
                factory,
                model_dir,
                hindsight_settings(cfg.reward),
                cfg.reward.evaluator == "policy",
                cfg.engine.max_model_len,
                ask_progress=cfg.reward.mode == "gain",
            )
        )
    return evaluators


def make_reward_stage(cfg: RewardConfig):
    """The reward stage actor, which Ray restarts (``reward.max_restarts``). It is built from its config
    alone: the evaluators and the calibration state come with each call, so a restart needs nothing
    that the object store may have dropped (ray issue 53727)."""
    return RewardActor.options(num_cpus=0, max_restarts=cfg.max_restarts).remote(cfg)


def evaluators_restarted(evaluators: list) -> int:
    """How many of the evaluator actors Ray restarted during the run (at least once), or lost for good.

    An evaluator killed between two calls is restarted before the next one and degrades nothing: this
    count is where its death shows."""
    count = 0
    for evaluator in evaluators:
        try:
            count += ray.get(evaluator.restarted.remote())
        except RayActorError:  # dead, its restarts used up
            count += 1
    return count
