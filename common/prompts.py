"""The trace prompt and target format shared by every trainer and eval.

Prompt: the model's chat template around one user turn that starts with a short system
instruction; target: ``<reasoning>…</reasoning><answer>…</answer>``. Both sides (torch,
JAX) tokenize with the same Hugging Face tokenizer, so prompts are byte-identical.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from common.errors import InputError

SYSTEM_INSTRUCTION = (
    "You are given a problem. Think about it step by step and show your work. "
    "Write your reasoning between <reasoning> and </reasoning>, then write only the "
    "final answer between <answer> and </answer>."
)

YAML_SYSTEM_INSTRUCTION = (
    "You are given a problem. Write a YAML trace of the computation between <reasoning> "
    "and </reasoning>, then only the final answer between <answer> and </answer>."
)

INSTRUCTIONS = {"text": SYSTEM_INSTRUCTION, "yaml": YAML_SYSTEM_INSTRUCTION}

# Gemma's turn format, attached to the materialised Gemma 3 270M (its GGUF carries no template);
# a system message is folded into the first user turn.
GEMMA_CHAT_TEMPLATE = (
    "{{ bos_token }}{% set ns = namespace(system='') %}"
    "{% for m in messages %}{% if m['role'] == 'system' %}{% set ns.system = m['content'] + '\\n\\n' %}"
    "{% else %}{% set role = 'model' if m['role'] == 'assistant' else m['role'] %}"
    "<start_of_turn>{{ role }}\n{% if role == 'user' %}{{ ns.system }}{% set ns.system = '' %}{% endif %}"
    "{{ m['content'] | trim }}<end_of_turn>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)


def load_tokenizer(path: str | Path) -> Any:
    """The HF tokenizer of a local model dir: left padding, and a pad token that no chat prompt
    contains (``pad_token``)."""
    from transformers import AutoTokenizer

    if not (Path(path) / "tokenizer_config.json").is_file() and not (Path(path) / "tokenizer.json").is_file():
        raise InputError(f"{path}: no tokenizer files (tokenizer.json / tokenizer_config.json)")
    tok = AutoTokenizer.from_pretrained(str(path))
    tok.padding_side = "left"
    tok.pad_token = pad_token(tok)
    return tok


def pad_token(tokenizer: Any) -> str:
    """The tokenizer's pad token, unless it is missing or one a chat prompt contains (Llama 3's
    eos is its ``<|eot_id|>``, which closes every header): then the first special token that no
    prompt or reply contains, nor BOS (unk, eos, then the added special tokens), else eos.

    Tunix's sampler and log-prob passes take every pad id in a prompt for padding; torch masks
    by the attention mask and does not care.
    """
    if not getattr(tokenizer, "chat_template", None):
        return tokenizer.pad_token or tokenizer.eos_token
    used = (tokenizer.bos_token or "") + chat_prompt(tokenizer, "x") + end_of_turn(tokenizer)
    specials = [t.content for t in tokenizer.added_tokens_decoder.values() if t.special]
    candidates = [tokenizer.pad_token, tokenizer.unk_token, tokenizer.eos_token, *specials]
    return next((t for t in candidates if t and t not in used), tokenizer.eos_token)


def user_content(question: str, trace_format: str = "text") -> str:
    return f"{INSTRUCTIONS[trace_format]}\n\n{question.strip()}"


def chat_prompt(tokenizer: Any, content: str) -> str:
    """One user turn with ``content`` in the tokenizer's own chat template, ending where the
    model's reply begins. A BOS the tokenizer adds by itself is left out of the text, so that
    tokenizing the prompt gives exactly one."""
    if not getattr(tokenizer, "chat_template", None):
        where = getattr(tokenizer, "name_or_path", "") or "the tokenizer"
        raise InputError(
            f"{where}: the tokenizer has no chat template (tokenizer_config.json chat_template or "
            "chat_template.jinja); prompts are built with the model's own template"
        )
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True
    )
    bos = getattr(tokenizer, "bos_token", None)
    if bos and text.startswith(bos) and adds_bos(tokenizer):
        text = text[len(bos) :]
    return text


def adds_bos(tokenizer: Any) -> bool:
    """Whether tokenizing text prepends the BOS token (Gemma's does; SmolLM2's and Qwen's do not)."""
    bos_id = getattr(tokenizer, "bos_token_id", None)
    return bos_id is not None and tokenizer("x").input_ids[:1] == [bos_id]


def format_prompt(tokenizer: Any, question: str, trace_format: str = "text") -> str:
    """The full prompt string for a question: the trace instruction and the question as one
    user turn of the model's chat template (without a BOS the tokenizer adds itself)."""
    return chat_prompt(tokenizer, user_content(question, trace_format))


def format_target(reasoning: str, answer: str) -> str:
    """The completion a trained model should produce (without the end-of-turn marker)."""
    return f"<reasoning>{reasoning.strip()}</reasoning><answer>{answer.strip()}</answer>"


END_PROBE = "SHOWWORK-REPLY-END-PROBE"


def end_of_turn(tokenizer: Any) -> str:
    """The token that closes the model's turn, read off its chat template: the special token
    the template writes right after an assistant message (Gemma ``<end_of_turn>``, ChatML
    ``<|im_end|>``, Llama 3 ``<|eot_id|>``). A template that writes none there (or no template)
    ends the turn with eos.
    """
    eos = getattr(tokenizer, "eos_token", None) or ""
    if not getattr(tokenizer, "chat_template", None):
        return eos
    messages = [{"role": "user", "content": "x"}, {"role": "assistant", "content": END_PROBE}]
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    after = text[text.rfind(END_PROBE) + len(END_PROBE) :].lstrip(" \n")
    specials = [t.content for t in tokenizer.added_tokens_decoder.values() if t.special]
    matches = [t for t in specials if after.startswith(t)]
    return max(matches, key=len) if matches else eos
