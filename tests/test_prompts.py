"""Prompts through each model's own chat template (common/prompts.py): Gemma's turns with a BOS
the tokenizer adds, SmolLM2's ChatML with a default system turn and no BOS of its own, Llama 3's
headers; the end of the assistant turn read off the template; a pad token no prompt contains."""

from __future__ import annotations

from pathlib import Path

import pytest

from common import sft_data
from common.errors import InputError
from common.prompts import (
    SYSTEM_INSTRUCTION,
    chat_prompt,
    end_of_turn,
    format_prompt,
    format_target,
    load_tokenizer,
)
from common.sft_config import DataConfig
from tests.sft_data import arithmetic_records, write_records

# Llama 3's header format, as Llama 3.2 Instruct writes it (a trimmed version of its template)
LLAMA3_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
    "{{ m['content'] | trim }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory) -> dict[str, Path]:
    from tests.tiny import build_tokenizer

    out = {}
    for chat in ("gemma", "chatml"):
        out[chat] = tmp_path_factory.mktemp(chat)
        build_tokenizer(out[chat], chat)
    return out


def llama3_tokenizer(out: Path) -> Path:
    """A character-level tokenizer with Llama 3's special tokens and no pad token."""
    import string

    from tokenizers import Tokenizer, models, processors
    from transformers import PreTrainedTokenizerFast

    specials = [
        "<|begin_of_text|>",
        "<|end_of_text|>",
        "<|start_header_id|>",
        "<|end_header_id|>",
        "<|eot_id|>",
    ]
    vocab = {t: i for i, t in enumerate(specials + list(string.printable))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=None))
    tok.add_special_tokens(specials)
    tok.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A", special_tokens=[("<|begin_of_text|>", 0)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>"
    )
    fast.chat_template = LLAMA3_TEMPLATE
    fast.save_pretrained(out)
    return out


def test_gemma_prompt_has_one_bos_from_the_tokenizer(tokenizers):
    tok = load_tokenizer(tokenizers["gemma"])
    prompt = format_prompt(tok, "What is 2+3?")
    assert (
        prompt
        == f"<start_of_turn>user\n{SYSTEM_INSTRUCTION}\n\nWhat is 2+3?<end_of_turn>\n<start_of_turn>model\n"
    )
    ids = tok(prompt).input_ids
    assert (
        tok.convert_ids_to_tokens(ids[:2]) == ["<bos>", "<start_of_turn>"]
        and ids.count(tok.bos_token_id) == 1
    )
    assert end_of_turn(tok) == "<end_of_turn>"


def test_chatml_prompt_keeps_its_start_token_and_default_system_turn(tokenizers):
    tok = load_tokenizer(tokenizers["chatml"])
    prompt = format_prompt(tok, "What is 2+3?")
    # the BOS token (<|im_start|>) opens the template's first turn: the tokenizer adds none, so it stays
    assert prompt.startswith("<|im_start|>system\nYou are a tiny test model.<|im_end|>\n<|im_start|>user\n")
    assert prompt.endswith("What is 2+3?<|im_end|>\n<|im_start|>assistant\n")
    ids = tok(prompt).input_ids
    assert ids[0] == tok.convert_tokens_to_ids("<|im_start|>") and ids[1] != ids[0]
    assert end_of_turn(tok) == "<|im_end|>" == tok.eos_token
    bare = chat_prompt(tok, "Hi")
    assert bare.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")


def test_llama3_end_of_turn_and_pad_come_from_the_template(tmp_path):
    tok = load_tokenizer(llama3_tokenizer(tmp_path))
    assert end_of_turn(tok) == "<|eot_id|>"
    prompt = format_prompt(tok, "What is 2+3?")
    assert prompt.startswith("<|start_header_id|>user<|end_header_id|>\n\n")  # BOS left to the tokenizer
    # no pad token, and eos (<|eot_id|>) closes every header turn: padding with it would eat prompt
    # tokens in Tunix's sampler, so the pad is a special token no prompt contains
    assert tok.pad_token == "<|end_of_text|>" and tok.pad_token not in prompt


def test_pad_token_that_closes_turns_is_replaced(tokenizers, tmp_path):
    from transformers import AutoTokenizer

    raw = AutoTokenizer.from_pretrained(str(tokenizers["chatml"]))
    raw.pad_token = "<|im_end|>"  # what SmolLM2's original tokenizer_config says
    raw.save_pretrained(tmp_path)
    tok = load_tokenizer(tmp_path)
    assert tok.pad_token == "<|endoftext|>" and tok.pad_token_id == 0
    assert load_tokenizer(tokenizers["gemma"]).pad_token == "<pad>"  # a pad no prompt contains stays


@pytest.mark.parametrize("chat,eot", [("gemma", "<end_of_turn>"), ("chatml", "<|im_end|>")])
def test_sft_targets_end_with_the_models_end_of_turn(tokenizers, tmp_path, chat, eot):
    tok = load_tokenizer(tokenizers[chat])
    records = arithmetic_records(3)
    path = write_records(tmp_path / "train.jsonl", records)
    examples, _, _ = sft_data.tokenize_records(path, tok, DataConfig(max_len=600, pack_tokens=1024))
    for ex, rec in zip(examples, records, strict=True):
        target = format_target(rec["reasoning"], rec["answer"]) + eot
        assert ex.ids[ex.n_prompt :] == tok(target, add_special_tokens=False).input_ids
        assert ex.ids[-1] == tok.convert_tokens_to_ids(eot)
        assert ex.ids[: ex.n_prompt] == tok(format_prompt(tok, rec["question"])).input_ids


def test_a_tokenizer_without_a_chat_template_is_an_input_error(tokenizers, tmp_path):
    from transformers import AutoTokenizer

    raw = AutoTokenizer.from_pretrained(str(tokenizers["chatml"]))
    raw.chat_template = None
    raw.save_pretrained(tmp_path)
    (tmp_path / "chat_template.jinja").unlink(missing_ok=True)
    tok = load_tokenizer(tmp_path)
    with pytest.raises(InputError, match="no chat template"):
        format_prompt(tok, "What is 2+3?")
    assert end_of_turn(tok) == tok.eos_token
