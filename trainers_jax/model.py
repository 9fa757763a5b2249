"""Load an HF safetensors directory into a Tunix (Flax NNX) model on a device mesh.

The HF ``config.json`` is mapped onto Tunix's ``ModelConfig`` field by field, so the same
directory that transformers loads (the default Gemma 3 270M, a Kaggle Gemma 3 1B, or a
tiny random test model) loads here too. Weights go through Tunix's own safetensors loader.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp

from common.errors import InputError
from common.prompts import load_tokenizer

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
SUPPORTED = ("gemma3_text", "gemma3")


def jax_dtype(name: str) -> Any:
    if name not in DTYPES:
        raise InputError(f"dtype '{name}' is not one of {', '.join(DTYPES)}")
    return DTYPES[name]


def read_hf_config(path: str | Path) -> dict[str, Any]:
    p = Path(path) / "config.json"
    if not p.is_file():
        raise InputError(f"{p.parent}: not a model directory, config.json missing")
    cfg = json.loads(p.read_text())
    return cfg.get("text_config", cfg) if cfg.get("model_type") == "gemma3" else cfg


def make_mesh(fsdp: int = 1, tp: int = 1) -> jax.sharding.Mesh:
    """A ``(fsdp, tp)`` mesh over the first ``fsdp * tp`` devices."""
    n = fsdp * tp
    devices = jax.devices()
    if n > len(devices):
        raise InputError(f"mesh fsdp={fsdp} x tp={tp} needs {n} devices; {len(devices)} available")
    auto = (jax.sharding.AxisType.Auto,) * 2
    return jax.make_mesh((fsdp, tp), ("fsdp", "tp"), axis_types=auto, devices=devices[:n])


def gemma3_config(hf: dict[str, Any], dtype: str = "float32") -> Any:
    """Tunix Gemma 3 ``ModelConfig`` equivalent to an HF ``gemma3_text`` config."""
    from tunix.models.gemma3 import model as gemma3

    n_layers = hf["num_hidden_layers"]
    pattern = [t.name for _, t in zip(range(n_layers), itertools.cycle(gemma3.GEMMA3_ATTENTION_PATTERN))]
    expected = ["full_attention" if t == "GLOBAL" else "sliding_attention" for t in pattern]
    if hf.get("layer_types") and list(hf["layer_types"]) != expected:
        raise InputError(
            "config.json: layer_types differ from Gemma 3's 5-local/1-global pattern Tunix implements"
        )
    if hf.get("final_logit_softcapping") or hf.get("attn_logit_softcapping"):
        raise InputError("config.json: logit soft-capping is not supported by Tunix's Gemma 3")
    rope = hf.get("rope_parameters") or {}
    local_theta = (rope.get("sliding_attention") or {}).get(
        "rope_theta", hf.get("rope_local_base_freq", 10_000)
    )
    global_rope = rope.get("full_attention") or {"rope_theta": hf.get("rope_theta", 1_000_000)}
    global_factor = float(global_rope.get("factor", 1.0)) if global_rope.get("rope_type") == "linear" else 1.0
    heads, head_dim, hidden = hf["num_attention_heads"], hf["head_dim"], hf["hidden_size"]
    scalar = hf.get("query_pre_attn_scalar", head_dim)
    if scalar == head_dim:
        norm = gemma3.QueryPreAttentionNormalisation.BY_ONE_OVER_SQRT_HEAD_DIM
    elif scalar == hidden // heads:
        norm = gemma3.QueryPreAttentionNormalisation.BY_ONE_OVER_SQRT_EMBED_DIM_DIV_NUM_HEADS
    else:
        raise InputError(f"config.json: query_pre_attn_scalar={scalar} has no Tunix equivalent")
    return gemma3.ModelConfig(
        num_layers=n_layers,
        num_embed=hf["vocab_size"],
        embed_dim=hidden,
        hidden_dim=hf["intermediate_size"],
        num_heads=heads,
        head_dim=head_dim,
        num_kv_heads=hf["num_key_value_heads"],
        sliding_window_size=hf.get("sliding_window"),
        local_base_frequency=int(local_theta),
        global_base_frequency=int(global_rope.get("rope_theta", 1_000_000)),
        global_scale_factor=global_factor,
        query_pre_attn_norm=norm,
        param_dtype=jax_dtype(dtype),
    )


def tunix_config(path: str | Path, dtype: str = "float32") -> Any:
    hf = read_hf_config(path)
    model_type = hf.get("model_type")
    if model_type in ("gemma3_text", "gemma3"):
        return gemma3_config(hf, dtype)
    raise InputError(
        f"{path}/config.json: model_type '{model_type}' has no JAX loader; supported: {', '.join(SUPPORTED)}"
    )


def load_model(
    path: str | Path, dtype: str = "float32", mesh: jax.sharding.Mesh | None = None
) -> tuple[Any, Any]:
    """``(nnx_model, hf_tokenizer)`` from a local HF safetensors directory."""
    from tunix.models.gemma3 import params_safetensors

    cfg = tunix_config(path, dtype)
    mesh = mesh if mesh is not None else make_mesh(1, 1)
    with mesh:
        model = params_safetensors.create_model_from_safe_tensors(
            str(path), cfg, mesh=mesh, dtype=jax_dtype(dtype)
        )
    return model, load_tokenizer(path)


def forward_logits(model: Any, tokens: jax.Array, mask: jax.Array) -> jax.Array:
    """Full-sequence logits ``[B, L, V]`` for left- or right-padded ``tokens`` with ``mask`` (True = real)."""
    from tunix.sft import utils as sft_utils

    positions = sft_utils.build_positions_from_mask(mask)
    attn = sft_utils.make_causal_attn_mask(mask)
    logits, _ = model(tokens, positions, None, attn)
    return logits
