"""oneDNN's float32 linear on CPU, where it can beat the BLAS (MKL) behind ``torch.mm``.

``ONEDNN`` is ``torch.ops.mkldnn._linear_pointwise`` (``x·Wᵀ``, the kernel torch's own CPU
compiler emits for linear layers), or None where this torch build has no oneDNN. Its values
differ from ``torch.mm``'s in the last bits. It has no backward: callers use it where no graph
is built (the decode loop, ``evals.few_rows``).
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


def onednn_applies(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether ``x·weightᵀ`` can run on oneDNN: both float32 on CPU, and this torch has it."""
    return ONEDNN is not None and x.device.type == "cpu" and x.dtype == weight.dtype == torch.float32


def onednn_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x·weightᵀ (+ bias)`` by oneDNN; only where ``onednn_applies`` (no autograd)."""
    assert ONEDNN is not None
    return ONEDNN(x, weight, bias, "none", [], "")
