"""Tunix's Llama 3 model (``tunix.models.llama3``) as this project loads HF ``llama`` checkpoints.

Two things change, nothing else: the same modules and parameter names, so Tunix's safetensors
key mapping, its sampler, qwix LoRA and the GRPO learner all work on it unchanged.

- RoPE at the config's ``rope_theta``. Tunix 0.1.7's attention calls ``apply_rope`` without
  the theta, so every Llama gets its default of 1,000,000 whatever ``ModelConfig.rope_theta``
  says (SmolLM2 uses 100,000, Llama 3 500,000). The call runs with that function's default
  bound to the config's theta.
- ``output_hidden_states=True`` sows the final-norm hidden states as ``all_hidden_states``,
  as Tunix's Gemma and Qwen models do: the SFT loss applies the LM head itself, in chunks.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from typing import Any

import jax
from flax import nnx
from tunix.models import safetensors_loader
from tunix.models.llama3 import model as llama3
from tunix.models.llama3 import params as llama3_params


@contextlib.contextmanager
def rope_theta(theta: float) -> Iterator[None]:
    """Tunix's ``apply_rope`` with ``rope_theta`` bound while the block runs (and traces)."""
    tunix_rope = llama3.apply_rope
    llama3.apply_rope = functools.partial(tunix_rope, rope_theta=theta)
    try:
        yield
    finally:
        llama3.apply_rope = tunix_rope


class Llama(llama3.Llama3):
    """``tunix.models.llama3.Llama3`` with RoPE at ``config.rope_theta`` and hidden states on request."""

    def __call__(
        self,
        input_tokens: jax.Array,  # [B, L]
        positions: jax.Array,  # [B, L]
        cache: dict[str, Any] | None,
        attention_mask: jax.Array,  # [B, L, L']
        output_hidden_states: bool = False,
    ) -> tuple[jax.Array, dict[str, Any] | None]:
        new_cache = None if cache is None else {}
        x = self.embedder.encode(input_tokens)
        with rope_theta(self.config.rope_theta):
            for i, layer in enumerate(self.layers):
                name = f"layer_{i}"
                layer_cache, x = layer(x, positions, cache[name] if cache else None, attention_mask)
                if new_cache is not None:
                    new_cache[name] = layer_cache
        x = self.final_norm(x)
        if output_hidden_states:
            self.sow(nnx.Intermediate, "all_hidden_states", x)
        logits = self.embedder.decode(x) if self.config.weight_tying else self.lm_head(x)
        return logits, new_cache


def create_model_from_safe_tensors(
    path: str, config: llama3.ModelConfig, mesh: jax.sharding.Mesh, dtype: Any
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
