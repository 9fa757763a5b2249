"""Tunix's Llama 3 model (``tunix.models.llama3``) as this project loads HF ``llama`` checkpoints.

Two things change, nothing else: the same modules and parameter names, so Tunix's safetensors
key mapping, its sampler, qwix LoRA and the GRPO learner all work on it unchanged.

- RoPE as the HF config says. Tunix 0.1.7's attention calls ``apply_rope`` without the theta,
  so every Llama gets its default of 1,000,000 whatever ``ModelConfig.rope_theta`` says
  (SmolLM2 uses 100,000, Llama 3 500,000), and it has no frequency scaling (Llama 3.1 and 3.2
  use HF's ``llama3`` type). While the model runs, the attention's ``apply_rope`` is ``rope``
  with the inverse frequencies of ``LlamaConfig`` (theta, and the ``llama3`` scaling if any).
- ``output_hidden_states=True`` sows the final-norm hidden states as ``all_hidden_states``,
  as Tunix's Gemma and Qwen models do: the SFT loss applies the LM head itself, in chunks.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tunix.models import safetensors_loader
from tunix.models.llama3 import model as llama3
from tunix.models.llama3 import params as llama3_params


@dataclasses.dataclass(frozen=True)
class LlamaConfig(llama3.ModelConfig):
    """Tunix's Llama 3 ``ModelConfig`` plus HF's ``llama3`` RoPE scaling: ``(factor,
    low_freq_factor, high_freq_factor, original_max_position_embeddings)``, or None."""

    rope_scaling: tuple[float, float, float, float] | None = None


def inverse_frequencies(head_dim: int, theta: float, scaling: tuple[float, ...] | None) -> np.ndarray:
    """RoPE's ``head_dim / 2`` inverse frequencies; with ``llama3`` scaling, wavelengths longer
    than ``original / low_freq_factor`` are stretched by ``factor``, shorter than ``original /
    high_freq_factor`` kept, and the ones between blended linearly in ``original / wavelength``."""
    inv = 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    if scaling is None:
        return inv.astype(np.float32)
    factor, low, high, original = scaling
    wavelength = 2 * math.pi / inv
    blend = np.clip((original / wavelength - low) / (high - low), 0.0, 1.0)  # 0: stretched, 1: kept
    return ((1 - blend) * inv / factor + blend * inv).astype(np.float32)


def rope(inputs: jax.Array, positions: jax.Array, head_dim: int, *, inv_freq: np.ndarray) -> jax.Array:
    """Rotate ``inputs`` [B, L, heads, H] by ``positions`` [B, L] at ``inv_freq``, pairing each
    dimension of the first half with its twin in the second half (HF's ``rotate_half`` layout)."""
    angles = positions[..., None].astype(jnp.float32) * jnp.asarray(inv_freq)  # [B, L, H/2]
    sin, cos = jnp.sin(angles)[..., None, :], jnp.cos(angles)[..., None, :]
    first, second = jnp.split(inputs, 2, axis=-1)
    out = jnp.concatenate([first * cos - second * sin, second * cos + first * sin], axis=-1)
    return out.astype(inputs.dtype)


@contextlib.contextmanager
def config_rope(config: LlamaConfig) -> Iterator[None]:
    """Tunix's attention calls ``rope`` at the config's frequencies while the block runs (and traces)."""
    tunix_rope = llama3.apply_rope
    inv_freq = inverse_frequencies(config.head_dim, config.rope_theta, config.rope_scaling)
    llama3.apply_rope = functools.partial(rope, inv_freq=inv_freq)
    try:
        yield
    finally:
        llama3.apply_rope = tunix_rope


class Llama(llama3.Llama3):
    """``tunix.models.llama3.Llama3`` with RoPE as ``LlamaConfig`` says, hidden states on request,
    and a prefill's last-position logits only (``model.LastTokenLogits``)."""

    def __call__(
        self,
        input_tokens: jax.Array,  # [B, L]
        positions: jax.Array,  # [B, L]
        cache: dict[str, Any] | None,
        attention_mask: jax.Array,  # [B, L, L']
        output_hidden_states: bool = False,
        *,
        decode_only_last_token: bool = False,  # the last position's logits only (a prefill's)
    ) -> tuple[jax.Array, dict[str, Any] | None]:
        new_cache: dict[str, Any] | None = None if cache is None else {}
        x = self.embedder.encode(input_tokens)
        with config_rope(self.config):
            for i, layer in enumerate(self.layers):
                name = f"layer_{i}"
                layer_cache, x = layer(x, positions, cache[name] if cache else None, attention_mask)
                if new_cache is not None:
                    new_cache[name] = layer_cache
        x = self.final_norm(x)
        if output_hidden_states:
            self.sow(nnx.Intermediate, "all_hidden_states", x)
        if decode_only_last_token:
            x = x[:, -1:]
        logits = self.embedder.decode(x) if self.config.weight_tying else self.lm_head(x)
        return logits, new_cache


def create_model_from_safe_tensors(
    path: str, config: LlamaConfig, mesh: jax.sharding.Mesh, dtype: Any
) -> Llama:
    """Tunix's Llama 3 loader (its HF key mapping and transposes) building ``Llama``."""
    return safetensors_loader.load_and_create_model(
        file_dir=path,
        model_class=Llama,
        config=config,
        key_mapping=llama3_params._get_key_and_transform_mapping,
        mesh=mesh,
        dtype=dtype,
    )
