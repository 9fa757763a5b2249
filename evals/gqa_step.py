"""Attention for a decode step of a grouped-query model, without repeating keys and values.

In a decode step every row has one query token. transformers' ``sdpa`` attention, given an
attention mask (the decode loop's left padding always is one), first copies each key/value head
once per query head of its group (``repeat_kv``: 4 copies on Gemma 3 270M) and then attends one
query row per head. The same attention is the G query heads of a group as G query rows of its
one key/value head: the same mask for each (it depends on the row and the key position only),
keys and values read once, no copies. Measured on the real Gemma 3 270M (2 threads, AMD EPYC,
17 rows, 350 cached positions, profiled): attention 28.5 of a body step's 85 ms with
``repeat_kv``, 18.4 ms this way. Values differ from ``repeat_kv``'s in the last bits (about 5e-7).

While ``gqa_step_attention(model)`` is open, a model on transformers' ``sdpa`` attention runs
``step_attention`` for such steps instead: the model's implementation is switched to one
registered with transformers' ``AttentionInterface`` (``NAME``, with ``sdpa``'s masks);
anything but a plain grouped-query decode step (several query tokens, one query head per
key/value head, a mask with a head or query axis of its own, dropout) goes to the model's own
implementation unchanged.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from typing import Any

import torch

PREFIX = "gqa_step_"
# Only models on transformers' sdpa (eval decoding). The trainers' packed_sdpa (GRPO's policy) is
# sdpa on decode calls too, but there it gave little (the suite's GRPO step, the same tokens: 14.4
# -> 14.0 s, 2 pairs) and the last bits it moves change GRPO's samples: in the step after, one
# completion stopped early (344 of 384 tokens), against the suite's premise of equal work.
NAME = PREFIX + "sdpa"


def _applies(module: Any, query: torch.Tensor, mask: torch.Tensor | None, dropout: float) -> bool:
    groups = getattr(module, "num_key_value_groups", 1)
    flat_mask = mask is None or (mask.dim() == 4 and mask.shape[1] == 1 and mask.shape[2] == 1)
    return query.shape[2] == 1 and groups > 1 and flat_mask and dropout == 0.0


def step_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    mask: torch.Tensor | None,
    scaling: float | None,
) -> torch.Tensor:
    """One decode step's attention: ``query`` [B, H, 1, D], ``key``/``value`` [B, K, S, D] with
    H = K·G, ``mask`` [B, 1, 1, S] or None -> [B, 1, H, D] (transformers' output layout)."""
    b, h, _, d = query.shape
    rows = query.reshape(b, key.shape[1], h // key.shape[1], d)  # head k·G + g -> row g of head k
    out = torch.nn.functional.scaled_dot_product_attention(rows, key, value, attn_mask=mask, scale=scaling)
    return out.reshape(b, 1, h, d)


def over(original: Callable[..., Any]) -> Callable[..., tuple[torch.Tensor, None]]:
    """An attention function with transformers' signature: ``step_attention`` where it applies,
    else ``original``."""

    def attention(
        module: Any,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: torch.Tensor | None,
        dropout: float = 0.0,
        scaling: float | None = None,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, None]:
        if not _applies(module, query, attention_mask, dropout):
            return original(
                module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
            )
        return step_attention(query, key, value, attention_mask, scaling), None

    return attention


@functools.cache
def _register() -> None:
    """``over`` sdpa, with sdpa's masks, as ``NAME`` in transformers' registries (once a process)."""
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, AttentionInterface

    AttentionInterface.register(NAME, over(ALL_ATTENTION_FUNCTIONS["sdpa"]))
    AttentionMaskInterface.register(NAME, ALL_MASK_ATTENTION_FUNCTIONS["sdpa"])


@contextlib.contextmanager
def gqa_step_attention(model: Any) -> Iterator[bool]:
    """``model`` attends through ``over`` sdpa while the context is open, if it runs transformers'
    ``sdpa``; yields whether it does. Entered once a decode step: only the config changes."""
    config: Any = getattr(model, "config", None)
    if getattr(config, "_attn_implementation", None) != "sdpa":
        yield False
        return
    _register()
    config._attn_implementation = NAME
    try:
        yield True
    finally:
        config._attn_implementation = "sdpa"
