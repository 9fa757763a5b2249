"""The end of a torch run: ``final/`` (the PEFT adapter, or the full model) and ``merged/``
(HF safetensors + tokenizer that transformers, ``trainers_jax`` and ``evals`` load), each
written to a temp dir and swapped in."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import torch

from common.prompts import end_of_turn
from common.runs import write_dir


def export(model: Any, tok: Any, method: str, run_path: Path) -> dict[str, str]:
    """``final/``: the PEFT adapter (LoRA) or the full model; ``merged/``: HF safetensors + tokenizer.

    The merged model's generation config also stops at the end-of-turn token the targets end with.
    A LoRA run on a low-precision base (``model.dtype: bfloat16``) merges and saves in float32.
    """
    final, merged = run_path / "final", run_path / "merged"
    eot_id = tok.convert_tokens_to_ids(end_of_turn(tok))

    def save_hf(lm: Any, d: Path) -> None:
        lm.config.use_cache = True
        eos = lm.generation_config.eos_token_id
        eos = list(eos) if isinstance(eos, list | tuple) else [eos] if eos is not None else []
        if isinstance(eot_id, int) and eot_id not in eos:
            lm.generation_config.eos_token_id = [*eos, eot_id]
        lm.save_pretrained(d, safe_serialization=True)
        tok.save_pretrained(d)

    if method == "lora":

        def save_adapter(d: Path) -> None:
            model.save_pretrained(d)
            tok.save_pretrained(d)

        write_dir(final, save_adapter)
        # A LoRA delta is far below a bfloat16 weight's rounding step, so it merges in float32:
        # merged/ = the trained base's own values plus the whole delta.
        merged_lm = model.to(torch.float32).merge_and_unload()
        write_dir(merged, lambda d: save_hf(merged_lm, d))
    else:
        write_dir(merged, lambda d: save_hf(model, d))

        def link_copy(d: Path) -> None:  # final/ = merged/ for a full fine-tune (hard links, no extra disk)
            for f in merged.iterdir():
                try:
                    os.link(f, d / f.name)
                except OSError:
                    shutil.copy2(f, d / f.name)

        write_dir(final, link_copy)
    return {"final": str(final), "merged": str(merged)}
