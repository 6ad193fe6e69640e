"""Shared fixtures: the embedded model, a tiny random model, a local Ray."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session")
def smollm2_dir() -> str:
    from pipeline.embedded_model import ensure_embedded_model

    return str(ensure_embedded_model())


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, smollm2_dir) -> str:
    """A 2-layer random Llama with SmolLM2's tokenizer and chat template: fast, and vLLM can serve it."""
    from pipeline.tiny_model import build_random_tiny

    return build_random_tiny(smollm2_dir, tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def warm_model_dir(tmp_path_factory, tiny_model_dir) -> str:
    """The tiny model after a format-only warm start on corridor prompts (pipeline.tiny_model)."""
    from actors.prompting import PromptSettings
    from pipeline.tiny_model import format_warm_start

    return format_warm_start(tiny_model_dir, tmp_path_factory.mktemp("tiny-warm"), length=1, settings=PromptSettings(history_window=0))


@pytest.fixture(scope="session")
def ray_local():
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()
