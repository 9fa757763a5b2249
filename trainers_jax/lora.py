"""Tunix models made trainable: qwix LoRA on the chosen projections and layers, or full
fine-tuning of all or the last N layers, as the nnx filter of what trains.

LoRA targets use the torch (HF) names; each family maps them onto its Tunix modules
(``trainers_jax.model.Family.lora_module``): Tunix's Gemma fuses k and v (``kv_einsum``, or
q/k/v in ``qkv_einsum`` when there are as many kv heads as heads), so ``k_proj``/``v_proj`` pick
the fused module there; Tunix's Llama keeps the HF names.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
import qwix
from flax import nnx

from common.errors import InputError
from common.sft_config import LoraConfig, SFTConfig, TrainConfig
from trainers_jax.model import family_of, load_model

# the decoder's linear layers, by their torch (HF) names
LINEAR_LAYERS = ("down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj")


def trainable_layer_ids(n_layers: int, trainable_layers: int | None) -> list[int]:
    """The last ``trainable_layers`` layer indices (all when None)."""
    k = n_layers if trainable_layers is None else min(trainable_layers, n_layers)
    return list(range(n_layers - k, n_layers))


def lora_module_path(model: Any, lora: LoraConfig, trainable_layers: int | None) -> str:
    """The qwix ``module_path`` regex for ``lora.target_modules`` in the trainable layers."""
    targets = lora.target_modules or list(LINEAR_LAYERS)
    unknown = sorted(set(targets) - set(LINEAR_LAYERS))
    if unknown:
        raise InputError(
            f"lora.target_modules: {unknown} not linear layers of the decoder; available: {list(LINEAR_LAYERS)}"
        )
    modules = {family_of(model).lora_module(model, t) for t in targets}
    layers = "|".join(str(i) for i in trainable_layer_ids(model.config.num_layers, trainable_layers))
    return rf"layers/({layers})/(attn|mlp)/({'|'.join(sorted(modules))})"


# PEFT's LoRA A init (``kaiming_uniform_(a=sqrt(5))``): uniform in ±1/sqrt(fan_in). qwix's default,
# he_uniform, is sqrt(6) = 2.45x wider, so the same config would train differently on each backend.
PEFT_LORA_A_INIT = jax.nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


class FlatLoraProvider(qwix.LoraProvider):
    """qwix's LoRA with a linear layer's leading axes flattened into one ([B, T, D] → [B·T, D])
    around its product and adapter: the same values, and on a CPU a faster backward pass.

    The adapter's weight gradients contract the [B, T, ·] activations and their gradients over
    both B and T; XLA's CPU backend forms them from transposed copies of the [B, T, F]
    gradients (Gemma 3 270M: two [2048, 1024] copies per layer in the MLP), which the flat form
    does not need. The bench's JAX SFT step on the real model (LoRA r16 on every linear layer,
    1,024-token packed rows): 89.0 and 89.7 tokens/s against 78.3 and 69.9 with qwix's own
    provider (README, Benchmarks).
    """

    def dot_general(self, lhs: Any, rhs: Any, dimension_numbers: Any, *args: Any, **kwargs: Any) -> Any:
        (lhs_ca, rhs_ca), (lhs_ba, _) = dimension_numbers
        if (
            lhs.ndim <= 2
            or lhs_ba
            or tuple(lhs_ca) != (lhs.ndim - 1,)
            or kwargs.get("out_sharding") is not None
        ):
            return super().dot_general(lhs, rhs, dimension_numbers, *args, **kwargs)
        flat = lhs.reshape(-1, lhs.shape[-1])
        out = super().dot_general(flat, rhs, (((1,), tuple(rhs_ca)), ((), ())), *args, **kwargs)
        return out.reshape(*lhs.shape[:-1], *out.shape[1:])


def apply_lora(
    model: Any, lora: LoraConfig, trainable_layers: int | None, seed: int, flat: bool = True
) -> Any:
    """``model`` with qwix LoRA adapters: A drawn as PEFT draws it, B zero-initialised (the
    wrapped model starts as ``model``). ``flat``: through ``FlatLoraProvider``; otherwise qwix's
    own ``LoraProvider`` (the bench's Tunix peer, as a Tunix user would build it)."""
    provider = (FlatLoraProvider if flat else qwix.LoraProvider)(
        module_path=lora_module_path(model, lora, trainable_layers),
        rank=lora.rank,
        alpha=lora.alpha,
        lora_a_initializer=PEFT_LORA_A_INIT,
    )
    return qwix.apply_lora_to_model(
        model, provider, rngs=nnx.Rngs(seed), **model.get_model_input()
    )  # seeded init


def trainable_filter(train: TrainConfig, n_layers: int) -> Any:
    """The nnx filter of the parameters that train (and are checkpointed)."""
    if train.method == "lora":
        return nnx.LoRAParam
    if train.trainable_layers is None:
        return nnx.Param
    layers = set(trainable_layer_ids(n_layers, train.trainable_layers))

    def chosen(path: tuple[Any, ...], value: Any) -> bool:
        if not isinstance(value, nnx.Param):
            return False
        head = path[0]
        if head == "layers":
            return int(path[1]) in layers
        return head == "final_norm" or (head in ("embedder", "lm_head") and train.train_lm_head)

    return chosen


def build_model(cfg: SFTConfig, mesh: jax.sharding.Mesh, flat_lora: bool = True) -> tuple[Any, Any]:
    """``(model, tokenizer)`` ready to train (``flat_lora``: ``apply_lora``'s ``flat``)."""
    if cfg.model.init_adapter:
        raise InputError(
            "model.init_adapter is not supported by trainers_jax.sft yet; point model.path at a merged/ dir"
        )
    model, tok = load_model(cfg.model.path, cfg.model.dtype, mesh)
    if cfg.train.method == "lora":
        with mesh:
            model = apply_lora(model, cfg.lora, cfg.train.trainable_layers, cfg.seed, flat_lora)
    return model, tok


def parameter_counts(model: Any, wrt: Any) -> dict[str, int]:
    def count(state: Any) -> int:
        return int(sum(np.prod(x.shape) for x in jax.tree.leaves(state)))

    return {
        "total": count(nnx.state(model, nnx.Param)) + count(nnx.state(model, nnx.LoRAParam)),
        "trainable": count(nnx.state(model, wrt)),
    }
