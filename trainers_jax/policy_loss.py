"""Tunix's GRPO loss with the LM head applied to the completion positions only.

Tunix 0.1.7's ``grpo_loss_fn`` calls the policy on each prompt + completion and keeps the
logits of the completion positions (``logits[:, -C - 1 : -1]`` for C completion tokens): the
logits of every prompt position are computed, kept for the backward pass and dropped. With
Gemma 3's 262,144-row head and prompts several times longer than the completions, most of the
update's head work and memory went there. ``CompletionHead`` is the policy as that loss calls
it: the same decoder body (``losses.final_hidden``), then the head on the last ``C + 1``
positions only, so the loss's slice picks the same rows. Everything else (ratio, clip,
aggregation, KL, entropy and the other metrics) is still Tunix's own loss, registered here
under ``POLICY_LOSS`` for ``trainers_jax.grpo``'s learner.
"""

from __future__ import annotations

from typing import Any

import jax
from flax import nnx
from tunix.rl import algo_core, function_registry

from trainers_jax.losses import final_hidden
from trainers_jax.model import head_logits, head_weights, logit_softcap

POLICY_LOSS = "grpo_completion_head"


class CompletionHead(nnx.Module):
    """``model`` called as Tunix's loss calls a policy, returning the logits of its last
    ``keep`` positions only ([B, keep, V], float32)."""

    def __init__(self, model: Any, keep: int) -> None:
        self.model = model
        self.keep = keep

    def __call__(
        self,
        last_tokens: jax.Array,
        positions: jax.Array | None = None,
        cache: Any = None,
        attention_mask: jax.Array | None = None,
    ) -> tuple[jax.Array, None]:
        if cache is not None:
            raise ValueError("CompletionHead scores whole sequences; it takes no KV cache")
        h = final_hidden(self.model, last_tokens, positions, attention_mask)[:, -self.keep :]
        return head_logits(h, head_weights(self.model), logit_softcap(self.model)), None


@function_registry.register_policy_loss_fn(POLICY_LOSS)
def completion_head_grpo_loss(
    model: Any, train_example: Any, algo_config: Any, pad_id: int, eos_id: int, **kwargs: Any
) -> tuple[jax.Array, dict[str, Any]]:
    """Tunix's ``grpo_loss_fn`` on ``CompletionHead(model)``; packed examples (segment ids,
    whose loss keeps every position) go to the model itself."""
    policy = model
    if getattr(train_example, "segment_ids", None) is None:
        policy = CompletionHead(model, train_example.completion_ids.shape[1] + 1)
    return algo_core.grpo_loss_fn(policy, train_example, algo_config, pad_id, eos_id, **kwargs)
