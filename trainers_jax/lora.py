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


def apply_lora(model: Any, lora: LoraConfig, trainable_layers: int | None, seed: int) -> Any:
    """``model`` with qwix LoRA adapters: A drawn as PEFT draws it, B zero-initialised (the
    wrapped model starts as ``model``)."""
    import qwix

    provider = qwix.LoraProvider(
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


def build_model(cfg: SFTConfig, mesh: jax.sharding.Mesh) -> tuple[Any, Any]:
    """``(model, tokenizer)`` ready to train."""
    if cfg.model.init_adapter:
        raise InputError(
            "model.init_adapter is not supported by trainers_jax.sft yet; point model.path at a merged/ dir"
        )
    model, tok = load_model(cfg.model.path, cfg.model.dtype, mesh)
    if cfg.train.method == "lora":
        with mesh:
            model = apply_lora(model, cfg.lora, cfg.train.trainable_layers, cfg.seed)
    return model, tok


def parameter_counts(model: Any, wrt: Any) -> dict[str, int]:
    def count(state: Any) -> int:
        return int(sum(np.prod(x.shape) for x in jax.tree.leaves(state)))

    return {
        "total": count(nnx.state(model, nnx.Param)) + count(nnx.state(model, nnx.LoRAParam)),
        "trainable": count(nnx.state(model, wrt)),
    }
