"""evals.gqa_step: a grouped-query decode step's attention without repeated keys and values."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from evals import generate as gen
from evals import gqa_step
from evals.generate import DecodeSettings, generate_completions
from tests.reference_decode import transformers_generate


def _qkv(rows: int, heads: int, kv_heads: int, q_len: int, keys: int) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(0)
    q = torch.randn(rows, heads, q_len, 16, generator=g)
    k, v = (torch.randn(rows, kv_heads, keys, 16, generator=g) for _ in range(2))
    return q, k, v


def _padded(rows: int, keys: int) -> torch.Tensor:
    """[rows, 1, 1, keys] bool: row r's first r·2 keys are left padding, row 1 also a far window."""
    mask = torch.ones(rows, 1, 1, keys, dtype=torch.bool)
    for r in range(rows):
        mask[r, ..., : 2 * r] = False
    mask[1, ..., : keys // 2] = False  # a sliding window's cut
    return mask


@pytest.mark.parametrize("kv_heads", [1, 2])
@pytest.mark.parametrize("masked", [True, False])
def test_a_decode_step_attends_as_sdpa_with_repeated_keys(kv_heads, masked):
    heads, rows, keys = 4, 3, 9
    module = SimpleNamespace(num_key_value_groups=heads // kv_heads, is_causal=True)
    q, k, v = _qkv(rows, heads, kv_heads, 1, keys)
    mask = _padded(rows, keys) if masked else None
    ours = gqa_step.step_attention(q, k, v, mask, 0.25)
    theirs, _ = sdpa_attention_forward(module, q, k, v, mask, scaling=0.25)
    assert ours.shape == theirs.shape == (rows, 1, heads, 16)
    assert torch.equal(gqa_step.over(sdpa_attention_forward)(module, q, k, v, mask, scaling=0.25)[0], ours)
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-6)
    # head k·G + g attends with key/value head k: head 0's keys changed move heads 0..G-1 only
    k2 = k.clone()
    k2[:, 0] += 1.0
    moved = (gqa_step.step_attention(q, k2, v, mask, 0.25) != ours).any(dim=(0, 1, 3))
    assert moved.tolist() == [h < heads // kv_heads for h in range(heads)]


def test_anything_but_a_grouped_decode_step_is_sdpa_itself():
    rows, keys = 2, 7
    cases = {
        "prefill": (SimpleNamespace(num_key_value_groups=2, is_causal=True), _qkv(rows, 4, 2, 3, keys), None),
        "no groups": (
            SimpleNamespace(num_key_value_groups=1, is_causal=True),
            _qkv(rows, 2, 2, 1, keys),
            None,
        ),
        "a mask per head": (
            SimpleNamespace(num_key_value_groups=2, is_causal=True),
            _qkv(rows, 4, 2, 1, keys),
            torch.rand(rows, 4, 1, keys) > 0.3,
        ),
    }
    attention = gqa_step.over(sdpa_attention_forward)
    for name, (module, (q, k, v), mask) in cases.items():
        ours, _ = attention(module, q, k, v, mask, scaling=0.5)
        theirs, _ = sdpa_attention_forward(module, q, k, v, mask, scaling=0.5)
        assert torch.equal(ours, theirs), name


def _step_logits(model) -> torch.Tensor:
    """A left-padded two-row prefill, then one decode step's logits."""
    ids = torch.tensor([[2, 5, 7, 9], [0, 0, 2, 5]])
    mask = (ids != 0).long()
    with torch.no_grad():
        cache = model(input_ids=ids, attention_mask=mask, use_cache=True).past_key_values
        mask = torch.cat([mask, torch.ones(2, 1, dtype=torch.long)], 1)
        return model(input_ids=torch.tensor([[11], [12]]), attention_mask=mask, past_key_values=cache).logits


def test_the_context_switches_an_sdpa_model_and_always_switches_it_back(torch_tiny):
    model, _ = torch_tiny
    plain = _step_logits(model)
    with gqa_step.gqa_step_attention(model) as on:
        assert on and model.config._attn_implementation == gqa_step.PREFIX + "sdpa"
        ours = _step_logits(model)
    assert model.config._attn_implementation == "sdpa"
    torch.testing.assert_close(ours, plain, rtol=1e-5, atol=1e-5)
    with pytest.raises(RuntimeError), gqa_step.gqa_step_attention(model):
        raise RuntimeError("a failed step")
    assert model.config._attn_implementation == "sdpa"
    eager = SimpleNamespace(config=SimpleNamespace(_attn_implementation="eager"))
    with gqa_step.gqa_step_attention(eager) as on:
        assert not on and eager.config._attn_implementation == "eager"


@pytest.mark.parametrize("implementation", ["sdpa", "packed_sdpa"])
def test_the_decode_loop_attends_with_it_and_keeps_generates_tokens(torch_tiny, monkeypatch, implementation):
    """Eval models (sdpa) decode steps through it; trained ones (the trainers' packed_sdpa:
    GRPO's policy) keep their own attention, so GRPO samples what it sampled before."""
    from trainers_torch.model import register_packed_sdpa

    model, tok = torch_tiny
    assert model.config.num_attention_heads > model.config.num_key_value_heads  # grouped queries
    register_packed_sdpa()
    monkeypatch.setattr(model.config, "_attn_implementation", implementation)
    steps: list[int] = []
    real = gqa_step.step_attention
    monkeypatch.setattr(gqa_step, "step_attention", lambda *a: steps.append(1) or real(*a))
    prompts = [gen.build_prompt(tok, q, "plain") for q in ["Hi", "2+3?", "What is 6 times 7?"]]
    settings = DecodeSettings(max_new_tokens=24)
    ours = generate_completions(model, tok, prompts, settings, batch_size=2, progress=False, return_ids=True)
    assert bool(steps) == (implementation == "sdpa")
    assert model.config._attn_implementation == implementation
    assert ours == transformers_generate(model, tok, prompts, settings, return_ids=True)


@pytest.fixture(scope="module")
def torch_tiny(tiny_gemma3):
    from trainers_torch.model import load_model

    return load_model(tiny_gemma3)
