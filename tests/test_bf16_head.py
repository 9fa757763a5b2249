"""evals.bf16_head: the bfloat16 head's greedy tokens are float32's argmax and its samples follow
float32's softmax, on hard rows and in the decode loop; it applies only where it is exact."""

from __future__ import annotations

import pytest
import torch

from evals import bf16_head
from evals import generate as gen
from evals.bf16_head import Bf16Head
from evals.generate import DecodeSettings, generate_completions
from tests.reference_decode import transformers_generate


def _hard_weight() -> torch.Tensor:
    """A head whose top logits lie closer than bfloat16 can tell apart, with unequal row norms."""
    g = torch.Generator().manual_seed(0)
    w = torch.randn(3000, 48, generator=g) * torch.linspace(0.2, 3.0, 3000)[:, None]
    w[1000:1400] = w[2999] * (1 + 2e-3 * torch.randn(400, 48, generator=g))  # near-copies of the longest row
    return w


def test_argmax_is_float32s_argmax_on_near_ties_ties_and_flat_rows(monkeypatch):
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
    head = Bf16Head(w)
    expected = torch.nn.functional.linear(x, w).argmax(dim=1)
    assert torch.equal(head.argmax(x), expected)
    assert torch.equal(head.argmax(x[:, None, :]), expected)  # [N, 1, D] as the decoder gives it
    # bfloat16 alone picks other tokens among the near-copies: the float32 check decides
    low = head.low_logits(x).argmax(dim=1)
    assert int((low != expected).sum()) >= 3, (low, expected)
    # an exact copy of a winner, later in the vocabulary: the first of the two, as torch.argmax
    tied = torch.cat([w, w[expected[20:26]]])
    assert torch.equal(Bf16Head(tied).argmax(x), expected)
    # rows past the candidate cap, and non-finite rows, take the full float32 head
    monkeypatch.setattr(bf16_head, "MAX_CANDIDATES", 3)
    bad = torch.cat([x, torch.full((1, 48), float("nan"))])
    assert torch.equal(head.argmax(bad), torch.nn.functional.linear(bad, w).argmax(dim=1))


def test_bound_covers_the_bfloat16_error():
    """The module's bound holds with a margin on random and adversarial rows."""
    w = _hard_weight()
    g = torch.Generator().manual_seed(2)
    x = torch.cat([torch.randn(64, 48, generator=g) * s for s in (1e-3, 1.0, 1e3)])
    err = (torch.nn.functional.linear(x.bfloat16(), w.bfloat16()).float() - x @ w.T).abs()
    bound = bf16_head.BOUND * x.norm(dim=1, keepdim=True) * w.norm(dim=1)
    assert float((err / bound).max()) < 0.8


def test_applies_only_to_plain_float32_heads_on_known_models(
    tiny_gemma3, tiny_gemma2, tiny_llama, monkeypatch
):
    from trainers_torch.model import load_model

    gemma3, _ = load_model(tiny_gemma3)
    llama, _ = load_model(tiny_llama)
    gemma2, _ = load_model(tiny_gemma2)  # final logit soft-capping
    monkeypatch.setattr(bf16_head, "native_bf16", lambda: True)
    assert Bf16Head.of(gemma3) is not None and Bf16Head.of(llama) is not None
    assert Bf16Head.of(gemma2) is None
    assert Bf16Head.of(gemma3.model) is None  # not a causal LM
    monkeypatch.setattr(gemma3.config, "model_type", "some_new_model")
    assert Bf16Head.of(gemma3) is None
    assert Bf16Head.of(llama.to(torch.float64)) is None
    llama.to(torch.float32).set_output_embeddings(torch.nn.Linear(64, 128, bias=True))
    assert Bf16Head.of(llama) is None
    monkeypatch.setattr(bf16_head, "native_bf16", lambda: False)  # bfloat16 would be slower
    assert Bf16Head.of(load_model(tiny_llama)[0]) is None


def test_applies_inside_a_peft_wrapper_that_leaves_the_head_alone(tiny_gemma3, monkeypatch):
    from peft import LoraConfig, get_peft_model

    from trainers_torch.model import load_model

    monkeypatch.setattr(bf16_head, "native_bf16", lambda: True)
    body = get_peft_model(load_model(tiny_gemma3)[0], LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    head = Bf16Head.of(body)
    assert head is not None and head.weight.data_ptr() == body.get_base_model().lm_head.weight.data_ptr()
    with_head = get_peft_model(
        load_model(tiny_gemma3)[0], LoraConfig(r=4, target_modules=["q_proj", "lm_head"])
    )
    assert Bf16Head.of(with_head) is None  # an adapted head is no plain nn.Linear


def test_greedy_decode_of_an_unmerged_adapter_takes_the_head_and_keeps_the_adapter(tiny_gemma3, monkeypatch):
    """A PEFT model decodes through the bfloat16 head with its LoRA layers in the body: the
    tokens equal transformers' ``generate`` on the same PEFT model, and differ from the base's."""
    from peft import LoraConfig, get_peft_model

    from trainers_torch.model import load_model

    monkeypatch.setattr(bf16_head, "native_bf16", lambda: True)
    calls: list[int] = []
    real = Bf16Head.argmax
    monkeypatch.setattr(Bf16Head, "argmax", lambda self, h: calls.append(h.shape[0]) or real(self, h))
    model, tok = load_model(tiny_gemma3)
    peft = get_peft_model(
        model, LoraConfig(r=4, lora_alpha=32, target_modules=["q_proj", "v_proj", "down_proj"])
    )
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, param in peft.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=g) * 0.5)  # a trained adapter, not B = 0
    peft.eval()
    prompts = [gen.build_prompt(tok, q, "plain") for q in ["2+3?", "Add 7 and 11.", "Hi", "x"]]
    settings = DecodeSettings(max_new_tokens=12)
    ours = generate_completions(peft, tok, prompts, settings, batch_size=3, progress=False, return_ids=True)
    assert calls and ours == transformers_generate(peft, tok, prompts, settings, return_ids=True)
    with peft.disable_adapter():
        base = transformers_generate(peft, tok, prompts, settings, return_ids=True)
    assert base != ours  # the adapter changes the tokens, so the check above sees it


def _rounded_head() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x [1, D], w [V, D], float32 logits [V]): logits 100 + 0.25·i, which bfloat16 rounds to
    steps of 0.5, so its softmax is far from float32's."""
    w = torch.zeros(8, 48)
    w[:, 0] = 10.0
    w[:, 1] = 0.25 * torch.arange(8)
    x = torch.zeros(1, 48)
    x[0, :2] = torch.tensor([10.0, 1.0])
    return x, w, (x @ w.T)[0]


def _frequencies(draws: torch.Tensor, vocab: int) -> torch.Tensor:
    return torch.bincount(draws, minlength=vocab).double() / len(draws)


@pytest.mark.parametrize("rounds", [64, 1, 0])
@pytest.mark.parametrize("temperature", [1.0, 0.6])
def test_sample_follows_float32s_softmax_where_bfloat16s_does_not(monkeypatch, rounds, temperature):
    """Frequencies of 24,000 draws within 4 sigma of softmax(float32 logits / T), while the
    bfloat16 logits' softmax lies far outside; also when rows run out of proposals and take the
    full float32 head (1 round: most rows, 0: all)."""
    monkeypatch.setattr(bf16_head, "MAX_ROUNDS", rounds)
    x, w, logits = _rounded_head()
    head = Bf16Head(w)
    want = (logits.double() / temperature).softmax(0)
    low = (torch.nn.functional.linear(x.bfloat16(), w.bfloat16())[0].double() / temperature).softmax(0)
    n = 24_000
    g = torch.Generator().manual_seed(7)
    draws = torch.cat([head.sample(x.repeat(4000, 1), temperature, g) for _ in range(n // 4000)])
    sigma = (want * (1 - want) / n).sqrt()
    assert ((_frequencies(draws, 8) - want).abs() <= 4 * sigma).all(), (_frequencies(draws, 8), want)
    assert float(((low - want).abs() / sigma).max()) > 10  # sampling bfloat16's softmax would fail
    again = head.sample(x.repeat(4000, 1), temperature, torch.Generator().manual_seed(7))
    assert torch.equal(again, draws[:4000])  # the same seed, the same draws


def test_sample_on_rows_of_many_scales_and_a_bad_row():
    """Random rows from tiny to large norms (acceptance from ~1 down to the float32 fallback) all
    draw tokens of the vocabulary; a non-finite row is an error, not a token."""
    w = _hard_weight()
    g = torch.Generator().manual_seed(4)
    x = torch.cat([torch.randn(8, 48, generator=g) * s for s in (1e-3, 1.0, 30.0, 1e3)])
    head = Bf16Head(w)
    tokens = head.sample(x, 1.0, g)
    assert tokens.shape == (32,) and bool(((tokens >= 0) & (tokens < 3000)).all())
    big = torch.nn.functional.linear(x[-8:], w).argmax(dim=1)  # logits thousands apart: the top wins
    assert torch.equal(tokens[-8:], big)
    with pytest.raises(ValueError, match="not finite"):
        head.sample(torch.cat([x, torch.full((1, 48), float("nan"))]), 1.0, g)


def test_sampled_decode_takes_the_bf16_head_only_without_top_k_or_top_p(tiny_gemma3, monkeypatch):
    """Temperature-only sampling decodes through ``Bf16Head.sample`` (its first tokens follow
    the model's softmax(logits / T) within 4 sigma); top-k or top-p keep the model's own logits."""
    from trainers_torch.model import load_model

    monkeypatch.setattr(bf16_head, "native_bf16", lambda: True)
    calls: list[int] = []
    real = Bf16Head.sample
    monkeypatch.setattr(
        Bf16Head, "sample", lambda self, h, t, g: calls.append(h.shape[0]) or real(self, h, t, g)
    )
    model, tok = load_model(tiny_gemma3)
    prompt = gen.build_prompt(tok, "Add 7 and 11.", "plain")
    with torch.no_grad():
        probs = (model(**tok([prompt], return_tensors="pt")).logits[0, -1].double() / 0.8).softmax(-1)
    n = 3000
    hot = DecodeSettings(max_new_tokens=1, temperature=0.8, seed=3)
    out = generate_completions(
        model, tok, [prompt] * n, hot, batch_size=1000, progress=False, return_ids=True
    )
    assert sum(calls) == n
    freq = _frequencies(torch.tensor([r["completion_ids"][0] for r in out]), probs.shape[0])
    top = probs.topk(5).indices  # the likely tokens, where a wrong distribution shows
    sigma = (probs * (1 - probs) / n).sqrt()
    assert ((freq - probs).abs()[top] <= 4 * sigma[top] + 1e-9).all(), (freq[top], probs[top])
    calls.clear()
    for filtered in (
        DecodeSettings(max_new_tokens=2, temperature=0.8, top_k=5),
        DecodeSettings(max_new_tokens=2, temperature=0.8, top_p=0.9),
    ):
        generate_completions(model, tok, [prompt] * 3, filtered, progress=False)
    assert not calls


@pytest.mark.parametrize("native", [True, False])
def test_greedy_decode_with_the_bf16_head_equals_generate(tiny_gemma3, tiny_llama, monkeypatch, native):
    from trainers_torch.model import load_model

    monkeypatch.setattr(bf16_head, "native_bf16", lambda: native)
    calls: list[int] = []
    real = Bf16Head.argmax
    monkeypatch.setattr(Bf16Head, "argmax", lambda self, h: calls.append(h.shape[0]) or real(self, h))
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
    rows, idx = bf16_head._candidates(low, line)
    want_rows, want_idx = (low >= line[:, None]).nonzero(as_tuple=True)
    assert torch.equal(rows, want_rows) and torch.equal(idx, want_idx)
    assert (2, vocab - 1) in set(zip(rows.tolist(), idx.tolist(), strict=True)) and len(rows) > 7
