"""Rollout: one inference engine, M environment instances, many episodes at once.

Each turn, every env waiting for an action gets its prompt built from the chat template, and one
batched ``generate`` call serves them all. The exact prompt ids, generated ids and sampling log-probs
go into the episode record (token-in/token-out). ``RolloutWorker`` is a plain class, testable without
Ray; ``RolloutActor`` is its Ray shell.
"""

from __future__ import annotations

import threading
import time
import traceback
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import ray

from actors.engine import InferenceEngine, Sampling
from actors.prompting import PromptSettings, build_messages, encode_prompt, history_entry, parse_action
from core.adapter import AdapterWeights, Published
from core.episode import Episode, EpisodeSpec, Step
from envs.base import EnvError, TextEnv


def turn_seed(spec_seed: int | None, turn: int) -> int | None:
    """The sampling seed of turn ``turn`` of a seeded spec (None: the engine's own generator)."""
    return None if spec_seed is None else (spec_seed * 1_000_003 + turn) % (2**31 - 1)


@dataclass
class _Slot:
    """One env instance and the episode it is playing."""

    env: TextEnv
    episode: Episode | None = None
    spec: EpisodeSpec | None = None
    history: list[tuple[str, str]] = field(default_factory=list)
    observation: str = ""
    admissible: list[str] | None = None
    version: int = 0  # the policy version the episode started with and stays on


@dataclass
class ThroughputStats:
    generate_s: float = 0.0
    generate_calls: int = 0
    generated_tokens: int = 0
    prompt_tokens: int = 0
    env_s: float = 0.0
    env_steps: int = 0
    cleaned_observations: int = 0  # env output that was not clean text or too long (envs.base.clean_text)

    def add(self, other: ThroughputStats) -> ThroughputStats:
        return ThroughputStats(*(a + b for a, b in zip(vars(self).values(), vars(other).values())))


class ActorSetupError(RuntimeError):
    """An actor's constructor failed on bad input (a config or env error): the same on every retry,
    so it is reported once from ``ready`` instead of Ray restarting the actor into the same error."""


# Errors of the input, not of the machine: restarting the actor cannot help.
SETUP_ERRORS = (EnvError, ValueError, FileNotFoundError)


class EnvTimeout(RuntimeError):
    """An env call did not return within ``env_step_timeout_s``."""


def call_with_timeout(fn: Callable, timeout_s: float):
    """``fn()``, or EnvTimeout if it has not returned after ``timeout_s`` (0: wait forever).

    The call runs in a daemon thread: a hung env cannot be interrupted from Python, so the worker
    closes it (for ScienceWorld that kills its JVM, which ends the call) and gives up on the thread.
    """
    if not timeout_s:
        return fn()
    outcome: dict = {}

    def target() -> None:
        try:
            outcome["value"] = fn()
        except BaseException as exc:  # handed to the caller below
            outcome["error"] = exc

    thread = threading.Thread(target=target, daemon=True, name="env-call")
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        raise EnvTimeout(f"no answer within {timeout_s:g} s")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


class RolloutWorker:
    def __init__(
        self,
        worker_id: int,
        engine_factory: Callable[[], InferenceEngine],
        env_factory: Callable[[], TextEnv],
        tokenizer_dir: str,
        num_envs: int,
        sampling: Sampling,
        prompt: PromptSettings,
        max_model_len: int,
        env_step_timeout_s: float = 0.0,
        max_episode_retries: int = 0,
    ) -> None:
        """A crashed, dead or hung env (a step slower than ``env_step_timeout_s``; 0: no limit) is
        replaced, and its episode is played again from the start up to ``max_episode_retries`` times;
        the failed attempts are handed on too (flagged ``retried``) for the ledger, never trained on."""
        from transformers import AutoTokenizer

        self.worker_id = worker_id
        self.setup_error: str | None = None
        self.slots: list[_Slot] = []
        try:
            self.engine = engine_factory()
            self.env_factory = env_factory
            self.tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
            for _ in range(num_envs):
                self.slots.append(_Slot(env_factory()))
        except SETUP_ERRORS as error:  # the same on every retry: reported once (ready), never restarted
            self.setup_error = f"{type(error).__name__}: {error}"
            self.close()
        self.sampling = sampling
        self.prompt = prompt
        self.max_model_len = max_model_len
        self.env_step_timeout_s = env_step_timeout_s
        self.max_episode_retries = max_episode_retries
        self.policy_version = 0
        self.stats = ThroughputStats()
        self.first_use: dict[int, float] = {}  # policy version -> wall time its first tokens were generated

    def ready(self) -> bool:
        """True once built; raises ``ActorSetupError`` if the constructor failed on bad input."""
        if self.setup_error is not None:
            raise ActorSetupError(f"rollout actor {self.worker_id} could not start: {self.setup_error}")
        return True

    # --- adapter versions ----------------------------------------------------------------------
    def load_adapter(self, adapter: AdapterWeights) -> int:
        """Load the next policy version; episodes started from now on use it."""
        self.engine.load_adapter(adapter)
        self.policy_version = adapter.version
        return self.policy_version

    def catch_up(self, adapter: Published | None) -> None:
        """Load ``adapter`` unless this actor holds it already (after a restart it holds only the base)."""
        if adapter is not None and adapter.version > self.policy_version:
            self.load_adapter(adapter.fetch())

    def resident_versions(self) -> list[int]:
        self.ready()
        return self.engine.resident_versions()

    # --- playing -------------------------------------------------------------------------------
    def run(self, specs: list[EpisodeSpec], adapter: Published | None = None) -> list[Episode]:
        """Play every spec to the end (or to failure); return every ended attempt, the retried ones
        (flagged ``retried``) included."""
        self.ready()
        self.catch_up(adapter)
        return list(self._play(specs))

    def stream(self, specs: list[EpisodeSpec], queue, adapter: Published | None = None) -> int:
        """Like ``run``, but each attempt goes into ``queue`` (a ``ray.util.queue.Queue``) as soon as
        it ends; a bounded queue makes a slow consumer slow the rollout down. Returns the count."""
        self.ready()
        self.catch_up(adapter)
        count = 0
        for episode in self._play(specs):
            queue.put(episode)
            count += 1
        return count

    def _play(self, specs: list[EpisodeSpec]) -> Iterator[Episode]:
        """Keep every env slot busy until all specs are played; yield every attempt as it ends: one
        final episode per spec (finished, or failed after its last retry) and the retried attempts."""
        pending: deque[tuple[EpisodeSpec, int]] = deque((spec, 0) for spec in specs)  # (spec, attempt)
        attempts: dict[str, tuple[EpisodeSpec, int]] = {}  # episode id -> what it is playing
        while pending or any(s.episode for s in self.slots):
            ended: list[Episode] = []
            for slot in self.slots:
                if slot.episode is None and pending:
                    spec, attempt = pending.popleft()
                    episode = self._start(slot, spec)
                    attempts[episode.episode_id] = (spec, attempt)
                    if episode.status == "failed":
                        ended.append(episode)
            active = [s for s in self.slots if s.episode is not None]
            if active:
                ended += self._turn(active)
            for episode in ended:
                spec, attempt = attempts.pop(episode.episode_id)
                if episode.status == "failed" and episode.failure_reason.startswith("env_") and attempt < self.max_episode_retries:
                    episode.retried = True
                    pending.appendleft((spec, attempt + 1))  # the same (task, variation): the group stays whole
                yield episode

    def _start(self, slot: _Slot, spec: EpisodeSpec) -> Episode:
        """Reset the slot's env for a new episode (status "failed" if the env broke doing it)."""
        episode = Episode(
            episode_id=f"w{self.worker_id}-{uuid.uuid4().hex[:12]}",
            env=slot.env.name, task=spec.task, variation=spec.variation, split=spec.split,
            goal="", first_observation="", spec_uid=spec.uid,
        )  # fmt: skip
        start = time.perf_counter()
        try:
            reset = call_with_timeout(lambda: slot.env.reset(spec.task, spec.variation, spec.split), self.env_step_timeout_s)
        except EnvError:  # bad input (an unknown task, a variation out of range): the caller's error
            raise
        except Exception as exc:  # the env itself broke: record, replace the instance, go on
            return self._fail(slot, episode, "env_reset_error", exc)
        episode.timings["env_s"] += time.perf_counter() - start
        episode.goal, episode.first_observation = reset.goal, reset.observation
        slot.episode, slot.spec, slot.history, slot.version = episode, spec, [], self.policy_version
        slot.observation, slot.admissible = reset.observation, reset.info.get("admissible_actions")
        return episode

    def _prompt_ids(self, slot: _Slot) -> list[int]:
        assert slot.episode is not None
        messages = build_messages(slot.episode.goal, slot.history, slot.observation, slot.admissible, self.prompt)
        return encode_prompt(self.tokenizer, messages)

    def _turn(self, active: list[_Slot]) -> list[Episode]:
        """One batched generation for every active slot, then one env step each."""
        finished: list[Episode] = []
        batch: list[tuple[_Slot, list[int]]] = []
        for slot in active:
            ids = self._prompt_ids(slot)
            if len(ids) + self.sampling.max_tokens > self.max_model_len:
                reason = f"prompt of {len(ids)} tokens + max_tokens exceeds max_model_len {self.max_model_len}"
                finished.append(self._fail(slot, slot.episode, "prompt_too_long", RuntimeError(reason)))
            else:
                batch.append((slot, ids))
        if not batch:
            return finished
        versions = [slot.version for slot, _ in batch]
        seeds = [turn_seed(slot.spec.seed, len(slot.episode.steps)) for slot, _ in batch]
        start = time.perf_counter()
        generations = self.engine.generate([ids for _, ids in batch], versions, self.sampling, seeds if any(s is not None for s in seeds) else None)
        elapsed = time.perf_counter() - start
        for version in set(versions) - self.first_use.keys():
            self.first_use[version] = time.time()
        self.stats.generate_s += elapsed
        self.stats.generate_calls += 1
        self.stats.generated_tokens += sum(len(g.token_ids) for g in generations)
        self.stats.prompt_tokens += sum(len(ids) for _, ids in batch)

        for (slot, prompt_ids), generation, version in zip(batch, generations, versions):
            episode = slot.episode
            assert episode is not None
            episode.timings["generate_s"] += elapsed
            reply = self.tokenizer.decode(generation.token_ids, skip_special_tokens=True)
            parsed = parse_action(reply, generation.finish_reason == "length", self.prompt, slot.admissible)
            start = time.perf_counter()
            env, action, invalid = slot.env, parsed.action, parsed.invalid_reason
            try:
                result = call_with_timeout(
                    lambda env=env, action=action, invalid=invalid: env.step(action) if invalid is None else env.step_invalid(invalid), self.env_step_timeout_s
                )
            except Exception as exc:  # the env broke, died or hung mid-episode
                finished.append(self._fail(slot, episode, "env_step_error", exc))
                continue
            env_time = time.perf_counter() - start
            episode.timings["env_s"] += env_time
            self.stats.env_s += env_time
            self.stats.env_steps += 1
            episode.steps.append(
                Step(
                    prompt_ids=prompt_ids,
                    action_ids=list(generation.token_ids),
                    action_logprobs=list(generation.logprobs),
                    reply_text=reply,
                    action=parsed.action,
                    invalid_reason=parsed.invalid_reason,
                    observation=result.observation,
                    env_reward=result.reward,
                    policy_version=version,
                    recognised=bool(result.info.get("recognised", True)),
                    command=parsed.command,
                    matched=parsed.matched,
                    reply_line=parsed.line,
                    progress=result.info.get("progress"),
                    score_delta=float(result.info.get("score_delta", result.reward)),
                )
            )
            slot.history.append(history_entry(parsed.action, reply, result.observation))
            slot.observation, slot.admissible = result.observation, result.info.get("admissible_actions")
            if result.done:
                self.stats.cleaned_observations += int(result.info.get("cleaned_observations", 0))
                episode.score = float(result.info["score"])
                episode.success = bool(result.info["won"])
                episode.status = "finished"
                slot.episode = None
                finished.append(episode)
        return finished

    def _fail(self, slot: _Slot, episode: Episode, kind: str, exc: BaseException) -> Episode:
        if isinstance(exc, EnvTimeout):  # a hung env, whichever call it hung in
            kind = "env_timeout"
        episode.status = "failed"
        episode.failure_reason = f"{kind}: {type(exc).__name__}: {exc}"[:2000]
        slot.episode = None
        if kind.startswith("env_"):
            try:
                slot.env.close()
            except Exception:  # a broken env may fail to close too; its replacement is what matters
                traceback.print_exc()
            slot.env = self.env_factory()
        return episode

    # --- reporting -----------------------------------------------------------------------------
    def report(self) -> dict:
        return {
            "worker_id": self.worker_id,
            "stats": self.stats,
            "version": self.policy_version,
            "first_use": dict(self.first_use),
        }

    def close(self) -> None:
        for slot in self.slots:
            slot.env.close()
        if hasattr(self, "engine"):
            self.engine.close()


RolloutActor = ray.remote(RolloutWorker)
