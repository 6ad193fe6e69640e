"""The reward stage: between the rollout actors and the learner queue.

In ``env`` mode it passes the environment's rewards through as the per-step rewards. The MISE reward
pool (hindsight self-evaluation, MI term, calibration) plugs in here with ``prm`` and ``mise`` modes.
Failed episodes stop here: they are counted, never trained on.
"""

from __future__ import annotations

import ray

from core.episode import Episode
from core.ledger import EpisodeLedger

MODES = ("env",)


class RewardStage:
    def __init__(self, mode: str = "env") -> None:
        if mode not in MODES:
            raise ValueError(f"reward.mode={mode!r} is not available; valid: {', '.join(MODES)}")
        self.mode = mode
        self.ledger = EpisodeLedger()

    def score(self, episode: Episode) -> Episode:
        for step in episode.steps:
            step.step_reward = step.env_reward
        return episode

    def pump(self, rollout_queue, learner_queue, count: int) -> int:
        """Take ``count`` episodes off the rollout queue; score the finished ones into the learner queue.
        Returns how many went on; failed episodes (already counted as failed by their rollout actor) stop here."""
        forwarded = 0
        for _ in range(count):
            episode: Episode = rollout_queue.get()
            if episode.status != "finished":
                continue
            learner_queue.put(self.score(episode))
            self.ledger.scored += 1
            self.ledger.queued += 1
            forwarded += 1
        return forwarded

    def report(self) -> EpisodeLedger:
        return self.ledger


RewardActor = ray.remote(RewardStage)
