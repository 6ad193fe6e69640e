"""The learner ranks of a run: one Ray actor per rank, meeting at a store the driver hosts."""

from __future__ import annotations

from collections.abc import Callable

import ray

from conf.schema import Config
from learner.learner import Learner

LearnerActor = ray.remote(Learner)


def rendezvous_store():
    """The store the learner ranks meet at, hosted by the driver as torchrun's agent hosts it.

    The kernel binds it to a free port at once, so no other process can take that port between choosing
    it and listening on it (choosing a free port and letting rank 0 bind it later raced with every Ray
    worker starting at the same moment). It must outlive the ranks' process group."""
    from torch.distributed import TCPStore

    return TCPStore("0.0.0.0", 0, None, is_master=True, wait_for_workers=False)


def learner_dtype(cfg: Config) -> str:
    """The dtype of the learner's frozen base weights: ``model.dtype`` on GPUs; float32 on CPU, where the
    learner's speed (about 250 tokens/s for SmolLM2 on 2 cores) and the README's times were measured so
    (bf16 weights on CPU are not measured yet). LoRA weights and AdamW state are float32 either way."""
    return cfg.model.dtype if cfg.learner.num_gpus_per_rank else "float32"


def make_learners(cfg: Config, model_dir: str, bundles: Callable[[int], dict] | None = None, dtype: str | None = None) -> tuple[list, object]:
    """One Ray actor per rank, and their rendezvous store, which the caller keeps while the ranks live.
    The driver sets the rank variables torch.distributed reads; the ranks share one node
    (``pipeline.cluster.Placement`` packs them). ``dtype`` overrides ``learner_dtype``."""
    store, host = rendezvous_store(), ray.util.get_node_ip_address()
    world = cfg.learner.num_ranks
    ranks = []
    for rank in range(world):
        env = {
            "MASTER_ADDR": host,
            "MASTER_PORT": str(store.port),
            "RANK": str(rank),
            "LOCAL_RANK": "0" if cfg.learner.num_gpus_per_rank else str(rank),
            "WORLD_SIZE": str(world),
        }
        options = dict(num_cpus=cfg.learner.num_cpus_per_rank, num_gpus=cfg.learner.num_gpus_per_rank, runtime_env={"env_vars": env})
        placed = LearnerActor.options(**options, **(bundles(rank) if bundles else {}))
        ranks.append(placed.remote(cfg.learner, model_dir, cfg.rollout.temperature, cfg.seed, dtype or learner_dtype(cfg)))
    return ranks, store
