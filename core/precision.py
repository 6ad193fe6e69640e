"""Which floating-point types this machine computes fast.

A CPU without native bfloat16 instructions (AVX512-BF16 or AMX; e.g. an AVX2-only AMD EPYC) runs
bfloat16 matrix products in emulation: measured on such a 2-core machine, 0.3 GFLOP/s against 60
GFLOP/s in float32 for a 2048x2048 product, which turns a minute of learner work into hours. The
engines and the learner therefore compute in float32 on such CPUs whatever ``model.dtype`` or
``learner.bf16_autocast`` say, and say so once.
"""

from __future__ import annotations

import functools
import sys


@functools.cache
def cpu_has_fast_bf16() -> bool:
    """Whether this CPU has native bfloat16 matrix instructions (oneDNN's own check)."""
    import torch

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a torch build without oneDNN: read the CPU flags
        try:
            flags = open("/proc/cpuinfo").read()
        except OSError:
            return False
        return "avx512_bf16" in flags or "amx_bf16" in flags


def compute_dtype(dtype: str, on_gpu: bool) -> str:
    """``dtype`` where this device runs it natively, else float32 (half types on a CPU without them)."""
    if on_gpu or dtype == "float32" or (dtype == "bfloat16" and cpu_has_fast_bf16()):
        return dtype
    _warn_once(f"this CPU has no native {dtype} instructions: computing in float32 instead of {dtype} (emulated half types run ~100x slower)")
    return "float32"


@functools.cache
def _warn_once(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)
