"""``trainers_jax.model.LastTokenLogits``: a prefill computes the last position's logits only.

Every family ``load_model`` loads (Gemma 3, Gemma 2 with its soft-capped logits, Llama) takes
``decode_only_last_token``: the call gives the full call's last-position logits, its compiled
code drops the head's product on the other positions, Tunix's ``Sampler`` passes the flag to the
model and to its LoRA-wrapped copy, and sampling draws the same tokens as without it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

FAMILIES = ["tiny_gemma3", "tiny_gemma2", "tiny_llama"]


@pytest.mark.parametrize("family", FAMILIES)
def test_last_token_logits_are_the_full_calls_last_row(family: str, request: pytest.FixtureRequest) -> None:
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from trainers_jax.model import head_weights, load_model

    path: Path = request.getfixturevalue(family)
    model, _ = load_model(path)
    vocab, dim = head_weights(model).shape
    tokens = jnp.asarray(np.random.default_rng(0).integers(3, vocab, (2, 9)))
    positions = jnp.broadcast_to(jnp.arange(9), (2, 9))
    mask = jnp.broadcast_to(jnp.tril(jnp.ones((9, 9), bool)), (2, 9, 9))
    graphdef, state = nnx.split(model)

    def call(s: object, last: bool) -> jax.Array:
        return nnx.merge(graphdef, s)(tokens, positions, None, mask, decode_only_last_token=last)[0]

    full, last = (jax.jit(call, static_argnums=1).lower(state, flag).compile() for flag in (False, True))
    np.testing.assert_allclose(np.asarray(last(state)), np.asarray(full(state))[:, -1:], rtol=1e-5, atol=1e-6)
    assert last(state).dtype == full(state).dtype

    def flops(compiled: object) -> float:
        cost = compiled.cost_analysis()  # type: ignore[attr-defined]
        return float((cost[0] if isinstance(cost, list) else cost)["flops"])

    assert flops(full) - flops(last) >= 2 * 8 * 2 * vocab * dim  # the head on 2 x 8 earlier positions


@pytest.mark.parametrize("family", FAMILIES)
def test_the_sampler_prefills_the_last_token_only_and_samples_the_same(
    family: str, request: pytest.FixtureRequest
) -> None:
    from tunix.generate import sampler as tunix_sampler

    from common.sft_config import LoraConfig
    from trainers_jax.lora import apply_lora
    from trainers_jax.model import load_model

    path: Path = request.getfixturevalue(family)
    base, tok = load_model(path)
    model = apply_lora(base, LoraConfig(rank=4, alpha=8, dropout=0.0), None, seed=0)
    cfg = model.config
    cache = tunix_sampler.CacheConfig(128, cfg.num_layers, cfg.num_kv_heads, cfg.head_dim)
    prompts = ["What is 2 + 3?", "Add seven and eleven, then halve it."]
    tokens = []
    for supported in (True, False):
        sampler = tunix_sampler.Sampler(model, tok, cache)
        assert sampler._supports_decode_only_last_token  # the LoRA model's __call__ names the flag
        sampler._supports_decode_only_last_token = supported
        out = sampler(prompts, max_generation_steps=12, max_prompt_length=32, temperature=1.0, seed=3)
        tokens.append([list(map(int, t)) for t in out.tokens])
    assert tokens[0] == tokens[1] and any(tokens[0])
