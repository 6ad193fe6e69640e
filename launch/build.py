"""Wiring shared by the entry points: Ray, the model directory, rollout actors and episode specs."""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import ray

from actors.engine import Sampling, make_engine, split_cores
from actors.prompting import PromptSettings
from actors.rollout import RolloutActor
from conf.schema import Config, ConfigError, validate
from core.episode import EpisodeSpec
from core.paths import default_cache_dir
from envs import make_env, variation_counts

ACTOR_ENV_VARS = {"TOKENIZERS_PARALLELISM": "false", "RAY_DEDUP_LOGS": "1"}


def resolve_model_dir(cfg: Config) -> str:
    """The model every engine and the learner load: ``model.warm_start``'s merged model when set (``auto``
    builds it once from this config's env), else ``model.path`` or the built-in ``model.builtin``."""
    if cfg.model.warm_start == "auto":
        from learner.warm_start import ensure_warm_start

        return str(ensure_warm_start(cfg, base_model_dir(cfg)))
    if cfg.model.warm_start:
        return cfg.model.warm_start
    return base_model_dir(cfg)


def base_model_dir(cfg: Config) -> str:
    if cfg.model.path:
        return cfg.model.path
    if cfg.model.builtin == "tiny-corridor":
        from envs.corridor import corridor_length
        from launch.tiny_model import ensure_tiny_corridor_model

        longest = max(corridor_length(task) for task in cfg.env.tasks)
        return str(ensure_tiny_corridor_model(longest, cfg.rollout.history_window))
    from launch.prepare_model import ensure_embedded_model

    return str(ensure_embedded_model())


def start_ray(cfg: Config) -> None:
    """Join the cluster the config or the environment names (``ray job submit`` sets RAY_ADDRESS for
    its driver), or start a private local instance for this run."""
    if ray.is_initialized():
        return
    address = cfg.ray.address or os.environ.get("RAY_ADDRESS")
    # The actors' output (vLLM, DeepSpeed and Ray INFO logs: hundreds of lines) stays in Ray's log
    # folder, which link_actor_logs links into the run dir; ``verbose=true`` shows it here as well.
    quiet = dict(log_to_driver=cfg.verbose, logging_level=logging.INFO if cfg.verbose else logging.WARNING)
    if address is None:
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        ray.init(num_cpus=cfg.ray.num_cpus or os.cpu_count(), include_dashboard=False, **quiet)
    else:
        ray.init(address=address, **quiet)


def link_actor_logs(run_dir: Path) -> Path | None:
    """``run_dir/actor_logs``: a link to this Ray session's log folder (every actor's stdout and stderr)."""
    try:
        logs = Path(ray._private.worker._global_node.get_logs_dir_path())
    except AttributeError:  # not a local node (a client connection): the logs live on the cluster
        return None
    link = run_dir / "actor_logs"
    run_dir.mkdir(parents=True, exist_ok=True)
    if not link.exists():
        link.symlink_to(logs, target_is_directory=True)
    return link


class Role(NamedTuple):
    """One actor group as the resource check and the placement see it."""

    key: str  # "rollout", "learner" or "reward"
    name: str
    count: int
    cpus: float  # each
    gpus: float  # each
    config_keys: str  # the keys that set count, cpus and gpus


def roles(cfg: Config) -> list[Role]:
    """Every actor group of the run (no evaluators in ``env`` mode)."""
    groups = [
        Role(
            "rollout",
            "rollout actors",
            cfg.rollout.num_actors,
            cfg.rollout.num_cpus_per_actor,
            cfg.rollout.num_gpus_per_actor,
            "rollout.num_actors x rollout.num_{cpus,gpus}_per_actor",
        ),
        Role(
            "learner",
            "learner ranks",
            cfg.learner.num_ranks,
            cfg.learner.num_cpus_per_rank,
            cfg.learner.num_gpus_per_rank,
            "learner.num_ranks x learner.num_{cpus,gpus}_per_rank",
        ),
    ]
    if cfg.reward.mode != "env":
        groups.append(
            Role(
                "reward",
                "evaluator actors",
                cfg.reward.num_actors,
                cfg.reward.num_cpus_per_actor,
                cfg.reward.num_gpus_per_actor,
                "reward.num_actors x reward.num_{cpus,gpus}_per_actor",
            )
        )
    return groups


def check_resources(cfg: Config) -> None:
    """Stop before any actor starts if Ray cannot schedule every role at once (the run would wait
    forever for the missing one); the message lists what is missing and the keys that ask for it."""
    have = ray.cluster_resources()
    missing = []
    for resource, each in (("CPU", "cpus"), ("GPU", "gpus")):
        need = sum(role.count * getattr(role, each) for role in roles(cfg))
        if need > have.get(resource, 0.0) + 1e-9:
            asked = "; ".join(f"{role.name}: {role.count} x {getattr(role, each):g} ({role.config_keys})" for role in roles(cfg) if getattr(role, each))
            missing.append(f"{need:g} {resource}s but the cluster has {have.get(resource, 0.0):g} ({asked})")
    if missing:
        raise ConfigError(
            "the run needs " + " and ".join(missing) + ". Lower those, or give Ray more "
            "(ray.num_cpus for a local instance, more nodes, or a conf/cluster preset that fits the cluster)."
        )


def unplaced(index: int) -> dict:
    """The scheduling options of an actor outside any placement group: none."""
    return {}


class Placement:
    """Where each role's actors go: one Ray placement group with a bundle per actor, or none.

    The learner ranks' bundles are a separate STRICT_PACK group, so all ranks share one node.
    ``bundles(role)`` returns a function from an actor's index to the scheduling options that pin it to
    its bundle (``unplaced`` without placement groups).
    """

    def __init__(self, cfg: Config) -> None:
        from ray.util.placement_group import placement_group

        self.groups: dict[str, object] = {}
        self.offsets: dict[str, int] = {}
        strategy = cfg.ray.placement_strategy
        if strategy is None:
            return
        actors: list[dict] = []
        for role in roles(cfg):
            bundle = {"CPU": max(role.cpus, 0.01), **({"GPU": role.gpus} if role.gpus else {})}  # a bundle may not be empty
            if role.key == "learner":
                self.groups["learner"] = placement_group([bundle] * role.count, strategy="STRICT_PACK")
                self.offsets["learner"] = 0
            else:
                self.offsets[role.key] = len(actors)
                actors += [bundle] * role.count
        self.groups["actors"] = placement_group(actors, strategy=strategy)
        for name, group in self.groups.items():
            try:
                ray.get(group.ready(), timeout=cfg.ray.placement_timeout_s)
            except ray.exceptions.GetTimeoutError:
                self.remove()
                raise ConfigError(
                    f"the {name} placement group ({group.bundle_specs}) was not ready after ray.placement_timeout_s="
                    f"{cfg.ray.placement_timeout_s:g} s: the cluster has {ray.available_resources()} free"
                ) from None

    def bundles(self, role: str) -> Callable[[int], dict]:
        if role not in self.offsets:
            return unplaced
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        group = self.groups["learner" if role == "learner" else "actors"]
        offset = self.offsets[role]
        return lambda index: {"scheduling_strategy": PlacementGroupSchedulingStrategy(group, placement_group_bundle_index=offset + index)}

    def remove(self) -> None:
        from ray.util.placement_group import remove_placement_group

        for group in self.groups.values():
            remove_placement_group(group)
        self.groups = {}


def episode_specs(cfg: Config, num_groups: int, split: str, seed: int, uid_prefix: str) -> list[EpisodeSpec]:
    """``num_groups`` random (task, variation) pairs of ``split``, each repeated ``group_size`` times.
    Each spec gets a uid (``<prefix>-<index>``) and its own sampling seed drawn from ``seed``."""
    rng = random.Random(seed)
    counts = variation_counts(cfg.env, [split])[split]  # checked in this process, before any actor
    specs = []
    for g in range(num_groups):
        task = cfg.env.tasks[g % len(cfg.env.tasks)]
        variation = rng.randrange(counts[task])
        for _ in range(cfg.group_size):
            specs.append(EpisodeSpec(task, variation, split, uid=f"{uid_prefix}-{len(specs):05d}", seed=rng.randrange(2**31)))
    return specs


def step_specs(cfg: Config, step: int) -> list[EpisodeSpec]:
    """The training episodes of learner step ``step`` (a different draw of variations every step)."""
    groups = cfg.learner.episodes_per_step // cfg.group_size
    return episode_specs(cfg, groups, cfg.env.split, seed=cfg.seed * 100_003 + step, uid_prefix=f"step{step:05d}")


def prepare_env_assets(cfg: Config, specs: list[EpisodeSpec]) -> None:
    """Generate the TextWorld games the specs need before actors ask for them (in parallel)."""
    if cfg.env.name == "textworld":
        from envs.textworld_cooking import ensure_games

        cache = cfg.env.cache_dir or default_cache_dir()
        ensure_games(cache, sorted({(s.task, s.split, s.variation) for s in specs}), workers=os.cpu_count() or 1)


def engine_threads(cfg: Config, num_engines: int, index: int) -> str:
    """The CPU cores engine ``index`` of a group of ``num_engines`` binds (engine.cpu_threads)."""
    if cfg.engine.cpu_threads != "auto":
        return cfg.engine.cpu_threads
    return split_cores(sorted(os.sched_getaffinity(0)), num_engines, index)


def make_rollout_actors(cfg: Config, model_dir: str, bundles: Callable[[int], dict] = unplaced) -> list:
    """Ray restarts a dead actor up to ``rollout.max_restarts`` times (``actors.dispatch`` re-issues
    its episodes); ``bundles`` pins actor i to its placement-group bundle."""
    r = cfg.rollout
    sampling = Sampling(temperature=r.temperature, top_p=r.top_p, max_tokens=r.max_tokens, seed=None)
    prompt = PromptSettings.from_rollout(r)
    actors = []
    for i in range(r.num_actors):
        engine_factory = _EngineFactory(cfg, model_dir, engine_threads(cfg, r.num_actors, i), seed=cfg.seed + i)
        actor = RolloutActor.options(
            num_cpus=r.num_cpus_per_actor,
            num_gpus=r.num_gpus_per_actor,
            max_restarts=r.max_restarts,
            runtime_env={"env_vars": ACTOR_ENV_VARS},
            **bundles(i),
        ).remote(
            i, engine_factory, _EnvFactory(cfg), model_dir, r.envs_per_actor, sampling, prompt, cfg.engine.max_model_len,
            env_step_timeout_s=r.env_step_timeout_s, max_episode_retries=r.max_episode_retries,
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


def make_evaluators(cfg: Config, model_dir: str, bundles: Callable[[int], dict] = unplaced) -> list:
    """The reward pool's evaluator actors (none in ``env`` mode), each with an engine of the rollout's kind."""
    from reward.evaluator import EvaluatorActor
    from reward.stage import hindsight_settings

    if cfg.reward.mode == "env":
        return []
    evaluators = []
    for i in range(cfg.reward.num_actors):
        factory = _EngineFactory(cfg, model_dir, engine_threads(cfg, cfg.reward.num_actors, i), seed=cfg.seed + 1000 + i)
        evaluators.append(
            EvaluatorActor.options(
                num_cpus=cfg.reward.num_cpus_per_actor,
                num_gpus=cfg.reward.num_gpus_per_actor,
                max_restarts=cfg.reward.max_restarts,
                runtime_env={"env_vars": ACTOR_ENV_VARS},
                **bundles(i),
            ).remote(factory, model_dir, hindsight_settings(cfg.reward), cfg.reward.evaluator == "policy", cfg.engine.max_model_len)
        )
    return evaluators


class _EngineFactory:
    """Picklable engine constructor: the engine is built inside the actor process, not the driver."""

    def __init__(self, cfg: Config, model_dir: str, cpu_threads: str, seed: int) -> None:
        self.cfg, self.model_dir, self.cpu_threads, self.seed = cfg, model_dir, cpu_threads, seed

    def __call__(self):
        max_versions = self.cfg.learner.staleness + 1
        return make_engine(self.cfg.engine, self.model_dir, self.cfg.model.dtype, max_versions, self.seed, self.cpu_threads)


class _EnvFactory:
    def __init__(self, cfg: Config) -> None:
        self.env_cfg, self.rollout_cfg = cfg.env, cfg.rollout

    def __call__(self):
        return make_env(self.env_cfg, self.rollout_cfg)


def begin_run(dict_cfg, job: str) -> tuple[Config, Path]:
    """Validate the Hydra config for ``job`` (before anything starts), make the run dir, snapshot the
    config there."""
    from omegaconf import OmegaConf

    cfg = validate(dict_cfg, job)
    if cfg.resume:
        path = Path(cfg.resume)  # a resumed run goes on in its own run dir
        if (path / "config.yaml").exists():
            (path / "config.yaml").rename(path / f"config.before-resume-{len(list(path.glob('config.before-resume-*')))}.yaml")
    elif cfg.run_dir:
        path = Path(cfg.run_dir)
    else:
        from hydra.core.hydra_config import HydraConfig

        path = Path(HydraConfig.get().runtime.output_dir)
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.yaml").write_text(OmegaConf.to_yaml(dict_cfg))
    return cfg, path
