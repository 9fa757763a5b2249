"""Linear layers for the decode loop on CPU: oneDNN's kernel for a decode step of few rows.

A decode step multiplies a few rows (one per sequence of the batch) by every weight of the
model, Gemma 3 270M's LM head (262,144 × 640) above all. ``F.linear`` asks the CPU BLAS (MKL)
for ``x·Wᵀ``, and with few rows and a wide weight that kernel runs far below both the memory
bandwidth and the arithmetic peak. While the context is open, float32 decode-step calls of at
most ``MAX_ROWS`` rows on CPU run oneDNN's linear instead (``torch.ops.mkldnn._linear_pointwise``,
the kernel torch's own CPU compiler emits for linear layers). Measured on a 2-core AMD EPYC (2
threads, idle, the real head): 32 rows 245 ms with ``F.linear``, 186 ms as ``W·xᵀ`` in
2,048-row blocks (this module's form before), 103 ms with oneDNN; 8 rows 131 / 129 / 52 ms; a
decoder projection (2,048 × 640) at 64 rows 54 vs 106 GFLOP/s. Its values differ from
``F.linear``'s in the last bits (about 1e-5 on the head's logits). Only decode steps (one new
token per sequence) take it; prefills keep ``F.linear``, short ones too (one prompt's own tokens
after the shared prefix, ``evals.generate``): oneDNN there gave the decode loop no time and more
peak memory (2.4 GB on whole prompts; 1.2 GB more over the 100-item decode benchmark on short
prefills: 4.3 vs 3.1 GB, measured). Where this torch has no oneDNN, or the input is not
float32, few rows take ``(W·xᵀ)ᵀ`` (a wide weight in row blocks that stay in cache). Neither
form has a backward: an input that builds a graph takes ``F.linear``.

Given ``packs`` (a ``Packs`` the decode loop keeps for one run), oneDNN multiplies each weight
in its own blocked layout, made at the weight's first decode step and kept for the run
(``trainers_torch.kernels.onednn_pack``): a plain weight is laid out anew on every call. The
18 layers' products of Gemma 3 270M (2 threads, idle, a 2-core Intel Xeon with AVX-512):
17 rows 53.7 → 38.3 ms, 32 rows 57.7 → 42.4, 8 rows 42.1 → 32.6. The packed copies cost the
weights' size in memory while the run lasts (400 MB for that model's float32 body); a weight
changed in place since its copy was made is packed again.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from typing import Any

import torch

from trainers_torch.kernels import onednn_applies, onednn_linear, onednn_pack

MAX_ROWS = 64
CHUNK = 2048  # weight rows per product of a wide layer (the fallback)


class Packs:
    """oneDNN's packed copies of the weights decode steps multiply, by weight, for one decode run."""

    def __init__(self) -> None:
        self._by_id: dict[int, tuple[torch.Tensor, int, torch.Tensor | None]] = {}

    def __len__(self) -> int:
        return len(self._by_id)

    def get(self, weight: torch.Tensor) -> torch.Tensor:
        """The packed copy of ``weight`` (made now if it has none, or if ``weight`` changed in
        place since); ``weight`` itself where it cannot be packed."""
        try:
            version = weight._version
        except RuntimeError:  # an inference tensor keeps no version to check: not packed
            return weight
        held = self._by_id.get(id(weight))  # (the weight is held, so its id is not reused)
        if held is None or held[1] != version:
            held = (weight, version, onednn_pack(weight))
            self._by_id[id(weight)] = held
        return weight if held[2] is None else held[2]


def linear(self: torch.nn.Linear, x: torch.Tensor, packs: Packs | None = None) -> torch.Tensor:
    """``self(x)`` by this module's kernels where ``x`` is a decode step's few rows (the packed
    weight from ``packs``, when given), else ``F.linear``."""
    rows = x.numel() // x.shape[-1] if x.shape[-1] else 0
    graph = torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad)
    step = x.dim() < 3 or x.shape[-2] == 1  # one new token per sequence: a decode step
    if not step or rows == 0 or rows > MAX_ROWS or x.device.type != "cpu" or graph:  # no backward
        return torch.nn.functional.linear(x, self.weight, self.bias)
    if onednn_applies(x, self.weight):
        return onednn_linear(x, packs.get(self.weight) if packs is not None else self.weight, self.bias)
    xt = x.reshape(rows, x.shape[-1]).t()
    w = self.weight
    if w.shape[0] <= 2 * CHUNK:
        yt = torch.mm(w, xt)
    else:  # a wide weight (the LM head) in row blocks that stay in cache
        yt = torch.empty(w.shape[0], rows, dtype=x.dtype)
        for i, block in enumerate(w.split(CHUNK)):
            torch.mm(block, xt, out=yt[i * CHUNK : i * CHUNK + block.shape[0]])
    y = yt.t() + self.bias if self.bias is not None else yt.t().contiguous()
    return y.view(*x.shape[:-1], y.shape[-1])


@contextlib.contextmanager
def few_row_linears(model: Any, packs: Packs | None = None) -> Iterator[int]:
    """Every plain ``nn.Linear`` of ``model`` takes this module's kernels while the context is
    open (oneDNN's products from the packed weights of ``packs``, when given); yields how many
    layers it changed."""
    changed = [m for m in model.modules() if type(m) is torch.nn.Linear and "forward" not in m.__dict__]
    for m in changed:
        m.forward = functools.partial(linear, m, packs=packs)  # type: ignore[method-assign]
    try:
        yield len(changed)
    finally:
        for m in changed:
            del m.forward
