"""Load a causal LM and its tokenizer from a local Hugging Face directory (torch side)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from common.errors import InputError
from common.prompts import load_tokenizer

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def torch_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise InputError(f"dtype '{name}' is not one of {', '.join(DTYPES)}")
    return DTYPES[name]


def check_model_dir(path: str | Path) -> Path:
    """A local HF model dir with config.json and weights, or an ``InputError`` saying what is missing."""
    p = Path(path)
    if not (p / "config.json").is_file():
        hint = " (run `make model` for the default model)" if "gemma-3-270m" in str(p) else ""
        raise InputError(f"{p}: not a model directory, config.json missing{hint}")
    if not any(p.glob("*.safetensors")) and not any(p.glob("*.bin")):
        raise InputError(f"{p}: no *.safetensors weights")
    try:
        json.loads((p / "config.json").read_text())
    except ValueError as err:
        raise InputError(f"{p / 'config.json'}: invalid JSON: {err}") from None
    return p


def attention_for(hf_config: dict[str, Any], requested: str | None = None) -> str | None:
    """The attention implementation to load a model with: ``eager`` when its config soft-caps
    attention logits (Gemma 2; transformers' sdpa and flash paths drop the cap, computing
    another model), else ``requested`` (None: transformers' default)."""
    text = hf_config.get("text_config") or hf_config
    return "eager" if text.get("attn_logit_softcapping") else requested


def load_model(path: str | Path, dtype: str = "float32", device: str = "cpu") -> tuple[Any, Any]:
    """``(model, tokenizer)`` from a local HF directory, in eval mode, on ``device``."""
    from transformers import AutoModelForCausalLM

    p = check_model_dir(path)
    attention = attention_for(json.loads((p / "config.json").read_text()))
    model = AutoModelForCausalLM.from_pretrained(
        str(p), dtype=torch_dtype(dtype), attn_implementation=attention
    )
    model.to(device).eval()
    return model, load_tokenizer(p)


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"
