"""The cluster a run lives on: joining or starting Ray, the resource check before any actor starts, and
the placement of every role's actors."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import ray

from conf.schema import Config, ConfigError


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


class Placement:
    """Where each role's actors go: one Ray placement group with a bundle per actor, or none.

    The learner ranks' bundles are a separate STRICT_PACK group, so all ranks share one node.
    ``bundles(role)`` returns a function from an actor's index to the scheduling options that pin it to
    its bundle (no options without placement groups).
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
            return lambda index: {}
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        group = self.groups["learner" if role == "learner" else "actors"]
        offset = self.offsets[role]
        return lambda index: {"scheduling_strategy": PlacementGroupSchedulingStrategy(group, placement_group_bundle_index=offset + index)}

    def remove(self) -> None:
        from ray.util.placement_group import remove_placement_group

        for group in self.groups.values():
            remove_placement_group(group)
        self.groups = {}
