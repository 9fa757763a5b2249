"""``trainers_jax.sampling``: one prefill per run of equal prompts, and ``draw``.

``draw`` is checked against the softmax it samples from (frequencies over 200,000 draws,
entries of probability 0 never drawn, a vocabulary that is not a multiple of the block). The
sampler is checked on the three families against itself with the group turned off: the same
tokens, from a prefill whose compiled code does a third of the work for groups of 3. Settings
that are Tunix's (top-p below 1) draw what Tunix's sampler draws. The Gemma 3 decode step on
prepared weights (``trainers_jax.decode_step``) gives Tunix's greedy tokens and logits, with
every LoRA weight random and a global layer beside sliding-window ones.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

FAMILIES = ["tiny_gemma3", "tiny_gemma2", "tiny_llama"]
PROMPTS = ["What is 2 + 3?"] * 3 + ["Add seven and eleven, then halve it."] * 3


@pytest.mark.parametrize(
    ("prompts", "group"),
    [
        (["a", "a", "b", "b"], 2),
        (["a", "a", "a", "a"], 4),
        (["a", "b", "a"], 1),
        (["a", "a", "b"], 1),
        (["a"], 1),
        ([], 1),
    ],
)
def test_prompt_group_is_the_common_run_length(prompts: list[str], group: int) -> None:
    from trainers_jax.sampling import prompt_group

    assert prompt_group(prompts) == group


def test_draw_samples_the_softmax() -> None:
    import jax
    import jax.numpy as jnp

    from trainers_jax.sampling import BLOCK, draw

    vocab = 2 * BLOCK + 100  # the last block padded
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 2, vocab).astype(np.float32)
    logits[:4] += 6.0  # a few likely entries in the first block
    logits[-3:] += 7.0  # and in the padded last block
    logits[rng.choice(vocab, 300, replace=False)] = -np.inf
    logits[vocab // 2] = -np.inf  # one likely-looking neighbour region cut out
    p = np.exp(logits - logits.max())
    p /= p.sum()
    rows, rounds = 20_000, 10
    batch = jnp.broadcast_to(jnp.asarray(logits), (rows, vocab))
    sample = jax.jit(draw)
    counts = np.zeros(vocab)
    for r in range(rounds):
        counts += np.bincount(np.asarray(sample(jax.random.key(r), batch)), minlength=vocab)
    n = rows * rounds
    assert counts.sum() == n and counts[p == 0].sum() == 0
    sigma = np.sqrt(p * (1 - p) / n)
    assert np.all(np.abs(counts / n - p) <= 5 * sigma + 1e-6)
    top = np.argsort(-p)[:8]
    np.testing.assert_allclose(counts[top] / n, p[top], rtol=0.05)


def _sample(sampler: object, prompts: list[str], **kwargs: object) -> list[list[int]]:
    out = sampler(prompts, max_generation_steps=12, max_prompt_length=32, echo=False, seed=3, **kwargs)  # type: ignore[operator]
    return [list(map(int, t)) for t in out.tokens]


def _sampler(path: Path) -> tuple[object, object]:
    from tunix.generate import sampler as tunix_sampler

    from common.sft_config import LoraConfig
    from trainers_jax.lora import apply_lora
    from trainers_jax.model import load_model
    from trainers_jax.sampling import Sampler

    base, tok = load_model(path)
    model = apply_lora(base, LoraConfig(rank=4, alpha=8, dropout=0.0), None, seed=0)
    cfg = model.config
    cache = tunix_sampler.CacheConfig(128, cfg.num_layers, cfg.num_kv_heads, cfg.head_dim)
    return Sampler(model, tok, cache), tunix_sampler.Sampler(model, tok, cache)


@pytest.mark.parametrize("family", FAMILIES)
def test_one_prefill_per_prompt_samples_the_same_tokens(
    family: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    from trainers_jax import sampling

    ours, _ = _sampler(request.getfixturevalue(family))
    shared = _sample(ours, PROMPTS, temperature=1.0, top_p=1.0)

    prefills: list[float] = []
    prefill = ours._compiled_prefill_fn  # type: ignore[attr-defined]

    def counted(params: object, state: object, *args: object, **kwargs: object) -> object:
        cost = prefill.lower(params, state, *args, **kwargs).compile().cost_analysis()
        prefills.append(float((cost[0] if isinstance(cost, list) else cost)["flops"]))
        return prefill(params, state, *args, **kwargs)

    monkeypatch.setattr(ours, "_compiled_prefill_fn", counted)
    assert _sample(ours, PROMPTS, temperature=1.0, top_p=1.0) == shared
    monkeypatch.setattr(sampling, "prompt_group", lambda prompts: 1)
    assert _sample(ours, PROMPTS, temperature=1.0, top_p=1.0) == shared
    assert len({tuple(t) for t in shared[:3]}) > 1  # the group's rows draw their own tokens
    assert prefills[0] < 0.5 * prefills[1]  # 2 prompt rows prefilled instead of 6


@pytest.mark.parametrize(
    "kwargs", [{"temperature": 0.8, "top_p": 0.9}, {"temperature": 1.0, "top_p": 1.0, "top_k": 5}]
)
def test_tunix_settings_draw_what_tunix_draws(kwargs: dict[str, float], tiny_gemma3: Path) -> None:
    prompts = ["What is 2 + 3?", "Add seven and eleven, then halve it."]
    ours, tunix = _sampler(tiny_gemma3)
    assert _sample(ours, prompts, **kwargs) == _sample(tunix, prompts, **kwargs)


def test_gemma3_decode_step_on_prepared_weights_gives_tunix_tokens_and_logits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """6 layers (5 sliding-window, window 8, then 1 global) and a 96-position cache, so the
    window cuts; LoRA A and B random; greedy, then sampled at temperature 1."""
    import jax.numpy as jnp
    from flax import nnx
    from tunix.generate import sampler as tunix_sampler

    from common.sft_config import LoraConfig
    from tests.tiny import build_gemma3
    from trainers_jax import decode_step
    from trainers_jax.lora import apply_lora
    from trainers_jax.model import load_model
    from trainers_jax.sampling import Rollout, Sampler

    base, tok = load_model(build_gemma3(tmp_path / "gemma3", layers=6, sliding_window=8))
    model = apply_lora(base, LoraConfig(rank=4, alpha=8, dropout=0.0), None, seed=0)
    rng = np.random.default_rng(1)
    for _, v in nnx.iter_graph(model):
        if isinstance(v, nnx.LoRAParam):
            v[...] = jnp.asarray(rng.normal(0.0, 0.2, v.shape).astype(np.float32))
    steps: list[int] = []
    real_step = decode_step.step
    monkeypatch.setattr(decode_step, "step", lambda *a, **k: steps.append(1) or real_step(*a, **k))
    cfg = model.config
    cache = tunix_sampler.CacheConfig(96, cfg.num_layers, cfg.num_kv_heads, cfg.head_dim)
    ours, unscaled, tunix = (
        Sampler(model, tok, cache),
        Sampler(model, tok, cache),
        tunix_sampler.Sampler(model, tok, cache),
    )
    ours.lora_scale = Rollout.with_lora_scale(8 / 4).lora_scale
    prompts = ["What is 2 + 3?", "Add seven and eleven, then halve it.", "x"]
    kwargs = {
        "max_generation_steps": 40,
        "max_prompt_length": 40,
        "echo": False,
        "seed": 3,
        "return_logits": True,
    }
    fast, slow = ours(prompts, **kwargs), tunix(prompts, **kwargs)
    assert steps == [1]  # our sampler's decode loop took the prepared-weight step
    assert [list(map(int, t)) for t in fast.tokens] == [list(map(int, t)) for t in slow.tokens]
    assert min(len(t) for t in fast.tokens) > 8  # decoded past the window
    for a, b in zip(fast.logits, slow.logits, strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)
    # without the LoRA scale the sampler keeps Tunix's step; sampled, both draw the same tokens
    sampled = {"temperature": 1.0, "top_p": 1.0}
    assert _sample(ours, prompts, **sampled) == _sample(unscaled, prompts, **sampled)
    assert steps == [1, 1]


def test_jax_eval_decodes_gemma3_with_the_step_and_gives_torch_tokens(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``evals.generate`` on the JAX backend (``StepSampler``, no LoRA): the decode step runs,
    and the greedy completions are transformers' on the same checkpoint (6 layers, window 8,
    24 new tokens: past the window)."""
    from evals import generate as gen
    from evals import load
    from tests.tiny import build_gemma3
    from trainers_jax import decode_step

    path = build_gemma3(tmp_path / "gemma3", layers=6, sliding_window=8)
    steps: list[int] = []
    real_step = decode_step.step
    monkeypatch.setattr(decode_step, "step", lambda *a, **k: steps.append(1) or real_step(*a, **k))
    settings = gen.DecodeSettings(max_new_tokens=24)
    out = {}
    for backend in ("jax", "torch"):
        model, tok = load.load_for_eval(load.resolve_model(str(path)), backend)
        prompts = [gen.build_prompt(tok, q, "text") for q in ("What is 2 + 3?", "Add seven and eleven.", "x")]
        out[backend] = [
            o["completion"]
            for o in gen.generate_completions(model, tok, prompts, settings, 4, progress=False)
        ]
    assert steps == [1]  # traced once: the JAX eval's decode loop took the step
    assert out["jax"] == out["torch"] and len(set(out["jax"])) > 1
