"""``trainers_jax.policy_loss``: the GRPO loss with the LM head in chunks on the completion
positions only gives Tunix's loss, metrics and LoRA gradients, on Gemma 3, on Gemma 2 (soft-capped
final logits) and on Llama, with left-padded prompts, right-padded completions, clipped ratios,
a KL term and a sampling temperature, and its compiled step does none of the head's work on
the prompt positions; its per-token log-probs, entropies and hidden-state gradients are the
dense ones, over several chunks and vocabulary blocks; and the update cut to a step's own widths
(``trainers_jax.grpo.trim_padding``) gives the same loss and gradients."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest


def example(vocab: int, pad: int, rng: np.random.Generator) -> object:
    """4 completions of 5 tokens after prompts of 7 (two left-padded, two with right padding)."""
    import jax.numpy as jnp
    from tunix.rl.common import TrainExample

    prompts = rng.integers(3, vocab, (4, 7))
    prompts[1, :3] = pad
    prompts[3, :1] = pad
    completions = rng.integers(3, vocab, (4, 5))
    completions[2, 3:] = pad
    completions[3, 1:] = pad
    return TrainExample(
        prompt_ids=jnp.asarray(prompts),
        prompt_mask=jnp.asarray(prompts != pad),
        completion_ids=jnp.asarray(completions),
        completion_mask=jnp.asarray(completions != pad),
        advantages=jnp.asarray([1.0, -0.5, 0.8, -1.2]),
        ref_per_token_logps=jnp.asarray(rng.normal(-6.0, 0.5, (4, 5)).astype(np.float32)),
        old_per_token_logps=None,  # the test sets them from the policy's own
    )


def lora_policy(path: Path) -> tuple[object, object, object]:
    """``(model, tokenizer, mesh)``: the model at ``path`` with rank-4 LoRA adapters whose every
    weight (B included, which starts at zero) has a random value."""
    import jax.numpy as jnp
    from flax import nnx

    from common.sft_config import LoraConfig
    from trainers_jax.lora import apply_lora
    from trainers_jax.model import load_model, make_mesh

    mesh = make_mesh(1, 1)
    base, tok = load_model(path, "float32", mesh)
    with mesh:
        model = apply_lora(base, LoraConfig(rank=4, alpha=8, dropout=0.0), None, seed=0)
    rng = np.random.default_rng(1)
    for _, p in nnx.iter_graph(model):
        if isinstance(p, nnx.LoRAParam):
            p.value = jnp.asarray(rng.normal(0, 0.2, p.value.shape).astype(np.float32))
    return model, tok, mesh


@pytest.mark.parametrize("scale", [1.0, 40.0])
@pytest.mark.parametrize("block", [None, 10])
@pytest.mark.parametrize(("softcap", "temperature"), [(None, 1.0), (None, 0.7), (3.0, 0.7)])
def test_token_logps_match_the_dense_head(softcap, temperature, block, scale) -> None:
    """``token_logps`` (19 rows, asked for chunks of 8: three of 7, the last with 2 padded rows;
    the vocabulary of 50 in one block or five) gives the log-probs and entropies of the dense tempered softmax, the gradient of a
    weighted sum of log-probs to the hidden states, and none to the head. At ``scale`` 40 the
    logits reach the hundreds without a cap, so the online softmax must rescale per block."""
    import jax
    import jax.numpy as jnp

    from trainers_jax.model import head_logits
    from trainers_jax.policy_loss import token_logps

    rng = np.random.default_rng(0)
    hidden = jnp.asarray(rng.normal(size=(19, 16)) * scale, jnp.float32)
    embedding = jnp.asarray(rng.normal(size=(50, 16)), jnp.float32)
    targets = jnp.asarray(rng.integers(0, 50, 19), jnp.int32)
    weights = jnp.asarray(rng.normal(size=19), jnp.float32)

    def dense(h, e):
        logp = jax.nn.log_softmax(head_logits(h, e, softcap) / temperature)
        ent = -jnp.sum(jnp.exp(logp) * logp, axis=-1)
        return jnp.take_along_axis(logp, targets[:, None], axis=-1)[:, 0], ent

    def ours(h, e):
        return token_logps(h, e, targets, 8, temperature, softcap, block or 50)

    for fn in (dense, ours):
        logps, ent = fn(hidden, embedding)
        assert logps.shape == ent.shape == (19,) and np.isfinite(np.asarray(logps)).all()
    (want, want_ent), (got, got_ent) = dense(hidden, embedding), ours(hidden, embedding)
    # a few float32 ulps of the largest logit: the two products round their sums differently
    ulps = (
        4
        * np.finfo(np.float32).eps
        * float(jnp.abs(head_logits(hidden, embedding, softcap)).max())
        / temperature
    )
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=max(ulps, 1e-6))
    np.testing.assert_allclose(np.asarray(got_ent), np.asarray(want_ent), rtol=1e-4, atol=max(ulps, 1e-6))

    def objective(fn):
        return lambda h, e: jnp.sum(weights * fn(h, e)[0])

    gh_want = jax.grad(objective(dense))(hidden, embedding)
    gh, ge = jax.grad(objective(ours), argnums=(0, 1))(hidden, embedding)
    np.testing.assert_allclose(np.asarray(gh), np.asarray(gh_want), rtol=1e-4, atol=1e-5)
    assert float(jnp.abs(gh_want).max()) > 0 and float(jnp.abs(ge).max()) == 0.0


@pytest.mark.parametrize(
    ("family", "chunk"), [("tiny_gemma3", 256), ("tiny_gemma2", 256), ("tiny_llama", 256), ("tiny_gemma2", 7)]
)
def test_chunked_head_loss_matches_tunix_grpo_loss(
    family: str, chunk: int, request: pytest.FixtureRequest
) -> None:
    """Against Tunix's ``grpo_loss_fn`` on the same policy and samples; ``chunk`` 7 splits the 20
    completion rows into 3 chunks of 7 (one padded row)."""
    import dataclasses

    import jax
    import jax.numpy as jnp
    from flax import nnx
    from tunix.rl import algo_core, common
    from tunix.rl.grpo import grpo_learner

    from trainers_jax.model import head_weights
    from trainers_jax.policy_loss import chunked_head_grpo_loss

    model, tok, mesh = lora_policy(request.getfixturevalue(family))
    rng = np.random.default_rng(0)
    pad = tok.pad_token_id
    ex = example(head_weights(model).shape[0], pad, rng)
    old = rng.normal(0.0, 0.3, (4, 5)).astype(np.float32)  # off-policy shifts: some ratios get clipped
    algo = grpo_learner.GRPOConfig(
        num_generations=2, beta=0.04, epsilon=0.2, loss_agg_mode="token-mean", kl_loss_mode="low_var_kl"
    )
    algo.epsilon_high = 0.28
    algo.temperature = 0.7
    algo.loss_chunk_tokens = chunk

    def loss(fn: object, m: object, e: object) -> tuple[jax.Array, dict]:
        return fn(m, e, algo, pad, tok.eos_token_id)

    grad = nnx.value_and_grad(loss, argnums=nnx.DiffState(1, nnx.LoRAParam), has_aux=True)
    graphdef, state = nnx.split(model)
    with mesh:
        # the policy's own log-probs shifted by ``old``: the importance ratios are exp(-old)
        logps = jax.jit(
            lambda s, p, c: common.compute_per_token_logps(
                graphdef, s, p, c, pad, tok.eos_token_id, temperature=0.7
            )
        )
        ex = dataclasses.replace(ex, old_per_token_logps=logps(state, ex.prompt_ids, ex.completion_ids) + old)
        # each loss and its gradients compiled whole (one program, not op by op): run for the
        # values, and read for the flops
        theirs_step, our_step = (
            jax.jit(lambda s, e, fn=fn: grad(fn, nnx.merge(graphdef, s), e)).lower(state, ex).compile()
            for fn in (algo_core.grpo_loss_fn, chunked_head_grpo_loss)
        )
        (theirs, their_aux), their_grads = theirs_step(state, ex)
        (ours, our_aux), our_grads = our_step(state, ex)

    def flops(step: object) -> float:
        cost = step.cost_analysis()
        return float((cost[0] if isinstance(cost, list) else cost)["flops"])

    their_flops, our_flops = flops(theirs_step), flops(our_step)
    ratios = np.exp(-old)[np.asarray(ex.completion_mask)]
    assert ((ratios < 0.8) | (ratios > 1.28)).any() and ((ratios > 0.8) & (ratios < 1.28)).any()
    # the head's two products (logits, and the hidden states' gradient: the head is frozen) on
    # the 4 x 6 prompt positions the loss never reads, 2 V D flops per row each: gone, less the
    # padded rows of the last chunk
    vocab, dim = head_weights(model).shape
    pieces = math.ceil(20 / chunk)
    padded = pieces * math.ceil(20 / pieces) - 20  # the chunks are as even as 20 rows allow
    assert their_flops - our_flops >= (4 * 6 - padded) * 2 * 2 * vocab * dim
    np.testing.assert_allclose(float(ours), float(theirs), rtol=1e-5)
    assert set(our_aux) == set(their_aux)
    for key in their_aux:
        np.testing.assert_allclose(np.asarray(our_aux[key]), np.asarray(their_aux[key]), rtol=1e-4, atol=1e-6)
    leaves = jax.tree.leaves(their_grads)
    assert leaves and all(float(jnp.abs(g).max()) > 0 for g in leaves)
    for a, b in zip(jax.tree.leaves(our_grads), leaves, strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)


def test_what_only_tunix_implements_goes_to_its_loss(monkeypatch: pytest.MonkeyPatch) -> None:
    """Packed sequences, sampler importance weights, GSPO and dual-clip PPO (none of which our
    trainer builds) are computed by Tunix's own ``grpo_loss_fn``, each on its own."""
    from types import SimpleNamespace

    from tunix.rl import algo_core

    from trainers_jax import policy_loss

    calls: list[tuple] = []
    monkeypatch.setattr(algo_core, "grpo_loss_fn", lambda *a, **k: calls.append(a) or ("tunix", {}))
    example = dict(segment_ids=None, sampler_is_weights=None)
    algo = dict(loss_algo="grpo", epsilon_c=None)
    assert not policy_loss._tunix_only(SimpleNamespace(**example), SimpleNamespace(**algo))
    cases = [
        ({"segment_ids": np.ones((2, 3))}, {}),
        ({"sampler_is_weights": np.ones((2, 3))}, {}),
        ({}, {"loss_algo": "gspo-token"}),
        ({}, {"epsilon_c": 3.0}),
    ]
    for ex_change, algo_change in cases:
        ex, cfg = SimpleNamespace(**(example | ex_change)), SimpleNamespace(**(algo | algo_change))
        assert policy_loss.chunked_head_grpo_loss("model", ex, cfg, 0, 1) == ("tunix", {})
        assert calls[-1] == ("model", ex, cfg, 0, 1)
    assert len(calls) == len(cases)


def test_trimmed_padding_gives_the_same_loss_and_gradients(tiny_gemma3: Path) -> None:
    """``trainers_jax.grpo.trim_padding``: a step cut to its own widths (pad_multiple 2) gives
    the loss, metrics and LoRA gradients of the padded one, for the token-mean and the
    sequence-mean losses; ``dr_grpo``'s token-scale loss divides by the completion width, so it
    changes when the completions are cut, and not when only the prompts are."""
    import jax
    import jax.numpy as jnp
    from flax import nnx
    from tunix.rl.common import TrainExample
    from tunix.rl.grpo import grpo_learner

    from trainers_jax.grpo import trim_padding
    from trainers_jax.model import head_weights
    from trainers_jax.policy_loss import chunked_head_grpo_loss

    model, tok, mesh = lora_policy(tiny_gemma3)
    pad, rng = tok.pad_token_id, np.random.default_rng(2)
    vocab = head_weights(model).shape[0]
    prompts = rng.integers(3, vocab, (4, 12))
    for row, gap in enumerate([4, 5, 7, 4]):  # the run's longest prompt is not in this step: 8 of 12 used
        prompts[row, :gap] = pad
    completions = rng.integers(3, vocab, (4, 9))
    for row, length in enumerate([3, 5, 1, 2]):  # the step's longest completion: 5 of 9
        completions[row, length:] = pad
    padded = TrainExample(
        prompt_ids=jnp.asarray(prompts), prompt_mask=jnp.asarray(prompts != pad),
        completion_ids=jnp.asarray(completions), completion_mask=jnp.asarray(completions != pad),
        advantages=jnp.asarray([1.0, -0.5, 0.8, -1.2]),
        ref_per_token_logps=jnp.asarray(rng.normal(-6.0, 0.5, (4, 9)).astype(np.float32)),
        old_per_token_logps=jnp.asarray(rng.normal(-6.0, 0.5, (4, 9)).astype(np.float32)),
    )  # fmt: skip
    cut = trim_padding(padded, 2)
    assert (cut.prompt_ids.shape, cut.completion_ids.shape, cut.old_per_token_logps.shape) == (
        (4, 8),
        (4, 6),
        (4, 6),
    )
    assert trim_padding(padded, 0) is padded and trim_padding(padded, 64).prompt_ids.shape == (4, 12)
    prompts_only = trim_padding(padded, 2, completions=False)
    assert (prompts_only.prompt_ids.shape, prompts_only.completion_ids.shape) == ((4, 8), (4, 9))

    def loss_and_grads(example: object, mode: str) -> tuple[float, dict, list]:
        algo = grpo_learner.GRPOConfig(
            num_generations=2, beta=0.04, epsilon=0.2, loss_agg_mode=mode, kl_loss_mode="low_var_kl"
        )
        algo.epsilon_high, algo.temperature = 0.28, 1.0

        def loss(m: object, ex: object) -> tuple[jax.Array, dict]:
            return chunked_head_grpo_loss(m, ex, algo, pad, tok.eos_token_id)

        with mesh:
            (value, aux), grads = nnx.jit(
                nnx.value_and_grad(loss, argnums=nnx.DiffState(0, nnx.LoRAParam), has_aux=True)
            )(model, example)
        return float(value), aux, jax.tree.leaves(grads)

    for mode in ("token-mean", "sequence-mean-token-mean"):
        (a, a_aux, a_grads), (b, b_aux, b_grads) = (loss_and_grads(e, mode) for e in (padded, cut))
        np.testing.assert_allclose(b, a, rtol=1e-5)
        for key in a_aux:
            np.testing.assert_allclose(np.asarray(b_aux[key]), np.asarray(a_aux[key]), rtol=1e-4, atol=1e-6)
        assert a_grads and all(float(jnp.abs(g).max()) > 0 for g in a_grads)
        for g, h in zip(b_grads, a_grads, strict=True):
            np.testing.assert_allclose(np.asarray(g), np.asarray(h), rtol=1e-4, atol=1e-6)
    scale = "sequence-mean-token-scale"
    full, prompts_cut, both_cut = (loss_and_grads(e, scale)[0] for e in (padded, prompts_only, cut))
    np.testing.assert_allclose(prompts_cut, full, rtol=1e-5)
    np.testing.assert_allclose(both_cut, full * 9 / 6, rtol=1e-5)  # the sum over 6 columns instead of 9
