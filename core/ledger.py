"""Episode accounting: every episode is counted once per stage it passes.

At any moment ``started == finished + failed + in_flight``; at the end of a run ``in_flight == 0`` and
every finished episode is trained or dropped with a reason (the learner stages fill those counters).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


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

    @property
    def num_failed(self) -> int:
        return sum(self.failed.values())

    @property
    def in_flight(self) -> int:
        return self.started - self.finished - self.num_failed

    def merge(self, other: EpisodeLedger) -> EpisodeLedger:
        """Sum of two ledgers (the driver adds up its actors' ledgers)."""
        return EpisodeLedger(
            started=self.started + other.started,
            finished=self.finished + other.finished,
            failed=self.failed + other.failed,
            retried=self.retried + other.retried,
            scored=self.scored + other.scored,
            degraded=self.degraded + other.degraded,
            queued=self.queued + other.queued,
            trained=self.trained + other.trained,
            dropped=self.dropped + other.dropped,
        )

    def check(self, *, expect_idle: bool) -> None:
        """Raise LedgerError unless the counters balance (and nothing is in flight when idle)."""
        if self.in_flight < 0:
            raise LedgerError(f"more episodes ended than started: {self.as_dict()}")
        if expect_idle and self.in_flight != 0:
            raise LedgerError(f"{self.in_flight} episodes still in flight at the end: {self.as_dict()}")

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
        }
