"""Tiny random models built in-test: same code paths as the real model, in milliseconds."""

from __future__ import annotations

import string
from pathlib import Path
from typing import Any

from common.prompts import GEMMA_CHAT_TEMPLATE

SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"]

# ChatML as SmolLM2 and Qwen write it: a default system turn, <|im_end|> closes every turn.
CHATML_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHATML_TEMPLATE = (
    "{% if messages[0]['role'] != 'system' %}<|im_start|>system\nYou are a tiny test model.<|im_end|>\n{% endif %}"
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_tokenizer(out: Path, chat: str = "gemma") -> None:
    """A character-level tokenizer with Gemma's special tokens, BOS and chat template, or
    (``chat="chatml"``) SmolLM2's: ``<|endoftext|>`` (unk, pad), ``<|im_start|>`` (BOS, never
    added by tokenizing), ``<|im_end|>`` (eos) and a ChatML template."""
    from tokenizers import Tokenizer, models, processors
    from transformers import PreTrainedTokenizerFast

    specials = SPECIALS if chat == "gemma" else CHATML_SPECIALS
    chars = list(dict.fromkeys(string.printable + "▁"))
    vocab = {tok: i for i, tok in enumerate(specials + chars)}
    unk = "<unk>" if chat == "gemma" else "<|endoftext|>"
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=unk))
    tok.add_special_tokens(specials)
    if chat == "gemma":
        tok.post_processor = processors.TemplateProcessing(
            single="<bos> $A", special_tokens=[("<bos>", vocab["<bos>"])]
        )
        names = {"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>", "unk_token": "<unk>"}
    else:
        names = {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "pad_token": unk, "unk_token": unk}
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, padding_side="left", **names)
    fast.chat_template = GEMMA_CHAT_TEMPLATE if chat == "gemma" else CHATML_TEMPLATE
    fast.save_pretrained(out)


def build_gemma3(
    out: Path, layers: int = 2, seed: int = 0, vocab_size: int = 128, sliding_window: int = 16
) -> Path:
    """Save a random Gemma 3 text model (HF safetensors) plus tokenizer to ``out``."""
    import torch
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(seed)
    cfg = Gemma3TextConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=32,
        query_pre_attn_scalar=32,
        sliding_window=sliding_window,
        max_position_embeddings=512,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
        tie_word_embeddings=True,
    )
    return _save_tiny(Gemma3ForCausalLM(cfg).float(), out)


def build_gemma2(
    out: Path,
    layers: int = 2,
    seed: int = 0,
    vocab_size: int = 128,
    sliding_window: int = 16,
    final_softcap: float = 2.0,
    attn_softcap: float = 2.0,
) -> Path:
    """Save a random Gemma 2 model (HF safetensors) plus tokenizer to ``out``.

    Layers alternate sliding-window / global as in Gemma 2. The soft-caps are far lower than
    Gemma 2 2B's (30 and 50) and the q/k projections are scaled up, so that both caps bend
    this random model's small logits.
    """
    import torch
    from transformers import Gemma2Config, Gemma2ForCausalLM

    torch.manual_seed(seed)
    cfg = Gemma2Config(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        query_pre_attn_scalar=16,
        sliding_window=sliding_window,
        final_logit_softcapping=final_softcap,
        attn_logit_softcapping=attn_softcap,
        max_position_embeddings=2048,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
        tie_word_embeddings=True,
    )
    return _save_tiny(Gemma2ForCausalLM(cfg).float(), out, qk_scale=4.0)


def build_llama(
    out: Path, layers: int = 2, seed: int = 0, vocab_size: int = 128, tied: bool = True, **overrides: Any
) -> Path:
    """Save a random Llama (SmolLM2's architecture: GQA, RoPE theta 100000, tied embedding by
    default) with the ChatML tokenizer to ``out``; ``overrides`` go into ``LlamaConfig``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    fields: dict[str, Any] = {
        "vocab_size": vocab_size,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": layers,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "rope_theta": 100_000.0,
        "rms_norm_eps": 1e-5,
        "max_position_embeddings": 2048,
        "unk_token_id": 0,
        "pad_token_id": 0,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "tie_word_embeddings": tied,
    }
    cfg = LlamaConfig(**{**fields, **overrides})
    return _save_tiny(LlamaForCausalLM(cfg).float(), out, qk_scale=4.0, norm_center=1.0, chat="chatml")


def _save_tiny(
    model: Any, out: Path, qk_scale: float = 1.0, norm_center: float = 0.0, chat: str = "gemma"
) -> Path:
    """Perturb the norms (Gemma's scale by 1 + w and start at w = 0; Llama's by w, ``norm_center``
    1) so they matter in tests, scale the q/k projections by ``qk_scale``, and save the model
    with the tiny tokenizer (``chat``: its special tokens and template) to ``out``."""
    import torch

    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.normal_(norm_center, 0.1)
            elif name.endswith(("q_proj.weight", "k_proj.weight")) and qk_scale != 1.0:
                p.mul_(qk_scale)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    build_tokenizer(out, chat)
    return out
