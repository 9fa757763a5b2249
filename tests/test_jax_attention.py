"""The banded attention of packed rows on Gemma 3 (trainers_jax/attention.py): its mask holds
exactly the dense mask's pairs, its attention equals the dense one, and the SFT loss and LoRA
gradients of a tiny Gemma 3 are the same through it as through Tunix's dense attention."""

from __future__ import annotations

import numpy as np
import pytest

from common import sft_data
from tests.sft_data import arithmetic_records, write_records


def dense_mask(segment_ids: np.ndarray) -> np.ndarray:
    """[B, T, T]: same segment, not padding, causal (``losses.packed_attention_mask`` in numpy)."""
    n = segment_ids.shape[1]
    same = segment_ids[:, :, None] == segment_ids[:, None, :]
    return same & (segment_ids[:, None, :] != 0) & np.tril(np.ones((n, n), bool))[None]


def test_window_blocks_counts_the_blocks_a_query_can_reach():
    from trainers_jax.attention import window_blocks

    assert window_blocks(1024, 256, 64) == 5  # 255 keys back: 4 blocks before its own
    assert window_blocks(1024, 257, 64) == 5  # 256 back from a block's first query: still 4 before
    assert window_blocks(1024, 258, 64) == 6
    assert window_blocks(1024, 65, 64) == 2
    assert window_blocks(1024, 1, 64) == 1  # one token per example: its own block
    assert window_blocks(1000, 256, 64) is None  # 64 does not divide the row
    assert window_blocks(256, 256, 64) is None  # the window would be the whole row
    assert window_blocks(320, 256, 64) is None


def test_band_mask_holds_every_pair_of_the_dense_mask_and_no_other():
    from trainers_jax.attention import band_mask

    # width 16, blocks of 4, examples of at most 6 tokens: windows of 3 blocks (12 keys)
    segments = np.array([[1, 1, 1, 2, 2, 2, 2, 2, 2, 3, 3, 4, 4, 4, 0, 0],
                         [1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3]])  # fmt: skip
    band = band_mask(segments, span=6, block=4)
    assert band.shape == (2, 4, 4, 12)
    dense = dense_mask(segments)
    seen = np.zeros_like(dense)
    for b, i, r, w in zip(*np.nonzero(band), strict=True):
        q, k = 4 * i + r, 4 * (i + 1 - 3) + w
        assert dense[b, q, k], (b, q, k)
        seen[b, q, k] = True
    np.testing.assert_array_equal(seen, dense)  # nothing of the dense mask falls outside the band
    # the query at 8 (segment 2, which starts at 3) reaches back to key 3: window of block 2 starts at key 0
    assert band[0, 2, 0, 3] and not band[0, 2, 0, 2]


def test_band_mask_refuses_an_example_longer_than_its_span():
    from trainers_jax.attention import band_mask

    segments = np.array([[1] * 7 + [2] * 9])
    with pytest.raises(ValueError, match="9 tokens is longer than the band span 8"):
        band_mask(segments, span=8, block=4)
    assert band_mask(segments, span=9, block=4) is not None


@pytest.mark.parametrize("window", [None, 5])
def test_banded_attention_equals_dense_attention_on_every_real_query(window):
    """Grouped-query heads (4 query heads on 2 key/value heads), and a sliding window shorter
    than the examples, as Gemma 3's local layers have."""
    import jax
    import jax.numpy as jnp

    from trainers_jax.attention import band_mask, banded_attention

    rng = np.random.default_rng(0)
    segments = np.repeat(np.array([[1, 2, 3, 4, 0], [1, 2, 3, 4, 5]]), [7, 8, 3, 10, 4], axis=1)
    q, k, v = (jnp.asarray(rng.normal(size=(2, 32, n, 8)), jnp.float32) for n in (4, 2, 2))
    band = band_mask(segments, span=10, block=4)
    assert band.shape[-1] == 16  # 4 blocks of 4: half of the dense 32 keys
    out = banded_attention(q, k, v, jnp.asarray(band), window)

    mask = dense_mask(segments)
    if window is not None:
        idx = np.arange(32)
        mask &= (idx[:, None] - idx[None, :] < window)[None]
    logits = jnp.einsum("btkgh,bskh->bkgts", q.reshape(2, 32, 2, 2, 8), k)
    probs = jax.nn.softmax(jnp.where(mask[:, None, None], logits, -1e30), axis=-1)
    ref = jnp.einsum("bkgts,bskh->btkgh", probs, v).reshape(2, 32, 4, 8)
    real = segments > 0
    np.testing.assert_allclose(np.asarray(out)[real], np.asarray(ref)[real], rtol=1e-5, atol=1e-6)


def test_a_tiny_gemma3_has_the_same_loss_and_lora_gradients_with_the_band(tiny_gemma3, tmp_path):
    """Rows of 1,024 tokens packed with examples of up to 320 tokens: the band (blocks of 64: 384
    keys a query) against Tunix's dense attention over the row, B random so every adapter is in
    play; a band that lets each query see only itself changes the loss (the band is what ran)."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from common.prompts import load_tokenizer
    from common.sft_config import DataConfig
    from trainers_jax.attention import takes_band_mask
    from trainers_jax.config import load_sft_config
    from trainers_jax.lora import build_model, trainable_filter
    from trainers_jax.losses import device_arrays
    from trainers_jax.model import make_mesh
    from trainers_jax.optim import micro_grads

    path = write_records(tmp_path / "train.jsonl", arithmetic_records(12))
    data = DataConfig(max_len=320, pack_tokens=1024, on_overflow="drop")
    examples, _, _ = sft_data.tokenize_records(path, load_tokenizer(tiny_gemma3), data)
    row = sft_data.pack_rows([len(e) for e in examples], list(range(len(examples))), 1024)[0]
    assert len(row) >= 3
    batch = sft_data.collate(examples, [row], 0)
    cfg = load_sft_config(None, [f"model.path={tiny_gemma3}", "lora.rank=4", "train.loss_chunk_tokens=64"])
    model, _ = build_model(cfg, make_mesh(1, 1))
    assert takes_band_mask(model)
    lora = nnx.state(model, nnx.LoRAParam)
    nnx.update(model, jax.tree.map(lambda x: x + 0.1 * jax.random.normal(jax.random.key(1), x.shape), lora))
    wrt = trainable_filter(cfg.train, model.config.num_layers)

    dense = device_arrays(batch, 64, 1024)
    banded = device_arrays(batch, 64, 1024, span=320)
    assert "band_mask" not in dense and banded["band_mask"].shape == (1, 16, 64, 384)
    loss_d, grads_d = micro_grads(model, dense, 64, wrt)
    loss_b, grads_b = micro_grads(model, banded, 64, wrt)
    assert abs(float(loss_b) - float(loss_d)) <= 1e-5 * abs(float(loss_d))
    for gd, gb in zip(jax.tree.leaves(grads_d), jax.tree.leaves(grads_b), strict=True):
        np.testing.assert_allclose(
            np.asarray(gb), np.asarray(gd), rtol=1e-4, atol=1e-6 * float(jnp.abs(gd).max())
        )

    itself = np.arange(384)[None, :] == 320 + np.arange(64)[:, None]  # a query's own key in its window
    cut = dict(banded, band_mask=banded["band_mask"] & itself)
    assert abs(float(micro_grads(model, cut, 64, wrt)[0]) - float(loss_d)) > 1e-3 * abs(float(loss_d))
