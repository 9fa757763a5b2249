"""Linear layers for the decode loop on CPU: ``y = (W·xᵀ)ᵀ`` when ``x`` has few rows.

A decode step multiplies a few rows (one per sequence of the batch) by every weight of the
model. ``F.linear`` asks the CPU BLAS for ``x·Wᵀ``, and with few rows and a wide weight that
kernel is slow: on this project's 2-core CPU, Gemma 3 270M's LM head (262,144 × 640) at 32 rows
takes 446 ms as ``x·Wᵀ`` and 251 ms as ``W·xᵀ`` (the same products, bit-identical logits there),
and the decoder's projections 128 vs 69 ms per step; the head in blocks of 2,048 weight rows
(each block's product stays in cache) takes about 170 ms. Past about 128 rows (a prefill) the
plain kernel is as fast or faster, so only calls with at most ``MAX_ROWS`` rows take this form.
"""

from __future__ import annotations

import contextlib
import types
from collections.abc import Iterator
from typing import Any

import torch

MAX_ROWS = 64
CHUNK = 2048  # weight rows per product of a wide layer


def _forward(self: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    rows = x.numel() // x.shape[-1] if x.shape[-1] else 0
    if rows == 0 or rows > MAX_ROWS or x.device.type != "cpu":
        return torch.nn.functional.linear(x, self.weight, self.bias)
    xt = x.reshape(rows, x.shape[-1]).t()
    w = self.weight
    if w.shape[0] <= 2 * CHUNK:
        yt = torch.mm(w, xt)
    else:  # a wide weight (the LM head) in row blocks that stay in cache: 25% less time there
        yt = torch.empty(w.shape[0], rows, dtype=x.dtype)
        for i, block in enumerate(w.split(CHUNK)):
            torch.mm(block, xt, out=yt[i * CHUNK : i * CHUNK + block.shape[0]])
    y = yt.t() + self.bias if self.bias is not None else yt.t().contiguous()
    return y.view(*x.shape[:-1], y.shape[-1])


@contextlib.contextmanager
def few_row_linears(model: Any) -> Iterator[int]:
    """Every plain ``nn.Linear`` of ``model`` computes ``(W·xᵀ)ᵀ`` for inputs of at most
    ``MAX_ROWS`` rows while the context is open; yields how many layers it changed."""
    changed = [m for m in model.modules() if type(m) is torch.nn.Linear and "forward" not in m.__dict__]
    for m in changed:
        m.forward = types.MethodType(_forward, m)  # type: ignore[method-assign]
    try:
        yield len(changed)
    finally:
        for m in changed:
            del m.forward
