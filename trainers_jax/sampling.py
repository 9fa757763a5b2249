"""Tunix's ``Sampler`` with three changes where its CPU time goes, and the GRPO rollout on it.

- **One prefill per prompt.** GRPO samples G completions of each prompt: Tunix's sampler gets
  the prompt G times in a row and prefills every copy. ``Sampler`` finds the runs of equal
  prompts in its input (the group size: the length every run has, else 1), prefills one row
  per run and repeats its cache and last-position logits to the run's rows before the first
  token is drawn, so each row still draws its own tokens.
- **Noise for 1,024 values per row, not 262,144.** At plain temperature (top-p 1, no top-k)
  Tunix draws with ``jax.random.categorical``: Gumbel noise on all 262,144 logits of each
  row, about 30 ms of every 8-row decode step on this project's CPU. ``draw`` applies the
  same Gumbel-max rule in two levels (a block of the vocabulary, then a token in it): the
  same categorical distribution, with a different random stream from Tunix's for the same
  seed. Top-p, top-k, greedy and beam search stay Tunix's code.
- **Decode steps on weights laid out once** (``StepSampler``). On Tunix's Gemma 3 the decode
  loop runs ``trainers_jax.decode_step``: each LoRA adapter folded into its weight and every
  product's weight laid out as [out, in] once per call, before the loop, instead of the
  modules' einsums (and XLA's relayout of their weights) on every step. ``lora_scale`` (alpha
  / rank) must be set for a model with LoRA adapters; other models keep Tunix's step.

``Rollout`` is Tunix's vanilla rollout on this sampler, passed to ``RLCluster`` as its
``rollout_engine`` (Tunix accepts a ``BaseRollout`` class there; ``Rollout.with_lora_scale``
gives one whose sampler knows the policy's LoRA scale). ``evals.generate`` takes
``StepSampler``, the decode step alone: its prompts are distinct, its decoding greedy by
default, and a last batch padded with one prompt would compile a second program with groups.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from tunix.generate import sampler as tunix_sampler
from tunix.generate import utils as tunix_utils
from tunix.rl.rollout import base_rollout, vanilla_rollout

from trainers_jax import decode_step

GROUP = "prompt_group"  # the group size, carried in the sampling state's static parameters
BLOCK = 512  # vocabulary entries per block of ``draw``'s first level


def prompt_group(prompts: list[str]) -> int:
    """The length of every run of equal consecutive prompts, or 1 when the runs differ."""
    runs: list[int] = []
    for i, p in enumerate(prompts):
        if i and p == prompts[i - 1]:
            runs[-1] += 1
        else:
            runs.append(1)
    return runs[0] if runs and len(set(runs)) == 1 else 1


def draw(key: jax.Array, logits: jax.Array) -> jax.Array:
    """One token per row of ``logits`` [B, V] (float32, already divided by the temperature),
    drawn from their softmax by the Gumbel-max rule in two levels: a block of ``BLOCK``
    entries by its log-sum-exp plus Gumbel noise, then an entry of that block by its logit
    plus noise. The maximum of a block's perturbed logits is distributed as its log-sum-exp
    plus one Gumbel draw, so this is the one-level rule (``jax.random.categorical``) with
    2 x V / ``BLOCK`` noise draws per row instead of V, and as stable under tiny changes of the
    logits: a token changes only where two perturbed values nearly tie. An entry of
    probability 0 (a ``-inf`` logit) is never drawn."""
    rows, vocab = logits.shape
    blocks = jnp.pad(logits, ((0, 0), (0, -vocab % BLOCK)), constant_values=-jnp.inf).reshape(rows, -1, BLOCK)
    k_block, k_entry = jax.random.split(key)
    mass = jax.nn.logsumexp(blocks, axis=-1)
    block = jnp.argmax(mass + jax.random.gumbel(k_block, mass.shape), axis=-1)
    within = jnp.take_along_axis(blocks, block[:, None, None], axis=1)[:, 0]
    entry = jnp.argmax(within + jax.random.gumbel(k_entry, within.shape), axis=-1)
    return block * BLOCK + entry


class StepSampler(tunix_sampler.Sampler):
    """Tunix's ``Sampler`` whose decode loop runs ``decode_step`` on Gemma 3 (module
    docstring); ``lora_scale`` for a model with LoRA adapters. ``evals.generate`` samples with it."""

    lora_scale: float | None = None  # alpha / rank of the model's LoRA adapters, if any

    def _decode_fn(self, params: Any, sampler_state: Any) -> Any:
        model = nnx.merge(self._transformer_graphdef, params)
        lora = any(isinstance(v, nnx.LoRAParam) for _, v in nnx.iter_graph(model))
        if not decode_step.applies(model) or (lora and self.lora_scale is None):
            return super()._decode_fn(params, sampler_state)
        weights = decode_step.prepare(model, self.lora_scale)  # once per call, outside the loop

        def more(state: Any) -> Any:  # Tunix's condition
            return (state.decoding_step < state.total_sampling_steps) & jnp.any(jnp.logical_not(state.done))

        return jax.lax.while_loop(more, lambda state: self._step(model, weights, state), sampler_state)

    def _step(self, model: Any, weights: Any, state: Any) -> Any:
        """Tunix's ``_sample_step`` with ``decode_step.step`` as the model's forward."""
        i, rows = state.decoding_step, state.token_buffer.shape[0]
        mask = tunix_utils.compute_attention_masks(
            i, self.cache_config.cache_size, state.token_buffer == self.tokenizer.pad_id()
        )
        tokens, positions = state.token_buffer[:, i].reshape(rows, 1), state.positions[:, i][:, None]
        logits, cache = decode_step.step(model, weights, tokens, positions, state.cache, mask)
        state = self._sample(logits=logits, cache=cache, eos=self.eos_ids, sampler_state=state)
        if state.logits_buffer is not None:
            state = dataclasses.replace(
                state, logits_buffer=state.logits_buffer.at[:, i + 1].set(logits[:, 0])
            )
        return state


class Sampler(StepSampler):
    """``StepSampler``, prefilling each run of equal prompts once and drawing at plain
    temperature with ``draw`` (module docstring): the GRPO rollout's sampler."""

    _group = 1

    def __call__(self, input_strings: Any, *args: Any, **kwargs: Any) -> Any:
        prompts = [input_strings] if isinstance(input_strings, str) else list(input_strings)
        self._group = prompt_group(prompts)
        try:
            return super().__call__(prompts, *args, **kwargs)
        finally:
            self._group = 1

    def init_sample_state(self, *args: Any, **kwargs: Any) -> Any:
        state = super().init_sample_state(*args, **kwargs)
        if self._group > 1:  # static: a new group size compiles its own prefill and decode
            state = dataclasses.replace(
                state, sampling_parameters={**state.sampling_parameters, GROUP: self._group}
            )
        return state

    def _prefill_fn(self, params: Any, sampler_state: Any, images: Any = None, echo: bool = True) -> Any:
        g = sampler_state.sampling_parameters.get(GROUP, 1)
        shareable = (
            images is None
            and sampler_state.sampling_mode != "beam_search"
            and sampler_state.logits_buffer is None
        )
        if g == 1 or not shareable:
            return super()._prefill_fn(params, sampler_state, images, echo)
        n = sampler_state.num_input_tokens
        tokens = sampler_state.token_buffer[::g, :n]
        positions = sampler_state.positions[::g, :n]
        real, size = tokens != self.tokenizer.pad_id(), self.cache_config.cache_size
        if hasattr(self.transformer, "get_attention_mask"):  # as Tunix's prefill builds it
            mask = self.transformer.get_attention_mask(tokens, inputs_mask=real)
            mask = jnp.pad(mask, [(0, 0)] * (mask.ndim - 1) + [(0, size - mask.shape[-1])])
        else:
            mask = tunix_utils.make_causal_attn_mask(real, size)
        kwargs = (
            {"decode_only_last_token": True} if self._supports_decode_only_last_token and not echo else {}
        )
        cache = jax.tree.map(lambda c: c[::g], sampler_state.cache)
        logits, cache = nnx.merge(self._transformer_graphdef, params)(
            tokens, positions, cache, mask, **kwargs
        )
        logits, cache = jax.tree.map(lambda a: jnp.repeat(a, g, axis=0), (logits[:, -1:], cache))
        state = dataclasses.replace(sampler_state, cache=cache)
        return self._sample(logits=logits, cache=cache, eos=self.eos_ids, sampler_state=state)

    def _sample(self, logits: Any, eos: Any, cache: Any, sampler_state: Any) -> Any:
        params = sampler_state.sampling_parameters
        plain = sampler_state.sampling_mode == "top_p" and params["top_p"] >= 1.0 and not params["top_k"]
        if not plain:
            return super()._sample(logits=logits, eos=eos, cache=cache, sampler_state=sampler_state)
        z = logits[:, -1].astype(jnp.float32)
        if sampler_state.forbidden_token_ids:
            z = z.at[:, list(sampler_state.forbidden_token_ids)].set(-jnp.inf)
        z = z / sampler_state.temperature
        step = sampler_state.decoding_step
        token = draw(jax.random.fold_in(sampler_state.seed, step), z)
        tokens = sampler_state.token_buffer.at[:, step + 1].set(token)
        logprobs = sampler_state.logprobs_buffer
        if logprobs is not None:
            logp = jnp.take_along_axis(jax.nn.log_softmax(z, -1), token[:, None], -1)[:, 0]
            logprobs = logprobs.at[:, step + 1].set(logp)
        return dataclasses.replace(
            sampler_state,
            decoding_step=step + 1,
            token_buffer=tokens,
            logprobs_buffer=logprobs,
            cache=cache,
            done=sampler_state.done | jnp.isin(token, eos),
        )


class Rollout(vanilla_rollout.VanillaRollout):
    """Tunix's vanilla rollout on ``Sampler``: ``RLCluster``'s ``rollout_engine``."""

    lora_scale: float | None = None

    @classmethod
    def with_lora_scale(cls, scale: float) -> type[Rollout]:
        """This rollout for a policy whose LoRA adapters scale by ``scale`` (alpha / rank)."""
        return type(
            cls.__name__, (cls,), {"lora_scale": scale, "__module__": __name__, "__doc__": cls.__doc__}
        )

    def __init__(
        self, rollout_actor: Any, tokenizer: Any, mesh: Any, rollout_config: base_rollout.RolloutConfig
    ) -> None:
        # VanillaRollout.__init__ only builds Tunix's sampler: build ours in its place.
        del mesh  # the actor's own placement, as the vanilla rollout
        cfg = rollout_actor.config
        cache = tunix_sampler.CacheConfig(
            rollout_config.kv_cache_size, cfg.num_layers, cfg.num_kv_heads, cfg.head_dim
        )
        self._sampler = Sampler(rollout_actor, tokenizer, cache)
        self._sampler.lora_scale = self.lora_scale
