"""Load an HF safetensors directory into a Tunix (Flax NNX) model on a device mesh.

The HF ``config.json`` is mapped onto Tunix's ``ModelConfig`` field by field, so the same
directory that transformers loads (the default Gemma 3 270M, SmolLM2-135M-Instruct, a Kaggle
Gemma 3 1B, Gemma 2 2B or Llama 3.2, or a tiny random test model) loads here too. Each model
family Tunix has code for is one ``Family`` in ``FAMILIES``: its HF ``model_type`` values, the
config mapping, the loader, and the Tunix names of the layers LoRA targets; ``family_of``
finds it for a loaded model. What Tunix cannot represent is refused naming the config.json field.

- ``gemma3_text``/``gemma3``: ``tunix.models.gemma3``.
- ``gemma2``: ``tunix.models.gemma`` (Gemma v1/v2).
- ``llama``: ``tunix.models.llama3`` through ``trainers_jax/llama.py``, which applies RoPE at
  the config's theta (Tunix 0.1.7 ignores it) with Llama 3.1+'s ``llama3`` frequency scaling
  (Tunix has none), and sows hidden states for the SFT loss.
- Qwen (``qwen2``, ``qwen3``) is refused: Tunix has the model code, but no mapping, export or
  test here yet.

Gemma 2 is verified on tiny random models only (tests/test_jax_gemma2.py: logits equal to
transformers' ``Gemma2ForCausalLM`` with both soft-caps active and a sequence longer than
the sliding window, SFT loss equal to torch's, merged export and greedy generation equal to
transformers'); the real Gemma 2 2B weights were not available where this was written.
Tunix's Gemma 2 sliding window compares a query's *position* with the raw key index, so
``model_positions`` feeds it raw indices for packed or padded rows (RoPE only sees position
differences, so attention is unchanged), and ``check_window`` refuses a Tunix sampler
(generation, GRPO rollouts) whose cache is longer than the window, where the two diverge.
"""

from __future__ import annotations

import inspect
import itertools
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp

from common.errors import InputError
from common.prompts import load_tokenizer

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


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


CACHE_ENV = "SHOWWORK_XLA_CACHE"
CACHE_MAX_BYTES = 4 * 2**30


def use_compilation_cache() -> str | None:
    """Keep XLA's compiled programs on disk across runs (JAX's persistent compilation cache), so
    a rerun, a resume or the next benchmark run of the same shapes loads them instead of
    compiling them again; the directory it uses, or None when off. ``JAX_COMPILATION_CACHE_DIR``,
    when set, is JAX's own and kept; else ``$SHOWWORK_XLA_CACHE`` (``off``: no cache) or
    ``~/.cache/showwork/xla``, at most 4 GiB, the least recently used programs dropped first."""
    current = jax.config.values.get("jax_compilation_cache_dir")
    if current:
        return str(current)
    where = os.environ.get(CACHE_ENV, str(Path.home() / ".cache" / "showwork" / "xla"))
    if where.lower() == "off":
        return None
    jax.config.update("jax_compilation_cache_dir", where)
    jax.config.update("jax_compilation_cache_max_size", CACHE_MAX_BYTES)
    return where


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


def gemma2_config(hf: dict[str, Any], dtype: str = "float32") -> Any:
    """Tunix Gemma (v1/v2) ``ModelConfig`` equivalent to an HF ``gemma2`` config.

    Tunix's Gemma 2 hard-codes what HF makes configurable: RoPE theta 10000 without scaling,
    queries scaled by ``head_dim ** -0.5``, tanh-approximated GELU, RMSNorm eps 1e-6, a tied
    LM head, no biases, causal attention. Anything else is refused, naming the field.
    """
    from tunix.models.gemma import model as gemma

    def refuse(field: str, why: str) -> InputError:
        return InputError(f"config.json: {field}={hf.get(field)!r} {why}")

    rope = hf.get("rope_parameters") or {}
    theta = rope.get("rope_theta", hf.get("rope_theta", 10_000.0))
    if float(theta) != 10_000.0:
        raise InputError(f"config.json: rope_theta={theta} has no Tunix Gemma 2 equivalent (fixed at 10000)")
    if rope.get("rope_type", "default") != "default" or hf.get("rope_scaling"):
        raise InputError(
            "config.json: rope scaling (rope_parameters/rope_scaling) is not supported by Tunix's Gemma 2"
        )
    head_dim = hf["head_dim"]
    if hf.get("query_pre_attn_scalar", head_dim) != head_dim:
        raise refuse(
            "query_pre_attn_scalar", f"has no Tunix Gemma 2 equivalent (it scales by head_dim={head_dim})"
        )
    if hf.get("hidden_activation", "gelu_pytorch_tanh") not in ("gelu_pytorch_tanh", "gelu_tanh"):
        raise refuse("hidden_activation", "is not Tunix Gemma 2's tanh-approximated GELU")
    if float(hf.get("rms_norm_eps", 1e-6)) != 1e-6:
        raise refuse("rms_norm_eps", "is not Tunix Gemma 2's fixed 1e-6")
    for flag in ("attention_bias", "use_bidirectional_attention"):
        if hf.get(flag):
            raise refuse(flag, "is not supported by Tunix's Gemma 2")
    if hf.get("tie_word_embeddings", True) is False:
        raise refuse(
            "tie_word_embeddings", "is not supported: Tunix's Gemma 2 ties the LM head to the embedding"
        )
    n_layers = hf["num_hidden_layers"]
    kinds = {
        "sliding_attention": gemma.AttentionType.LOCAL_SLIDING,
        "full_attention": gemma.AttentionType.GLOBAL,
    }
    layer_types = hf.get("layer_types") or [
        "sliding_attention" if i % 2 == 0 else "full_attention" for i in range(n_layers)
    ]  # HF Gemma 2's default: sliding first, then alternating
    if len(layer_types) != n_layers or set(layer_types) - set(kinds):
        raise refuse("layer_types", f"must list {n_layers} of {sorted(kinds)}")
    window = hf.get("sliding_window")
    if "sliding_attention" in layer_types and not window:
        raise refuse("sliding_window", "must be set when layer_types has sliding_attention layers")
    return gemma.ModelConfig(
        num_layers=n_layers,
        num_embed=hf["vocab_size"],
        embed_dim=hf["hidden_size"],
        hidden_dim=hf["intermediate_size"],
        num_heads=hf["num_attention_heads"],
        head_dim=head_dim,
        num_kv_heads=hf["num_key_value_heads"],
        final_logit_softcap=hf.get("final_logit_softcapping"),
        use_post_attn_norm=True,
        use_post_ffw_norm=True,
        attention_types=tuple(kinds[t] for t in layer_types),
        attn_logits_soft_cap=hf.get("attn_logit_softcapping"),
        sliding_window_size=window,
    )


def llama_config(hf: dict[str, Any], dtype: str = "float32") -> Any:
    """Tunix Llama 3 ``ModelConfig`` (``trainers_jax.llama.LlamaConfig``) equivalent to an HF
    ``llama`` config.

    Tunix's Llama hard-codes what HF makes configurable: SiLU-gated MLP, no biases, no
    attention dropout, queries scaled by ``head_dim ** -0.5``; RoPE is ``trainers_jax.llama``'s,
    plain or with Llama 3.1+'s ``llama3`` frequency scaling. Anything else is refused, naming the field.
    """
    from trainers_jax.llama import LlamaConfig

    def refuse(field: str, why: str) -> InputError:
        return InputError(f"config.json: {field}={hf.get(field)!r} {why}")

    if hf.get("hidden_act", "silu") != "silu":
        raise refuse("hidden_act", "is not Tunix Llama's SiLU")
    for flag in ("attention_bias", "mlp_bias"):
        if hf.get(flag):
            raise refuse(flag, "is not supported: Tunix's Llama has no biases")
    if float(hf.get("attention_dropout") or 0.0) != 0.0:
        raise refuse("attention_dropout", "is not supported: Tunix's Llama has no attention dropout")
    rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    field = "rope_parameters" if hf.get("rope_parameters") else "rope_scaling"
    scaling = None
    if rope_type == "llama3":
        original = rope.get("original_max_position_embeddings", hf["max_position_embeddings"])
        scaling = (float(rope["factor"]), float(rope["low_freq_factor"]), float(rope["high_freq_factor"]), float(original))  # fmt: skip
    elif rope_type != "default":
        raise InputError(
            f"config.json: {field} rope_type={rope_type!r} is not supported (only default and llama3 RoPE)"
        )
    heads, kv_heads, hidden = hf["num_attention_heads"], hf["num_key_value_heads"], hf["hidden_size"]
    if heads % kv_heads:
        raise refuse("num_key_value_heads", f"must divide num_attention_heads={heads}")
    return LlamaConfig(
        num_layers=hf["num_hidden_layers"],
        vocab_size=hf["vocab_size"],
        embed_dim=hidden,
        hidden_dim=hf["intermediate_size"],
        num_heads=heads,
        head_dim=hf.get("head_dim") or hidden // heads,
        num_kv_heads=kv_heads,
        rope_theta=float(rope.get("rope_theta", hf.get("rope_theta", 10_000.0))),
        norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        weight_tying=bool(hf.get("tie_word_embeddings", False)),
        rope_scaling=scaling,
    )


def load_gemma3(path: str, cfg: Any, mesh: jax.sharding.Mesh, dtype: Any) -> Any:
    """Tunix's Gemma 3, its attention with the banded path for packed rows (``trainers_jax/attention.py``)."""
    from tunix.models.gemma3 import params_safetensors

    from trainers_jax import attention

    return attention.enable(
        params_safetensors.create_model_from_safe_tensors(path, cfg, mesh=mesh, dtype=dtype)
    )


def load_gemma2(path: str, cfg: Any, mesh: jax.sharding.Mesh, dtype: Any) -> Any:
    from tunix.models.gemma import params_safetensors

    return params_safetensors.create_model_from_safe_tensors(path, cfg, mesh=mesh, dtype=dtype)


def load_llama(path: str, cfg: Any, mesh: jax.sharding.Mesh, dtype: Any) -> Any:
    from trainers_jax.llama import create_model_from_safe_tensors

    return create_model_from_safe_tensors(path, cfg, mesh=mesh, dtype=dtype)


def gemma_lora_module(model: Any, name: str) -> str:
    """Tunix Gemma fuses k and v (``kv_einsum``), or q/k/v (``qkv_einsum``) when there are as
    many kv heads as heads."""
    fused = model.config.num_heads == model.config.num_kv_heads
    if fused and name in ("q_proj", "k_proj", "v_proj"):
        return "qkv_einsum"
    return {
        "q_proj": "q_einsum",
        "k_proj": "kv_einsum",
        "v_proj": "kv_einsum",
        "o_proj": "attn_vec_einsum",
    }.get(name, name)


@dataclass(frozen=True)
class Family:
    """A model family Tunix has code for: how an HF config maps onto it and how it loads."""

    name: str
    model_types: tuple[str, ...]  # HF config.json model_type values
    config_class: str  # the Tunix ModelConfig ("module:Class"): what identifies a loaded model
    config: Callable[[dict[str, Any], str], Any]  # HF config → Tunix ModelConfig
    load: Callable[[str, Any, jax.sharding.Mesh, Any], Any]  # (dir, config, mesh, dtype) → model
    lora_module: Callable[[Any, str], str]  # (model, HF linear layer name) → the Tunix module holding it


FAMILIES = (
    Family("gemma3", ("gemma3_text", "gemma3"), "tunix.models.gemma3.model:ModelConfig", gemma3_config,
           load_gemma3, gemma_lora_module),
    Family("gemma2", ("gemma2",), "tunix.models.gemma.model:ModelConfig", gemma2_config, load_gemma2,
           gemma_lora_module),
    Family("llama", ("llama",), "trainers_jax.llama:LlamaConfig", llama_config, load_llama,
           lambda model, name: name),  # Tunix's Llama keeps HF's module names
)  # fmt: skip
UNSUPPORTED = {
    "qwen2": "Tunix has Qwen2 model code (tunix.models.qwen2), but this project has no mapping, export or test for it yet",
    "qwen3": "Tunix has Qwen3 model code (tunix.models.qwen3), but this project has no mapping, export or test for it yet",
}


def family_for_type(model_type: str | None, where: str) -> Family:
    for fam in FAMILIES:
        if model_type in fam.model_types:
            return fam
    supported = ", ".join(t for fam in FAMILIES for t in fam.model_types)
    why = UNSUPPORTED.get(str(model_type), "has no JAX loader")
    raise InputError(f"{where}: model_type '{model_type}' {why}; supported: {supported}")


def family_of(model_or_config: Any) -> Family:
    """The family of a loaded Tunix model (or its ``ModelConfig``)."""
    cfg = getattr(model_or_config, "config", model_or_config)
    name = f"{type(cfg).__module__}:{type(cfg).__name__}"
    for fam in FAMILIES:
        if fam.config_class == name:
            return fam
    raise TypeError(f"{name} is not the config of a model family this project loads")


def tunix_config(path: str | Path, dtype: str = "float32") -> Any:
    hf = read_hf_config(path)
    return family_for_type(hf.get("model_type"), f"{path}/config.json").config(hf, dtype)


def is_gemma2(model_or_config: Any) -> bool:
    """True for a Tunix Gemma (v1/v2) model or config (``tunix.models.gemma``)."""
    return family_of(model_or_config).name == "gemma2"


def load_model(
    path: str | Path, dtype: str = "float32", mesh: jax.sharding.Mesh | None = None
) -> tuple[Any, Any]:
    """``(nnx_model, hf_tokenizer)`` from a local HF safetensors directory."""
    cfg = tunix_config(path, dtype)
    mesh = mesh if mesh is not None else make_mesh(1, 1)
    with mesh:
        model = with_last_token_logits(family_of(cfg).load(str(path), cfg, mesh, jax_dtype(dtype)))
    return model, load_tokenizer(path)


def head_weights(model: Any) -> jax.Array:
    """The LM head as ``[V, D]``: the embedding when tied (Gemma, SmolLM2), else Llama's ``lm_head``."""
    if getattr(model.config, "weight_tying", True):
        return model.embedder.input_embedding[...]
    return model.lm_head.w[...].T


def logit_softcap(model: Any) -> float | None:
    """The final-logit soft cap of a Tunix model: Gemma 2's; ``None`` for Gemma 3 and Llama."""
    return getattr(model.config, "final_logit_softcap", None)


def head_logits(h: jax.Array, embedding: jax.Array, softcap: float | None) -> jax.Array:
    """Float32 logits of hidden states ``h`` [..., D] under the head ``embedding`` [V, D]
    (``head_weights``), soft-capped as Gemma 2's final logits when ``softcap`` is given."""
    logits = jnp.dot(h, embedding.T).astype(jnp.float32)
    return jnp.tanh(logits / softcap) * softcap if softcap else logits


class LastTokenLogits:
    """A Tunix model's ``__call__`` that also takes ``decode_only_last_token``: with it, only the
    last position's logits ([B, 1, V], the model's own logits dtype), the only ones a prefill
    samples from. Tunix's ``Sampler`` passes it at prefill to a model whose ``__call__`` names
    it (its Gemma 4 does); to any other it computes the logits of every prompt position and
    keeps the last (on Gemma 3, a 262,144 x 640 product per position). ``load_model`` mixes
    it into Tunix's Gemma classes (``with_last_token_logits``); ``llama.Llama`` takes the flag
    itself."""

    def __call__(
        self,
        last_tokens: jax.Array,
        positions: jax.Array | None = None,
        cache: Any = None,
        attention_mask: jax.Array | None = None,
        output_hidden_states: bool = False,
        *,
        decode_only_last_token: bool = False,
    ) -> tuple[jax.Array, Any]:
        from flax import nnx

        call = super().__call__  # type: ignore[misc]
        if not decode_only_last_token:
            return call(last_tokens, positions, cache, attention_mask, output_hidden_states)
        if output_hidden_states:
            raise ValueError("decode_only_last_token keeps no hidden states")
        _, new_cache = call(last_tokens, positions, cache, attention_mask, True)
        (h,) = nnx.pop(self, nnx.Intermediate)["all_hidden_states"]
        embedding = head_weights(self)
        logits = head_logits(h[:, -1:], embedding, logit_softcap(self))
        return logits.astype(jnp.result_type(h, embedding)), new_cache


_LAST_TOKEN_CLASSES: dict[type, type] = {}  # a family's class -> it with LastTokenLogits


def with_last_token_logits(model: Any) -> Any:
    """``model`` (in place) as an instance of its class with ``LastTokenLogits`` mixed in,
    unless its ``__call__`` already takes ``decode_only_last_token`` (``llama.Llama``)."""
    cls = type(model)
    if "decode_only_last_token" not in inspect.signature(cls.__call__).parameters:
        if cls not in _LAST_TOKEN_CLASSES:
            body = {"__module__": __name__, "__doc__": cls.__doc__}
            _LAST_TOKEN_CLASSES[cls] = type(cls.__name__, (LastTokenLogits, cls), body)
        object.__setattr__(model, "__class__", _LAST_TOKEN_CLASSES[cls])
    return model


def model_positions(model: Any, positions: jax.Array) -> jax.Array:
    """The positions to call ``model`` with for rows whose ``positions`` restart at each packed
    example or start after left padding.

    Tunix's Gemma 2 builds its sliding-window mask from the query's position against the raw
    key index, which is HF's window only when the two coincide. Raw indices do: each example's
    positions are its raw indices minus a constant, and RoPE sees only differences. Gemma 3's
    Tunix mask already uses raw indices, so its positions pass through.
    """
    if not is_gemma2(model):
        return positions
    return jnp.broadcast_to(jnp.arange(positions.shape[-1], dtype=positions.dtype), positions.shape)


def check_window(model: Any, cache_size: int, what: str) -> None:
    """Refuse a Tunix sampler cache longer than Gemma 2's sliding window.

    The sampler positions left-padded prompts from their first real token while Tunix's Gemma
    2 window is measured against raw cache indices; the two agree (and match HF) only while
    every row fits in the window.
    """
    window = getattr(model.config, "sliding_window_size", None) if is_gemma2(model) else None
    if window and cache_size > window:
        raise InputError(
            f"{what}: {cache_size} tokens of prompt + generation exceed the model's sliding_window "
            f"({window}, config.json); Tunix's Gemma 2 sampler is exact only within it"
        )


def forward_logits(model: Any, tokens: jax.Array, mask: jax.Array) -> jax.Array:
    """Full-sequence logits ``[B, L, V]`` for left- or right-padded ``tokens`` with ``mask`` (True = real)."""
    from tunix.sft import utils as sft_utils

    positions = model_positions(model, sft_utils.build_positions_from_mask(mask))
    attn = sft_utils.make_causal_attn_mask(mask)
    logits, _ = model(tokens, positions, None, attn)
    return logits
