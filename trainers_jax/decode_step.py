"""The sampler's decode step on Tunix's Gemma 3, from weights laid out once per rollout.

Tunix's sampler runs every decode step through the model's modules: each projection is an
einsum on the weight as the module keeps it ([heads, D, H] for the query, [D, F] for the MLP),
and a qwix LoRA adds its two small products beside it. Inside the compiled decode loop XLA's
CPU backend then lays every such weight out again for its product on every step, and its
products on a weight kept as [in, out] stream it more slowly than on [out, in]. Measured on the
real Gemma 3 270M (2 threads, a 2-core Intel Xeon, idle): 126 products of 18 layers' distinct
weights, 8 rows, 34.1 ms as [in, out], 26.6 ms as [out, in]; a trace of the GRPO sampler (48
steps of 8 rows) put 5.35 s in products and 1.31 s in weight relayouts of a 7.77 s loop.

``prepare`` folds each LoRA adapter into its weight (W + alpha / rank · A·B, as the merged
export folds it) and lays every product's weight out as [out, in]; ``Sampler._decode_fn``
(``trainers_jax.sampling``) calls it once, before its loop, inside the compiled decode
function. ``step`` is then the model's forward for one new token per row: the modules' own
norms, embedding and tied head, Tunix's RoPE and sliding-window mask, the products on the
prepared weights, and the key/value cache in Tunix's layout (``{"layer_i": {"k", "v",
"end_index"}}``, written at ``end_index % size``). The values equal Tunix's forward up to float
rounding (the LoRA folded in first, the products summed in another order). The same trace
with this step: a 5.79 s loop, 4.72 s of products, 0.35 s of relayouts (README, Training).
The prepared weights are a second copy of the layers' weights while the loop runs.

Applies to Tunix's Gemma 3 with fewer key/value heads than query heads (its ``q_einsum`` /
``kv_einsum`` form, as the 270M model), no vision tower and no remat; ``applies`` says so, and
elsewhere the sampler keeps Tunix's step.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from tunix.models.gemma3 import model as gemma3

from trainers_jax.export import lora_spec


def applies(model: Any) -> bool:
    """Whether ``step`` computes ``model``'s decode step (the module doc)."""
    if not isinstance(model, gemma3.Gemma3) or model.config.vision_config is not None:
        return False
    if model.config.remat_config not in (gemma3.RematConfig.NONE, gemma3.RematConfig.NONE.value):
        return False
    return all(not layer.attn.use_qkv_einsum for layer in model.layers)


def _folded(module: Any, name: str, key: str, scale: float | None) -> jax.Array:
    """``module``'s weight ``name`` with its qwix LoRA adapter (if any) folded in, ``key``
    naming the module for ``lora_spec``."""
    w = getattr(module, name)[...]
    a = getattr(module, f"{name}_lora_a", None)
    if a is None:
        return w
    if scale is None:
        raise ValueError("the model has LoRA adapters: the sampler needs their alpha / rank")
    b = getattr(module, f"{name}_lora_b")[...]
    return w + scale * jnp.einsum(lora_spec(key), a[...], b).astype(w.dtype)


def prepare(model: Any, lora_scale: float | None) -> list[dict[str, jax.Array]]:
    """Per layer, each product's weight as [out, in] with its LoRA folded in: ``q`` [N·H, D],
    ``kv`` [2·K·H, D], ``o`` [D, N·H], ``gate`` / ``up`` [F, D], ``down`` [D, F]."""
    layers = []
    for layer in model.layers:
        attn, mlp = layer.attn, layer.mlp
        q = _folded(attn.q_einsum, "w", "q_einsum", lora_scale)  # [N, D, H]
        kv = _folded(attn.kv_einsum, "w", "kv_einsum", lora_scale)  # [2, K, D, H]
        o = _folded(attn.attn_vec_einsum, "w", "attn_vec_einsum", lora_scale)  # [N, H, D]
        d = q.shape[1]
        layers.append({
            "q": q.transpose(0, 2, 1).reshape(-1, d),
            "kv": kv.transpose(0, 1, 3, 2).reshape(-1, d),
            "o": o.reshape(-1, d).T,
            "gate": _folded(mlp.gate_proj, "kernel", "gate_proj", lora_scale).T,
            "up": _folded(mlp.up_proj, "kernel", "up_proj", lora_scale).T,
            "down": _folded(mlp.down_proj, "kernel", "down_proj", lora_scale).T,
        })  # fmt: skip
    return layers


def _product(x: jax.Array, w: jax.Array) -> jax.Array:
    """``x`` [B, in] · ``w`` [out, in]ᵀ -> [B, out]."""
    return jax.lax.dot_general(x, w, (((1,), (1,)), ((), ())))


def _attend(
    layer: Any, w: dict[str, jax.Array], x: jax.Array, positions: jax.Array, cache: Any, mask: jax.Array
) -> Any:
    """One layer's attention for ``x`` [B, 1, D]: (its cache with the new key and value, [B, 1, D])."""
    attn = layer.attn
    b, n, k, h = x.shape[0], attn.num_heads, attn.num_kv_heads, attn.head_dim
    query = _product(x[:, 0], w["q"]).reshape(b, 1, n, h)
    key, value = _product(x[:, 0], w["kv"]).reshape(b, 2, 1, k, h).swapaxes(0, 1)
    rope = {"head_dim": h, "base_frequency": attn.rope_base_frequency, "scale_factor": attn.rope_scale_factor}
    query = gemma3.apply_rope(attn._query_norm(query), positions, **rope) * attn.query_pre_attn_scalar
    key = gemma3.apply_rope(attn._key_norm(key), positions, **rope)
    at = (0, cache["end_index"][0] % cache["k"].shape[1], 0, 0)
    keys = jax.lax.dynamic_update_slice(cache["k"], key, at)  # [B, S, K, H]
    values = jax.lax.dynamic_update_slice(cache["v"], value, at)
    logits = jnp.einsum("BKGH,BSKH->BKGS", query.reshape(b, k, n // k, h), keys)
    if attn.attn_type == gemma3.AttentionType.LOCAL_SLIDING:
        mask = gemma3.create_sliding_window_mask(mask, sliding_window_size=attn.sliding_window_size) * mask
    logits = jnp.where(mask[:, :, None, :], logits, gemma3.K_MASK)  # mask [B, 1, S]: one per row
    probs = jax.nn.softmax(logits, axis=-1).astype(values.dtype)
    encoded = jnp.einsum("BKGS,BSKH->BKGH", probs, values).reshape(b, n * h)
    new_cache = {"k": keys, "v": values, "end_index": cache["end_index"] + 1}
    return new_cache, _product(encoded, w["o"])[:, None]


def step(
    model: Any,
    weights: list[dict[str, jax.Array]],
    tokens: jax.Array,
    positions: jax.Array,
    cache: Any,
    mask: jax.Array,
) -> tuple[jax.Array, Any]:
    """The logits [B, 1, V] of ``tokens`` [B, 1] at ``positions`` [B, 1] and the cache after it,
    as ``model(tokens, positions, cache, mask)`` gives them; ``mask`` [B, 1, S] as Tunix's
    sampler builds it for a decode step."""
    x = model.embedder.encode(tokens)
    new_cache = {}
    for i, (layer, w) in enumerate(zip(model.layers, weights, strict=True)):
        name = f"layer_{i}"
        new_cache[name], attended = _attend(
            layer, w, layer.pre_attention_norm(x), positions, cache[name], mask
        )
        x = layer.post_attention_norm(attended) + x
        h = layer.pre_ffw_norm(x)[:, 0]
        ff = jax.nn.gelu(_product(h, w["gate"])) * _product(h, w["up"])
        x = layer.post_ffw_norm(_product(ff, w["down"])[:, None]) + x
    return model.embedder.decode(model.final_norm(x)), new_cache
