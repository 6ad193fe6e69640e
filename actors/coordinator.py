"""The rollout side of a run, on the driver: the rollout actors, their queue, the dispatch, and the one
policy version they are to play.

Everything that plays episodes goes through a coordinator: training batches, held-out evaluation,
``launch.rollout`` and ``launch.evaluate``. A new adapter version reaches the actors one way only: the
coordinator's ``publish`` sets the version that every later ``play`` call carries, and an actor that
does not hold it yet (a new version, or a restarted actor holding only the base model) loads it from
the object store before it plays (``RolloutWorker.catch_up``). Nothing is pushed to the actors.

The coordinator holds no counts of its own: each ``play`` call counts its attempts into the ledger it
is given, which the caller merges into the run's ledger once the batch is collected (so a checkpoint
never holds half a batch).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import ray
from ray.exceptions import RayActorError
from ray.util.queue import Queue

from actors.dispatch import RolloutDispatch
from core.adapter import Published
from core.episode import Episode, EpisodeSpec
from core.ledger import EpisodeLedger


class RolloutCoordinator:
    def __init__(self, actors: list, queue_size: int, restart_timeout_s: float = 300.0) -> None:
        self.actors = actors
        self.queue = Queue(maxsize=queue_size)  # bounded: a slow consumer slows the rollouts down
        self.dispatch = RolloutDispatch(actors, self.queue, restart_timeout_s)
        self.published: Published | None = None

    def publish(self, published: Published | None) -> None:
        """The policy version every later ``play`` call carries (None: the base model)."""
        if published is not None and self.published is not None and published.version < self.published.version:
            raise ValueError(f"policy version {published.version} is older than the published version {self.published.version}")
        self.published = published

    @property
    def version(self) -> int:
        return self.published.version if self.published else 0

    def play(self, specs: list[EpisodeSpec], ledger: EpisodeLedger) -> Iterator[Episode]:
        """One ended episode per spec (finished, or failed for good), in arrival order; every attempt
        is counted in ``ledger``."""
        return self.dispatch.play(specs, ledger, self.published)

    def evaluate(self, specs: list[EpisodeSpec], ledger: EpisodeLedger, each: Callable[[Episode], None] | None = None) -> list[Episode]:
        """Play ``specs`` for evaluation (``each`` sees every final episode as it arrives): the finished
        episodes are never trained on, and are counted as dropped (``evaluation``) in ``ledger``."""
        episodes = []
        for episode in self.play(specs, ledger):
            episodes.append(episode)
            if each is not None:
                each(episode)
        ledger.dropped["evaluation"] += sum(e.status == "finished" for e in episodes)
        return episodes

    def stats(self) -> dict:
        """Rollout actor deaths and the latest failed attempts, over the coordinator's life."""
        return {"rollout_actor_deaths": self.dispatch.actor_deaths, "last_failures": list(self.dispatch.failures)[-20:]}

    def reports(self) -> list[dict]:
        """The rollout actors' throughput reports (an actor restarted during the run reports since then)."""
        reports = []
        for ref in [a.report.remote() for a in self.actors]:
            try:
                reports.append(ray.get(ref))
            except RayActorError:
                continue
        return reports

    def close(self) -> None:
        """End the actors and the queue (without closing their envs: ``actors.pool.close_actors`` does)."""
        for actor in self.actors:
            ray.kill(actor)
        self.queue.shutdown()
