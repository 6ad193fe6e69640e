"""Hands episode specs to the rollout actors and yields one final episode per spec, whatever happens
to the actors on the way.

Each actor streams its share of the specs into a queue. When an actor dies (killed, out of memory, its
node lost), the attempts it still owed are written off as failed (``rollout_actor_died``, with the
error) and their specs are issued again, so a GRPO group is never left short: to the same actor once
Ray has restarted it (``rollout.max_restarts``), otherwise to the live ones. A restarted actor catches
up to the current adapter version before it plays. Every attempt is counted in the ledger each
``play`` call is given.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field, replace

import ray
from ray.exceptions import (
    ActorDiedError,
    ActorUnavailableError,
    GetTimeoutError,
    RayActorError,
)
from ray.util.queue import Empty, Queue

from core.adapter import Published
from core.episode import Episode, EpisodeSpec
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


@dataclass
class _Call:
    """The state of one ``play`` call."""

    ledger: EpisodeLedger
    adapter: Published | None
    owed: dict[str, EpisodeSpec]  # specs without a final episode yet
    streams: dict[ray.ObjectRef, _Stream] = field(default_factory=dict)  # the actors' running streams


class RolloutDispatch:
    def __init__(self, actors: list, queue: Queue, restart_timeout_s: float = 300.0, poll_s: float = 1.0) -> None:
        self.actors = actors
        self.live = list(range(len(actors)))
        self.queue = queue
        self.restart_timeout_s = restart_timeout_s
        self.poll_s = poll_s
        self.actor_deaths = 0
        self.failures: deque[tuple[str, str]] = deque(maxlen=100)  # (spec uid, reason) of the latest failed attempts

    def play(self, specs: list[EpisodeSpec], ledger: EpisodeLedger, adapter: Published | None = None) -> Iterator[Episode]:
        """Yield one ended episode per spec (finished, or failed for good), in arrival order; every
        attempt is counted in ``ledger``."""
        specs = [s if s.uid else replace(s, uid=f"spec{i}") for i, s in enumerate(specs)]
        if len({s.uid for s in specs}) != len(specs):
            raise ValueError("episode spec uids must be unique within one dispatch")
        call = _Call(ledger, adapter, {s.uid: s for s in specs})
        self._issue(call, specs, self.live)
        while call.owed:
            try:
                episode: Episode = self.queue.get(timeout=self.poll_s)
            except Empty:
                yield from self._check_streams(call)
                continue
            final = self._receive(call, episode)
            if final is not None:
                yield final
        ray.get(list(call.streams))  # every stream has returned; surfaces an actor's own error

    def _receive(self, call: _Call, episode: Episode) -> Episode | None:
        if episode.spec_uid not in call.owed:  # its actor was written off before this arrived
            call.ledger.late += 1
            return None
        call.ledger.end(episode)
        if episode.status == "failed":
            self.failures.append((episode.spec_uid, episode.failure_reason or ""))
        if episode.retried:
            return None
        del call.owed[episode.spec_uid]
        return episode

    def _issue(self, call: _Call, specs: list[EpisodeSpec], actors: list[int]) -> None:
        for index, chunk in zip(actors, shard(specs, len(actors))):
            if chunk:
                call.ledger.started += len(chunk)
                ref = self.actors[index].stream.remote(chunk, self.queue, call.adapter)
                call.streams[ref] = _Stream(index, [s.uid for s in chunk])

    def _check_streams(self, call: _Call) -> list[Episode]:
        """Re-issue the owed specs of every stream whose actor died; returns the final episodes that
        were still in the queue when that was noticed."""
        finals: list[Episode] = []
        done, _ = ray.wait(list(call.streams), num_returns=len(call.streams), timeout=0)
        for ref in done:
            stream = call.streams.pop(ref)
            try:
                ray.get(ref)
                continue
            except RayActorError as error:
                reason = f"{ACTOR_DIED}: {type(error).__name__}: {str(error).splitlines()[0][:300]}"
            for episode in self.queue.get_nowait_batch(self.queue.qsize()):  # what it sent before dying
                final = self._receive(call, episode)
                if final is not None:
                    finals.append(final)
            lost = [call.owed[uid] for uid in stream.uids if uid in call.owed]
            self.actor_deaths += 1
            log.warning("rollout actor %d died with %d episodes owed: %s", stream.actor, len(lost), reason)
            for spec in lost:
                call.ledger.failed[ACTOR_DIED] += 1
                call.ledger.retried += 1
                self.failures.append((spec.uid, reason))
            targets = [stream.actor] if self._restarted(stream.actor) else self.live
            if lost and not targets:
                raise RolloutPoolDead(f"every rollout actor has died; {len(lost)} specs cannot be played. Last error: {reason}")
            self._issue(call, lost, targets)
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
