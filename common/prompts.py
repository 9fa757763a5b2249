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

# Gemma's turn format; a system message is folded into the first user turn.
GEMMA_CHAT_TEMPLATE = (
    "{{ bos_token }}{% set ns = namespace(system='') %}"
    "{% for m in messages %}{% if m['role'] == 'system' %}{% set ns.system = m['content'] + '\\n\\n' %}"
    "{% else %}{% set role = 'model' if m['role'] == 'assistant' else m['role'] %}"
    "<start_of_turn>{{ role }}\n{% if role == 'user' %}{{ ns.system }}{% set ns.system = '' %}{% endif %}"
    "{{ m['content'] | trim }}<end_of_turn>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)

# Used when a tokenizer carries no chat template (Gemma's turn format).
GEMMA_TEMPLATE = "<start_of_turn>user\n{content}<end_of_turn>\n<start_of_turn>model\n"
END_OF_TURN = "<end_of_turn>"


def load_tokenizer(path: str | Path) -> Any:
    """The HF tokenizer of a local model dir (left padding, a pad token always set)."""
    from transformers import AutoTokenizer

    if not (Path(path) / "tokenizer_config.json").is_file() and not (Path(path) / "tokenizer.json").is_file():
        raise InputError(f"{path}: no tokenizer files (tokenizer.json / tokenizer_config.json)")
    tok = AutoTokenizer.from_pretrained(str(path))
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def user_content(question: str, trace_format: str = "text") -> str:
    return f"{INSTRUCTIONS[trace_format]}\n\n{question.strip()}"


def format_prompt(tokenizer: Any, question: str, trace_format: str = "text") -> str:
    """The full prompt string, ending where the model's reply begins (no BOS)."""
    content = user_content(question, trace_format)
    template = getattr(tokenizer, "chat_template", None) if tokenizer is not None else None
    if template:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True
        )
        bos = getattr(tokenizer, "bos_token", None)
        if bos and text.startswith(bos):
            text = text[len(bos) :]
        return text
    return GEMMA_TEMPLATE.format(content=content)


def format_target(reasoning: str, answer: str) -> str:
    """The completion a trained model should produce (without the end-of-turn marker)."""
    return f"<reasoning>{reasoning.strip()}</reasoning><answer>{answer.strip()}</answer>"


def end_of_turn(tokenizer: Any) -> str:
    """The string that closes the model's turn for this tokenizer."""
    vocab = tokenizer.get_vocab() if tokenizer is not None else {}
    for cand in (END_OF_TURN, "<|im_end|>", "<|eot_id|>"):
        if cand in vocab:
            return cand
    return getattr(tokenizer, "eos_token", None) or END_OF_TURN
