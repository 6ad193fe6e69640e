"""The inference-engine interface shared by rollout and reward actors, and the adapter-version book.

An engine does these things, all on token ids (token-in/token-out):
- ``generate``: batched sampling; each prompt names the policy version to sample from, and may carry
  a seed (vLLM: the request's own generator, so its tokens do not depend on the rest of the batch; HF:
  the batch's seeds seed the call, so the same batch gives the same tokens); returns the generated ids
  and the log-prob of each under the sampling distribution (temperature applied).
- ``score``: teacher-forced log-probs of given continuation ids after given prompts (temperature 1).
- ``next_token_logprobs``: the log-prob of each of a few candidate tokens (e.g. "Yes" and "No") as the
  next token after each prompt (temperature 1, full vocabulary), without sampling anything.
  Prompts that share a prefix (one episode, many questions) reuse its computation: vLLM through its
  prefix cache, the HF engine by running the common prefix once per call.
  ``computed_tokens`` counts the tokens an engine actually ran through the model (cost accounting).
- ``submit`` / ``poll`` (optional, vLLM): continuous batching. ``submit`` adds one request to the
  running batch; ``poll`` runs one engine step and returns the requests that finished in it, so a
  request leaves as soon as its own reply is done and new ones join between steps. An engine without
  them (HF) is driven in lockstep: one ``generate`` call per turn.
- ``load_adapter`` / ``drop_adapter``: LoRA versions from in-memory tensors. Version 0 is the base
  model; at most ``max_versions`` adapters are resident and loading one more evicts the oldest.
  ``load_checked`` loads one and proves it took (``verify_swap``), whatever the engine.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from core.adapter import AdapterMismatch, AdapterWeights, Published, SwapCheck


class EngineError(ValueError):
    """Bad request to an engine (unknown version, bad sampling value)."""


@dataclass(frozen=True)
class Sampling:
    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0
    max_tokens: int = 64
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise EngineError(f"sampling temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise EngineError(f"sampling top_p must be in (0, 1], got {self.top_p}")
        if self.max_tokens < 1:
            raise EngineError(f"sampling max_tokens must be >= 1, got {self.max_tokens}")


@dataclass
class Generation:
    token_ids: list[int]
    logprobs: list[float]
    finish_reason: str  # "stop" (EOS) or "length"
    cached_tokens: int = 0  # prompt tokens read from the prefix cache instead of computed
    first_token_at: float | None = None  # wall time its first token came out (engines that stream tokens; else None)


class InferenceEngine(Protocol):
    def generate(
        self, prompts: Sequence[Sequence[int]], versions: Sequence[int], sampling: Sampling, seeds: Sequence[int | None] | None = None
    ) -> list[Generation]: ...

    def score(self, prompts: Sequence[Sequence[int]], continuations: Sequence[Sequence[int]], versions: Sequence[int]) -> list[list[float]]: ...

    def next_token_logprobs(self, prompts: Sequence[Sequence[int]], candidates: Sequence[int], versions: Sequence[int]) -> list[list[float]]: ...

    computed_tokens: int

    def load_adapter(self, adapter: AdapterWeights) -> None: ...

    def drop_adapter(self, version: int) -> None: ...

    def resident_versions(self) -> list[int]: ...

    def close(self) -> None: ...


class AdapterVersions:
    """Which adapter versions an engine holds: increasing ids, at most ``max_versions`` resident.

    The engine asks ``admit(version)`` before loading (it returns the versions to evict first) and
    ``check(versions)`` before serving a request.
    """

    def __init__(self, max_versions: int) -> None:
        if max_versions < 1:
            raise EngineError(f"max_versions (staleness + 1) must be >= 1, got {max_versions}")
        self.max_versions = max_versions
        self.resident: list[int] = []  # oldest first

    def admit(self, adapter: AdapterWeights, max_rank: int) -> list[int]:
        if self.resident and adapter.version <= self.resident[-1]:
            raise EngineError(f"adapter version {adapter.version} is not newer than the latest resident version {self.resident[-1]}")
        if adapter.rank > max_rank:
            raise EngineError(f"adapter version {adapter.version} has LoRA rank {adapter.rank} > engine max_lora_rank {max_rank}")
        evict = self.resident[: max(0, len(self.resident) + 1 - self.max_versions)]
        self.resident = self.resident[len(evict) :] + [adapter.version]
        return evict

    def remove(self, version: int) -> None:
        if version not in self.resident:
            raise EngineError(f"adapter version {version} is not resident; resident versions: {self.resident}")
        self.resident.remove(version)

    def check(self, versions: Sequence[int]) -> None:
        for version in set(versions):
            if version != 0 and version not in self.resident:
                raise EngineError(f"policy version {version} is not loaded; resident: base (0) and {self.resident}")


def supports_continuous_batching(engine) -> bool:
    return all(callable(getattr(engine, name, None)) for name in ("submit", "poll", "cancel"))


def check_batch(prompts: Sequence[Sequence[int]], versions: Sequence[int], *others: Sequence) -> None:
    if len(versions) != len(prompts) or any(len(o) != len(prompts) for o in others):
        raise EngineError(f"batch lengths differ: {len(prompts)} prompts, {len(versions)} versions, {[len(o) for o in others]} others")
    for i, prompt in enumerate(prompts):
        if len(prompt) == 0:
            raise EngineError(f"prompt {i} of the batch is empty")


def make_engine(cfg, model_dir: str, dtype: str, max_versions: int, seed: int, cpu_threads: str | None) -> InferenceEngine:
    """Build the engine an ``EngineConfig`` names (imports the backend only when it is used). On a CPU
    without native bfloat16, ``dtype`` falls back to float32 (core/precision.py)."""
    import torch

    from core.precision import compute_dtype

    dtype = compute_dtype(dtype, on_gpu=torch.cuda.is_available())
    if cfg.kind == "vllm":
        from actors.vllm_engine import VLLMEngine

        return VLLMEngine(
            model_dir,
            max_versions,
            max_lora_rank=cfg.max_lora_rank,
            dtype=dtype,
            max_model_len=cfg.max_model_len,
            seed=seed,
            enable_prefix_caching=cfg.enable_prefix_caching,
            tensor_parallel_size=cfg.tensor_parallel_size,
            gpu_memory_utilization=cfg.gpu_memory_utilization,
            kv_cache_gib=cfg.kv_cache_gib,
            cpu_threads_bind=cpu_threads,
            block_size=cfg.block_size,
        )
    if cfg.kind == "hf":
        from actors.hf_engine import HFEngine

        num_threads = len(_expand_cores(cpu_threads)) if cpu_threads else None
        return HFEngine(model_dir, max_versions, max_lora_rank=cfg.max_lora_rank, dtype=dtype, num_threads=num_threads, seed=seed)
    raise EngineError(f"engine.kind={cfg.kind!r} is not known; valid: vllm, hf")


def _expand_cores(cores: str) -> list[int]:
    """'0-2,5' -> [0, 1, 2, 5]"""
    out: list[int] = []
    for part in cores.split(","):
        lo, _, hi = part.partition("-")
        out.extend(range(int(lo), int(hi or lo) + 1))
    return out


def split_cores(available: list[int], num_actors: int, index: int) -> str:
    """The vLLM bind list for actor ``index`` when ``num_actors`` share ``available`` cores evenly
    (actors share cores round-robin when there are more actors than cores)."""
    if num_actors >= len(available):
        return str(available[index % len(available)])
    per = len(available) // num_actors
    mine = available[index * per : (index + 1) * per]
    return ",".join(str(c) for c in mine)


def verify_swap(engine: InferenceEngine, adapter: AdapterWeights, check: SwapCheck) -> dict:
    """Prove that ``engine`` now serves ``adapter`` as the learner has it: the fetched tensors hash to
    the learner's digest, and the probe's continuation log-probs under the new version are within the
    check's tolerance (nats per token, mean absolute difference) of the learner's.
    ``AdapterMismatch`` otherwise, naming the version and both values. Returns what was measured."""
    digest = adapter.digest()
    if digest != check.digest:
        raise AdapterMismatch(f"adapter version {adapter.version} arrived with tensors hashing to {digest}, the learner published {check.digest}")
    (got,) = engine.score([check.prompt_ids], [check.continuation_ids], [adapter.version])
    diff = sum(abs(a - b) for a, b in zip(got, check.logprobs, strict=True)) / len(got)
    if not diff <= check.tolerance:  # NaN fails too
        raise AdapterMismatch(
            f"adapter version {adapter.version}: the engine's probe log-probs differ from the learner's by {diff:.4f} nats per token "
            f"(tolerance {check.tolerance}): engine {sum(got):.4f}, learner {sum(check.logprobs):.4f} in all. "
            "The engine is not serving the adapter the learner trained"
        )
    return {"version": adapter.version, "probe_diff": diff}


def load_checked(engine: InferenceEngine, published: Published) -> dict:
    """Fetch ``published``, load it into ``engine`` and verify it (when it carries a check). Returns the
    swap's timings (wall time ``started_at``; ``fetch_s``, ``load_s``, ``check_s``) and, when checked,
    ``probe_diff``."""
    started_at, start = time.time(), time.perf_counter()
    adapter = published.fetch()
    fetched = time.perf_counter()
    engine.load_adapter(adapter)
    loaded = time.perf_counter()
    out = {"version": adapter.version, "started_at": started_at, "fetch_s": fetched - start, "load_s": loaded - fetched}
    if published.check is not None:
        out.update(verify_swap(engine, adapter, published.check))
    out["check_s"] = time.perf_counter() - loaded
    return out
