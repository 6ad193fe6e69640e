"""Rollout: one inference engine, M environment instances, many episodes at once.

Two schedules, the same episodes:
- continuous (engines with request-level batching: vLLM): every episode is its own loop. Its request
  joins the engine's running batch as soon as its prompt is ready and leaves when its own reply is
  done; its env step then runs in a small thread pool while the engine goes on decoding the others.
  A long reply or a slow env (a ScienceWorld step, a hung JVM until its timeout) holds back no one.
- lockstep (the HF engine): each turn, every env waiting for an action gets one batched ``generate``
  call, then every env steps.
The exact prompt ids, generated ids and sampling log-probs go into the episode record (token-in/
token-out). ``RolloutWorker`` is a plain class, testable without Ray; ``RolloutActor`` is its Ray shell.
"""

from __future__ import annotations

import threading
import time
import traceback
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field

import ray

from actors.engine import Generation, InferenceEngine, Sampling, load_checked, supports_continuous_batching
from actors.prompting import PromptSettings, build_messages, encode_prompt, history_entry, parse_action
from conf.schema import SCHEDULES
from core.adapter import AdapterWeights, Published
from core.episode import Episode, EpisodeSpec, Step
from envs.base import EnvError, StepResult, TextEnv


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
    cached_prompt_tokens: int = 0  # prompt tokens the engine read from its prefix cache
    batch_sum: int = 0  # requests in the running batch, summed over generate calls (lockstep) or engine steps
    batch_count: int = 0
    wait_env_s: float = 0.0  # time a ready env spent waiting for other envs' steps before its next request
    wait_reply_s: float = 0.0  # time a finished reply waited for longer replies of its batch (lockstep; estimated)

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


def _timed(fn: Callable, *args):
    """``fn(*args)`` and the time it returned (an env call in the pool: how long its answer waited)."""
    return fn(*args), time.perf_counter()


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
        scheduling: str = "auto",
    ) -> None:
        """A crashed, dead or hung env (a step slower than ``env_step_timeout_s``; 0: no limit) is
        replaced, and its episode is played again from the start up to ``max_episode_retries`` times;
        the failed attempts are handed on too (flagged ``retried``) for the ledger, never trained on.
        ``scheduling`` is one of ``SCHEDULES``: ``continuous`` needs an engine with request-level
        batching (vLLM), ``auto`` takes it where the engine has it and ``lockstep`` otherwise."""
        from transformers import AutoTokenizer

        self.worker_id = worker_id
        self.setup_error: str | None = None
        self.slots: list[_Slot] = []
        self.continuous = False
        try:
            self.engine = engine_factory()
            self.env_factory = env_factory
            self.tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
            if scheduling not in SCHEDULES:
                raise ValueError(f"rollout scheduling {scheduling!r} is not known; valid: {', '.join(SCHEDULES)}")
            able = supports_continuous_batching(self.engine)
            if scheduling == "continuous" and not able:
                raise ValueError(f"rollout scheduling 'continuous' needs an engine with request-level batching (vllm); {type(self.engine).__name__} has none")
            self.continuous = scheduling == "continuous" or (scheduling == "auto" and able)
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
        self.first_request: dict[int, float] = {}  # policy version -> wall time its first request entered the engine
        self.first_use: dict[int, float] = {}  # policy version -> wall time its first reply came back
        self.first_token: dict[int, float] = {}  # policy version -> wall time its first token came out (engines that stream)
        self.swaps: list[dict] = []  # per version loaded from a publish: its fetch, load and check times

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
        """Load ``adapter`` unless this actor holds it already (after a restart it holds only the base),
        and verify it took (``actors.engine.load_checked``: ``AdapterMismatch`` stops the run)."""
        if adapter is not None and adapter.version > self.policy_version:
            self.swaps.append(load_checked(self.engine, adapter))
            self.policy_version = adapter.version

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
        schedule = self._continuous if self.continuous else self._lockstep
        for episode in schedule(pending, attempts):
            spec, attempt = attempts.pop(episode.episode_id)
            if episode.status == "failed" and episode.failure_reason.startswith("env_") and attempt < self.max_episode_retries:
                episode.retried = True
                pending.appendleft((spec, attempt + 1))  # the same (task, variation): the group stays whole
            yield episode

    def _new_episode(self, slot: _Slot, spec: EpisodeSpec, attempt: int, attempts: dict) -> Episode:
        episode = Episode(
            episode_id=f"w{self.worker_id}-{uuid.uuid4().hex[:12]}",
            env=slot.env.name, task=spec.task, variation=spec.variation, split=spec.split,
            goal="", first_observation="", spec_uid=spec.uid,
        )  # fmt: skip
        attempts[episode.episode_id] = (spec, attempt)
        return episode

    def _reset(self, slot: _Slot, spec: EpisodeSpec):
        """The env's reset under the step timeout, and its duration."""
        start = time.perf_counter()
        reset = call_with_timeout(lambda: slot.env.reset(spec.task, spec.variation, spec.split), self.env_step_timeout_s)
        return reset, time.perf_counter() - start

    def _begin(self, slot: _Slot, episode: Episode, spec: EpisodeSpec, reset, env_s: float) -> None:
        episode.timings["env_s"] += env_s
        episode.goal, episode.first_observation = reset.goal, reset.observation
        slot.episode, slot.spec, slot.history, slot.version = episode, spec, [], self.policy_version
        slot.observation, slot.admissible = reset.observation, reset.info.get("admissible_actions")

    def _prompt_ids(self, slot: _Slot) -> list[int]:
        assert slot.episode is not None
        messages = build_messages(slot.episode.goal, slot.history, slot.observation, slot.admissible, self.prompt)
        return encode_prompt(self.tokenizer, messages)

    def _too_long(self, slot: _Slot, ids: list[int]) -> Episode | None:
        if len(ids) + self.sampling.max_tokens <= self.max_model_len:
            return None
        reason = f"prompt of {len(ids)} tokens + max_tokens exceeds max_model_len {self.max_model_len}"
        return self._fail(slot, slot.episode, "prompt_too_long", RuntimeError(reason))

    def _parse(self, slot: _Slot, generation: Generation):
        reply = self.tokenizer.decode(generation.token_ids, skip_special_tokens=True)
        return reply, parse_action(reply, generation.finish_reason == "length", self.prompt, slot.admissible)

    def _env_step(self, slot: _Slot, parsed) -> tuple[StepResult, float]:
        """The env's answer to a parsed reply (an invalid one is the env's no-op turn), under the timeout."""
        env, action, invalid = slot.env, parsed.action, parsed.invalid_reason
        start = time.perf_counter()
        result = call_with_timeout(lambda: env.step(action) if invalid is None else env.step_invalid(invalid), self.env_step_timeout_s)
        return result, time.perf_counter() - start

    def _record(self, slot: _Slot, prompt_ids, generation: Generation, reply: str, parsed, result: StepResult, env_s: float) -> Episode | None:
        """Append the step to the slot's episode; the episode if it ended with this step."""
        episode = slot.episode
        assert episode is not None
        episode.timings["env_s"] += env_s
        self.stats.env_s += env_s
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
                policy_version=slot.version,
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
        if not result.done:
            return None
        self.stats.cleaned_observations += int(result.info.get("cleaned_observations", 0))
        episode.score = float(result.info["score"])
        episode.success = bool(result.info["won"])
        episode.status = "finished"
        slot.episode = None
        return episode

    def _requested(self, versions: list[int]) -> None:
        for version in set(versions) - self.first_request.keys():
            self.first_request[version] = time.time()

    def _generated(self, generations: list[Generation], versions: list[int]) -> None:
        for version in set(versions) - self.first_use.keys():
            self.first_use[version] = time.time()
        for generation, version in zip(generations, versions):
            if generation.first_token_at is not None:
                self.first_token[version] = min(self.first_token.get(version, generation.first_token_at), generation.first_token_at)
        self.stats.generated_tokens += sum(len(g.token_ids) for g in generations)
        self.stats.cached_prompt_tokens += sum(g.cached_tokens for g in generations)

    # --- lockstep: one batched generate call per turn, then every env steps ----------------------
    def _lockstep(self, pending: deque, attempts: dict) -> Iterator[Episode]:
        while pending or any(s.episode for s in self.slots):
            for slot in self.slots:
                if slot.episode is None and pending:
                    spec, attempt = pending.popleft()
                    episode = self._new_episode(slot, spec, attempt, attempts)
                    try:
                        self._begin(slot, episode, spec, *self._reset(slot, spec))
                    except EnvError:  # bad input (an unknown task, a variation out of range): the caller's error
                        raise
                    except Exception as exc:  # the env itself broke: record, replace the instance, go on
                        yield self._fail(slot, episode, "env_reset_error", exc)
            active = [s for s in self.slots if s.episode is not None]
            if active:
                yield from self._turn(active)

    def _turn(self, active: list[_Slot]) -> list[Episode]:
        """One batched generation for every active slot, then one env step each."""
        finished: list[Episode] = []
        batch: list[tuple[_Slot, list[int]]] = []
        for slot in active:
            ids = self._prompt_ids(slot)
            if (failed := self._too_long(slot, ids)) is not None:
                finished.append(failed)
            else:
                batch.append((slot, ids))
        if not batch:
            return finished
        versions = [slot.version for slot, _ in batch]
        seeds = [turn_seed(slot.spec.seed, len(slot.episode.steps)) for slot, _ in batch]
        self._requested(versions)
        start = time.perf_counter()
        generations = self.engine.generate([ids for _, ids in batch], versions, self.sampling, seeds if any(s is not None for s in seeds) else None)
        elapsed = time.perf_counter() - start
        self._generated(generations, versions)
        self.stats.generate_s += elapsed
        self.stats.generate_calls += 1
        self.stats.batch_sum += len(batch)
        self.stats.batch_count += 1
        self.stats.prompt_tokens += sum(len(ids) for _, ids in batch)
        longest = max(len(g.token_ids) for g in generations)
        # A reply done after n of the batch's `longest` decoding steps waits for the rest (an estimate:
        # decoding steps taken as equally long, the prefill as nothing).
        self.stats.wait_reply_s += sum(elapsed * (longest - len(g.token_ids)) / longest for g in generations)

        turn_end = time.perf_counter()
        stepped: list[float] = []  # when each env that goes on finished its step
        for (slot, prompt_ids), generation in zip(batch, generations):
            assert slot.episode is not None
            slot.episode.timings["generate_s"] += elapsed
            reply, parsed = self._parse(slot, generation)
            self.stats.wait_env_s += time.perf_counter() - turn_end  # the envs before it in the turn stepped first
            try:
                result, env_s = self._env_step(slot, parsed)
            except Exception as exc:  # the env broke, died or hung mid-episode
                finished.append(self._fail(slot, slot.episode, "env_step_error", exc))
                continue
            if (episode := self._record(slot, prompt_ids, generation, reply, parsed, result, env_s)) is not None:
                finished.append(episode)
            else:
                stepped.append(time.perf_counter())
        done = time.perf_counter()
        self.stats.wait_env_s += sum(done - t for t in stepped)  # and the envs after it step before the next call
        return finished

    # --- continuous: each episode advances as soon as its own reply is back ----------------------
    def _continuous(self, pending: deque, attempts: dict) -> Iterator[Episode]:
        """Requests join the engine's running batch when their prompt is ready and leave when their
        reply is done; env resets and steps run in a thread pool, one call per env at a time."""
        running: dict[str, tuple[_Slot, list[int], float]] = {}  # request key -> slot, prompt ids, submitted at
        calls: dict[Future, tuple[_Slot, Episode, str, tuple]] = {}  # env call -> slot, episode, kind, context
        busy: set[int] = set()  # ids of the slots with an episode under way
        pool = ThreadPoolExecutor(max_workers=len(self.slots), thread_name_prefix=f"env-w{self.worker_id}")

        def ask(slot: _Slot) -> Episode | None:
            """Submit the slot's next request (or fail its episode on a prompt that is too long)."""
            ids = self._prompt_ids(slot)
            if (failed := self._too_long(slot, ids)) is not None:
                busy.discard(id(slot))
                return failed
            assert slot.episode is not None and slot.spec is not None
            key = f"{slot.episode.episode_id}-t{len(slot.episode.steps)}"
            self._requested([slot.version])
            self.engine.submit(key, ids, slot.version, self.sampling, turn_seed(slot.spec.seed, len(slot.episode.steps)))
            self.stats.prompt_tokens += len(ids)
            running[key] = (slot, ids, time.perf_counter())
            return None

        try:
            while pending or running or calls:
                for slot in self.slots:
                    if id(slot) not in busy and pending:
                        spec, attempt = pending.popleft()
                        episode = self._new_episode(slot, spec, attempt, attempts)
                        busy.add(id(slot))
                        calls[pool.submit(_timed, self._reset, slot, spec)] = (slot, episode, "reset", (spec,))
                finished, step_s = [], 0.0
                if running:
                    start = time.perf_counter()
                    self.stats.batch_sum += len(running)
                    self.stats.batch_count += 1
                    finished = self.engine.poll()
                    step_s = time.perf_counter() - start
                    self.stats.generate_s += step_s
                    self.stats.generate_calls += 1
                now = time.perf_counter()
                for key, generation in finished:  # each reply goes to its env at once
                    slot, prompt_ids, submitted = running.pop(key)
                    assert slot.episode is not None
                    slot.episode.timings["generate_s"] += now - submitted
                    self._generated([generation], [slot.version])
                    reply, parsed = self._parse(slot, generation)
                    calls[pool.submit(_timed, self._env_step, slot, parsed)] = (slot, slot.episode, "step", (prompt_ids, generation, reply, parsed))
                if running:
                    # Give the env calls in flight a moment (a tenth of an engine step, 10 ms at most): a
                    # fast env's next request then joins the next engine step instead of the one after.
                    done_calls = list(wait(list(calls), timeout=min(0.01, step_s / 10)).done) if calls else []
                else:
                    done_calls = list(wait(list(calls), return_when=FIRST_COMPLETED).done)
                for future in done_calls:
                    slot, episode, kind, context = calls.pop(future)
                    try:
                        outcome, ended_at = future.result()
                    except Exception as exc:  # the env itself broke, died or hung: record, replace it, go on
                        if kind == "reset" and isinstance(exc, EnvError):  # bad input (an unknown task...): the caller's error
                            raise
                        busy.discard(id(slot))
                        yield self._fail(slot, episode, f"env_{kind}_error", exc)
                        continue
                    self.stats.wait_env_s += time.perf_counter() - ended_at  # an answer that came during an engine step waits for its end
                    if kind == "reset":
                        self._begin(slot, episode, context[0], *outcome)
                    elif (ended := self._record(slot, *context, *outcome)) is not None:
                        busy.discard(id(slot))
                        yield ended
                        continue
                    if (failed := ask(slot)) is not None:
                        yield failed
        finally:
            self.engine.cancel()
            pool.shutdown(wait=False, cancel_futures=True)

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
            "continuous": self.continuous,
            "stats": self.stats,
            "version": self.policy_version,
            "first_request": dict(self.first_request),
            "first_use": dict(self.first_use),
            "first_token": dict(self.first_token),
            "swaps": list(self.swaps),
        }

    def close(self) -> None:
        for slot in self.slots:
            slot.env.close()
        if hasattr(self, "engine"):
            self.engine.close()


RolloutActor = ray.remote(RolloutWorker)
