"""trainers_torch.rms_norm: the fused RMSNorm gives the module's own output bit for bit and
autograd's gradients (input and weight), for both families, in float32 and bfloat16."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from trainers_torch.rms_norm import FAMILIES, fuse_rms_norms


def _norm(family: str, dim: int, dtype: torch.dtype, trainable: bool) -> Any:
    from transformers.models.gemma3.modeling_gemma3 import Gemma3RMSNorm
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    norm = (Gemma3RMSNorm if family == "gemma" else LlamaRMSNorm)(dim, eps=1e-6)
    with torch.no_grad():
        norm.weight.normal_(0.5, 0.3)
    norm.to(dtype).weight.requires_grad_(trainable)
    return norm


def _run(
    norm: Any, x: torch.Tensor, g: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    x = x.detach().requires_grad_()
    norm.weight.grad = None
    y = norm(x)
    y.backward(g)
    return y.detach(), x.grad, None if norm.weight.grad is None else norm.weight.grad.clone()


@pytest.mark.parametrize("family", ["gemma", "llama"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("trainable", [False, True])
def test_fused_norm_matches_the_module(family: str, dtype: torch.dtype, trainable: bool) -> None:
    torch.manual_seed(0)
    x = (torch.randn(3, 7, 32) * 2.0).to(dtype)
    g = torch.randn(3, 7, 32).to(dtype)
    norm = _norm(family, 32, dtype, trainable)
    y0, gx0, gw0 = _run(norm, x, g)
    assert fuse_rms_norms(norm) == 1
    y1, gx1, gw1 = _run(norm, x, g)
    assert y1.dtype == dtype and gx1.dtype == dtype
    assert torch.equal(y0, y1)  # the module's own operations, in its order
    tol = {"rtol": 1e-5, "atol": 1e-6} if dtype == torch.float32 else {"rtol": 2e-2, "atol": 2e-2}
    torch.testing.assert_close(gx1, gx0, **tol)
    if trainable:
        assert gw0 is not None and gw1 is not None and gw1.dtype == dtype
        torch.testing.assert_close(gw1, gw0, **tol)
    else:
        assert gw1 is None


def test_the_gradient_comparison_can_fail() -> None:
    """A norm whose backward drops the r³ term (the x-dependence of r) is caught by the same check."""
    torch.manual_seed(0)
    x, g = torch.randn(4, 32) * 2.0, torch.randn(4, 32)
    norm = _norm("gemma", 32, torch.float32, False)
    _, gx0, _ = _run(norm, x, g)
    xr = x.detach().requires_grad_()
    r = torch.rsqrt(xr.pow(2).mean(-1, keepdim=True) + 1e-6).detach()  # r held constant
    (xr * r * (1.0 + norm.weight)).backward(g)
    assert xr.grad is not None
    with pytest.raises(AssertionError):
        torch.testing.assert_close(xr.grad, gx0, rtol=1e-5, atol=1e-6)


def test_fuse_on_models(tiny_gemma3: Any, tiny_llama: Any) -> None:
    """Every norm of a Gemma 3 (4 per block, q/k norms, the final one) and of a Llama is fused; the
    logits stay the same bits and the trainable parameters' gradients agree."""
    from transformers import AutoModelForCausalLM

    for path in (tiny_gemma3, tiny_llama):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "norm" in name:
                    p.normal_(0.5, 0.3)
        ids = torch.randint(3, model.config.vocab_size, (2, 12))
        out0 = model(input_ids=ids, labels=ids)
        out0.loss.backward()
        grads0 = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        model.zero_grad(set_to_none=True)
        norms = [m for m in model.modules() if type(m).__name__ in FAMILIES]
        assert fuse_rms_norms(model) == len(norms) > 0
        out1 = model(input_ids=ids, labels=ids)
        out1.loss.backward()
        assert torch.equal(out0.logits, out1.logits)
        for n, p in model.named_parameters():
            torch.testing.assert_close(p.grad, grads0[n], rtol=1e-4, atol=1e-6, msg=n)


def test_unknown_norms_are_left_alone() -> None:
    layer = torch.nn.LayerNorm(8)
    forward = layer.forward
    assert fuse_rms_norms(layer) == 0 and layer.forward == forward
