"""evals.generate on the real default model (Gemma 3 270M): real text, recorded provenance."""

from __future__ import annotations

import json

import pytest

from common.jsonl import read_jsonl
from evals import generate as gen
from evals import load

pytestmark = pytest.mark.real_model

WEIGHTS_SHA256 = "9a38d10a677a1b8a4a33c2b225370249a3d8b16b57ceab323038ab56d40139d2"


def test_greedy_generation_on_the_real_model(real_model, tmp_path, monkeypatch):
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
    model, tok = load.load_for_eval(load.resolve_model(str(real_model)))
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


def test_greedy_head_gives_generates_tokens_on_the_real_model(real_model, monkeypatch):
    """The bfloat16 LM head with its float32 check (evals.greedy_head), forced on whatever this
    CPU is: the real model's greedy tokens equal transformers' ``generate``, a freed place refilled
    (its decode steps also attend with ``evals.gqa_step``: 4 query heads on one key/value head)."""
    from evals import greedy_head
    from tests.reference_decode import transformers_generate

    monkeypatch.setattr(greedy_head, "native_bf16", lambda: True)
    calls: list[int] = []
    real = greedy_head.GreedyHead.__call__
    monkeypatch.setattr(greedy_head.GreedyHead, "__call__", lambda s, h: calls.append(1) or real(s, h))
    model, tok = load.load_for_eval(load.resolve_model(str(real_model)))
    questions = ["What is 2 + 3?", "Tom has 3 boxes of 4 apples. How many apples?", "Say hi.", "7 * 8?"]
    prompts = [gen.build_prompt(tok, q, "text") for q in questions]
    settings = gen.DecodeSettings(max_new_tokens=16)
    ours = gen.generate_completions(
        model, tok, prompts, settings, batch_size=3, progress=False, return_ids=True
    )
    assert calls and ours == transformers_generate(model, tok, prompts, settings, return_ids=True)
