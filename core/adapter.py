"""A LoRA adapter version as it travels from the learner to the engines: PEFT tensors in memory.

The tensors use PEFT's state-dict names (``base_model.model....lora_A.weight``) and the config is a
``peft.LoraConfig`` dict, so ``save`` writes the standard PEFT adapter format that both
``PeftModel.from_pretrained`` and vLLM's LoRA loader read.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch


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

    def save(self, directory: str | Path) -> Path:
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().contiguous().cpu() for k, v in self.tensors.items()}, directory / "adapter_model.safetensors")
        (directory / "adapter_config.json").write_text(json.dumps(_json_safe(self.peft_config), indent=2))
        return directory

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
