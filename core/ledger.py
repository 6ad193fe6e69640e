"""Episode accounting: the run keeps one ledger, on the driver (``pipeline.trainer.Pipeline``).

An attempt is counted ``started`` when it is handed to a rollout actor; it ends ``finished`` or
``failed`` (by reason). A failed attempt whose spec is played again counts one ``retried`` and one more
``started``. Finished episodes are ``scored`` (``degraded``: env-only reward), ``queued`` for the
learner and then ``trained`` or ``dropped`` with a reason (stale, evaluation). At any moment
``started == finished + failed + in_flight``; at the end of a run nothing is in flight and every
finished episode is trained or dropped.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from core.episode import Episode


class LedgerError(AssertionError):
    """The counters do not balance: an episode was lost or counted twice."""


@dataclass
class EpisodeLedger:
    started: int = 0
    finished: int = 0
    failed: Counter[str] = field(default_factory=Counter)  # reason -> count
    retried: int = 0
    scored: int = 0
    degraded: int = 0
    queued: int = 0
    trained: int = 0
    dropped: Counter[str] = field(default_factory=Counter)  # reason -> count
    late: int = 0  # attempts that arrived after being written off (their actor had died): not counted again

    @property
    def num_failed(self) -> int:
        return sum(self.failed.values())

    @property
    def in_flight(self) -> int:
        return self.started - self.finished - self.num_failed

    def end(self, episode: Episode) -> None:
        """Count one ended attempt (a retried one also starts its replay)."""
        if episode.status == "finished":
            self.finished += 1
        else:
            self.failed[failure_kind(episode)] += 1
        if episode.retried:
            self.retried += 1
            self.started += 1

    def merge(self, other: EpisodeLedger) -> EpisodeLedger:
        """Sum of two ledgers."""
        return EpisodeLedger(**{k: getattr(self, k) + getattr(other, k) for k in self.__dataclass_fields__})

    def check(self, *, expect_idle: bool) -> None:
        """Raise LedgerError unless the counters balance (and, when idle, every episode is accounted for)."""
        if self.in_flight < 0:
            raise LedgerError(f"more episodes ended than started: {self.as_dict()}")
        if not expect_idle:
            return
        if self.in_flight != 0:
            raise LedgerError(f"{self.in_flight} episodes still in flight at the end: {self.as_dict()}")
        if self.trained + sum(self.dropped.values()) != self.finished:
            raise LedgerError(f"finished episodes are not all trained or dropped: {self.as_dict()}")

    def as_dict(self) -> dict[str, int | dict[str, int]]:
        return {
            "started": self.started,
            "finished": self.finished,
            "failed": dict(self.failed),
            "in_flight": self.in_flight,
            "retried": self.retried,
            "scored": self.scored,
            "degraded": self.degraded,
            "queued": self.queued,
            "trained": self.trained,
            "dropped": dict(self.dropped),
            "late": self.late,
        }

    @classmethod
    def from_dict(cls, record: dict) -> EpisodeLedger:
        fields = {k: v for k, v in record.items() if k in cls.__dataclass_fields__}
        fields["failed"], fields["dropped"] = Counter(record.get("failed", {})), Counter(record.get("dropped", {}))
        return cls(**fields)


def failure_kind(episode: Episode) -> str:
    """The reason class of a failed attempt: the part of ``failure_reason`` before the first colon."""
    return (episode.failure_reason or "unknown").split(":", 1)[0]
