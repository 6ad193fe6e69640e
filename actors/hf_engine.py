"""Hugging Face transformers + PEFT engine: the same interface as the vLLM engine, for machines
without vLLM and as the reference the vLLM engine is tested against.

All adapter versions live in one ``PeftModel`` as named adapters (``v1``, ``v2``, ...); version 0 runs
with the adapters disabled. A batch mixing versions runs as one sub-batch per version.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Sequence

import torch

from actors.engine import (
    AdapterVersions,
    EngineError,
    Generation,
    Sampling,
    check_batch,
)
from core.adapter import AdapterWeights


def _left_pad(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, width - len(row) :] = torch.tensor(row, dtype=torch.long)
        mask[i, width - len(row) :] = 1
    return ids, mask


class HFEngine:
    def __init__(
        self,
        model_dir: str,
        max_versions: int,
        max_lora_rank: int = 16,
        dtype: str = "bfloat16",
        num_threads: int | None = None,
        seed: int = 0,
    ) -> None:
        from transformers import AutoModelForCausalLM, GenerationConfig

        if num_threads:
            torch.set_num_threads(num_threads)
        torch.manual_seed(seed)
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype)).eval()
        config = GenerationConfig.from_model_config(self.model.config)
        eos = config.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [eos])
        self.pad_id = config.pad_token_id if config.pad_token_id is not None else min(self.eos_ids)
        self.versions = AdapterVersions(max_versions)
        self.max_lora_rank = max_lora_rank
        self.computed_tokens = 0

    # --- adapters ------------------------------------------------------------------------------
    def load_adapter(self, adapter: AdapterWeights) -> None:
        from peft import (
            LoraConfig,
            PeftModel,
            get_peft_model,
            set_peft_model_state_dict,
        )

        for old in self.versions.admit(adapter, self.max_lora_rank):
            self.model.delete_adapter(f"v{old}")
        name = f"v{adapter.version}"
        fields = LoraConfig.__dataclass_fields__
        config = LoraConfig(**{k: v for k, v in adapter.peft_config.items() if k in fields and k != "peft_type"})
        config.inference_mode = True
        if isinstance(self.model, PeftModel):
            self.model.add_adapter(name, config)
        else:
            self.model = get_peft_model(self.model, config, adapter_name=name)
        result = set_peft_model_state_dict(self.model, adapter.tensors, adapter_name=name)
        if result.unexpected_keys:
            raise ValueError(f"adapter version {adapter.version} has tensors the model lacks: {result.unexpected_keys[:5]}")
        self.model.eval()

    def drop_adapter(self, version: int) -> None:
        self.versions.remove(version)
        self.model.delete_adapter(f"v{version}")

    def resident_versions(self) -> list[int]:
        return list(self.versions.resident)

    def _model_for(self, version: int):
        """Return a context manager that makes ``self.model`` compute with policy ``version``."""
        from contextlib import nullcontext

        if version == 0:
            return self.model.disable_adapter() if hasattr(self.model, "disable_adapter") else nullcontext()
        self.model.set_adapter(f"v{version}")
        return nullcontext()

    def _by_version(self, versions: Sequence[int]) -> dict[int, list[int]]:
        self.versions.check(versions)
        groups: dict[int, list[int]] = defaultdict(list)
        for i, v in enumerate(versions):
            groups[v].append(i)
        return groups

    # --- generation and scoring ----------------------------------------------------------------
    @torch.inference_mode()
    def generate(
        self, prompts: Sequence[Sequence[int]], versions: Sequence[int], sampling: Sampling, seeds: Sequence[int | None] | None = None
    ) -> list[Generation]:
        check_batch(prompts, versions, *([seeds] if seeds is not None else []))
        # HF samples a batch from one generator: per-request seeds seed the call together, so the same
        # batch gives the same tokens (vLLM gives each request its own generator).
        seed = batch_seed(seeds) if seeds is not None else sampling.seed
        if seed is not None:
            torch.manual_seed(seed)
        results: list[Generation | None] = [None] * len(prompts)
        for version, rows in self._by_version(versions).items():
            ids, mask = _left_pad([prompts[i] for i in rows], self.pad_id)
            greedy = sampling.temperature == 0
            with self._model_for(version):
                out = self.model.generate(
                    input_ids=ids,
                    attention_mask=mask,
                    do_sample=not greedy,
                    temperature=None if greedy else sampling.temperature,
                    top_p=None if greedy else sampling.top_p,
                    top_k=None,
                    max_new_tokens=sampling.max_tokens,
                    eos_token_id=sorted(self.eos_ids),
                    pad_token_id=self.pad_id,
                    output_scores=True,  # after temperature / top-p: the sampling distribution
                    return_dict_in_generate=True,
                )
            new_tokens = out.sequences[:, ids.shape[1] :]
            logprobs = torch.stack([torch.log_softmax(s.float(), dim=-1) for s in out.scores], dim=1)
            for row, i in enumerate(rows):
                tokens = new_tokens[row].tolist()
                stop = next((t for t, tok in enumerate(tokens) if tok in self.eos_ids), None)
                length = len(tokens) if stop is None else stop + 1
                tokens = tokens[:length]
                token_logprobs = logprobs[row, torch.arange(length), torch.tensor(tokens)].tolist()
                results[i] = Generation(tokens, token_logprobs, "length" if stop is None else "stop")
                self.computed_tokens += len(prompts[i]) + length
        return results  # type: ignore[return-value]

    @torch.inference_mode()
    def score(self, prompts: Sequence[Sequence[int]], continuations: Sequence[Sequence[int]], versions: Sequence[int]) -> list[list[float]]:
        check_batch(prompts, versions, continuations)
        results: list[list[float] | None] = [None] * len(prompts)
        for version, rows in self._by_version(versions).items():
            joined = [list(prompts[i]) + list(continuations[i]) for i in rows]
            # The logits at position t predict token t + 1: the continuation needs the last len(c) + 1.
            tails = self._tail_logprobs(joined, [len(continuations[i]) + 1 for i in rows], version)
            for i, full, tail in zip(rows, joined, tails):
                n = len(continuations[i])
                results[i] = tail[:-1].gather(-1, torch.tensor(full[len(full) - n :])[:, None])[:, 0].tolist()
        return results  # type: ignore[return-value]

    @torch.inference_mode()
    def next_token_logprobs(self, prompts: Sequence[Sequence[int]], candidates: Sequence[int], versions: Sequence[int]) -> list[list[float]]:
        check_batch(prompts, versions)
        if not candidates:
            raise EngineError("next_token_logprobs needs at least one candidate token id")
        results: list[list[float] | None] = [None] * len(prompts)
        for version, rows in self._by_version(versions).items():
            tails = self._tail_logprobs([list(prompts[i]) for i in rows], [1] * len(rows), version)
            for i, tail in zip(rows, tails):
                results[i] = tail[-1, list(candidates)].tolist()
        return results  # type: ignore[return-value]

    def _tail_logprobs(self, rows: list[list[int]], tails: list[int], version: int) -> list[torch.Tensor]:
        """Log-softmax over the vocabulary at the last ``tails[r]`` positions of each row.

        The rows' common prefix runs once and its KV cache is shared by all rows (one episode asked many
        questions costs the episode once); the remainders run as one left-padded batch after it, in
        chunks of about ``_CHUNK_TOKENS`` padded tokens. When the rows share much more than one common
        prefix (several episodes in one call, or nested prefixes such as the hindsight prompts of
        ``reward.hindsight``), they run one at a time in sorted order instead, each reusing the KV cache
        of the previous row up to their common prefix: whichever runs fewer tokens.
        """
        prefix = _common_prefix_length(rows)
        prefix = min(prefix, *(len(r) - t for r, t in zip(rows, tails)))  # the needed positions come after it
        order, reused = _chain(rows, tails)
        if sum(len(r) for r in rows) - sum(reused) < _CHAIN_GAIN * (prefix + sum(len(r) - prefix for r in rows)):
            return self._chained_tail_logprobs(rows, tails, version, order, reused)
        out: list[torch.Tensor] = []
        with self._model_for(version):
            cache = None
            if prefix > 0:
                cache = self.model(input_ids=torch.tensor([rows[0][:prefix]]), use_cache=True, logits_to_keep=1).past_key_values
                self.computed_tokens += prefix
            for chunk in _chunks(rows, prefix, _CHUNK_TOKENS):
                suffixes = [rows[r][prefix:] for r in chunk]
                ids, mask = _left_pad(suffixes, self.pad_id)
                keep = max(tails[r] for r in chunk)
                positions = prefix + (mask.cumsum(-1) - 1).clamp(min=0)
                kwargs = {}
                if cache is not None:
                    kwargs["past_key_values"] = _repeat_cache(cache, len(chunk))
                    mask = torch.cat([torch.ones((len(chunk), prefix), dtype=mask.dtype), mask], dim=1)
                logits = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=keep, **kwargs).logits
                logprobs = torch.log_softmax(logits.float(), dim=-1)
                for k, r in enumerate(chunk):
                    out.append(logprobs[k, keep - tails[r] :])
                self.computed_tokens += sum(len(s) for s in suffixes)
        return out

    def _chained_tail_logprobs(self, rows: list[list[int]], tails: list[int], version: int, order: list[int], reused: list[int]) -> list[torch.Tensor]:
        """``_tail_logprobs`` one row at a time in ``order``, row ``order[k]`` reusing the first
        ``reused[k]`` positions of the KV cache the previous row left."""
        out: list[torch.Tensor | None] = [None] * len(rows)
        cache = None
        with self._model_for(version):
            for r, keep in zip(order, reused):
                if keep == 0:
                    cache = None
                elif cache.get_seq_length() > keep:
                    cache.crop(keep - cache.get_seq_length())  # a negative count drops that many positions
                result = self.model(input_ids=torch.tensor([rows[r][keep:]]), past_key_values=cache, use_cache=True, logits_to_keep=tails[r])
                cache = result.past_key_values
                out[r] = torch.log_softmax(result.logits[0].float(), dim=-1)
                self.computed_tokens += len(rows[r]) - keep
        return out  # type: ignore[return-value]

    def close(self) -> None:
        pass


_CHUNK_TOKENS = 8192
_CHAIN_GAIN = 0.75  # run the rows one at a time only when that runs under 3/4 of the tokens


def _chain(rows: Sequence[Sequence[int]], tails: Sequence[int]) -> tuple[list[int], list[int]]:
    """The rows in sorted order, and for each the positions it can take from the previous row's KV
    cache (their common prefix, leaving its last ``tails`` positions to compute)."""
    order = sorted(range(len(rows)), key=lambda r: list(rows[r]))
    reused, previous = [], []
    for r in order:
        row = rows[r]
        common = next((t for t, (a, b) in enumerate(zip(previous, row)) if a != b), min(len(previous), len(row)))
        reused.append(min(common, len(row) - tails[r]))
        previous = row
    return order, reused


def _common_prefix_length(rows: Sequence[Sequence[int]]) -> int:
    first = rows[0]
    n = min(len(r) for r in rows)
    for row in rows[1:]:
        n = next((t for t in range(n) if row[t] != first[t]), n)
    return n


def _chunks(rows: list[list[int]], prefix: int, budget: int) -> list[list[int]]:
    """Row indices in consecutive groups whose padded remainder (rows x longest) stays within budget."""
    groups: list[list[int]] = []
    for r in range(len(rows)):
        width = len(rows[r]) - prefix
        if groups and (len(groups[-1]) + 1) * max(width, max(len(rows[g]) - prefix for g in groups[-1])) <= budget:
            groups[-1].append(r)
        else:
            groups.append([r])
    return groups


def _repeat_cache(cache, batch: int):
    """A copy of a batch-1 KV cache repeated ``batch`` times (the prefix cache stays reusable)."""
    import copy

    repeated = copy.deepcopy(cache)
    repeated.batch_repeat_interleave(batch)
    return repeated


def batch_seed(seeds: Sequence[int | None]) -> int:
    """One seed for a batch of per-request seeds (stable across processes, unlike ``hash``)."""
    return int.from_bytes(hashlib.blake2b(repr(list(seeds)).encode(), digest_size=8).digest(), "little") >> 1
