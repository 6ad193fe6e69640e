"""One training run: its actors, the queues between them, and the loop that drives them one learner step
at a time (``launch.train`` is its entry point).

Data flow per learner step: the rollout coordinator (on the driver) hands the step's specs to the rollout
actors and their finished episodes to the reward stage, which scores them into the (bounded) learner
queue; each learner rank pulls its share and takes one optimizer step; every ``learner.publish_every``
steps rank 0 puts the adapter once into the object store as the next policy version, which the actors
load before their next batch. ``mode=async`` generates the next batch while the learner trains
(episodes are then at most ``learner.staleness`` versions old; older ones are dropped and counted).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import shutil
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path

import ray
from ray.exceptions import ActorUnavailableError, GetTimeoutError, RayActorError
from ray.util.queue import Queue
from tqdm import tqdm

from actors.coordinator import RolloutCoordinator
from actors.pool import make_rollout_actors, wait_until_ready
from actors.rollout import ThroughputStats
from conf.schema import Config, validate
from core.adapter import CheckpointError, Published
from core.episode import Episode, outcome_figures
from core.ledger import EpisodeLedger
from envs.specs import AssetsAhead, held_out_specs, prepare_env_assets, step_specs
from learner.ranks import make_learners
from pipeline.cluster import Placement, check_resources, link_actor_logs, start_ray
from pipeline.models import resolve_model_dir
from pipeline.tracking import RunLogger, WandbSettings
from reward.pool import evaluators_restarted, make_evaluators, make_reward_stage

log = logging.getLogger(__name__)


class RunStopped(RuntimeError):
    """An actor the run cannot go on without is gone; the run stops with its last checkpoint intact."""

    who = "an actor"


class LearnerDied(RunStopped):
    who = "a learner rank"


class RewardStageDied(RunStopped):
    """The reward stage died more often than ``reward.max_restarts`` allows."""

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


@dataclass
class Batch:
    """One learner step's batch in flight: a driver thread plays its specs through the rollout
    coordinator and hands the finished episodes to the reward stage, whose ``consume`` call scores them
    into the learner queue."""

    step: int
    adapter: Published | None  # the policy version it is played and judged at
    ledger: EpisodeLedger  # its attempts, merged into the run's ledger when it is collected
    sent: list[Episode] = field(default_factory=list)  # the finished episodes handed to the reward stage
    playing: Future | None = None
    scoring: ray.ObjectRef | None = None


class Pipeline:
    """The actors of one run and the queues between them, driven one learner step at a time.

    rollout actors -> rollout queue -> rollout coordinator (driver) -> episode queue -> reward stage ->
    learner queue -> learner ranks. The pipeline keeps the run's one episode ledger: each batch's
    attempts are counted apart while it is in flight and merged in when it is collected, with the
    reward stage's and the learners' counts for it.
    """

    def __init__(self, cfg: Config, model_dir: str) -> None:
        self.cfg = cfg
        self.placement = Placement(cfg)
        size = cfg.learner.episodes_per_step
        actors = make_rollout_actors(cfg, model_dir, self.placement.bundles("rollout"))
        self.rollouts = RolloutCoordinator(actors, 2 * size, cfg.rollout.restart_timeout_s)
        self.evaluators = make_evaluators(cfg, model_dir, self.placement.bundles("reward"))
        self.episode_queue = Queue()  # finished episodes on their way to the reward stage: one batch at most
        self.learner_queue = Queue(maxsize=2 * size)  # bounded: a slow learner slows the rollouts down
        self.reward = make_reward_stage(cfg.reward)  # every call hands in the evaluators and the calibration state
        self.calibration: dict | None = None  # the reward stage's calibration state after the last collected batch
        self.reward_stage_restarts = 0
        self.learners, self.rendezvous = make_learners(cfg, model_dir, self.placement.bundles("learner"))
        self.assets = AssetsAhead(cfg, cfg.learner.steps)
        self.publish_times: dict[int, float] = {}
        self.share_s: dict[int, float] = {}  # per version: the learners' gather, swap check and object-store put
        self.ledger = EpisodeLedger()

    @property
    def actors(self) -> list:
        return self.rollouts.actors

    def generate(self, step: int) -> Batch:
        """Start learner step ``step``'s batch on the current policy version."""
        specs = step_specs(self.cfg, step)
        self.assets.ready(step)  # this step's TextWorld games, made ahead in the background from step 1 on
        batch = Batch(step, self.rollouts.published, EpisodeLedger())
        episodes = self.rollouts.play(specs, batch.ledger)  # bound to this version now, played in the thread
        batch.scoring = self.reward.consume.remote(self.episode_queue, self.learner_queue, self.evaluators, batch.adapter, self.calibration)
        batch.playing = Future()
        # A daemon thread: a run that stops with a batch in flight must not wait for it at exit.
        threading.Thread(target=self._hand_over, args=(episodes, batch), name=f"rollouts-{step}", daemon=True).start()
        return batch

    def _hand_over(self, episodes, batch: Batch) -> None:
        try:
            for episode in episodes:
                if episode.status == "finished":  # failed ones end here, counted in the batch's ledger
                    batch.sent.append(episode)
                    self.episode_queue.put(episode)
            batch.playing.set_result(None)
        except BaseException as error:  # handed to collect(), which raises it in the driver's thread
            batch.playing.set_exception(error)
        finally:
            with contextlib.suppress(RayActorError):  # a run already closed has no queue and no consumer left
                self.episode_queue.put(None)  # the end of the batch, even when the rollouts failed

    def collect(self, batch: Batch) -> dict:
        """The reward stage's result for a batch ``generate`` started: ``queued``, ``self_eval`` and the
        reward metrics; the batch's counts go into the run's ledger."""
        batch.playing.result()  # the rollouts' own errors (every actor dead) surface here
        try:
            result = ray.get(batch.scoring)
        except RayActorError as error:
            result = self._score_again(batch, error)
        self.calibration = result.pop("calibration")
        batch.ledger.scored += result.pop("scored")
        batch.ledger.degraded += result.pop("degraded")
        batch.ledger.queued += result["queued"]
        self.ledger = self.ledger.merge(batch.ledger)
        return result

    def _score_again(self, batch: Batch, error: RayActorError) -> dict:
        """The reward stage died during ``batch``. Ray restarts it (``reward.max_restarts``), with the
        calibration state of the last collected batch; the episodes the dead stage had not put into the
        learner queue yet are scored again. (Those it had put there keep their rewards; their rows do
        not join the calibration window.) Restarts used up: the run stops."""
        self.reward_stage_restarts += 1
        log.warning("the reward stage died during batch %d (%s); scoring its remaining episodes again", batch.step, str(error).splitlines()[0][:200])
        self._wait_for_reward_stage(error)
        self.episode_queue.get_nowait_batch(self.episode_queue.qsize())  # what the dead stage had not read
        forwarded = self.learner_queue.get_nowait_batch(self.learner_queue.qsize())  # the learner is not pulling now
        self.learner_queue.put_nowait_batch(forwarded)
        done = {e.episode_id for e in forwarded}
        rest = [e for e in batch.sent if e.episode_id not in done]
        result = self._get(self.reward.forward.remote(rest, self.learner_queue, self.evaluators, batch.adapter, self.calibration), RewardStageDied)
        for key in ("queued", "scored"):
            result[key] += len(forwarded)
        result["degraded"] += sum(e.reward_note is not None for e in forwarded)
        return result

    def _wait_for_reward_stage(self, error: RayActorError) -> None:
        """Wait until Ray has restarted the reward stage (``rollout.restart_timeout_s`` at most);
        ``RewardStageDied`` if it is gone for good."""
        deadline = time.monotonic() + self.cfg.rollout.restart_timeout_s
        while True:
            try:
                ray.get(self.reward.state_dict.remote(), timeout=max(deadline - time.monotonic(), 1.0))
                return
            except ActorUnavailableError:  # restarting
                if time.monotonic() > deadline:
                    break
                time.sleep(1.0)
            except (RayActorError, GetTimeoutError) as final:
                error = final
                break
        raise RewardStageDied(f"{RewardStageDied.who} died: {type(error).__name__}: {str(error).splitlines()[0][:300]}")

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

    def publish(self, new_version: bool = True) -> int:
        """Gather the adapter (every rank takes part under ZeRO-3) as the next policy version (or, with
        ``new_version=False``, the current one: a resumed run); rank 0 puts it into the object store
        once, and the rollout coordinator's next batch carries it to the actors, which load it before
        they play (the evaluators likewise, on their next call). Returns the version."""
        start = time.time()
        published = self._get([l.share.remote(new_version) for l in self.learners])[0]
        self.rollouts.publish(published)
        if published is not None:
            self.publish_times[published.version] = start
            self.share_s[published.version] = time.time() - start
        return self.rollouts.version

    def evaluate(self, specs: list) -> dict:
        """Play ``specs`` with the current policy through the rollout side alone; never trained on."""
        ledger = EpisodeLedger()
        episodes = self.rollouts.evaluate(specs, ledger)
        self.ledger = self.ledger.merge(ledger)
        finished = sorted((e for e in episodes if e.status == "finished"), key=lambda e: e.spec_uid)
        return {**outcome_figures(episodes), "scores": [round(e.score, 3) for e in finished]}  # scores in spec order

    def checkpoint(self, directory: Path, driver_state: dict) -> Path:
        """Learner state, reward-stage state and the driver's state, written to a temporary folder
        first: a folder named ``step*`` or ``final`` is always complete."""
        partial = directory.with_name(directory.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        self._get([l.save_checkpoint.remote(str(partial)) for l in self.learners])
        calibration = self.calibration or self._get(self.reward.state_dict.remote(), RewardStageDied)
        (partial / "reward_state.json").write_text(json.dumps(calibration))
        (partial / "driver_state.json").write_text(json.dumps({**driver_state, "ledger": self.ledger.as_dict()}))
        shutil.rmtree(directory, ignore_errors=True)
        partial.rename(directory)
        return directory

    def restore(self, directory: Path) -> dict:
        """Load a checkpoint into the learners, keep its calibration state for the reward stage's next
        call, and publish its adapter (the actors load it before their first batch)."""
        self._get([l.load_checkpoint.remote(str(directory)) for l in self.learners])
        self.calibration = json.loads((directory / "reward_state.json").read_text())
        driver = json.loads((directory / "driver_state.json").read_text())
        self.ledger = EpisodeLedger.from_dict(driver["ledger"])
        self.publish(new_version=False)
        return driver

    @staticmethod
    def _get(refs, stopped: type[RunStopped] = LearnerDied):
        """``ray.get`` on calls to actors the run cannot lose: their death stops the run."""
        try:
            return ray.get(refs)
        except RayActorError as error:
            raise stopped(f"{stopped.who} died: {type(error).__name__}: {str(error).splitlines()[0][:300]}") from error

    def close(self) -> None:
        self.assets.close()
        for actor in self.evaluators + self.learners + [self.reward]:
            ray.kill(actor)
        self.rollouts.close()
        self.episode_queue.shutdown()
        self.learner_queue.shutdown()
        self.placement.remove()


def first_latencies(pipeline: Pipeline, reports: list[dict], event: str) -> dict[int, float]:
    """publish -> the first ``event`` on each version over all actors' ``reports`` (seconds): ``first_use``
    (a reply came back) or ``first_token`` (a token came out; known where the engine streams tokens)."""
    firsts: dict[int, float] = {}
    for report in reports:
        for version, t in report[event].items():
            firsts[version] = min(firsts.get(version, t), t)
    return {v: firsts[v] - t0 for v, t0 in pipeline.publish_times.items() if v in firsts}


SWAP_PARTS = ("share_s", "until_batch_s", "fetch_s", "load_s", "check_s", "until_request_s", "first_reply_s")


def swap_split(pipeline: Pipeline, reports: list[dict]) -> dict:
    """Publish -> first reply on the new version, split into its parts (seconds, mean over every actor
    that loaded a published version): the learners' share (gather, swap check, object-store put); the
    wait until the actor's next batch began; its fetch, engine load and check; the wait until its first
    request on the version entered the engine; that request's reply (``SWAP_PARTS``, they add up to
    ``total_s``). Where the engine streams tokens, also the wait from that first request to the
    version's first token (``first_token_s``) and publish -> first token (``to_first_token_s``). And the
    largest probe difference any engine showed (nats per token)."""
    parts: dict[str, list[float]] = {k: [] for k in (*SWAP_PARTS, "total_s", "first_token_s", "to_first_token_s")}
    probe = []
    for report in reports:
        for swap in report["swaps"]:
            v = swap["version"]
            if v not in pipeline.publish_times:
                continue
            published = pipeline.publish_times[v] + pipeline.share_s[v]
            loaded = swap["started_at"] + swap["fetch_s"] + swap["load_s"] + swap["check_s"]
            parts["share_s"].append(pipeline.share_s[v])
            parts["until_batch_s"].append(swap["started_at"] - published)
            for key in ("fetch_s", "load_s", "check_s"):
                parts[key].append(swap[key])
            if v in report["first_request"] and v in report["first_use"]:
                parts["until_request_s"].append(report["first_request"][v] - loaded)
                parts["first_reply_s"].append(report["first_use"][v] - report["first_request"][v])
                parts["total_s"].append(report["first_use"][v] - pipeline.publish_times[v])
            if v in report["first_request"] and v in report["first_token"]:
                parts["first_token_s"].append(report["first_token"][v] - report["first_request"][v])
                parts["to_first_token_s"].append(report["first_token"][v] - pipeline.publish_times[v])
            if "probe_diff" in swap:
                probe.append(swap["probe_diff"])
    return {
        "swaps": len(parts["fetch_s"]),
        **{k: sum(v) / len(v) if v else None for k, v in parts.items()},
        "probe_diff_max": max(probe, default=None),
    }


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
    eval_specs = held_out_specs(cfg)
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
    bar = tqdm(range(first_step, cfg.learner.steps), desc="learner steps", unit="step", initial=first_step, total=cfg.learner.steps)
    for step in bar:
        t0 = time.perf_counter()
        reward_metrics = pipeline.collect(pending)
        queued = reward_metrics.pop("queued")
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
            metrics["published_version"] = pipeline.publish()  # the actors load it before their next batch
            time_split["publish"] += time.perf_counter() - t0
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
        from pipeline.report import write_report

        write_report(run_dir)
    return summary


def wandb_settings(cfg: Config) -> WandbSettings | None:
    w = cfg.wandb
    return None if w.mode == "disabled" else WandbSettings(w.project, w.mode, w.entity, w.group, w.name)


def summarize(cfg: Config, pipeline: Pipeline, history: list[dict], time_split: dict, wall_s: float) -> dict:
    reports = pipeline.rollouts.reports()
    ledger = pipeline.ledger
    ledger.check(expect_idle=True)
    rollouts = pipeline.rollouts.stats()
    stats = ThroughputStats()
    for report in reports:
        stats = stats.add(report["stats"])
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
        "time_split_s": {"generate (actor sum)": stats.generate_s, "env (actor sum)": stats.env_s, **time_split, "env assets (waited)": pipeline.assets.wait_s},
        "rollout": {
            "scheduling": "continuous" if all(r.get("continuous") for r in reports) else "lockstep",
            "generated_tokens": stats.generated_tokens,
            "prefix_cache_hit_rate": stats.cached_prompt_tokens / max(stats.prompt_tokens, 1),
            "env_wait_s_per_env": stats.wait_env_s / max(cfg.rollout.num_actors * cfg.rollout.envs_per_actor, 1),
        },
        "publish_to_first_reply_s": first_latencies(pipeline, reports, "first_use"),
        "publish_to_first_token_s": first_latencies(pipeline, reports, "first_token"),  # empty where the engine does not stream
        "adapter_swap": swap_split(pipeline, reports),
        "ledger": ledger.as_dict(),
        "rollout_actor_deaths": rollouts["rollout_actor_deaths"],
        "reward_stage_restarts": pipeline.reward_stage_restarts,
        "evaluators_restarted": evaluators_restarted(pipeline.evaluators),
        "last_failures": rollouts["last_failures"],
        "no_spread_steps": [h["step"] for h in history if h.get("warning") == NO_SPREAD],
    }
