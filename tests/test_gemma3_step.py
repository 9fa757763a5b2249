"""evals.gemma3_step: Gemma 3's decode step without transformers' per-call work, equal to the
model's forward bit for bit (plain and LoRA-wrapped, padded rows, past the sliding window)."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from evals import generate as gen
from evals import kv_cache
from evals.few_rows import Packs, few_row_linears
from evals.gemma3_step import Gemma3Step
from evals.gqa_step import gqa_step_attention

WINDOW = 8


def _gemma3(softcap: float | None = None, seed: int = 0) -> Any:
    """6 layers (5 with a sliding window of ``WINDOW``, 1 global), grouped queries, random."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(seed)
    cfg = Gemma3TextConfig(
        vocab_size=96, hidden_size=64, intermediate_size=96, num_hidden_layers=6,
        num_attention_heads=4, num_key_value_heads=1, head_dim=16, query_pre_attn_scalar=16,
        sliding_window=WINDOW, max_position_embeddings=256, pad_token_id=0, eos_token_id=1,
        bos_token_id=2, final_logit_softcapping=softcap,
    )  # fmt: skip
    cfg._attn_implementation = "sdpa"
    model = Gemma3ForCausalLM(cfg).float().eval()
    with torch.no_grad():  # norms away from their zero init, so that 1 + weight matters
        for name, p in model.named_parameters():
            if "norm" in name:
                p.normal_(0.0, 0.3)
    return model


def _with_lora(model: Any, dropout: float = 0.0) -> Any:
    from peft import LoraConfig, get_peft_model

    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    peft = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, lora_dropout=dropout, target_modules=targets))
    return _random_b(peft)


def _random_b(peft: Any) -> Any:
    """``peft`` in eval mode, every LoRA B random (PEFT starts them at zero: no effect)."""
    with torch.no_grad():
        for name, p in peft.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.2)
    return peft.eval()


def _trainers_lora(model: Any) -> Any:
    """The GRPO policy's form: the trainers' LoRA (fused forward, shared dropout) on every
    linear layer, ``packed_sdpa`` attention, in generation mode (eval)."""
    from common.sft_config import LoraConfig
    from trainers_torch.model import PACKED_SDPA, apply_lora, register_packed_sdpa

    register_packed_sdpa()
    model.config._attn_implementation = PACKED_SDPA
    return _random_b(apply_lora(model, LoraConfig(rank=4, alpha=8.0, dropout=0.05), None))


def _steps(model: Any, lengths: list[int], steps: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Prefill left-padded rows into two caches, then ``steps`` decode steps: (the model's
    logits, the step's logits) at each, both fed the model's greedy tokens."""
    from trainers_torch.model import causal_lm

    lm = causal_lm(model)
    step = Gemma3Step.of(model)
    assert step is not None
    width = max(lengths)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, lm.config.vocab_size, (len(lengths), width), generator=g)
    mask = (torch.arange(width)[None] >= torch.tensor([width - n for n in lengths])[:, None]).long()
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    ours, theirs = kv_cache.growing_cache(lm.config), kv_cache.growing_cache(lm.config)
    out = []
    packs = Packs()
    with torch.inference_mode():
        for cache in (ours, theirs):
            logits = model(input_ids=ids, attention_mask=mask, position_ids=positions,
                           past_key_values=cache, use_cache=True, logits_to_keep=1).logits  # fmt: skip
        tokens, pos = logits[:, -1].argmax(-1), positions[:, -1:]
        for _ in range(steps):
            mask = torch.cat([mask, mask.new_ones((len(lengths), 1))], dim=1)
            pos = pos + 1
            with few_row_linears(model, packs), gqa_step_attention(model):
                expected = model(input_ids=tokens[:, None], attention_mask=mask, position_ids=pos,
                                 past_key_values=theirs, use_cache=True, logits_to_keep=1).logits  # fmt: skip
                got = step.logits(step(tokens[:, None], mask, pos, ours, packs), packs)
            out.append((expected, got))
            tokens = expected[:, -1].argmax(-1)
    return out


@pytest.mark.parametrize("form", ["plain", "peft", "trainers", "bfloat16"])
@pytest.mark.parametrize("lengths", [[5, 9, 12], [7, 7]], ids=["padded", "unpadded"])
def test_the_step_equals_the_models_forward_bit_for_bit(form, lengths):
    """Through the sliding window (12 + 14 > 8 positions) on 5 sliding layers and a global one,
    with left padding (masks) and without (no mask while the window does not cut the cache):
    a plain model (with final soft-capping), PEFT's LoRA, the GRPO policy's form, bfloat16."""
    model = _gemma3(softcap=3.0 if form == "plain" else None)
    if form == "peft":
        model = _with_lora(model)
    elif form == "trainers":
        model = _trainers_lora(model)
    elif form == "bfloat16":
        model = model.to(torch.bfloat16)  # norms in float32 inside, their output cast back
    pairs = _steps(model, lengths, steps=14)
    for i, (expected, got) in enumerate(pairs):
        assert torch.equal(expected, got), (i, (expected - got).abs().max())
    assert len({t for e, _ in pairs for t in e[:, -1].argmax(-1).tolist()}) > 2  # the tokens move


def test_the_check_sees_a_dropped_padding_mask(monkeypatch):
    """The comparison above can fail: a step that lets padded rows attend to their padding."""
    model = _gemma3()
    monkeypatch.setattr(Gemma3Step, "_masks", lambda self, mask, cache: dict.fromkeys(self.kinds))
    pairs = _steps(model, [5, 9, 12], steps=4)
    assert not any(torch.equal(e[0], g[0]) for e, g in pairs)  # the most padded row
    assert all(torch.equal(e[2], g[2]) for e, g in pairs)  # the unpadded row


def test_of_declines_what_it_does_not_run(tiny_llama):
    from trainers_torch.model import load_model

    llama, _ = load_model(tiny_llama)
    assert Gemma3Step.of(llama) is None
    model = _gemma3()
    assert Gemma3Step.of(model) is not None
    model.train()
    assert Gemma3Step.of(model) is None  # dropout and the like: the model's own forward
    model.eval()
    model.config._attn_implementation = "eager"
    assert Gemma3Step.of(model) is None
    model.config._attn_implementation = "sdpa"
    model.config.attn_logit_softcapping = 50.0
    assert Gemma3Step.of(model) is None
    model.config.attn_logit_softcapping = None
    wrapped = _with_lora(model, dropout=0.1)
    assert Gemma3Step.of(wrapped) is not None  # eval mode: PEFT's dropout is the identity
    wrapped.train()
    assert Gemma3Step.of(wrapped) is None


def test_the_decode_loop_runs_it_and_keeps_generates_tokens(tmp_path, monkeypatch):
    """Rows leave and freed places refill (5 prompts, batch 2), past the window of 8."""
    from tests.reference_decode import transformers_generate
    from tests.tiny import build_gemma3
    from trainers_torch.model import load_model

    model, tok = load_model(build_gemma3(tmp_path / "m", layers=6, sliding_window=WINDOW))
    calls: list[int] = []
    real = Gemma3Step.__call__
    monkeypatch.setattr(Gemma3Step, "__call__", lambda s, *a: calls.append(1) or real(s, *a))
    prompts = [gen.build_prompt(tok, q, "plain") for q in ["Hi", "2+3?", "What is 6 times 7?", "a", "b c d"]]
    settings = gen.DecodeSettings(max_new_tokens=20)
    ours = gen.generate_completions(
        model, tok, prompts, settings, batch_size=2, progress=False, return_ids=True
    )
    assert len(calls) >= 20
    assert ours == transformers_generate(model, tok, prompts, settings, return_ids=True)
