"""Learning in the real pipeline: Ray rollout actor (vLLM), reward stage, queue, DeepSpeed learner, LoRA
publishing. A tiny model, warm-started to reply in the right format and to follow the exit a little,
must get clearly better at the corridor from RL alone. ``python -m benchmarks.reference_pg`` runs the
same setting through a plain in-process policy-gradient loop beside the pipeline.

Broken on purpose once (publishing disabled with learner.publish_every > steps): the actors kept
sampling version 0 and the evaluation after training stayed at its starting level, so this test fails.
"""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.slow
STEPS = 30
TARGET = 0.4  # success rate on held-out (valid) corridors after STEPS learner steps (measured: 0.50)
MIN_GAIN = 0.15  # over the same episodes before training (measured: 0.24 -> 0.50; benchmarks.reference_pg: 0.242 -> 0.445)


def test_success_rate_rises_to_target_in_the_real_pipeline(ray_local, warm_model_dir, tmp_path):
    from benchmarks.reference_pg import learning_config
    from pipeline.trainer import SWAP_PARTS, run

    cfg = learning_config(warm_model_dir, seed=0, steps=STEPS)
    summary = run(cfg, tmp_path)
    before, after = summary["evaluation"]["before"]["success_rate"], summary["evaluation"]["after"]["success_rate"]
    print(f"success before {before:.3f} after {after:.3f}; by step {summary['success_rate_by_step']}")
    assert after >= TARGET and after - before >= MIN_GAIN, (before, after)
    ledger = summary["ledger"]
    assert ledger["trained"] == STEPS * 32 and ledger["in_flight"] == 0
    assert ledger["trained"] + sum(ledger["dropped"].values()) == ledger["finished"]
    assert len(summary["publish_to_first_reply_s"]) == STEPS  # every version was sampled (the last by the evaluation)
    # Every version reached every rollout actor through the checked load, and its parts add up.
    swap = summary["adapter_swap"]
    assert swap["swaps"] == STEPS * cfg.rollout.num_actors and swap["probe_diff_max"] < cfg.learner.swap_check_tol
    assert all(swap[k] >= 0 for k in SWAP_PARTS) and abs(sum(swap[k] for k in SWAP_PARTS) - swap["total_s"]) < 0.05, swap
    # The default schedule on vLLM streams: the first token on each version is known, and comes before the reply.
    assert summary["rollout"]["scheduling"] == "continuous" and len(summary["publish_to_first_token_s"]) == STEPS
    assert 0 < swap["first_token_s"] <= swap["first_reply_s"] and swap["to_first_token_s"] <= swap["total_s"], swap
