"""The rollout actors of a job: their engines and envs are built inside each actor, from picklable
factories; ``wait_until_ready`` reports a constructor's bad input once."""

from __future__ import annotations

import os
from collections.abc import Callable

import ray

from actors.engine import Sampling, make_engine, split_cores
from actors.prompting import PromptSettings
from actors.rollout import RolloutActor
from conf.schema import Config
from envs import make_env

ACTOR_ENV_VARS = {"TOKENIZERS_PARALLELISM": "false", "RAY_DEDUP_LOGS": "1"}


def engine_threads(cfg: Config, num_engines: int, index: int) -> str:
    """The CPU cores engine ``index`` of a group of ``num_engines`` binds (engine.cpu_threads)."""
    if cfg.engine.cpu_threads != "auto":
        return cfg.engine.cpu_threads
    return split_cores(sorted(os.sched_getaffinity(0)), num_engines, index)


def make_rollout_actors(cfg: Config, model_dir: str, bundles: Callable[[int], dict] | None = None) -> list:
    """Ray restarts a dead actor up to ``rollout.max_restarts`` times (``actors.dispatch`` re-issues
    its episodes); ``bundles`` pins actor i to its placement-group bundle."""
    r = cfg.rollout
    sampling = Sampling(temperature=r.temperature, top_p=r.top_p, max_tokens=r.max_tokens, seed=None)
    prompt = PromptSettings.from_rollout(r)
    actors = []
    for i in range(r.num_actors):
        engine_factory = EngineFactory(cfg, model_dir, engine_threads(cfg, r.num_actors, i), seed=cfg.seed + i)
        actor = RolloutActor.options(
            num_cpus=r.num_cpus_per_actor,
            num_gpus=r.num_gpus_per_actor,
            max_restarts=r.max_restarts,
            runtime_env={"env_vars": ACTOR_ENV_VARS},
            **(bundles(i) if bundles else {}),
        ).remote(
            i, engine_factory, EnvFactory(cfg), model_dir, r.envs_per_actor, sampling, prompt, cfg.engine.max_model_len,
            env_step_timeout_s=r.env_step_timeout_s, max_episode_retries=r.max_episode_retries, scheduling=r.scheduling,
        )  # fmt: skip
        actors.append(actor)
    return actors


def wait_until_ready(actors: list) -> None:
    """Wait until every actor is built; an actor whose constructor failed on bad input (the same on
    every retry) stops the job here with its error, once, before anything is played."""
    from actors.rollout import ActorSetupError

    try:
        ray.get([a.ready.remote() for a in actors])
    except ActorSetupError as error:  # Ray's task error is an instance of the actor's exception class
        for actor in actors:
            ray.kill(actor)
        raise ActorSetupError(str(getattr(error, "cause", None) or error)) from None


def close_actors(actors: list) -> None:
    """Close the actors' envs and engines, then end them."""
    ray.get([a.close.remote() for a in actors])
    for actor in actors:
        ray.kill(actor)


class EngineFactory:
    """Picklable engine constructor: the engine is built inside the actor process, not the driver."""

    def __init__(self, cfg: Config, model_dir: str, cpu_threads: str, seed: int) -> None:
        self.cfg, self.model_dir, self.cpu_threads, self.seed = cfg, model_dir, cpu_threads, seed

    def __call__(self):
        max_versions = self.cfg.learner.staleness + 1
        return make_engine(self.cfg.engine, self.model_dir, self.cfg.model.dtype, max_versions, self.seed, self.cpu_threads)


class EnvFactory:
    def __init__(self, cfg: Config) -> None:
        self.env_cfg, self.rollout_cfg = cfg.env, cfg.rollout

    def __call__(self):
        return make_env(self.env_cfg, self.rollout_cfg)
