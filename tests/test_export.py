"""The torch run's export: a LoRA adapter trained on a bfloat16 base merges in float32."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

from common.sft_config import LoraConfig
from trainers_torch.export import export
from trainers_torch.model import apply_lora, load_model


def test_a_bfloat16_lora_run_merges_its_whole_delta_in_float32(tiny_gemma3: Path, tmp_path: Path) -> None:
    lm, tok = load_model(tiny_gemma3, dtype="bfloat16")
    model = apply_lora(lm, LoraConfig(rank=4, alpha=8.0, dropout=0.0), trainable_layers=None)
    layer = model.get_base_model().model.layers[0].self_attn.q_proj
    a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    assert layer.base_layer.weight.dtype == torch.bfloat16 and a.dtype == torch.float32
    torch.manual_seed(0)
    with torch.no_grad():  # a delta far below bfloat16's rounding step of the base weights
        b.normal_(0.0, 1e-4)
    base = layer.base_layer.weight.detach().float().clone()
    delta = (b @ a).detach() * layer.scaling["default"]

    export(model, tok, "lora", tmp_path)

    merged = load_file(tmp_path / "merged" / "model.safetensors")["model.layers.0.self_attn.q_proj.weight"]
    assert merged.dtype == torch.float32
    torch.testing.assert_close(merged, base + delta, rtol=0.0, atol=1e-7)
    assert not torch.equal(merged.bfloat16().float(), merged)  # the delta survives: not rounded to bfloat16
    assert (tmp_path / "final" / "adapter_model.safetensors").is_file()
