"""Merged HF safetensors from a Tunix model (LoRA folded in): the ``merged/`` export that
transformers, ``trainers_torch`` and ``evals`` load."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from flax import nnx

from common.prompts import end_of_turn
from common.runs import write_dir
from trainers_jax.model import family_of, is_gemma2

LORA_MERGE = {  # module → einsum of (lora_a, lora_b) into the base weight's layout (``lora_spec``)
    "q_einsum": "dr,rnh->ndh",
    "kv_einsum": "dr,rckh->ckdh",
    "qkv_einsum": "dr,rcnh->cndh",
    "attn_vec_einsum": "nhr,rd->nhd",
    "q_proj": "dr,rnh->dnh",  # Llama: [D, heads, H]
    "k_proj": "dr,rnh->dnh",
    "v_proj": "dr,rnh->dnh",
    "o_proj": "nhr,rd->nhd",
}


def lora_spec(module: str) -> str:
    """The einsum that turns ``module``'s qwix (lora_a, lora_b) into a delta of its weight's
    layout: ``LORA_MERGE``'s, or a linear layer's ``[in, out]``."""
    return LORA_MERGE.get(module, "ir,ro->io")


def merged_weights(model: Any, lora_alpha: float | None) -> dict[str, np.ndarray]:
    """Tunix param path → value, with every qwix LoRA pair folded into its base weight."""

    def flat(kind: Any) -> dict[str, np.ndarray]:
        # merged in float32: numpy has no bfloat16 einsum, and a LoRA delta is smaller than
        # bfloat16's rounding step of the base weights (the export is float32 anyway)
        return {
            ".".join(map(str, p)): np.asarray(v[...], dtype=np.float32)
            for p, v in nnx.to_flat_state(nnx.state(model, kind))
        }

    weights, loras = flat(nnx.Param), flat(nnx.LoRAParam)
    for key, a in loras.items():
        if not key.endswith("_lora_a"):
            continue
        if lora_alpha is None:
            raise ValueError("the model has LoRA parameters: pass lora_alpha")
        base = key[: -len("_lora_a")]
        module = base.split(".")[-2]
        delta = np.einsum(lora_spec(module), a, loras[base + "_lora_b"])
        weights[base] = weights[base] + (lora_alpha / a.shape[-1]) * delta
    return weights


def gemma_state_dict(model: Any, w: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """HF ``Gemma3ForCausalLM`` / ``Gemma2ForCausalLM`` tensors (``model.*`` names, tied head)
    from a Tunix Gemma's merged weights ``w``.

    The inverse of ``tunix.models.gemma3`` / ``tunix.models.gemma`` ``params_safetensors``'s key
    mapping (the two differ only in Gemma 3's q/k norms and the post-attention norm's name); Tunix's own
    ``safetensors_saver`` needs the original files and a per-model layer extractor, this is
    the same few transposes written out.
    """
    c = model.config
    out = {
        "model.embed_tokens.weight": w["embedder.input_embedding"],
        "model.norm.weight": w["final_norm.scale"],
    }

    def proj(x: np.ndarray) -> np.ndarray:  # Tunix [heads, D, H] → HF [heads * H, D]
        return np.transpose(x, (0, 2, 1)).reshape(-1, x.shape[1])

    for i in range(c.num_layers):
        p, q = f"layers.{i}", f"model.layers.{i}"
        if f"{p}.attn.qkv_einsum.w" in w:
            qw, kw, vw = w[f"{p}.attn.qkv_einsum.w"]
        else:
            qw = w[f"{p}.attn.q_einsum.w"]
            kw, vw = w[f"{p}.attn.kv_einsum.w"]
        out[f"{q}.self_attn.q_proj.weight"] = proj(qw)
        out[f"{q}.self_attn.k_proj.weight"] = proj(kw)
        out[f"{q}.self_attn.v_proj.weight"] = proj(vw)
        o = w[f"{p}.attn.attn_vec_einsum.w"]  # [N, H, D]
        out[f"{q}.self_attn.o_proj.weight"] = o.reshape(-1, o.shape[-1]).T
        if f"{p}.attn._query_norm.scale" in w:  # Gemma 3's q/k norms (Gemma 2 has none)
            out[f"{q}.self_attn.q_norm.weight"] = w[f"{p}.attn._query_norm.scale"]
            out[f"{q}.self_attn.k_norm.weight"] = w[f"{p}.attn._key_norm.scale"]
        for name in ("gate_proj", "up_proj", "down_proj"):
            out[f"{q}.mlp.{name}.weight"] = w[f"{p}.mlp.{name}.kernel"].T
        out[f"{q}.input_layernorm.weight"] = w[f"{p}.pre_attention_norm.scale"]
        post_attn = "post_attn_norm" if is_gemma2(model) else "post_attention_norm"
        out[f"{q}.post_attention_layernorm.weight"] = w[f"{p}.{post_attn}.scale"]
        out[f"{q}.pre_feedforward_layernorm.weight"] = w[f"{p}.pre_ffw_norm.scale"]
        out[f"{q}.post_feedforward_layernorm.weight"] = w[f"{p}.post_ffw_norm.scale"]
    return out


def llama_state_dict(model: Any, w: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """HF ``LlamaForCausalLM`` tensors from a Tunix Llama's merged weights ``w``: the inverse of
    ``tunix.models.llama3.params``'s key mapping (projections ``[D, heads, H]`` / ``[heads, H, D]``
    back to HF's ``[out, in]``)."""
    out = {
        "model.embed_tokens.weight": w["embedder.input_embedding"],
        "model.norm.weight": w["final_norm.w"],
    }
    if "lm_head.w" in w:  # untied
        out["lm_head.weight"] = w["lm_head.w"].T
    for i in range(model.config.num_layers):
        p, q = f"layers.{i}", f"model.layers.{i}"
        for name in ("q_proj", "k_proj", "v_proj"):
            x = w[f"{p}.attn.{name}.w"]
            out[f"{q}.self_attn.{name}.weight"] = x.reshape(x.shape[0], -1).T
        o = w[f"{p}.attn.o_proj.w"]
        out[f"{q}.self_attn.o_proj.weight"] = o.reshape(-1, o.shape[-1]).T
        for name in ("gate_proj", "up_proj", "down_proj"):
            out[f"{q}.mlp.{name}.weight"] = w[f"{p}.mlp.{name}.kernel"].T
        out[f"{q}.input_layernorm.weight"] = w[f"{p}.input_layernorm.w"]
        out[f"{q}.post_attention_layernorm.weight"] = w[f"{p}.post_attention_layernorm.w"]
    return out


STATE_DICTS = {"gemma3": gemma_state_dict, "gemma2": gemma_state_dict, "llama": llama_state_dict}
ARCHITECTURES = {  # family → (HF architectures entry, model_type)
    "gemma3": ("Gemma3ForCausalLM", "gemma3_text"),
    "gemma2": ("Gemma2ForCausalLM", "gemma2"),
    "llama": ("LlamaForCausalLM", "llama"),
}


def hf_state_dict(model: Any, lora_alpha: float | None = None) -> dict[str, np.ndarray]:
    """The HF state dict of the Tunix model, LoRA merged in."""
    tensors = STATE_DICTS[family_of(model).name](model, merged_weights(model, lora_alpha))
    return {k: np.ascontiguousarray(v) for k, v in tensors.items()}


def hf_export_config(source_dir: str | Path, model: Any) -> dict[str, Any]:
    """The HF ``config.json`` of a merged export of ``model``, trained from ``source_dir``."""
    hf_cfg = json.loads((Path(source_dir) / "config.json").read_text())
    cfg = dict(hf_cfg.get("text_config", hf_cfg)) if hf_cfg.get("model_type") == "gemma3" else dict(hf_cfg)
    architecture, model_type = ARCHITECTURES[family_of(model).name]
    cfg.update(
        {
            "architectures": [architecture],
            "model_type": model_type,
            "tie_word_embeddings": getattr(model.config, "weight_tying", True),
            "use_cache": True,
        }
    )
    return cfg


def export_merged(
    model: Any, tok: Any, source_dir: str | Path, target: Path, lora_alpha: float | None
) -> Path:
    """``merged/``: float32 HF safetensors + config + tokenizer, loadable by transformers and ``trainers_torch``.

    The generation config also stops at the end-of-turn token the targets end with.
    """
    from safetensors.numpy import save_file

    src = Path(source_dir)
    cfg = hf_export_config(src, model)
    tensors = hf_state_dict(model, lora_alpha)
    eot_id = tok.convert_tokens_to_ids(end_of_turn(tok))

    def fill(d: Path) -> None:
        save_file(
            {k: v.astype(np.float32) for k, v in tensors.items()},
            str(d / "model.safetensors"),
            metadata={"format": "pt"},
        )
        (d / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
        gen = (
            json.loads((src / "generation_config.json").read_text())
            if (src / "generation_config.json").exists()
            else {}
        )
        eos = gen.get("eos_token_id", cfg.get("eos_token_id"))
        eos = list(eos) if isinstance(eos, list) else [eos] if eos is not None else []
        if isinstance(eot_id, int) and eot_id not in eos:
            eos.append(eot_id)
        gen["eos_token_id"] = eos
        (d / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")
        tok.save_pretrained(d)

    write_dir(target, fill)
    return target
