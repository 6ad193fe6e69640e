"""The main job: RL training of a LoRA policy with rollout actors, the reward stage and a DeepSpeed learner.

    python -m launch.train                                     # local debug run: SmolLM2 on TextWorld cooking
    python -m launch.train mode=async learner.steps=20
    python -m launch.train env=corridor learner.num_ranks=2 learner.zero_stage=2

The run itself (its actors, queues and loop) is ``pipeline.trainer``; this module parses the config,
prints the summary and the command that resumes a stopped run.
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from conf.schema import register
from core.episode import reply_figures
from launch.run_dir import begin_run
from pipeline.trainer import NO_SPREAD, run

register()


def _format_reward(metrics: dict) -> str:
    return ", ".join(f"{k.split('/')[1]} {v:.3f}" for k, v in metrics.items() if isinstance(v, float))


def _format_swap(swap: dict) -> str:
    if not swap["swaps"]:
        return ""
    names = {"share_s": "learner share", "until_batch_s": "to the next batch", "fetch_s": "fetch", "load_s": "load", "check_s": "check",
             "until_request_s": "to the first request", "first_token_s": "first token", "first_reply_s": "first reply"}  # fmt: skip
    parts = ", ".join(f"{name} {swap[key]:.3f}" for key, name in names.items() if swap[key] is not None)
    checked = f"; largest probe difference {swap['probe_diff_max']:.4f} nats/token" if swap["probe_diff_max"] is not None else " (unchecked)"
    return f"adapter swaps ({swap['swaps']}), mean s: {parts}{checked}\n"


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
def main(dict_cfg: DictConfig) -> dict:
    cfg, run_dir = begin_run(dict_cfg, "train")
    summary = run(cfg, run_dir, resume_command(run_dir))
    latencies = {"token": summary["publish_to_first_token_s"], "reply": summary["publish_to_first_reply_s"]}
    print(
        f"\n{summary['steps']} learner steps ({cfg.mode}) in {summary['wall_s']:.0f} s; "
        f"episodes trained {summary['episodes_trained']}, dropped {summary['episodes_dropped']}\n"
        f"success by step: {' '.join(f'{s:.2f}' for s in summary['success_rate_by_step'])}\n"
        f"time split (s): {', '.join(f'{k} {v:.1f}' for k, v in summary['time_split_s'].items())}\n"
        + "".join(
            f"publish -> first {event} on the new version (s): {', '.join(f'v{v} {t:.2f}' for v, t in sorted(latency.items()))}\n"
            for event, latency in latencies.items()
            if latency
        )
        + _format_swap(summary["adapter_swap"])
        + "".join(
            f"evaluation {k}: success {v['success_rate']:.3f}, mean score {v['mean_score']:.3f} over {v['episodes']} valid episodes; {reply_figures(v)}\n"
            for k, v in summary["evaluation"].items()
        )
        + (f"reward ({cfg.reward.mode}), last step: {_format_reward(summary['reward_by_step'][-1])}\n" if cfg.reward.mode != "env" else "")
        + (
            f"warning: {len(summary['no_spread_steps'])} of {summary['steps']} learner steps had {NO_SPREAD.split(':')[0]} "
            f"(steps {summary['no_spread_steps']})\n"
            if summary["no_spread_steps"]
            else ""
        )
        + f"ledger {summary['ledger']}\nrun dir {run_dir}"
    )
    return summary


def resume_command(run_dir: Path) -> str:
    """This run's command line with ``resume`` pointing at its run dir."""
    args = [a for a in sys.argv[1:] if not a.startswith(("resume=", "+resume=", "hydra.run.dir=", "run_dir="))]
    return " ".join(["python -m launch.train", *args, f"resume={run_dir}"])


if __name__ == "__main__":
    main()
