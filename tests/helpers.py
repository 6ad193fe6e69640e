"""Helpers the tests share (fixtures live in conftest.py)."""

from __future__ import annotations

import torch

from core.adapter import AdapterWeights

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def random_adapter(model_dir: str, version: int, seed: int, rank: int = 8) -> AdapterWeights:
    """A LoRA adapter with non-zero random A and B (PEFT's init would leave B at zero)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    config = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=LORA_TARGETS, init_lora_weights=False)
    return AdapterWeights.from_peft_model(get_peft_model(base, config), version)


def ledger_of(num_specs: int, attempts: list):
    """The ledger of one ``RolloutWorker.run``: every spec started once, then every ended attempt."""
    from core.ledger import EpisodeLedger

    ledger = EpisodeLedger(started=num_specs)
    for episode in attempts:
        ledger.end(episode)
    return ledger


def final(attempts: list) -> list:
    """The final episode of each spec (retried attempts left out)."""
    return [e for e in attempts if not e.retried]


def actor_processes(class_name: str, since: float, driver_pid: int) -> list:
    """Live processes of Ray actors of ``class_name`` started after ``since`` in the Ray cluster that the
    driver ``driver_pid`` started (its raylet's workers descend from it; another job on the same machine
    has actors of the same classes). Ray titles an actor's process ``ray::<Class>`` or ``ray::<Class>.<method>``."""
    import psutil

    found = []
    for process in psutil.Process(driver_pid).children(recursive=True):
        try:
            title, created = " ".join(process.cmdline()), process.create_time()
        except psutil.Error:  # gone meanwhile, or not ours to read
            continue
        if title.startswith(f"ray::{class_name}") and created >= since:
            found.append(process)
    return found


class HFFactory:
    """Builds an HF engine (float32, 2 threads) for ``model_dir`` where it is called: in a rollout actor."""

    def __init__(self, model_dir: str) -> None:
        self.model_dir = model_dir

    def __call__(self):
        from actors.hf_engine import HFEngine

        return HFEngine(self.model_dir, max_versions=2, dtype="float32", num_threads=2)
