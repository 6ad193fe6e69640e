"""Hands episode specs to the rollout actors and yields one final episode per spec, whatever happens
to the actors on the way.

Each actor streams its share of the specs into a queue. When an actor dies (killed, out of memory, its
node lost), the attempts it still owed are written off as failed (``rollout_actor_died``, with the
error) and their specs are issued again, so a GRPO group is never left short: to the same actor once
Ray has restarted it (``rollout.max_restarts``), otherwise to the live ones. A restarted actor catches
up to the current adapter version before it plays. Every attempt is counted in the ledger passed in,
which is the run's one ledger.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, replace

import ray
from ray.exceptions import (
    ActorDiedError,
    ActorUnavailableError,
    GetTimeoutError,
    RayActorError,
)
from ray.util.queue import Empty, Queue

from actors.rollout import EpisodeSpec
from core.adapter import Published
from core.episode import Episode
from core.ledger import EpisodeLedger

log = logging.getLogger(__name__)

ACTOR_DIED = "rollout_actor_died"


def shard(items: list, parts: int) -> list[list]:
    """Round-robin split of ``items`` into ``parts`` lists (one per actor)."""
    return [items[i::parts] for i in range(parts)]


class RolloutPoolDead(RuntimeError):
    """No rollout actor is left to play the remaining specs."""


@dataclass
class _Stream:
    actor: int  # index into the dispatch's actors
    uids: list[str]


class RolloutDispatch:
    def __init__(self, actors: list, queue: Queue, ledger: EpisodeLedger, restart_timeout_s: float = 300.0, poll_s: float = 1.0) -> None:
        self.actors = actors
        self.live = list(range(len(actors)))
        self.queue = queue
        self.ledger = ledger
        self.restart_timeout_s = restart_timeout_s
        self.poll_s = poll_s
        self.actor_deaths = 0
        self.failures: deque[tuple[str, str]] = deque(maxlen=100)  # (spec uid, reason) of the latest failed attempts

    def play(self, specs: list[EpisodeSpec], adapter: Published | None = None) -> Iterator[Episode]:
        """Yield one ended episode per spec (finished, or failed for good), in arrival order."""
        specs = [s if s.uid else replace(s, uid=f"spec{i}") for i, s in enumerate(specs)]
        if len({s.uid for s in specs}) != len(specs):
            raise ValueError("episode spec uids must be unique within one dispatch")
        owed = {s.uid: s for s in specs}  # specs without a final episode yet
        streams: dict[ray.ObjectRef, _Stream] = {}
        self._issue(specs, self.live, adapter, streams)
        while owed:
            try:
                episode: Episode = self.queue.get(timeout=self.poll_s)
            except Empty:
                yield from self._check_streams(streams, owed, adapter)
                continue
            final = self._receive(episode, owed)
            if final is not None:
                yield final
        ray.get(list(streams))  # every stream has returned; surfaces an actor's own error

    def _receive(self, episode: Episode, owed: dict[str, EpisodeSpec]) -> Episode | None:
        if episode.spec_uid not in owed:  # its actor was written off before this arrived
            self.ledger.late += 1
            return None
        self.ledger.end(episode)
        if episode.status == "failed":
            self.failures.append((episode.spec_uid, episode.failure_reason or ""))
        if episode.retried:
            return None
        del owed[episode.spec_uid]
        return episode

    def _issue(self, specs: list[EpisodeSpec], actors: list[int], adapter: Published | None, streams: dict) -> None:
        for index, chunk in zip(actors, shard(specs, len(actors))):
            if chunk:
                self.ledger.started += len(chunk)
                ref = self.actors[index].stream.remote(chunk, self.queue, adapter)
                streams[ref] = _Stream(index, [s.uid for s in chunk])

    def _check_streams(self, streams: dict, owed: dict[str, EpisodeSpec], adapter: Published | None) -> list[Episode]:
        """Re-issue the owed specs of every stream whose actor died; returns the final episodes that
        were still in the queue when that was noticed."""
        finals: list[Episode] = []
        done, _ = ray.wait(list(streams), num_returns=len(streams), timeout=0)
        for ref in done:
            stream = streams.pop(ref)
            try:
                ray.get(ref)
                continue
            except RayActorError as error:
                reason = f"{ACTOR_DIED}: {type(error).__name__}: {str(error).splitlines()[0][:300]}"
            for episode in self.queue.get_nowait_batch(self.queue.qsize()):  # what it sent before dying
                final = self._receive(episode, owed)
                if final is not None:
                    finals.append(final)
            lost = [owed[uid] for uid in stream.uids if uid in owed]
            self.actor_deaths += 1
            log.warning("rollout actor %d died with %d episodes owed: %s", stream.actor, len(lost), reason)
            for spec in lost:
                self.ledger.failed[ACTOR_DIED] += 1
                self.ledger.retried += 1
                self.failures.append((spec.uid, reason))
            targets = [stream.actor] if self._restarted(stream.actor) else self.live
            if lost and not targets:
                raise RolloutPoolDead(f"every rollout actor has died; {len(lost)} specs cannot be played. Last error: {reason}")
            self._issue(lost, targets, adapter, streams)
        return finals

    def _restarted(self, index: int) -> bool:
        """Wait for Ray to restart actor ``index``; False (and it leaves the live set) if it will not."""
        deadline = time.monotonic() + self.restart_timeout_s
        while time.monotonic() < deadline:
            try:
                ray.get(self.actors[index].resident_versions.remote(), timeout=max(deadline - time.monotonic(), 1.0))
                return True
            except ActorUnavailableError:  # restarting: its engine is being built again
                time.sleep(1.0)
            except (ActorDiedError, GetTimeoutError):
                break
        if index in self.live:
            self.live.remove(index)
        log.warning("rollout actor %d is gone for good; %d actors left", index, len(self.live))
        return False
