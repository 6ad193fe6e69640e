"""Hugging Face transformers + PEFT engine: the same interface as the vLLM engine, for machines
without vLLM and as the reference the vLLM engine is tested against.

All adapter versions live in one ``PeftModel`` as named adapters (``v1``, ``v2``, ...); version 0 runs
with the adapters disabled. A batch mixing versions runs as one sub-batch per version.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import torch

from actors.engine import AdapterVersions, Generation, Sampling, check_batch
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

    # --- adapters ------------------------------------------------------------------------------
    def load_adapter(self, adapter: AdapterWeights) -> None:
        from peft import LoraConfig, PeftModel, get_peft_model, set_peft_model_state_dict

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
    def generate(self, prompts: Sequence[Sequence[int]], versions: Sequence[int], sampling: Sampling) -> list[Generation]:
        check_batch(prompts, versions)
        if sampling.seed is not None:
            torch.manual_seed(sampling.seed)
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
        return results  # type: ignore[return-value]

    @torch.inference_mode()
    def score(
        self, prompts: Sequence[Sequence[int]], continuations: Sequence[Sequence[int]], versions: Sequence[int]
    ) -> list[list[float]]:
        check_batch(prompts, versions, continuations)
        results: list[list[float] | None] = [None] * len(prompts)
        for version, rows in self._by_version(versions).items():
            joined = [list(prompts[i]) + list(continuations[i]) for i in rows]
            width = max(len(j) for j in joined)
            ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for r, row in enumerate(joined):  # right padding: positions are the plain 0..n-1
                ids[r, : len(row)] = torch.tensor(row)
                mask[r, : len(row)] = 1
            with self._model_for(version):
                logits = self.model(input_ids=ids, attention_mask=mask).logits.float()
            logprobs = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, ids[:, 1:, None])[..., 0]
            for r, i in enumerate(rows):
                start = len(prompts[i]) - 1  # logits at position t predict token t + 1
                results[i] = logprobs[r, start : start + len(continuations[i])].tolist()
        return results  # type: ignore[return-value]

    def close(self) -> None:
        pass
