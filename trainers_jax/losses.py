"""The SFT loss on Tunix models: decoder body with a block-diagonal causal mask from the
packed segment ids (on Gemma 3, within a band of the examples' longest length:
``trainers_jax/attention.py``), then the LM head in chunks on completion positions only."""

from __future__ import annotations

import math
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from common import sft_data
from common.sft_data import IGNORE
from trainers_jax.attention import band_mask, takes_band_mask
from trainers_jax.model import head_logits, head_weights, logit_softcap, model_positions


def packed_attention_mask(segment_ids: jax.Array) -> jax.Array:
    """[B, L, L] causal mask that keeps attention inside each packed example (segment 0 = padding)."""
    seg_q, seg_k = segment_ids[:, :, None], segment_ids[:, None, :]
    n = segment_ids.shape[1]
    causal = jnp.tril(jnp.ones((n, n), dtype=jnp.bool_))[None]
    return (seg_q == seg_k) & (seg_k != 0) & causal


def hidden_states(
    model: Any, tokens: jax.Array, positions: jax.Array, segment_ids: jax.Array, band: jax.Array | None = None
) -> jax.Array:
    """Final-norm hidden states [B, L, D] of packed rows (``final_hidden``), attending within
    the ``band`` mask (``attention.band_mask``) when given and the model takes one, else over
    the whole row with ``packed_attention_mask``."""
    positions = model_positions(model, positions)  # Gemma 2: its sliding window needs raw indices
    banded = band is not None and takes_band_mask(model)
    return final_hidden(model, tokens, positions, band if banded else packed_attention_mask(segment_ids))


def final_hidden(
    model: Any, tokens: jax.Array, positions: jax.Array | None, mask: jax.Array | None
) -> jax.Array:
    """Final-norm hidden states [B, L, D] of a Tunix model called without a cache on ``mask``
    (``output_hidden_states`` sows them).

    The model is called as a whole (qwix's LoRA intercepts the model's ``__call__``, so the
    submodules cannot be run one by one); the [B, L, V] logits it also returns are unused,
    and XLA drops them from a jitted step.
    """
    model(tokens, positions, None, mask, output_hidden_states=True)
    (h,) = nnx.pop(model, nnx.Intermediate)["all_hidden_states"]
    return h


def _chunks(chunk: int, *arrays: jax.Array) -> tuple[jax.Array, ...]:
    n = arrays[0].shape[0] // chunk
    return tuple(a.reshape(n, chunk, *a.shape[1:]) for a in arrays)


def head_loss_sum(
    hidden: jax.Array,
    embedding: jax.Array,
    targets: jax.Array,
    valid: jax.Array,
    chunk: int,
    softcap: float | None = None,
    head_trains: bool = True,
    block: int | None = None,
) -> jax.Array:
    """Sum of ``-log softmax(z)[target]`` over valid rows, ``chunk`` rows at a time, where
    ``z = hidden @ E.T`` in float32, soft-capped to ``softcap * tanh(z / softcap)`` when the model
    has a final-logit cap (Gemma 2), as torch's ``lm_head_loss_sum`` does. At most [chunk, V]
    logits live at once.

    ``head_trains``: E gets a gradient, so each chunk's logits are recomputed in the backward
    pass (``jax.checkpoint``). Otherwise (LoRA: the head is frozen) the forward pass also forms
    d loss / d hidden, one [chunk, D] block per chunk, and the backward pass only scales it:
    two products with E per chunk instead of three, in one pass over E
    (``frozen_head_loss_sum``, ``online_head``), ``block`` vocabulary columns at a time (default
    ``vocab_block``).
    """
    if not head_trains:
        width = block or vocab_block(embedding.shape[0])
        return frozen_head_loss_sum(
            hidden, jax.lax.stop_gradient(embedding), targets, valid, chunk, softcap, width
        )

    @jax.checkpoint
    def one(h: jax.Array, y: jax.Array, v: jax.Array) -> jax.Array:
        return _chunk_loss(h, y, v, embedding, softcap)[0]

    xs = _chunks(chunk, hidden, targets, valid)
    total, _ = jax.lax.scan(lambda acc, x: (acc + one(*x), None), jnp.zeros((), jnp.float32), xs)
    return total


def _chunk_loss(
    h: jax.Array, y: jax.Array, v: jax.Array, embedding: jax.Array, softcap: float | None
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """One chunk's summed loss over its valid rows, with its logits and their log-sum-exp."""
    logits = head_logits(h, embedding, softcap)
    lse = jax.nn.logsumexp(logits, axis=-1)
    picked = jnp.take_along_axis(logits, y[:, None], axis=-1)[:, 0]
    return jnp.sum(jnp.where(v, lse - picked, 0.0)), logits, lse


VOCAB_BLOCK = 2048  # on a CPU: the head's columns per block (the logits block stays in cache)


def vocab_block(vocab: int) -> int:
    """Columns per block of the frozen head: on a CPU the largest divisor of ``vocab`` in [256,
    ``VOCAB_BLOCK``] (one block when there is none), elsewhere the whole vocabulary (a GPU or
    TPU would run a loop of small products)."""
    if jax.default_backend() == "cpu":
        for width in range(min(VOCAB_BLOCK, vocab), 255, -1):
            if vocab % width == 0:
                return width
    return vocab


def online_head(
    h: jax.Array,
    y: jax.Array,
    embedding: jax.Array,
    softcap: float | None,
    block: int,
    temperature: float = 1.0,
    entropy: bool = False,
) -> tuple[jax.Array, jax.Array, jax.Array | None]:
    """Per row of ``h`` [rows, D], in one pass over the head ``block`` vocabulary columns at a
    time: ``(-log softmax(z)[y], d(-log softmax(z)[y]) / d h, entropy of softmax(z) or None)``
    for the logits ``z = head_logits(h, E, softcap) / temperature``, in float32.

    An online softmax: each block's logits raise the running row maximum, rescale the running
    sum and the running ``softmax · E`` product, and are then dropped, so no [rows, V] logits are
    kept. d / d h = (softmax · E − E[y]) / temperature, each term through the soft cap's
    derivative when there is one; the target's logit is read from its block's logits, so the
    value uses the product's own numbers. With ``entropy``: ``log S − Q / S`` from the running
    ``S = Σ exp(z − m)`` and ``Q = Σ exp(z − m) (z − m)`` at the running maximum ``m`` (small
    numbers: ``logsumexp(z) − Σ softmax · z`` cancels logits in the hundreds). A two-pass
    version that kept the logits (268 MB per 256-row chunk of Gemma 3) took about 9% longer on
    a CPU (README, Training)."""
    rows, n_blocks = h.shape[0], embedding.shape[0] // block
    heads = embedding.reshape(n_blocks, block, embedding.shape[1])
    firsts = jnp.arange(n_blocks, dtype=y.dtype) * block
    index = jnp.arange(rows)

    Carry = tuple[jax.Array, jax.Array, jax.Array, jax.Array, jax.Array]

    def step(carry: Carry, x: tuple[jax.Array, jax.Array]) -> tuple[Carry, None]:
        top, total, acc, picked, pz = carry
        e, first = x
        capped = head_logits(h, e, softcap)
        z = capped / temperature if temperature != 1.0 else capped
        new_top = jnp.maximum(top, jnp.max(z, axis=-1))
        keep = jnp.exp(top - new_top)
        p = jnp.exp(z - new_top[:, None])
        g = p * (1.0 - jnp.square(capped / softcap)) if softcap else p  # d(c tanh(u/c))/du
        acc = acc * keep[:, None] + jnp.dot(g.astype(e.dtype), e, preferred_element_type=jnp.float32)
        here = (y >= first) & (y < first + block)
        picked = picked + jnp.where(here, z[index, jnp.clip(y - first, 0, block - 1)], 0.0)
        if entropy:  # Σ p (z - top), moved to the new top; nothing to move before the first block
            moved = jnp.where(total > 0, pz + (top - new_top) * total, 0.0)
            pz = moved * keep + jnp.sum(p * (z - new_top[:, None]), axis=-1)
        return (new_top, total * keep + jnp.sum(p, axis=-1), acc, picked, pz), None

    zeros = jnp.zeros((rows,), jnp.float32)
    init = (jnp.full((rows,), -jnp.inf, jnp.float32), zeros, jnp.zeros(h.shape, jnp.float32), zeros, zeros)
    (top, total, acc, picked, pz), _ = jax.lax.scan(step, init, (heads, firsts))
    lse = top + jnp.log(total)
    target = embedding[y].astype(jnp.float32)
    if softcap:
        target = target * (1.0 - jnp.square(picked * temperature / softcap))[:, None]
    dh = acc / total[:, None] - target
    if temperature != 1.0:
        dh = dh / temperature
    return lse - picked, dh, (jnp.log(total) - pz / total) if entropy else None


def online_head_rows(
    hidden: jax.Array,
    targets: jax.Array,
    embedding: jax.Array,
    chunk: int,
    softcap: float | None,
    block: int,
    temperature: float = 1.0,
    entropy: bool = False,
) -> tuple[jax.Array, jax.Array, jax.Array | None]:
    """``online_head`` over ``hidden`` [N, D], at most ``chunk`` rows at a time (chunks as even
    as N allows, the last padded): per row ``(-log p(target) [N], its d / d hidden [N, D] in
    hidden's dtype, entropy [N] or None)``."""
    n, dim = hidden.shape
    pieces = -(-n // chunk)
    chunk = -(-n // pieces)  # fewer than ``pieces`` padded rows
    rows = pieces * chunk
    h = jnp.pad(hidden, ((0, rows - n), (0, 0))).reshape(-1, chunk, dim)
    y = jnp.pad(targets, (0, rows - n)).reshape(-1, chunk)

    def one(_: None, x: tuple[jax.Array, jax.Array]) -> tuple[None, tuple[Any, ...]]:
        return None, online_head(*x, embedding, softcap, block, temperature, entropy)

    _, (nll, dnll, ent) = jax.lax.scan(one, None, (h, y))
    ent = None if ent is None else ent.reshape(-1)[:n]
    return nll.reshape(-1)[:n], dnll.reshape(rows, dim)[:n].astype(hidden.dtype), ent


def _frozen_head_forward(*args: Any) -> tuple[jax.Array, jax.Array]:
    """``(loss sum, d loss_sum / d hidden)``, from ``frozen_head_loss_sum``'s arguments."""
    hidden, embedding, targets, valid, chunk, softcap, block = args
    nll, dnll, _ = online_head_rows(hidden, targets, embedding, chunk, softcap, block)
    return jnp.sum(jnp.where(valid, nll, 0.0)), jnp.where(valid[:, None], dnll, 0)


@partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6))
def frozen_head_loss_sum(
    hidden: jax.Array,
    embedding: jax.Array,
    targets: jax.Array,
    valid: jax.Array,
    chunk: int,
    softcap: float | None,
    block: int,
) -> jax.Array:
    """``head_loss_sum`` for a head that gets no gradient (its cotangent is zero), its
    vocabulary ``block`` columns at a time (a divisor of the vocabulary)."""
    return _frozen_head_forward(hidden, embedding, targets, valid, chunk, softcap, block)[0]


def _frozen_fwd(*args: Any) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    """``frozen_head_loss_sum``'s forward (the same arguments), keeping d loss / d hidden."""
    total, jac = _frozen_head_forward(*args)
    return total, (jac, args[1])


def _frozen_bwd(
    chunk: int, softcap: float | None, block: int, res: tuple[jax.Array, jax.Array], ct: jax.Array
) -> tuple[Any, ...]:
    jac, embedding = res
    # the cotangent of ``hidden`` in its own dtype: the float32 loss scale times a bfloat16
    # d loss / d hidden would promote to float32 and break the bfloat16 model's backward pass
    return (ct * jac).astype(jac.dtype), jnp.zeros_like(embedding), None, None


frozen_head_loss_sum.defvjp(_frozen_fwd, _frozen_bwd)


def completion_loss_sum(
    model: Any, arrays: dict[str, jax.Array], chunk: int, head_trains: bool = True
) -> jax.Array:
    """Summed token loss over the completion tokens of one micro-batch (divide by its n_targets);
    ``head_trains=False`` when the LM head gets no gradient (``head_loss_sum``)."""
    h = hidden_states(
        model, arrays["input_ids"], arrays["position_ids"], arrays["segment_ids"], arrays.get("band_mask")
    )
    picked = h.reshape(-1, h.shape[-1])[arrays["target_index"]]
    return head_loss_sum(
        picked,
        head_weights(model),
        arrays["target_ids"],
        arrays["target_valid"],
        chunk,
        logit_softcap(model),
        head_trains,
    )


def device_arrays(
    batch: sft_data.Batch, chunk: int, width: int | None = None, span: int | None = None
) -> dict[str, np.ndarray]:
    """A numpy batch → fixed-shape arrays: rows padded to ``width``, target positions gathered.

    The target list is padded to a multiple of ``chunk`` (``target_valid`` marks the real
    ones), so a step compiles once per (width, target bucket). ``span``: no example is longer
    (``data.max_len``), so attention can stay within a band (``band_mask``, where it saves work).
    """
    n = batch.input_ids.shape[1]
    width = max(width or n, n)

    def pad(a: np.ndarray, value: int) -> np.ndarray:
        return np.pad(a, ((0, 0), (0, width - n)), constant_values=value)

    targets = pad(batch.targets, IGNORE).reshape(-1)
    index = np.flatnonzero(targets != IGNORE).astype(np.int32)
    slots = max(chunk, math.ceil(len(index) / chunk) * chunk)
    arrays = {
        "input_ids": pad(batch.input_ids, 0),
        "position_ids": pad(batch.position_ids, 0),
        "segment_ids": pad(batch.segment_ids, 0),
        "target_index": np.pad(index, (0, slots - len(index))),
        "target_ids": np.pad(targets[index], (0, slots - len(index))).astype(np.int32),
        "target_valid": np.arange(slots) < len(index),
    }
    band = band_mask(arrays["segment_ids"], span) if span else None
    return arrays if band is None else {**arrays, "band_mask": band}


@nnx.jit(static_argnames=("chunk",), graph_updates=False)
def eval_loss_sum(model: Any, arrays: dict[str, Any], chunk: int) -> jax.Array:
    """Summed completion loss of one batch (``device_arrays``' numpy arrays, traced inside);
    only the loss comes out of the compiled function (``optim.micro_grads`` says why)."""
    return completion_loss_sum(model, arrays, chunk)
