"""The episode ledger's arithmetic: what each ended attempt adds, and when it does not balance."""

from __future__ import annotations

import pytest

from core.episode import Episode
from core.ledger import EpisodeLedger, LedgerError, failure_kind


def attempt(status: str, reason: str | None = None, retried: bool = False) -> Episode:
    return Episode("e", "corridor", "corridor-1", 0, "train", "", "", status=status, failure_reason=reason, retried=retried)


def test_ended_attempts_count_once_and_a_replay_starts_again():
    ledger = EpisodeLedger(started=3)
    ledger.end(attempt("failed", "env_step_error: RuntimeError: boom", retried=True))  # replayed
    ledger.end(attempt("finished"))
    ledger.end(attempt("finished"))
    assert ledger.in_flight == 1  # the replay
    ledger.end(attempt("failed", "prompt_too_long: RuntimeError: 5000 tokens"))
    assert ledger.as_dict()["failed"] == {"env_step_error": 1, "prompt_too_long": 1}
    assert ledger.started == 4 and ledger.retried == 1 and ledger.in_flight == 0
    ledger.check(expect_idle=False)


def test_the_check_finds_lost_and_double_counted_episodes():
    with pytest.raises(LedgerError, match="more episodes ended than started"):
        EpisodeLedger(started=1, finished=2).check(expect_idle=False)
    with pytest.raises(LedgerError, match="1 episodes still in flight"):
        EpisodeLedger(started=2, finished=1, trained=1).check(expect_idle=True)
    with pytest.raises(LedgerError, match="not all trained or dropped"):
        EpisodeLedger(started=2, finished=2, trained=1).check(expect_idle=True)
    balanced = EpisodeLedger(started=2, finished=2, trained=1)
    balanced.dropped["stale"] += 1
    balanced.check(expect_idle=True)


def test_ledgers_merge_and_survive_a_checkpoint_round_trip():
    a = EpisodeLedger(started=5, finished=4, trained=3, late=1)
    a.failed["rollout_actor_died"] += 1
    a.dropped["evaluation"] += 1
    b = EpisodeLedger(started=2, finished=2, trained=2)
    merged = a.merge(b)
    assert merged.started == 7 and merged.finished == 6 and merged.trained == 5 and merged.late == 1
    assert EpisodeLedger.from_dict(merged.as_dict()) == merged
    assert failure_kind(attempt("failed", None)) == "unknown"
