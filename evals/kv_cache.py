"""The KV cache of the torch decode loop (``evals.generate``): rows that leave and join a
running batch, and no copy of the whole cache per token.

transformers' ``DynamicCache`` concatenates every layer's keys and values with the new token's
at every step, copying the whole cache each time (a quarter of a batch-32 decode step of Gemma 3
270M on CPU). Here each layer keeps its keys and values in a buffer with room to grow: a step
writes one column and hands attention a view. Rows are right-aligned (every row's newest
position is the last column, shorter rows padded on the left, the padding masked), so rows
leave (``batch_select_indices``), columns no row uses any more are dropped from the left for
free (``fit``), and another batch's rows join (``join``) after both are padded to one length,
or take the places of rows that left without moving the others (``place``: only the newcomers'
keys and values are copied, where a join copies the whole cache).
A prompt prefix every row shares is cached once and copied into new rows (``repeat``); their
own tokens are appended after it and the prefix then moved right past each row's padding
(``move_prefix``), which restores the right alignment.

A sliding-window layer keeps every column but gives attention only the last ``window - 1``
cached ones plus the new token, and reports the mask sizes transformers'
``DynamicSlidingWindowLayer`` would, so masks and attention are those of the plain cache.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

ROOM = 64  # columns allocated beyond what is asked, so a buffer grows every ROOM tokens at most


class GrowingLayer(DynamicLayer):
    """Keys and values of one layer in ``[batch, heads, capacity, head_dim]`` buffers; the
    columns ``start:end`` hold the cache (``window``: the layer's sliding window, or None)."""

    def __init__(self, window: int | None) -> None:
        super().__init__()
        self.window = window
        self.is_sliding = window is not None
        self.sliding_window = window
        self.buf_k: torch.Tensor | None = None
        self.buf_v: torch.Tensor | None = None
        self.start = self.end = 0

    # -- what transformers calls -------------------------------------------------------------

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        if self.buf_k is None:
            self.dtype, self.device = key_states.dtype, key_states.device
            self.is_initialized = True
            self._allocate(key_states, 0)
        n = key_states.shape[-2]
        self._room(n)
        assert self.buf_k is not None and self.buf_v is not None
        self.buf_k[..., self.end : self.end + n, :] = key_states
        self.buf_v[..., self.end : self.end + n, :] = value_states
        lo = self.start if self.window is None else max(self.start, self.end - (self.window - 1))
        self.end += n
        return self.buf_k[..., lo : self.end, :], self.buf_v[..., lo : self.end, :]

    def get_seq_length(self) -> int:
        return self.end - self.start

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        length = self.get_seq_length()
        if self.window is not None and length >= self.window:
            return self.window - 1 + query_length, length - self.window + 1
        return length + query_length, 0

    def get_max_cache_shape(self) -> int:
        return -1 if self.window is None else self.window

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self.buf_k is not None and self.buf_v is not None:
            self.buf_k, self.buf_v = self.buf_k[indices], self.buf_v[indices]

    # -- what the decode loop calls ------------------------------------------------------------

    def fit(self, length: int) -> None:
        """Hold exactly ``length`` columns: drop the oldest ones, or pad zeros on the left."""
        have = self.get_seq_length()
        if length <= have:
            self.start = self.end - length
            return
        pad = length - have
        if self.start < pad:
            self._move(ROOM, pad + ROOM)
        assert self.buf_k is not None and self.buf_v is not None
        self.buf_k[..., self.start - pad : self.start, :] = 0
        self.buf_v[..., self.start - pad : self.start, :] = 0
        self.start -= pad

    def join(self, other: GrowingLayer) -> None:
        """Append ``other``'s rows (both already ``fit`` to the same length)."""
        assert self.buf_k is not None and self.buf_v is not None and other.buf_k is not None
        assert other.buf_v is not None
        length = self.get_seq_length()
        keys = [self.buf_k[..., self.start : self.end, :], other.buf_k[..., other.start : other.end, :]]
        values = [self.buf_v[..., self.start : self.end, :], other.buf_v[..., other.start : other.end, :]]
        k, v = torch.cat(keys), torch.cat(values)
        self.buf_k = k.new_empty((*k.shape[:2], length + ROOM, k.shape[-1]))
        self.buf_v = v.new_empty(self.buf_k.shape)
        self.buf_k[..., :length, :], self.buf_v[..., :length, :] = k, v
        self.start, self.end = 0, length

    def place(self, slots: torch.Tensor, other: GrowingLayer) -> None:
        """Overwrite the rows ``slots`` with ``other``'s rows (both already ``fit`` to the same length)."""
        assert self.buf_k is not None and self.buf_v is not None and other.buf_k is not None
        assert other.buf_v is not None
        self.buf_k[slots, :, self.start : self.end] = other.buf_k[:, :, other.start : other.end]
        self.buf_v[slots, :, self.start : self.end] = other.buf_v[:, :, other.start : other.end]

    def repeat(self, rows: int, room: int) -> GrowingLayer:
        """A new layer holding this one's single row ``rows`` times, ``room`` free columns after."""
        assert self.buf_k is not None and self.buf_v is not None and self.buf_k.shape[0] == 1
        layer = GrowingLayer(self.window)
        layer.dtype, layer.device, layer.is_initialized = self.dtype, self.device, True
        length = self.get_seq_length()
        shape = (rows, self.buf_k.shape[1], length + room, self.buf_k.shape[-1])
        layer.buf_k, layer.buf_v = self.buf_k.new_empty(shape), self.buf_v.new_empty(shape)
        layer.buf_k[..., :length, :] = self.buf_k[..., self.start : self.end, :]
        layer.buf_v[..., :length, :] = self.buf_v[..., self.start : self.end, :]
        layer.start, layer.end = 0, length
        return layer

    def move_prefix(self, prefix: int, gaps: torch.Tensor) -> None:
        """Row r holds ``[prefix columns | gaps[r] masked columns | its own]``: move its prefix
        right by ``gaps[r]``, so the masked columns come first (the loop's right alignment)."""
        assert self.buf_k is not None and self.buf_v is not None
        j = torch.arange(self.get_seq_length(), device=gaps.device)[None]
        g = gaps[:, None]
        src = torch.where(j < prefix + g, (j - g).clamp(min=0), j) + self.start  # [rows, columns]
        for buf in (self.buf_k, self.buf_v):
            index = src[:, None, :, None].expand(-1, buf.shape[1], -1, buf.shape[-1])
            buf[..., self.start : self.end, :] = buf.gather(2, index)

    # -- buffers -------------------------------------------------------------------------------

    def _allocate(self, like: torch.Tensor, columns: int) -> None:
        shape = (like.shape[0], like.shape[1], columns + ROOM, like.shape[-1])
        self.buf_k = like.new_empty(shape)
        self.buf_v = like.new_empty(shape)
        self.start = self.end = 0

    def _room(self, n: int) -> None:
        """At least ``n`` free columns after ``end``."""
        assert self.buf_k is not None
        if self.end + n > self.buf_k.shape[-2]:
            self._move(n + ROOM, 0)

    def _move(self, room_after: int, room_before: int) -> None:
        """Copy the cache into new buffers with these free columns after and before it."""
        assert self.buf_k is not None and self.buf_v is not None
        length = self.get_seq_length()
        old_k, old_v = self.buf_k[..., self.start : self.end, :], self.buf_v[..., self.start : self.end, :]
        shape = (*self.buf_k.shape[:2], room_before + length + room_after, self.buf_k.shape[-1])
        self.buf_k, self.buf_v = self.buf_k.new_empty(shape), self.buf_v.new_empty(shape)
        self.buf_k[..., room_before : room_before + length, :] = old_k
        self.buf_v[..., room_before : room_before + length, :] = old_v
        self.start, self.end = room_before, room_before + length


def growing_cache(config: Any) -> DynamicCache | None:
    """A ``DynamicCache`` for ``config`` whose layers are ``GrowingLayer``s, or None when the
    model's cache has layers other than transformers' plain and sliding-window dynamic ones."""
    cache = DynamicCache(config=config)
    kinds = (DynamicLayer, DynamicSlidingWindowLayer)
    if not cache.layers or any(type(layer) not in kinds for layer in cache.layers):
        return None
    windows = [
        getattr(layer, "sliding_window", None) if getattr(layer, "is_sliding", False) else None
        for layer in cache.layers
    ]
    cache.layers = [GrowingLayer(w) for w in windows]
    return cache


def is_growing(cache: Any) -> bool:
    """Whether every layer of ``cache`` is a ``GrowingLayer``."""
    layers: list[Any] = getattr(cache, "layers", None) or []
    return bool(layers) and all(isinstance(layer, GrowingLayer) for layer in layers)


def _layers(cache: DynamicCache) -> list[GrowingLayer]:
    layers = [layer for layer in cache.layers if isinstance(layer, GrowingLayer)]
    if len(layers) != len(cache.layers):
        raise TypeError("not a growing cache (evals.kv_cache.growing_cache)")
    return layers


def fit(cache: DynamicCache, length: int) -> None:
    """Every layer of a growing cache to ``length`` columns (see ``GrowingLayer.fit``)."""
    for layer in _layers(cache):
        layer.fit(length)


def join(cache: DynamicCache, other: DynamicCache) -> None:
    """Append ``other``'s rows to ``cache``, both fit to the longer length first."""
    length = max(cache.get_seq_length(), other.get_seq_length())
    fit(cache, length)
    fit(other, length)
    for mine, theirs in zip(_layers(cache), _layers(other), strict=True):
        mine.join(theirs)


def place(cache: DynamicCache, slots: torch.Tensor, other: DynamicCache) -> None:
    """``other``'s rows into the rows ``slots`` of ``cache`` (one slot per row of ``other``), both
    fit to the longer length first; the other rows of ``cache`` stay where they are."""
    length = max(cache.get_seq_length(), other.get_seq_length())
    fit(cache, length)
    fit(other, length)
    for mine, theirs in zip(_layers(cache), _layers(other), strict=True):
        mine.place(slots, theirs)


def window(cache: DynamicCache) -> int | None:
    """The smallest sliding window of a growing cache's layers (None: no sliding layer)."""
    windows = [layer.window for layer in _layers(cache) if layer.window is not None]
    return min(windows) if windows else None


def repeat(cache: DynamicCache, rows: int, room: int = ROOM) -> DynamicCache:
    """A growing cache whose ``rows`` rows each hold the one row of ``cache`` (a shared prompt
    prefix), with ``room`` free columns after it."""
    out = copy.copy(cache)
    out.layers = [layer.repeat(rows, room) for layer in _layers(cache)]
    return out


def move_prefix(cache: DynamicCache, prefix: int, gaps: torch.Tensor) -> None:
    """``GrowingLayer.move_prefix`` on every layer."""
    for layer in _layers(cache):
        layer.move_prefix(prefix, gaps)
