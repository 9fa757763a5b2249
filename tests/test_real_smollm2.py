"""The second real model, SmolLM2-135M-Instruct (Llama architecture, `make model MODEL=smollm2-135m`),
on both sides: what the materialiser wrote, its tokenizer on GSM8K text, its own chat template,
torch/JAX parity and a sensible greedy answer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from common.prompts import end_of_turn, format_prompt, load_tokenizer

pytestmark = pytest.mark.real_model

GSM8K_TEST = Path(__file__).resolve().parents[1] / "data" / "gsm8k" / "test.jsonl"


def test_materialised_dir_is_complete(real_smollm2):
    info = json.loads((real_smollm2 / ".complete").read_text())
    assert info["gguf_sha256"] == "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
    assert info["parameters"] == 134_515_008 and info["model_type"] == "llama"
    cfg = json.loads((real_smollm2 / "config.json").read_text())
    assert cfg["dtype"] == "float32" and cfg["vocab_size"] == 49_152 and cfg["tie_word_embeddings"]
    assert (cfg["eos_token_id"], cfg["pad_token_id"]) == (2, 0)


def test_tokenizer_round_trips_gsm8k_and_splits_digits(real_smollm2):
    tok = load_tokenizer(real_smollm2)
    texts = []
    for line in GSM8K_TEST.read_text().splitlines():
        rec = json.loads(line)
        texts.append(f"{rec['question']}\n{rec['answer']}")
    ids = tok(texts).input_ids
    assert [tok.decode(x) for x in ids] == texts  # all 1,319 test items, question and solution
    assert all(x[0] != tok.bos_token_id for x in ids)  # SmolLM2 adds no BOS of its own
    pieces = tok.convert_ids_to_tokens(tok("Natalia sold  48 clips.").input_ids)
    assert pieces == ["N", "atal", "ia", "Ġsold", "ĠĠ", "4", "8", "Ġclips", "."]


def test_prompt_is_its_chatml_template(real_smollm2):
    tok = load_tokenizer(real_smollm2)
    prompt = format_prompt(tok, "What is 2+3?")
    assert prompt.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    assert prompt.endswith("What is 2+3?<|im_end|>\n<|im_start|>assistant\n")
    ids = tok(prompt).input_ids
    assert ids[0] == tok.convert_tokens_to_ids("<|im_start|>") == 1 and ids[1] != 1
    assert end_of_turn(tok) == "<|im_end|>" == tok.eos_token
    assert tok.pad_token == "<|endoftext|>" and tok.pad_token_id not in ids


def test_parity_script_under_tolerance(real_smollm2, capsys):
    from scripts.parity import main

    assert main(["--model", str(real_smollm2)]) == 0
    name, value = capsys.readouterr().out.strip().splitlines()[-1].split()
    assert name == "max_abs_logit_diff" and float(value) < 1e-3


def test_greedy_chat_answer_is_sensible(real_smollm2):
    from evals.generate import DecodeSettings, build_prompt, generate_completions
    from trainers_torch.model import load_model

    model, tok = load_model(real_smollm2)
    prompts = [build_prompt(tok, "What is 2+3? Answer briefly.", "plain")]
    (out,) = generate_completions(model, tok, prompts, DecodeSettings(max_new_tokens=24), progress=False)
    assert out["stop_reason"] == "end_of_turn" and "5" in out["completion"], out
