"""The GRPO loss of Tunix 0.1.7's ``grpo_loss_fn`` with the LM head in chunks on the completion
positions only, registered under ``POLICY_LOSS`` for ``trainers_jax.grpo``'s learner.

Tunix's loss calls the policy on each prompt + completion, keeps the float32 logits of the
completion positions ([B, C, V]: 262,144 columns on Gemma 3), takes their log-softmax for the
tokens' log-probabilities and their softmax again for the entropy metric, and differentiates
through all of it. Here the decoder body runs as there (``losses.final_hidden``), and the
head runs on the C completion positions only, ``chunk`` rows and ``losses.vocab_block``
columns at a time, in one online pass (``losses.online_head``) that also forms each row's
d log-prob / d hidden: the backward pass only scales it, and the head (frozen under LoRA)
gets no gradient. The loss and every metric Tunix reports (the same names) are computed
from those log-probabilities as Tunix computes them: the log-ratio to the old policy clipped
to ±20, the ratio clip ``[1 - epsilon, 1 + epsilon_high]``, the aggregation
``loss_agg_mode``, the KL term to the reference; ``tests/test_jax_policy_loss.py`` checks the
loss, metrics and LoRA gradients against Tunix's own loss. Configurations our trainer never
builds (GSPO, dual-clip, sampler importance weights, packed sequences) go to Tunix's loss.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
from tunix.rl import algo_core, common, function_registry

from trainers_jax.losses import final_hidden, online_head_rows, vocab_block
from trainers_jax.model import head_weights, logit_softcap

POLICY_LOSS = "grpo_chunked_head"
CHUNK = 256  # completion rows per head chunk unless the config sets ``loss_chunk_tokens``


@partial(jax.jit, static_argnums=(3, 4, 5, 6))  # outside a jitted step: compiled once per shape
def _logps_forward(*args: Any) -> tuple[tuple[jax.Array, jax.Array], jax.Array]:
    """``((log-probs [N], entropies [N]), d log-prob / d hidden [N, D])`` chunk by chunk, from
    ``token_logps``' arguments."""
    hidden, embedding, targets, chunk, temperature, softcap, block = args
    nll, dnll, ent = online_head_rows(hidden, targets, embedding, chunk, softcap, block, temperature, True)
    assert ent is not None
    return (-nll, ent), -dnll


@partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5, 6))
def token_logps(
    hidden: jax.Array,
    embedding: jax.Array,
    targets: jax.Array,
    chunk: int,
    temperature: float,
    softcap: float | None,
    block: int,
) -> tuple[jax.Array, jax.Array]:
    """``(log softmax(z / temperature)[target], entropy of softmax(z / temperature))`` per row of
    ``hidden`` [N, D] under the frozen head ``embedding`` [V, D] (``z``: ``model.head_logits``),
    ``chunk`` rows at a time; only the log-probs carry a gradient, to ``hidden`` alone."""
    return _logps_forward(hidden, embedding, targets, chunk, temperature, softcap, block)[0]


def _token_logps_fwd(*args: Any) -> tuple[tuple[jax.Array, jax.Array], tuple[jax.Array, jax.Array]]:
    out, jac = _logps_forward(*args)
    return out, (jac, args[1])


def _token_logps_bwd(
    chunk: int, temperature: float, softcap: float | None, block: int, res: Any, ct: Any
) -> tuple[Any, ...]:
    jac, embedding = res
    return (ct[0][:, None] * jac).astype(jac.dtype), jnp.zeros_like(embedding), None


token_logps.defvjp(_token_logps_fwd, _token_logps_bwd)


def completion_logps(
    model: Any, example: Any, pad_id: int, eos_id: int, temperature: float, chunk: int
) -> tuple[jax.Array, jax.Array]:
    """Per-token log-probs and entropies [B, C] of ``example``'s completions under ``model``,
    at the sampling ``temperature``: Tunix's ``compute_per_token_logps`` without the [B, C, V]
    logits (the same padded positions and attention mask)."""
    ids, positions, mask, _ = common.process_ids(example.prompt_ids, example.completion_ids, pad_id, eos_id)
    targets = example.completion_ids
    B, C = targets.shape
    h = final_hidden(model, ids, positions, mask)[:, -C - 1 : -1]
    embedding = jax.lax.stop_gradient(head_weights(model))
    scale = temperature if temperature not in (0.0, 1.0) else 1.0  # Tunix's rule: 0 means unscaled
    logps, ent = token_logps(
        h.reshape(B * C, -1), embedding, targets.reshape(-1), chunk, scale, logit_softcap(model),
        vocab_block(embedding.shape[0]),
    )  # fmt: skip
    return logps.reshape(B, C), jax.lax.stop_gradient(ent.reshape(B, C))


def _tunix_only(example: Any, algo: Any) -> bool:
    """Whether ``algo`` or ``example`` asks for what only Tunix's own loss implements."""
    return (
        getattr(example, "segment_ids", None) is not None
        or getattr(example, "sampler_is_weights", None) is not None
        or getattr(algo, "loss_algo", "grpo") != "grpo"
        or getattr(algo, "epsilon_c", None) is not None
    )


@function_registry.register_policy_loss_fn(POLICY_LOSS)
def chunked_head_grpo_loss(
    model: Any, train_example: Any, algo_config: Any, pad_id: int, eos_id: int, **kwargs: Any
) -> tuple[jax.Array, dict[str, Any]]:
    """Tunix's GRPO loss and metrics (``grpo_loss_fn``) from ``completion_logps``."""
    if _tunix_only(train_example, algo_config):
        return algo_core.grpo_loss_fn(model, train_example, algo_config, pad_id, eos_id, **kwargs)
    algo, ex, mask = algo_config, train_example, train_example.completion_mask
    mode = algo.loss_agg_mode
    chunk = getattr(algo, "loss_chunk_tokens", CHUNK)
    logps, entropy = completion_logps(model, ex, pad_id, eos_id, algo.temperature, chunk)
    old = jax.lax.stop_gradient(logps) if ex.old_per_token_logps is None else ex.old_per_token_logps
    log_ratio = logps - old.astype(jnp.float32)
    ppo_kl = algo_core.masked_mean(-log_ratio, mask)
    log_ratio = jnp.clip(log_ratio, -20.0, 20.0)
    ratio = jnp.exp(log_ratio)
    adv = ex.advantages.astype(jnp.float32)
    adv = adv if adv.ndim == 2 else adv[:, None]
    high = getattr(algo, "epsilon_high", algo.epsilon)
    unclipped, clipped = -adv * ratio, -adv * jnp.clip(ratio, 1 - algo.epsilon, 1 + high)
    per_token = jnp.maximum(unclipped, clipped)
    loss = common.aggregate_loss(per_token, mask, mode)
    live = mask > 0
    adv_full = jnp.broadcast_to(adv, mask.shape)
    aux: dict[str, Any] = {
        "kl": 0.0,
        "kl_loss": 0.0,
        "pg_loss": loss,
        "pg_clipfrac": algo_core.masked_mean(clipped > unclipped, mask),
        "ppo_kl": ppo_kl,
        "pg_clipfrac_lower": common.aggregate_loss(jnp.zeros_like(per_token), mask, mode),  # no dual clip
        "is_ratio/mean": algo_core.masked_mean(ratio, mask),
        "is_ratio/max": jnp.max(jnp.where(live, ratio, 0.0)),
        "is_ratio/min": jnp.min(jnp.where(live, ratio, jnp.inf)),
        "log_ratio/abs_mean": algo_core.masked_mean(jnp.abs(log_ratio), mask),
        "pg_loss/unclipped_mean": algo_core.masked_mean(unclipped, mask),
        "pg_loss/clipped_mean": algo_core.masked_mean(clipped, mask),
        "advantage/abs_mean": algo_core.masked_mean(jnp.abs(adv_full), mask),
        "advantage/max": jnp.max(jnp.where(live, adv_full, -jnp.inf)),
        "advantage/min": jnp.min(jnp.where(live, adv_full, jnp.inf)),
        "advantage/nonzero_frac": algo_core.masked_mean((jnp.abs(adv_full) > 1e-8).astype(jnp.float32), mask),
        "sampler_is/weight_mean": jnp.float32(1.0),
        "sampler_is/weight_min": jnp.float32(1.0),
    }
    if ex.ref_per_token_logps is not None:
        kl = common.compute_kl_divergence(
            logps, ex.ref_per_token_logps, algo.kl_loss_mode, clamp_value=algo.kl_clamp_value
        )
        aux["kl"] = ((kl * mask).sum() / jnp.clip(mask.sum(), min=1)).astype(jnp.float32)
        aux["kl_loss"] = common.aggregate_loss(kl, mask, mode)
        if algo.beta:
            loss = loss + algo.beta * aux["kl_loss"]
    aux["entropy"] = common.aggregate_loss(entropy, mask, mode)
    return loss, aux
