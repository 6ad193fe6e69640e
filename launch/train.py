"""The main job: RL training of a LoRA policy with rollout actors, the reward stage and a DeepSpeed learner.

    python -m launch.train                                     # local debug run: SmolLM2 on TextWorld cooking
    python -m launch.train mode=async learner.steps=20
    python -m launch.train env=corridor learner.num_ranks=2 learner.zero_stage=2

Data flow per learner step: rollout actors stream episodes into a queue; the reward stage scores them
into the (bounded) learner queue; each learner rank pulls its share and takes one optimizer step; every
``learner.publish_every`` steps the adapter goes once into the object store and every actor loads it as
the next policy version. ``mode=async`` generates the next batch while the learner trains (episodes are
then at most ``learner.staleness`` versions old; older ones are dropped and counted).
"""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import hydra
import ray
from omegaconf import DictConfig
from ray.util.queue import Queue
from tqdm import tqdm

from conf.schema import Config, ConfigError, register
from core.ledger import EpisodeLedger
from launch.build import (
    begin_run,
    check_resources,
    episode_specs,
    make_evaluators,
    make_rollout_actors,
    prepare_env_assets,
    resolve_model_dir,
    shard,
    start_ray,
    step_specs,
)
from learner.learner import Learner
from reward.stage import RewardActor

register()
LearnerActor = ray.remote(Learner)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_learners(cfg: Config, model_dir: str) -> list:
    """One Ray actor per rank; the driver sets the rank variables torch.distributed reads."""
    world, port = cfg.learner.num_ranks, free_port()
    ranks = []
    for rank in range(world):
        env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world)}
        ranks.append(
            LearnerActor.options(num_cpus=cfg.learner.num_cpus_per_rank, runtime_env={"env_vars": env}).remote(
                cfg.learner, model_dir, cfg.rollout.temperature, cfg.seed
            )
        )
    return ranks


class Pipeline:
    """The actors of one run and the two queues between them, driven one learner step at a time."""

    def __init__(self, cfg: Config, model_dir: str) -> None:
        self.cfg = cfg
        self.actors = make_rollout_actors(cfg, model_dir)
        self.evaluators = make_evaluators(cfg, model_dir)
        self.reward = RewardActor.options(num_cpus=0).remote(cfg.reward, self.evaluators)
        self.learners = make_learners(cfg, model_dir)
        size = cfg.learner.episodes_per_step
        self.rollout_queue = Queue(maxsize=2 * size)
        self.learner_queue = Queue(maxsize=2 * size)  # bounded: a slow learner slows the rollouts down
        self.publish_times: dict[int, float] = {}
        self.evaluated = 0  # finished evaluation episodes: counted, never trained on

    def generate(self, step: int) -> ray.ObjectRef:
        """Start one batch: the actors stream into the rollout queue, the reward stage pumps it on.
        Returns the reward stage's result: ``queued`` (episodes for the learner) and reward metrics."""
        specs = step_specs(self.cfg, step)
        for actor, chunk in zip(self.actors, shard(specs, len(self.actors))):
            if chunk:
                actor.stream.remote(chunk, self.rollout_queue)
        return self.reward.pump.remote(self.rollout_queue, self.learner_queue, len(specs))

    def train(self, num_episodes: int) -> dict:
        world = len(self.learners)
        shares = [num_episodes // world + (r < num_episodes % world) for r in range(world)]
        results = ray.get([l.train_from_queue.remote(self.learner_queue, n) for l, n in zip(self.learners, shares)])
        merged = dict(results[0])
        for key in ("episodes", "successes", "trained_episodes", "env_steps", "dropped_stale", "samples", "action_tokens", "train_tokens"):
            merged[key] = sum(r[key] for r in results)
        merged["train_s"] = max(r["train_s"] for r in results)
        merged["success_rate"] = merged["successes"] / max(merged["episodes"], 1)
        return merged

    def publish(self) -> tuple[int, list[ray.ObjectRef]]:
        """Gather the adapter (every rank takes part under ZeRO-3), put it once into the object store,
        and queue a load on every actor. Returns the version and the actors' pending loads."""
        start = time.time()
        adapters = ray.get([l.publish.remote() for l in self.learners])
        ref = ray.put(adapters[0])
        loads = [a.load_adapter.remote(ref) for a in self.actors + self.evaluators]
        self.publish_times[adapters[0].version] = start
        return adapters[0].version, loads

    def evaluate(self, specs: list) -> dict:
        """Play ``specs`` with each actor's current policy; the episodes are not trained on."""
        chunks = shard(specs, len(self.actors))
        episodes = [e for batch in ray.get([a.run.remote(c) for a, c in zip(self.actors, chunks) if c]) for e in batch]
        finished = [e for e in episodes if e.status == "finished"]
        self.evaluated += len(finished)
        return {
            "episodes": len(episodes),
            "success_rate": sum(e.success for e in finished) / max(len(finished), 1),
            "mean_score": sum(e.score for e in finished) / max(len(finished), 1),
        }

    def checkpoint(self, directory: Path) -> None:
        ray.get([l.save_checkpoint.remote(str(directory)) for l in self.learners])

    def close(self) -> None:
        for actor in self.actors + self.evaluators + self.learners + [self.reward]:
            ray.kill(actor)
        self.rollout_queue.shutdown()
        self.learner_queue.shutdown()


def first_token_latencies(pipeline: Pipeline) -> dict[int, float]:
    """publish -> first token generated on that version, over all actors (seconds)."""
    firsts: dict[int, float] = {}
    for report in ray.get([a.report.remote() for a in pipeline.actors]):
        for version, t in report["first_use"].items():
            firsts[version] = min(firsts.get(version, t), t)
    return {v: firsts[v] - t0 for v, t0 in pipeline.publish_times.items() if v in firsts}


def run(cfg: Config, run_dir: Path) -> dict:
    if cfg.rollout.temperature <= 0:
        raise ConfigError(f"config rollout.temperature={cfg.rollout.temperature!r} is invalid: training samples, so it must be > 0")
    model_dir = resolve_model_dir(cfg)
    prepare_env_assets(cfg, [s for step in range(cfg.learner.steps) for s in step_specs(cfg, step)])
    start_ray(cfg)
    check_resources(cfg)
    eval_specs = episode_specs(cfg, cfg.eval_groups, "valid", seed=cfg.seed) if cfg.eval_groups else []
    prepare_env_assets(cfg, eval_specs)
    wall_start = time.perf_counter()
    pipeline = Pipeline(cfg, model_dir)
    try:
        return train_loop(cfg, run_dir, pipeline, eval_specs, wall_start)
    finally:
        pipeline.close()  # a Hydra multirun starts the next run in this process and Ray instance


def train_loop(cfg: Config, run_dir: Path, pipeline: Pipeline, eval_specs: list, wall_start: float) -> dict:
    evaluations = {"before": pipeline.evaluate(eval_specs)} if eval_specs else {}

    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(run_dir / "tensorboard"))
    metrics_file = open(run_dir / "metrics.jsonl", "w")
    history: list[dict] = []
    time_split = {"wait_for_episodes": 0.0, "train": 0.0, "publish": 0.0}
    pending = pipeline.generate(0)
    loads: list[ray.ObjectRef] = []
    bar = tqdm(range(cfg.learner.steps), desc="learner steps", unit="step")
    for step in bar:
        t0 = time.perf_counter()
        reward_metrics = ray.get(pending)
        queued = reward_metrics.pop("queued")
        time_split["wait_for_episodes"] += time.perf_counter() - t0
        if cfg.mode == "async" and step + 1 < cfg.learner.steps:
            pending = pipeline.generate(step + 1)  # generated while the learner trains
        t0 = time.perf_counter()
        metrics = pipeline.train(queued)
        metrics.update(reward_metrics)
        time_split["train"] += time.perf_counter() - t0
        if (step + 1) % cfg.learner.publish_every == 0:
            t0 = time.perf_counter()
            version, loads = pipeline.publish()
            if cfg.mode == "sync":
                ray.get(loads)  # in async mode the loads wait behind the actors' current batch
            time_split["publish"] += time.perf_counter() - t0
            metrics["published_version"] = version
        if cfg.learner.checkpoint_every and (step + 1) % cfg.learner.checkpoint_every == 0:
            pipeline.checkpoint(run_dir / "checkpoints" / f"step{step + 1}")
        if cfg.mode == "sync" and step + 1 < cfg.learner.steps:
            pending = pipeline.generate(step + 1)
        metrics.update(step=step + 1, wall_s=time.perf_counter() - wall_start)
        history.append(metrics)
        metrics_file.write(json.dumps(metrics) + "\n")
        metrics_file.flush()
        for key, value in metrics.items():
            if isinstance(value, (int, float)):
                writer.add_scalar(key, value, step + 1)
        bar.set_postfix(success=f"{metrics['success_rate']:.2f}", v=metrics["policy_version"], stale=metrics["dropped_stale"], tok=metrics["train_tokens"])
    bar.close()
    pipeline.checkpoint(run_dir / "checkpoints" / "final")
    ray.get(loads)  # every actor holds the last published version
    if eval_specs:
        evaluations["after"] = pipeline.evaluate(eval_specs)
    summary = summarize(cfg, pipeline, history, time_split, time.perf_counter() - wall_start)
    summary["evaluation"] = evaluations
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    metrics_file.close()
    writer.close()
    return summary


def summarize(cfg: Config, pipeline: Pipeline, history: list[dict], time_split: dict, wall_s: float) -> dict:
    reports = ray.get([a.report.remote() for a in pipeline.actors])
    ledger = EpisodeLedger()
    for report in reports:
        ledger = ledger.merge(report["ledger"])
    ledger = ledger.merge(ray.get(pipeline.reward.report.remote()))
    ledger.trained = sum(h["trained_episodes"] for h in history)
    ledger.dropped["stale"] = sum(h["dropped_stale"] for h in history)
    ledger.dropped["evaluation"] = pipeline.evaluated
    ledger.check(expect_idle=True)
    if ledger.trained + sum(ledger.dropped.values()) != ledger.finished:
        raise RuntimeError(f"finished episodes are not all trained or dropped: {ledger.as_dict()}")
    generate_s = sum(r["stats"].generate_s for r in reports)
    env_s = sum(r["stats"].env_s for r in reports)
    return {
        "steps": len(history),
        "mode": cfg.mode,
        "episodes_trained": ledger.trained,
        "episodes_dropped": dict(ledger.dropped),
        "success_rate_by_step": [h["success_rate"] for h in history],
        "env_steps_by_step": [h["env_steps"] for h in history],
        "reward_by_step": [{k: v for k, v in h.items() if k.split("/")[0] in ("reward", "self_eval", "calibration")} for h in history],
        "mean_score_by_step": [h["return_mean"] for h in history],
        "wall_s": wall_s,
        "time_split_s": {"generate (actor sum)": generate_s, "env (actor sum)": env_s, **time_split},
        "publish_to_first_token_s": first_token_latencies(pipeline),
        "ledger": ledger.as_dict(),
    }


def _format_reward(metrics: dict) -> str:
    return ", ".join(f"{k.split('/')[1]} {v:.3f}" for k, v in metrics.items() if isinstance(v, float))


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
def main(dict_cfg: DictConfig) -> dict:
    cfg, run_dir = begin_run(dict_cfg)
    summary = run(cfg, run_dir)
    latencies = summary["publish_to_first_token_s"]
    print(
        f"\n{summary['steps']} learner steps ({cfg.mode}) in {summary['wall_s']:.0f} s; "
        f"episodes trained {summary['episodes_trained']}, dropped {summary['episodes_dropped']}\n"
        f"success by step: {' '.join(f'{s:.2f}' for s in summary['success_rate_by_step'])}\n"
        f"time split (s): {', '.join(f'{k} {v:.1f}' for k, v in summary['time_split_s'].items())}\n"
        f"publish -> first token on the new version (s): "
        f"{', '.join(f'v{v} {t:.2f}' for v, t in sorted(latencies.items())) or 'none'}\n"
        + "".join(f"evaluation {k}: success {v['success_rate']:.3f} over {v['episodes']} valid episodes\n" for k, v in summary["evaluation"].items())
        + (f"reward ({cfg.reward.mode}), last step: {_format_reward(summary['reward_by_step'][-1])}\n" if cfg.reward.mode != "env" else "")
        + f"ledger {summary['ledger']}\nrun dir {run_dir}"
    )
    return summary


if __name__ == "__main__":
    main()
