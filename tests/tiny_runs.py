"""Run dirs for eval tests, laid out as the trainers write them (final/ adapter, merged/ export)."""

from __future__ import annotations

import json
from pathlib import Path


def build_trained_run(tiny_dir: Path, run: Path, seed: int = 1) -> Path:
    """``run/`` with config.yaml (naming the base), final/ (a LoRA adapter that changes the outputs)
    and merged/ (the same weights merged into an HF export with its tokenizer)."""
    import torch
    from peft import LoraConfig, get_peft_model

    from trainers_torch.model import load_model

    run.mkdir(parents=True)
    (run / "config.yaml").write_text(f"model:\n  path: {tiny_dir}\n")
    model, tok = load_model(tiny_dir)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)  # a trained adapter changes the outputs
    peft_model.save_pretrained(run / "final")
    cfg = json.loads((run / "final" / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = "google/gemma-3-270m"  # a hub id: not loadable offline
    (run / "final" / "adapter_config.json").write_text(json.dumps(cfg))
    merged = peft_model.merge_and_unload()
    merged.save_pretrained(run / "merged")
    tok.save_pretrained(run / "merged")
    return run
