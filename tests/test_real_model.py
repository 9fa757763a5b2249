"""The real default model (Gemma 3 270M, materialised by `make model`) on both sides."""

from __future__ import annotations

import json

import pytest

from common.prompts import format_prompt, load_tokenizer

pytestmark = pytest.mark.real_model


def test_materialised_dir_is_complete(real_model):
    info = json.loads((real_model / ".complete").read_text())
    assert info["gguf_sha256"] == "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
    assert info["parameters"] == 268_098_176 and info["model_type"] == "gemma3_text"
    cfg = json.loads((real_model / "config.json").read_text())
    assert cfg["dtype"] == "float32" and cfg["vocab_size"] == 262_144


def test_tokenizer_is_gemma_bpe(real_model):
    tok = load_tokenizer(real_model)
    text = "Natalia sold clips to 48 of her friends in April."
    ids = tok(text).input_ids
    assert ids[0] == tok.bos_token_id == 2
    pieces = tok.convert_ids_to_tokens(ids)
    assert pieces[:5] == ["<bos>", "Natal", "ia", "▁sold", "▁clips"]  # whole words, not characters
    assert tok.decode(ids, skip_special_tokens=True) == text
    prompt = format_prompt(tok, "What is 2+3?")
    assert prompt.startswith("<start_of_turn>user\n") and prompt.endswith("<start_of_turn>model\n")
    assert tok.convert_ids_to_tokens(tok(prompt).input_ids[:2]) == ["<bos>", "<start_of_turn>"]


def test_parity_script_under_tolerance(real_model, capsys):
    from scripts.parity import main

    assert main(["--model", str(real_model)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    name, value = lines[-1].split()
    assert name == "max_abs_logit_diff" and float(value) < 1e-3
    # the packed SFT loss: JAX through the band of trainers_jax/attention.py, torch example by example
    assert "attention within a band of" in lines[-2]
    assert float(lines[-2].rsplit(" ", 1)[1]) < 1e-4


def test_greedy_generation_is_sensible(real_model):
    import torch

    from trainers_torch.model import load_model

    model, tok = load_model(real_model)
    prompts = ["Monday, Tuesday, Wednesday,", "Question: What is 2 + 2?\nAnswer:"]
    expected = [" Thursday, Friday", "4"]
    for prompt, want in zip(prompts, expected, strict=True):
        enc = tok([prompt], return_tensors="pt")
        with torch.no_grad():
            out = model.generate(**enc, max_new_tokens=8, do_sample=False)
        text = tok.decode(out[0, enc.input_ids.shape[1] :], skip_special_tokens=True)
        assert want in text, (prompt, text)
