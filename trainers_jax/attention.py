"""Banded attention for packed SFT rows on Tunix's Gemma 3.

A packed row of ``T`` tokens holds whole examples of at most ``span`` tokens each
(``data.max_len``: longer ones are dropped or refused when the data loads), so no query attends
further back than ``span - 1`` positions. Tunix's attention scores every query against all
``T`` keys and masks the [T, T] matrix; the torch trainer attends example by example. Here the
row is cut into blocks of ``BLOCK`` queries, and each block is scored only against its own
block and the ``ceil((span - 1) / BLOCK)`` blocks before it: at ``T = 1024``, ``span = 256``
and 64-token blocks, 320 keys per query instead of 1,024. The mask of those windows
(``band_mask``: same example, causal, real tokens) is built in numpy from the segment ids,
where a too-long example is refused rather than silently cut off.

``BandedGemma3Attention`` is Tunix's ``Attention`` with that path; ``load_gemma3`` gives every
Gemma 3 model it (``enable``). It takes the path only when called with a band mask (4-D) and
no cache; the sampler, the KV cache and every 3-D mask run Tunix's own code unchanged.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from tunix.models.gemma3 import model as gemma3
from tunix.utils import sharding_utils

BLOCK = 64  # queries per block (and keys per window block); must divide the row width


def window_blocks(width: int, span: int, block: int = BLOCK) -> int | None:
    """Key blocks in each query block's window (its own and the ones before it), or ``None``
    when a band would not save anything (``block`` does not divide ``width``, or the window
    is the whole row)."""
    if width % block:
        return None
    blocks = -(-(span - 1) // block) + 1
    return blocks if blocks * block < width else None


def positions(width: int, n: int, block: int) -> tuple[np.ndarray, np.ndarray]:
    """Raw positions of the queries ``[width / block, block]`` and of each query block's window
    of ``n`` key blocks ``[width / block, n * block]`` (negative before the row's start)."""
    blocks = width // block
    keys = np.arange(blocks)[:, None] * block + np.arange(n * block)[None, :] - (n - 1) * block
    return np.arange(width).reshape(blocks, block), keys


def band_mask(segment_ids: np.ndarray, span: int, block: int = BLOCK) -> np.ndarray | None:
    """``[B, T / block, block, W]`` bool: query ``block * i + r`` may attend key ``w`` of its
    window, the key at position ``block * (i + 1 - W / block) + w`` (same segment, not padding,
    not after the query). ``None`` when ``window_blocks`` says a band saves nothing.

    Raises ``ValueError`` if a segment is longer than ``span`` (it would lose keys)."""
    rows, width = segment_ids.shape
    n = window_blocks(width, span, block)
    if n is None:
        return None
    for row in segment_ids:
        longest = np.bincount(row[row > 0]).max(initial=0)
        if longest > span:
            raise ValueError(f"a packed example of {longest} tokens is longer than the band span {span}")
    query, key = positions(width, n, block)
    seg_k = np.pad(segment_ids, ((0, 0), ((n - 1) * block, 0)))[:, key + (n - 1) * block]  # [B, blocks, W]
    seg_q = segment_ids.reshape(rows, width // block, block)
    causal = key[:, None, :] <= query[:, :, None]  # [blocks, block, W]
    return (seg_q[..., None] == seg_k[:, :, None, :]) & (seg_k[:, :, None, :] != 0) & causal[None]


def windows(x: jax.Array, n: int, block: int) -> jax.Array:
    """``[B, T, ...]`` → ``[B, T / block, n * block, ...]``: each query block's ``n`` key blocks,
    the earliest first (zeros before the row's start)."""
    rows, width = x.shape[:2]
    padded = jnp.pad(x, ((0, 0), ((n - 1) * block, 0)) + ((0, 0),) * (x.ndim - 2))
    parts = [padded[:, j * block : j * block + width].reshape(rows, width // block, block, *x.shape[2:])
             for j in range(n)]  # fmt: skip
    return jnp.concatenate(parts, axis=2)


def banded_attention(
    query: jax.Array, key: jax.Array, value: jax.Array, mask: jax.Array, sliding_window: int | None = None
) -> jax.Array:
    """Softmax attention of ``query`` [B, T, N, H] (already scaled) over ``key``/``value``
    [B, T, K, H] (K divides N: grouped-query heads) inside each query block's window of
    ``mask`` (``band_mask``), also within ``sliding_window`` positions when given; [B, T, N, H]."""
    rows, width, heads, dim = query.shape
    kv_heads = key.shape[2]
    group = heads // kv_heads
    _, blocks, block, span = mask.shape
    n = span // block
    # each query block's (query, head) pairs as the rows of one product per key head: with one
    # key head (Gemma 3 270M, 1B) every transpose here is a reshape of the same memory; scoring
    # [block, K, G] queries as separate axes ran the layer's attention about 7% slower on a CPU
    q = query.reshape(rows, blocks, block, kv_heads, group, dim).transpose(0, 1, 3, 2, 4, 5)
    q = q.reshape(rows, blocks, kv_heads, block * group, dim)
    k, v = (windows(x, n, block).transpose(0, 1, 3, 2, 4) for x in (key, value))  # [B, blocks, K, W, H]
    logits = jnp.einsum("BnKrH,BnKsH->BnKrs", q, k).reshape(rows, blocks, kv_heads, block, group, span)
    if sliding_window is not None:  # Tunix's: |query - key| < window, on raw indices
        qpos, kpos = positions(width, n, block)
        mask = mask & jnp.asarray(qpos[:, :, None] - kpos[:, None, :] < sliding_window)[None]
    logits = jnp.where(mask[:, :, None, :, None, :], logits, gemma3.K_MASK)
    probs = jax.nn.softmax(logits, axis=-1).astype(value.dtype)
    probs = probs.reshape(rows, blocks, kv_heads, block * group, span)
    encoded = jnp.einsum("BnKrs,BnKsH->BnKrH", probs, v).reshape(rows, blocks, kv_heads, block, group, dim)
    return encoded.transpose(0, 1, 3, 2, 4, 5).reshape(rows, width, heads, dim)


class BandedGemma3Attention(gemma3.Attention):
    """Tunix's Gemma 3 attention; with a band mask and no cache, ``banded_attention``."""

    def block(
        self, x: jax.Array, segment_pos: jax.Array, cache: Any, attn_mask: jax.Array
    ) -> tuple[Any, jax.Array]:
        if cache is not None or attn_mask.ndim != 4:
            return super().block(x, segment_pos, cache, attn_mask)
        # the projections, norms and RoPE exactly as Tunix's ``Attention.block`` forms them
        if self.use_qkv_einsum:
            query, key, value = self.qkv_einsum(x)
        else:
            query = self.q_einsum(x)
            key, value = self.kv_einsum(x)
        query, key, value = (sharding_utils.shard(a, self.shd_config.act_btnh) for a in (query, key, value))
        rope = {"head_dim": self.head_dim, "base_frequency": self.rope_base_frequency,
                "scale_factor": self.rope_scale_factor}  # fmt: skip
        query = gemma3.apply_rope(self._query_norm(query), segment_pos, **rope) * self.query_pre_attn_scalar
        key = gemma3.apply_rope(self._key_norm(key), segment_pos, **rope)
        local = self.attn_type == gemma3.AttentionType.LOCAL_SLIDING
        encoded = banded_attention(query, key, value, attn_mask, self.sliding_window_size if local else None)
        return None, sharding_utils.shard(self.attn_vec_einsum(encoded), self.shd_config.act_btd)


def enable(model: Any) -> Any:
    """Give every Tunix Gemma 3 attention module of ``model`` the banded path (in place)."""
    for _, module in model.iter_modules():
        if type(module) is gemma3.Attention:
            object.__setattr__(module, "__class__", BandedGemma3Attention)
    return model


def takes_band_mask(model: Any) -> bool:
    """Whether ``model``'s attention takes ``band_mask``'s masks (``enable``)."""
    return any(isinstance(m, BandedGemma3Attention) for _, m in model.iter_modules())
