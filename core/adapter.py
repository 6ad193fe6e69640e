"""A LoRA adapter version as it travels from the learner to the engines: PEFT tensors in memory.

The tensors use PEFT's state-dict names (``base_model.model....lora_A.weight``) and the config is a
``peft.LoraConfig`` dict, so ``save`` writes the standard PEFT adapter format that both
``PeftModel.from_pretrained`` and vLLM's LoRA loader read.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch

# The probe every swap is checked with: a short text whose continuation's log-probs the learner computes
# under the new version and every engine that loads it must reproduce (temperature 1).
PROBE_PROMPT = "You are in a kitchen. On the counter you see a red apple and a knife.\n> "
PROBE_CONTINUATION = "take the red apple"


def probe_ids(tokenizer) -> tuple[list[int], list[int]]:
    """The probe's prompt and continuation as token ids of ``tokenizer``."""
    prompt = tokenizer(PROBE_PROMPT, add_special_tokens=False)["input_ids"]
    return prompt, tokenizer(PROBE_CONTINUATION, add_special_tokens=False)["input_ids"]


@dataclass(frozen=True)
class SwapCheck:
    """What an engine must show after loading a version: the same tensors (``digest``) and, for the
    probe's continuation tokens, the learner's log-probs under that version (``logprobs``) within
    ``tolerance`` nats per token (mean absolute difference)."""

    digest: str
    prompt_ids: list[int]
    continuation_ids: list[int]
    logprobs: list[float]
    tolerance: float


class AdapterMismatch(RuntimeError):
    """An engine's loaded adapter is not the learner's: other tensors, or log-probs that disagree."""


@dataclass(frozen=True)
class Published:
    """The current policy version as a message to actors: its number, its object-store reference and
    the check an actor runs after loading it (None: unchecked).

    The reference travels inside a list, so Ray hands it over as a reference and an actor fetches
    the tensors only when it does not hold that version yet (a restarted actor catching up).
    """

    version: int
    refs: list
    check: SwapCheck | None = None

    def fetch(self) -> AdapterWeights:
        import ray

        return ray.get(self.refs[0])


class CheckpointError(ValueError):
    """A checkpoint folder that cannot be loaded as it is."""


@dataclass
class AdapterWeights:
    version: int
    tensors: dict[str, torch.Tensor]
    peft_config: dict

    def __post_init__(self) -> None:
        if self.version < 1:
            raise ValueError(f"adapter version must be >= 1 (0 is the base model), got {self.version}")
        if not self.tensors:
            raise ValueError(f"adapter version {self.version} has no tensors")

    @property
    def rank(self) -> int:
        return int(self.peft_config["r"])

    def digest(self) -> str:
        """A hash of the tensors (names, dtypes, shapes and bytes): equal on both ends of a swap."""
        h = hashlib.sha256()
        for name in sorted(self.tensors):
            tensor = self.tensors[name].detach().contiguous().cpu()
            h.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
            h.update(memoryview(tensor.view(torch.uint8).numpy()))
        return h.hexdigest()[:16]

    def save(self, directory: str | Path) -> Path:
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().contiguous().cpu() for k, v in self.tensors.items()}, directory / "adapter_model.safetensors")
        (directory / "adapter_config.json").write_text(json.dumps(_json_safe(self.peft_config), indent=2))
        return directory

    @classmethod
    def load(cls, directory: str | Path, version: int = 1) -> AdapterWeights:
        """Read a saved PEFT LoRA adapter (a checkpoint's ``adapter/`` folder); a missing, truncated or
        foreign folder is a CheckpointError that names the file and what was expected, never a half load."""
        from safetensors.torch import load_file

        directory = Path(directory)
        config_file, weights_file = directory / "adapter_config.json", directory / "adapter_model.safetensors"
        for path in (config_file, weights_file):
            if not path.is_file():
                raise CheckpointError(
                    f"{directory} is not a PEFT adapter folder: {path.name} is missing (expected adapter_config.json and adapter_model.safetensors)"
                )
        try:
            config = json.loads(config_file.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise CheckpointError(f"{config_file} is not valid JSON ({exc}); the checkpoint is damaged") from exc
        if config.get("peft_type") != "LORA" or "r" not in config:
            raise CheckpointError(
                f"{config_file} describes peft_type={config.get('peft_type')!r}; only LoRA adapters (peft_type 'LORA' with a rank r) can be loaded"
            )
        try:
            tensors = load_file(str(weights_file))
        except Exception as exc:  # safetensors raises its own error types for truncated or foreign files
            raise CheckpointError(f"{weights_file} cannot be read ({type(exc).__name__}: {exc}); the checkpoint is truncated or not safetensors") from exc
        if not tensors or not all(".lora_A." in k or ".lora_B." in k for k in tensors):
            raise CheckpointError(f"{weights_file} holds {len(tensors)} tensors that are not all LoRA A/B matrices; is it an adapter?")
        return cls(version, tensors, config)

    @classmethod
    def from_peft_model(cls, model, version: int, adapter_name: str = "default") -> AdapterWeights:
        """Take the adapter out of a PEFT model (tensors detached and copied to CPU)."""
        from peft import get_peft_model_state_dict

        tensors = get_peft_model_state_dict(model, adapter_name=adapter_name)
        config = model.peft_config[adapter_name].to_dict()
        return cls(version, {k: v.detach().cpu().clone() for k, v in tensors.items()}, _json_safe(config))


def _json_safe(config: dict) -> dict:
    """LoraConfig.to_dict() holds sets and enums; keep what JSON (and vLLM's loader) can read."""
    return json.loads(json.dumps(config, default=lambda v: sorted(v) if isinstance(v, set) else str(v)))
