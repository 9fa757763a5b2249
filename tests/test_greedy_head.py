"""evals.greedy_head: the bfloat16 head's greedy tokens are float32's argmax, on hard rows and in
the decode loop; it applies only where it is exact."""

from __future__ import annotations

import pytest
import torch

from evals import generate as gen
from evals import greedy_head
from evals.generate import DecodeSettings, generate_completions
from evals.greedy_head import GreedyHead
from tests.reference_decode import transformers_generate


def _hard_weight() -> torch.Tensor:
    """A head whose top logits lie closer than bfloat16 can tell apart, with unequal row norms."""
    g = torch.Generator().manual_seed(0)
    w = torch.randn(3000, 48, generator=g) * torch.linspace(0.2, 3.0, 3000)[:, None]
    w[1000:1400] = w[2999] * (1 + 2e-3 * torch.randn(400, 48, generator=g))  # near-copies of the longest row
    return w


def test_greedy_head_gives_float32s_argmax_on_near_ties_ties_and_flat_rows(monkeypatch):
    w = _hard_weight()
    g = torch.Generator().manual_seed(1)
    x = torch.cat(
        [
            torch.randn(20, 48, generator=g) * 50,
            w[2999:3000].repeat(6, 1) * torch.tensor([1, 1e-3, 1e3, 7, 0.5, 3])[:, None],  # near-tie winners
            w[1200:1201] * 2,
            torch.zeros(1, 48),  # every logit ties: token 0
        ]
    )
    head = GreedyHead(w)
    expected = torch.nn.functional.linear(x, w).argmax(dim=1)
    assert torch.equal(head(x), expected)
    assert torch.equal(head(x[:, None, :]), expected)  # [N, 1, D] as the decoder gives it
    # bfloat16 alone picks other tokens among the near-copies: the float32 check decides
    low = torch.nn.functional.linear(x.bfloat16(), head.low).argmax(dim=1)
    assert int((low != expected).sum()) >= 3, (low, expected)
    # an exact copy of a winner, later in the vocabulary: the first of the two, as torch.argmax
    tied = torch.cat([w, w[expected[20:26]]])
    assert torch.equal(GreedyHead(tied)(x), expected)
    # rows past the candidate cap, and non-finite rows, take the full float32 head
    monkeypatch.setattr(greedy_head, "MAX_CANDIDATES", 3)
    bad = torch.cat([x, torch.full((1, 48), float("nan"))])
    assert torch.equal(head(bad), torch.nn.functional.linear(bad, w).argmax(dim=1))


def test_bound_covers_the_bfloat16_error():
    """The module's bound holds with a margin on random and adversarial rows."""
    w = _hard_weight()
    g = torch.Generator().manual_seed(2)
    x = torch.cat([torch.randn(64, 48, generator=g) * s for s in (1e-3, 1.0, 1e3)])
    err = (torch.nn.functional.linear(x.bfloat16(), w.bfloat16()).float() - x @ w.T).abs()
    bound = greedy_head.BOUND * x.norm(dim=1, keepdim=True) * w.norm(dim=1)
    assert float((err / bound).max()) < 0.8


def test_applies_only_to_plain_float32_heads_on_known_models(
    tiny_gemma3, tiny_gemma2, tiny_llama, monkeypatch
):
    from trainers_torch.model import load_model

    gemma3, _ = load_model(tiny_gemma3)
    llama, _ = load_model(tiny_llama)
    gemma2, _ = load_model(tiny_gemma2)  # final logit soft-capping
    monkeypatch.setattr(greedy_head, "native_bf16", lambda: True)
    assert GreedyHead.of(gemma3) is not None and GreedyHead.of(llama) is not None
    assert GreedyHead.of(gemma2) is None
    assert GreedyHead.of(gemma3.model) is None  # not a causal LM
    monkeypatch.setattr(gemma3.config, "model_type", "some_new_model")
    assert GreedyHead.of(gemma3) is None
    assert GreedyHead.of(llama.to(torch.float64)) is None
    llama.to(torch.float32).set_output_embeddings(torch.nn.Linear(64, 128, bias=True))
    assert GreedyHead.of(llama) is None
    monkeypatch.setattr(greedy_head, "native_bf16", lambda: False)  # bfloat16 would be slower
    assert GreedyHead.of(load_model(tiny_llama)[0]) is None


@pytest.mark.parametrize("native", [True, False])
def test_decode_with_the_greedy_head_equals_generate(tiny_gemma3, tiny_llama, monkeypatch, native):
    from trainers_torch.model import load_model

    monkeypatch.setattr(greedy_head, "native_bf16", lambda: native)
    calls: list[int] = []
    real = GreedyHead.__call__
    monkeypatch.setattr(GreedyHead, "__call__", lambda self, h: calls.append(h.shape[0]) or real(self, h))
    for path in (tiny_gemma3, tiny_llama):
        model, tok = load_model(path)
        prompts = [gen.build_prompt(tok, q, "plain") for q in ["2+3?", "Add 7 and 11.", "Hi", "x", "abc"]]
        settings = DecodeSettings(max_new_tokens=24)
        ours = generate_completions(
            model, tok, prompts, settings, batch_size=3, progress=False, return_ids=True
        )
        assert ours == transformers_generate(model, tok, prompts, settings, return_ids=True)
    assert bool(calls) == native  # prefill and decode steps went through it only where it applies


@pytest.mark.parametrize("vocab", [500, 2048, 3000])
def test_candidates_by_blocks_are_the_whole_comparisons(vocab):
    """The block search finds every (row, token) at or above the line, in nonzero()'s order:
    vocabularies shorter than a block, a whole number of blocks, and a short last block."""
    g = torch.Generator().manual_seed(3)
    low = (torch.randn(7, vocab, generator=g) * 3).bfloat16()
    low[2, -1] = 50.0  # a row whose only candidate is the vocabulary's last token
    line = (low.float().amax(dim=1) - torch.tensor([0.0, 0.5, 0.1, 2.0, 0.0, 9.0, 1.0])).bfloat16()
    rows, idx = greedy_head._candidates(low, line)
    want_rows, want_idx = (low >= line[:, None]).nonzero(as_tuple=True)
    assert torch.equal(rows, want_rows) and torch.equal(idx, want_idx)
    assert (2, vocab - 1) in set(zip(rows.tolist(), idx.tolist(), strict=True)) and len(rows) > 7
