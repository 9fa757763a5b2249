"""evals.generate on the real default model (Gemma 3 270M): real text, recorded provenance."""

from __future__ import annotations

import json

import pytest

from common.jsonl import read_jsonl
from evals import generate as gen
from evals import load

pytestmark = pytest.mark.real_model

WEIGHTS_SHA256 = "9a38d10a677a1b8a4a33c2b225370249a3d8b16b57ceab323038ab56d40139d2"


@pytest.fixture(scope="module")
def loaded(real_model):
    """The real model and tokenizer as the evals load them, once for this module (no test here
    changes the model)."""
    return load.load_for_eval(load.resolve_model(str(real_model)))


def test_greedy_generation_on_the_real_model(real_model, loaded, tmp_path, monkeypatch):
    data = tmp_path / "d.jsonl"
    rows = [
        {"id": "r0", "question": "What is 2 + 3?", "answer": "5"},
        {
            "id": "r1",
            "question": "Tom has 3 boxes of 4 apples. How many apples does he have?",
            "answer": "12",
        },
    ]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    model, tok = loaded
    monkeypatch.setattr(gen, "load_for_eval", lambda *a, **k: (model, tok))  # load the 1 GB model once
    out = tmp_path / "p.jsonl"
    summary = gen.main(
        [f"model.path={real_model}", f"data.path={data}", "data.n=0", "decode.max_new_tokens=12",
         "batch_size=2", f"out={out}", "--no-progress"]
    )  # fmt: skip
    recs = read_jsonl(out)
    assert sorted(r["id"] for r in recs) == ["r0", "r1"] and summary["empty_completions"] == 0
    for r in recs:
        assert r["completion"].strip(), r  # real text, not placeholders
        assert r["model"]["weights_sha256"] == WEIGHTS_SHA256 and r["model"]["kind"] == "hf"
        assert r["prompt"].startswith("<start_of_turn>user\n") and r["prompt_tokens"] > 20
        assert 0 < r["completion_tokens"] <= 12 and r["decoding"]["temperature"] == 0.0
    # Left-padded batch vs one at a time: the same greedy text on the real model.
    single = gen.generate_completions(
        model,
        tok,
        [r["prompt"] for r in recs],
        gen.DecodeSettings(max_new_tokens=12),
        batch_size=1,
        progress=False,
    )
    assert [s["completion"] for s in single] == [r["completion"] for r in recs]


def test_greedy_head_gives_generates_tokens_on_the_real_model(loaded, monkeypatch):
    """The bfloat16 LM head with its float32 check (evals.bf16_head), forced on whatever this
    CPU is: the real model's greedy tokens equal transformers' ``generate``, a freed place refilled
    (its decode steps run ``evals.gemma3_step`` and attend with ``evals.gqa_step``: 4 query heads
    on one key/value head)."""
    from evals import bf16_head
    from evals.gemma3_step import Gemma3Step
    from tests.reference_decode import transformers_generate

    monkeypatch.setattr(bf16_head, "native_bf16", lambda: True)
    calls: list[int] = []
    real = bf16_head.Bf16Head.argmax
    monkeypatch.setattr(bf16_head.Bf16Head, "argmax", lambda s, h: calls.append(1) or real(s, h))
    steps: list[int] = []
    real_step = Gemma3Step.__call__
    monkeypatch.setattr(Gemma3Step, "__call__", lambda s, *a: steps.append(1) or real_step(s, *a))
    model, tok = loaded
    questions = ["What is 2 + 3?", "Tom has 3 boxes of 4 apples. How many apples?", "Say hi.", "7 * 8?"]
    prompts = [gen.build_prompt(tok, q, "text") for q in questions]
    settings = gen.DecodeSettings(max_new_tokens=16)
    ours = gen.generate_completions(
        model, tok, prompts, settings, batch_size=3, progress=False, return_ids=True
    )
    assert calls and len(steps) >= 15
    assert ours == transformers_generate(model, tok, prompts, settings, return_ids=True)


def test_bf16_head_samples_follow_the_real_models_softmax(loaded):
    """On the real model's hidden states (``evals.bf16_head``): the bfloat16 logits of the whole
    head stay inside the rejection sampler's bound, and 1,200 draws from one prompt's next-token
    distribution (T = 1) match float32's softmax within 4 sigma on its likely tokens. The draws
    use the 16,384 rows of the head with that prompt's highest logits (99.7% of its mass): the
    sampler multiplies each row by its whole head in bfloat16, 24x slower than float32 on a CPU
    without native bfloat16 (92 s for the 262,144 rows on one AVX2 core, 7 s for these), and its
    rule does not depend on the vocabulary's size."""
    import torch

    from evals.bf16_head import BOUND, Bf16Head

    model, tok = loaded
    prompts = [gen.build_prompt(tok, q, "text") for q in ["What is 2 + 3?", "Tom has 3 boxes of 4 apples."]]
    with torch.inference_mode():
        hidden = torch.stack(
            [model.model(**tok(p, return_tensors="pt")).last_hidden_state[0, -1] for p in prompts]
        )
        head = Bf16Head(model.lm_head.weight)
        exact = torch.nn.functional.linear(hidden, head.weight)
        low = head.low_logits(hidden).float()
        bound = BOUND * head.max_norm * hidden.norm(dim=1, keepdim=True)
        assert float(((exact - low).abs() / bound).max()) < 0.5
        rows = exact[1].topk(16384).indices
        assert float(exact[1].double().softmax(0)[rows].sum()) > 0.99
        part = Bf16Head(head.weight[rows])
        g = torch.Generator().manual_seed(0)
        n = 1200
        draws = torch.cat([part.sample(hidden[1:].repeat(300, 1), 1.0, g) for _ in range(n // 300)])
    probs = exact[1, rows].double().softmax(0)
    top = probs.topk(5).indices
    freq = torch.bincount(draws, minlength=probs.shape[0]).double()[top] / n
    sigma = (probs[top] * (1 - probs[top]) / n).sqrt()
    assert ((freq - probs[top]).abs() <= 4 * sigma + 1e-9).all(), (freq, probs[top])
