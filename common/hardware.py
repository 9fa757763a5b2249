"""What this machine's CPU multiplies natively, read from ``/proc/cpuinfo`` (no framework).

Both trainers resolve ``model.dtype: auto`` with it, and the torch decode loop chooses its
bfloat16 LM head by it (``evals.bf16_head``).
"""

from __future__ import annotations

import functools
from pathlib import Path


@functools.cache
def native_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 natively (AVX512_BF16 or AMX); elsewhere bfloat16
    products run many times slower than float32 ones (5x for a [256, 640] x [640, 2,048]
    product on a 2-core AVX2 CPU)."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags
