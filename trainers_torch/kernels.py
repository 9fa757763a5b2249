"""oneDNN's float32 linear on CPU, where it can beat the BLAS (MKL) behind ``torch.mm``.

``ONEDNN`` is ``torch.ops.mkldnn._linear_pointwise`` (``x·Wᵀ``, the kernel torch's own CPU
compiler emits for linear layers), or None where this torch build has no oneDNN. Its values
differ from ``torch.mm``'s in the last bits. It has no backward: callers use it where no graph
is built (the decode loop, ``evals.few_rows``).

Given a plain weight, oneDNN lays it out anew in its own blocked format on every call: a read
and a write of the whole weight beside the product, which a decode step of few rows (bound by
reading the weights) pays in full. ``onednn_pack`` does that layout once
(``torch.ops.mkldnn._reorder_linear_weight``, as torch's CPU compiler does for frozen weights);
``onednn_linear`` takes the packed weight in the plain one's place.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def _onednn_linear() -> Callable[..., torch.Tensor] | None:
    """oneDNN's linear op, or None where this torch build has none."""
    if not torch.backends.mkldnn.is_available():
        return None
    try:
        return torch.ops.mkldnn._linear_pointwise
    except (AttributeError, RuntimeError):
        return None


ONEDNN = _onednn_linear()
PACK_ROWS = 32  # the row count a packed layout is chosen for (it serves any count)


def onednn_applies(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether ``x·weightᵀ`` can run on oneDNN: both float32 on CPU, and this torch has it."""
    return ONEDNN is not None and x.device.type == "cpu" and x.dtype == weight.dtype == torch.float32


def onednn_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x·weightᵀ (+ bias)`` by oneDNN (no autograd): float32 where ``onednn_applies``, or
    bfloat16 ``x`` with a bfloat16 weight from ``onednn_pack``; ``weight`` plain or packed."""
    assert ONEDNN is not None
    return ONEDNN(x, weight, bias, "none", [], "")


def onednn_pack(weight: torch.Tensor, rows: int = PACK_ROWS) -> torch.Tensor | None:
    """``weight`` [out, in] (float32 or bfloat16, CPU) in oneDNN's blocked layout for products
    of about ``rows`` rows, for ``onednn_linear``; None where this torch cannot pack it.

    Its products equal the plain weight's through oneDNN for two rows or more; one row may
    differ in the last bits (oneDNN takes another kernel for a plain weight's single row)."""
    if ONEDNN is None or weight.device.type != "cpu" or weight.dtype not in (torch.float32, torch.bfloat16):
        return None
    try:
        return torch.ops.mkldnn._reorder_linear_weight(weight.detach(), rows)
    except (AttributeError, RuntimeError):
        return None
