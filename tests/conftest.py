"""Shared fixtures: the embedded model, a tiny random model, a local Ray."""

from __future__ import annotations

import os

import pytest
import torch


@pytest.fixture(scope="session")
def smollm2_dir() -> str:
    from launch.prepare_model import ensure_embedded_model

    return str(ensure_embedded_model())


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, smollm2_dir) -> str:
    """A 2-layer random Llama with SmolLM2's tokenizer and chat template: fast, and vLLM can serve it."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    out = tmp_path_factory.mktemp("tiny-llama")
    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=4096,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True,
    )  # fmt: skip
    torch.manual_seed(0)
    LlamaForCausalLM(config).to(torch.bfloat16).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return str(out)


@pytest.fixture(scope="session")
def warm_model_dir(tmp_path_factory, tiny_model_dir) -> str:
    """The tiny model after a format-only warm start on corridor prompts (see helpers.format_warm_start)."""
    from actors.prompting import PromptSettings
    from tests.helpers import format_warm_start

    out = tmp_path_factory.mktemp("tiny-warm")
    return format_warm_start(tiny_model_dir, str(out), length=1, settings=PromptSettings(history_window=0))


@pytest.fixture(scope="session")
def ray_local():
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()
