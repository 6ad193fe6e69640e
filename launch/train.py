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

import dataclasses
import json
import logging
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

import hydra
import ray
from omegaconf import DictConfig
from ray.exceptions import RayActorError
from ray.util.queue import Queue
from tqdm import tqdm

from actors.dispatch import RolloutDispatch
from conf.schema import Config, register, validate
from core.adapter import CheckpointError, Published
from core.ledger import EpisodeLedger
from launch.build import (
    Placement,
    begin_run,
    check_resources,
    episode_specs,
    link_actor_logs,
    make_evaluators,
    make_rollout_actors,
    prepare_env_assets,
    resolve_model_dir,
    start_ray,
    step_specs,
    unplaced,
    wait_until_ready,
)
from launch.tracking import RunLogger, WandbSettings
from learner.learner import Learner
from reward.stage import RewardActor

register()
log = logging.getLogger(__name__)
LearnerActor = ray.remote(Learner)


class RunStopped(RuntimeError):
    """An actor the run cannot go on without is gone; the run stops with its last checkpoint intact."""

    who = "an actor"


class LearnerDied(RunStopped):
    who = "a learner rank"


class RewardStageDied(RunStopped):
    """The reward stage coordinates the rollouts; rollout actors and evaluators are restarted, it is not."""

    who = "the reward stage"


class NothingTrained(RunStopped):
    """A learner step's whole batch was dropped (stale): going on would train on nothing, silently."""

    who = "the learner"


def check_trained(cfg: Config, metrics: dict) -> None:
    """Stop the run when a learner step trained on none of its episodes."""
    if metrics["episodes"] and not metrics["trained_episodes"]:
        raise NothingTrained(
            f"learner step {metrics['learner_step']} trained on none of its {metrics['episodes']} episodes: "
            f"{metrics['dropped_stale']} were dropped as stale (learner at policy version {metrics['policy_version']}, "
            f"learner.staleness={cfg.learner.staleness}, mode={cfg.mode}); in mode=async the next batch is generated "
            "before the publish, so it needs learner.staleness >= 1"
        )


def rendezvous_store():
    """The store the learner ranks meet at, hosted by the driver as torchrun's agent hosts it.

    The kernel binds it to a free port at once, so no other process can take that port between choosing
    it and listening on it (choosing a free port and letting rank 0 bind it later raced with every Ray
    worker starting at the same moment). It must outlive the ranks' process group."""
    from torch.distributed import TCPStore

    return TCPStore("0.0.0.0", 0, None, is_master=True, wait_for_workers=False)


def learner_dtype(cfg: Config) -> str:
    """The dtype of the learner's frozen base weights: ``model.dtype`` on GPUs; float32 on CPU, where the
    learner's speed (about 250 tokens/s for SmolLM2 on 2 cores) and the README's times were measured so
    (bf16 weights on CPU are not measured yet). LoRA weights and AdamW state are float32 either way."""
    return cfg.model.dtype if cfg.learner.num_gpus_per_rank else "float32"


def make_learners(cfg: Config, model_dir: str, bundles: Callable[[int], dict] = unplaced, dtype: str | None = None) -> tuple[list, object]:
    """One Ray actor per rank, and their rendezvous store, which the caller keeps while the ranks live.
    The driver sets the rank variables torch.distributed reads; the ranks share one node
    (``launch.build.Placement`` packs them). ``dtype`` overrides ``learner_dtype``."""
    store, host = rendezvous_store(), ray.util.get_node_ip_address()
    world = cfg.learner.num_ranks
    ranks = []
    for rank in range(world):
        env = {
            "MASTER_ADDR": host,
            "MASTER_PORT": str(store.port),
            "RANK": str(rank),
            "LOCAL_RANK": "0" if cfg.learner.num_gpus_per_rank else str(rank),
            "WORLD_SIZE": str(world),
        }
        options = dict(num_cpus=cfg.learner.num_cpus_per_rank, num_gpus=cfg.learner.num_gpus_per_rank, runtime_env={"env_vars": env})
        ranks.append(
            LearnerActor.options(**options, **bundles(rank)).remote(cfg.learner, model_dir, cfg.rollout.temperature, cfg.seed, dtype or learner_dtype(cfg))
        )
    return ranks, store


class Pipeline:
    """The actors of one run and the two queues between them, driven one learner step at a time.

    The pipeline keeps the run's one episode ledger: each reward-stage call returns the counts of the
    attempts it handled, and the learners' results add what was trained or dropped as stale.
    """

    def __init__(self, cfg: Config, model_dir: str) -> None:
        self.cfg = cfg
        self.placement = Placement(cfg)
        self.actors = make_rollout_actors(cfg, model_dir, self.placement.bundles("rollout"))
        self.evaluators = make_evaluators(cfg, model_dir, self.placement.bundles("reward"))
        size = cfg.learner.episodes_per_step
        self.rollout_queue = Queue(maxsize=2 * size)
        self.learner_queue = Queue(maxsize=2 * size)  # bounded: a slow learner slows the rollouts down
        dispatch = RolloutDispatch(self.actors, self.rollout_queue, cfg.rollout.restart_timeout_s)
        self.reward = RewardActor.options(num_cpus=0).remote(cfg.reward, self.evaluators, dispatch)
        self.learners, self.rendezvous = make_learners(cfg, model_dir, self.placement.bundles("learner"))
        self.published: Published | None = None
        self.publish_times: dict[int, float] = {}
        self.ledger = EpisodeLedger()

    def generate(self, step: int) -> ray.ObjectRef:
        """Start one batch: the reward stage hands the step's specs to the rollout actors and pumps
        their episodes on. Returns its result: ``queued``, ``ledger``, ``self_eval`` and reward metrics."""
        specs = step_specs(self.cfg, step)
        prepare_env_assets(self.cfg, specs)  # this step's TextWorld games (made once, then cached)
        return self.reward.pump.remote(specs, self.learner_queue, self.published)

    def collect(self, batch: ray.ObjectRef) -> dict:
        """The result of a batch ``generate`` started."""
        return self._get(batch, RewardStageDied)

    def reward_stats(self) -> dict:
        return self._get(self.reward.stats.remote(), RewardStageDied)

    def train(self, num_episodes: int) -> dict:
        world = len(self.learners)
        shares = [num_episodes // world + (r < num_episodes % world) for r in range(world)]
        results = self._get([l.train_from_queue.remote(self.learner_queue, n) for l, n in zip(self.learners, shares)])
        merged = dict(results[0])
        for key in ("episodes", "successes", "trained_episodes", "env_steps", "dropped_stale", "samples", "action_tokens", "train_tokens"):
            merged[key] = sum(r[key] for r in results)
        merged["train_s"] = max(r["train_s"] for r in results)
        merged["episode_staleness_max"] = max(r["episode_staleness_max"] for r in results)
        merged["success_rate"] = merged["successes"] / max(merged["episodes"], 1)
        self.ledger.trained += merged["trained_episodes"]
        self.ledger.dropped["stale"] += merged["dropped_stale"]
        return merged

    def publish(self, adapters: list | None = None) -> tuple[int, list[ray.ObjectRef]]:
        """Gather the adapter (every rank takes part under ZeRO-3), put it once into the object store,
        and queue a load on every actor. Returns the version and the actors' pending loads."""
        start = time.time()
        adapters = adapters or self._get([l.publish.remote() for l in self.learners])
        ref = ray.put(adapters[0])
        self.published = Published(adapters[0].version, [ref])
        loads = [a.load_adapter.remote(ref) for a in self.actors + self.evaluators]
        self.publish_times[adapters[0].version] = start
        return adapters[0].version, loads

    def evaluate(self, specs: list) -> dict:
        """Play ``specs`` with the current policy; the episodes are not trained on."""
        episodes, ledger = self._get(self.reward.play.remote(specs, self.published), RewardStageDied)
        self.ledger = self.ledger.merge(ledger)
        finished = [e for e in episodes if e.status == "finished"]
        return {
            "episodes": len(episodes),
            "success_rate": sum(e.success for e in finished) / max(len(finished), 1),
            "mean_score": sum(e.score for e in finished) / max(len(finished), 1),
        }

    def checkpoint(self, directory: Path, driver_state: dict) -> Path:
        """Learner state, reward-stage state and the driver's state, written to a temporary folder
        first: a folder named ``step*`` or ``final`` is always complete."""
        partial = directory.with_name(directory.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        self._get([l.save_checkpoint.remote(str(partial)) for l in self.learners])
        (partial / "reward_state.json").write_text(json.dumps(self._get(self.reward.state_dict.remote(), RewardStageDied)))
        (partial / "driver_state.json").write_text(json.dumps({**driver_state, "ledger": self.ledger.as_dict()}))
        shutil.rmtree(directory, ignore_errors=True)
        partial.rename(directory)
        return directory

    def restore(self, directory: Path) -> dict:
        """Load a checkpoint into the learners and the reward stage and give the actors its adapter."""
        states = self._get([l.load_checkpoint.remote(str(directory)) for l in self.learners])
        self._get(self.reward.load_state_dict.remote(json.loads((directory / "reward_state.json").read_text())), RewardStageDied)
        driver = json.loads((directory / "driver_state.json").read_text())
        self.ledger = EpisodeLedger.from_dict(driver["ledger"])
        adapters = self._get([l.current_adapter.remote() for l in self.learners])
        if states[0]["version"] > 0:
            _, loads = self.publish(adapters)
            wait_for_loads(loads)
        return driver

    @staticmethod
    def _get(refs, stopped: type[RunStopped] = LearnerDied):
        """``ray.get`` on calls to actors the run cannot lose: their death stops the run."""
        try:
            return ray.get(refs)
        except RayActorError as error:
            raise stopped(f"{stopped.who} died: {type(error).__name__}: {str(error).splitlines()[0][:300]}") from error

    def close(self) -> None:
        for actor in self.actors + self.evaluators + self.learners + [self.reward]:
            ray.kill(actor)
        self.rollout_queue.shutdown()
        self.learner_queue.shutdown()
        self.placement.remove()


def wait_for_loads(loads: list[ray.ObjectRef]) -> None:
    """Wait for the actors' adapter loads. An actor that died meanwhile is not waited for: once Ray
    has restarted it, it loads the current version before its next batch (``Published``)."""
    for ref in loads:
        try:
            ray.get(ref)
        except RayActorError as error:
            log.warning("an actor died before loading the new adapter (it catches up after its restart): %s", str(error).splitlines()[0])


def first_token_latencies(pipeline: Pipeline, reports: list[dict]) -> dict[int, float]:
    """publish -> first token generated on that version, over all actors' ``reports`` (seconds)."""
    firsts: dict[int, float] = {}
    for report in reports:
        for version, t in report["first_use"].items():
            firsts[version] = min(firsts.get(version, t), t)
    return {v: firsts[v] - t0 for v, t0 in pipeline.publish_times.items() if v in firsts}


def actor_reports(pipeline: Pipeline) -> list[dict]:
    """The rollout actors' throughput reports (an actor restarted during the run reports since then)."""
    reports = []
    for ref in [a.report.remote() for a in pipeline.actors]:
        try:
            reports.append(ray.get(ref))
        except RayActorError:
            continue
    return reports


def last_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint of a run dir (``final`` counts as the newest)."""
    root = run_dir / "checkpoints"
    if (root / "final" / "driver_state.json").exists():
        return root / "final"
    steps = [p for p in root.glob("step*") if p.is_dir() and not p.name.endswith(".partial") and (p / "driver_state.json").exists()]
    return max(steps, key=lambda p: int(p.name[4:]), default=None)


def run(cfg: Config, run_dir: Path, resume_command: str = "") -> dict:
    validate(cfg, "train")  # begin_run has; a caller that builds its own Config gets the same checks
    resume_from = None
    if cfg.resume:
        resume_from = last_checkpoint(Path(cfg.resume))
        if resume_from is None:
            raise CheckpointError(f"config resume={cfg.resume!r}: no complete checkpoint under {Path(cfg.resume) / 'checkpoints'}")
    model_dir = resolve_model_dir(cfg)
    # The env's limits (tasks, variation counts of the splits played) fail here, before any actor starts.
    eval_specs = episode_specs(cfg, cfg.eval_groups, "valid", seed=cfg.seed, uid_prefix="eval") if cfg.eval_groups else []
    prepare_env_assets(cfg, step_specs(cfg, 0) + eval_specs)
    start_ray(cfg)
    link_actor_logs(run_dir)
    check_resources(cfg)
    wall_start = time.perf_counter()
    pipeline = Pipeline(cfg, model_dir)
    try:
        wait_until_ready(pipeline.actors + pipeline.evaluators)  # bad input stops the run here, once
        return train_loop(cfg, run_dir, pipeline, eval_specs, wall_start, resume_from)
    except RunStopped as error:
        last = last_checkpoint(run_dir)
        where = f"The last complete checkpoint is {last}." if last else "No checkpoint was written yet (learner.checkpoint_every)."
        raise type(error)(f"{error}. The run stopped. {where}" + (f" Resume with:\n  {resume_command}" if last and resume_command else "")) from error
    finally:
        pipeline.close()  # a Hydra multirun starts the next run in this process and Ray instance


NO_SPREAD = "no reward spread in its batch (every group's episodes scored alike, no dense reward): every advantage is 0, so the step changed nothing"


def train_loop(cfg: Config, run_dir: Path, pipeline: Pipeline, eval_specs: list, wall_start: float, resume_from: Path | None = None) -> dict:
    history: list[dict] = []
    time_split = {"wait_for_episodes": 0.0, "train": 0.0, "publish": 0.0}
    evaluations: dict = {}
    first_step = 0
    if resume_from is not None:
        driver = pipeline.restore(resume_from)
        history, time_split, evaluations, first_step = driver["history"], driver["time_split"], driver["evaluations"], driver["step"]
        wall_start -= driver["wall_s"]
        print(f"resumed from {resume_from} at step {first_step}")
    elif eval_specs:
        evaluations["before"] = pipeline.evaluate(eval_specs)

    def driver_state(step: int, wall_s: float) -> dict:
        """What a checkpoint keeps of the driver (the pipeline adds the ledger)."""
        return {"step": step, "history": history, "time_split": time_split, "evaluations": evaluations, "wall_s": wall_s}

    logger = RunLogger(run_dir, dataclasses.asdict(cfg), wandb_settings(cfg))  # metrics.jsonl starts over:
    for metrics in history:  # on resume, the steps up to the checkpoint (later lines were lost with the driver)
        logger.log(metrics["step"], metrics)
    self_eval_path = run_dir / "self_eval.jsonl"
    kept = [line for line in self_eval_path.read_text().splitlines() if json.loads(line)["step"] <= first_step] if resume_from else []
    self_eval_file = open(self_eval_path, "w")  # per judged episode: the evaluator's q and the outcome z
    self_eval_file.writelines(line + "\n" for line in kept)
    pending = pipeline.generate(first_step) if first_step < cfg.learner.steps else None
    loads: list[ray.ObjectRef] = []
    bar = tqdm(range(first_step, cfg.learner.steps), desc="learner steps", unit="step", initial=first_step, total=cfg.learner.steps)
    for step in bar:
        t0 = time.perf_counter()
        reward_metrics = pipeline.collect(pending)
        queued = reward_metrics.pop("queued")
        pipeline.ledger = pipeline.ledger.merge(reward_metrics.pop("ledger"))
        for q, z in reward_metrics.pop("self_eval"):
            self_eval_file.write(json.dumps({"step": step + 1, "q": q, "z": z}) + "\n")
        time_split["wait_for_episodes"] += time.perf_counter() - t0
        if cfg.mode == "async" and step + 1 < cfg.learner.steps:
            pending = pipeline.generate(step + 1)  # generated while the learner trains
        t0 = time.perf_counter()
        metrics = pipeline.train(queued)
        check_trained(cfg, metrics)
        metrics.update(reward_metrics)
        time_split["train"] += time.perf_counter() - t0
        if (step + 1) % cfg.learner.publish_every == 0:
            t0 = time.perf_counter()
            version, loads = pipeline.publish()
            if cfg.mode == "sync":
                wait_for_loads(loads)  # in async mode the loads wait behind the actors' current batch
            time_split["publish"] += time.perf_counter() - t0
            metrics["published_version"] = version
        pipeline.ledger.check(expect_idle=True)
        metrics.update(step=step + 1, wall_s=time.perf_counter() - wall_start, ledger=pipeline.ledger.as_dict())
        if not metrics.get("step_advantage_abs_mean"):
            metrics["warning"] = NO_SPREAD
            tqdm.write(f"warning: learner step {step + 1}: {NO_SPREAD}")
        history.append(metrics)
        logger.log(step + 1, metrics)
        self_eval_file.flush()
        if cfg.learner.checkpoint_every and (step + 1) % cfg.learner.checkpoint_every == 0 and step + 1 < cfg.learner.steps:
            pipeline.checkpoint(run_dir / "checkpoints" / f"step{step + 1}", driver_state(step + 1, metrics["wall_s"]))
        if cfg.mode == "sync" and step + 1 < cfg.learner.steps:
            pending = pipeline.generate(step + 1)
        bar.set_postfix(success=f"{metrics['success_rate']:.2f}", v=metrics["policy_version"], stale=metrics["dropped_stale"], tok=metrics["train_tokens"])
    bar.close()
    wait_for_loads(loads)  # every actor holds the last published version
    if eval_specs:
        evaluations["after"] = pipeline.evaluate(eval_specs)
    wall_s = time.perf_counter() - wall_start
    pipeline.checkpoint(run_dir / "checkpoints" / "final", driver_state(cfg.learner.steps, wall_s))
    summary = summarize(cfg, pipeline, history, time_split, wall_s)
    summary["evaluation"] = evaluations
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    logger.log_summary(summary)
    logger.close()
    self_eval_file.close()
    if cfg.report:
        from launch.report import write_report

        write_report(run_dir)
    return summary


def wandb_settings(cfg: Config) -> WandbSettings | None:
    w = cfg.wandb
    return None if w.mode == "disabled" else WandbSettings(w.project, w.mode, w.entity, w.group, w.name)


def summarize(cfg: Config, pipeline: Pipeline, history: list[dict], time_split: dict, wall_s: float) -> dict:
    reports = actor_reports(pipeline)
    ledger = pipeline.ledger
    ledger.check(expect_idle=True)
    stage = pipeline.reward_stats()
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
        "publish_to_first_token_s": first_token_latencies(pipeline, reports),
        "ledger": ledger.as_dict(),
        "rollout_actor_deaths": stage["rollout_actor_deaths"],
        "last_failures": stage["last_failures"],
        "no_spread_steps": [h["step"] for h in history if h.get("warning") == NO_SPREAD],
    }


def _format_reward(metrics: dict) -> str:
    return ", ".join(f"{k.split('/')[1]} {v:.3f}" for k, v in metrics.items() if isinstance(v, float))


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
def main(dict_cfg: DictConfig) -> dict:
    cfg, run_dir = begin_run(dict_cfg, "train")
    summary = run(cfg, run_dir, resume_command(run_dir))
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
