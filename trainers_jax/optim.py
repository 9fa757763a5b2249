"""optax optimizers with the shared schedule (``common.sft_config.lr_factor``), and the SFT
update step: micro-batch gradients summed, divided by the step's completion tokens, applied."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from common.errors import InputError
from common.sft_config import OptimConfig, SFTConfig, lr_factor
from trainers_jax.losses import completion_loss_sum


def optax_transform(o: OptimConfig, total_steps: int) -> optax.GradientTransformation:
    """optax AdamW/Adafactor with the torch recipe's schedule, decay on matrices only, clipping."""
    table = jnp.asarray([o.lr * lr_factor(s, total_steps, o) for s in range(total_steps + 1)], jnp.float32)

    def schedule(count: jax.Array) -> jax.Array:
        return table[jnp.minimum(count, total_steps)]

    def decay_mask(params: Any) -> Any:
        return jax.tree.map(lambda p: p.ndim >= 2, params)

    if o.name == "adamw":
        if len(o.betas) != 2:
            raise InputError(f"optim.betas: expected two numbers, got {o.betas}")
        tx = optax.adamw(
            schedule, b1=o.betas[0], b2=o.betas[1], eps=1e-8, weight_decay=o.weight_decay, mask=decay_mask
        )
    else:
        tx = optax.adafactor(schedule, weight_decay_rate=o.weight_decay or None, weight_decay_mask=decay_mask)
    if o.lora_b_lr_ratio != 1.0:  # LoRA+: B's whole update (step and decay) scaled, as torch's group lr
        tx = optax.chain(tx, optax.masked(optax.scale(o.lora_b_lr_ratio), lora_b_mask))
    if o.max_grad_norm > 0:
        tx = optax.chain(optax.clip_by_global_norm(o.max_grad_norm), tx)
    return tx


def lora_b_mask(params: Any) -> Any:
    """True on qwix's LoRA B matrices (``*_lora_b``), False elsewhere."""

    def is_b(path: tuple[Any, ...], _: Any) -> bool:
        return any(str(getattr(k, "key", "")).endswith("_lora_b") for k in path)

    return jax.tree_util.tree_map_with_path(is_b, params)


def build_optimizer(model: Any, cfg: SFTConfig, wrt: Any, total_steps: int) -> nnx.Optimizer:
    """The optimizer of the trainable parameters (``optax_transform``)."""
    cfg.optim.check_lora_b(any(jax.tree.leaves(lora_b_mask(nnx.state(model, wrt)))))
    optimizer = nnx.Optimizer(model, optax_transform(cfg.optim, total_steps), wrt=wrt)
    on_the_mesh(optimizer)
    return optimizer


def on_the_mesh(optimizer: nnx.Optimizer) -> None:
    """Place the optimizer's state that lives off the mesh (its fresh step counters) on the
    params' mesh, replicated. The update's outputs come back on the mesh, so otherwise its second
    call sees new input shardings and compiles the whole update again (3-5 s on the real model)."""
    state = nnx.state(optimizer)
    meshes = [x.sharding.mesh for x in jax.tree.leaves(state) if isinstance(x.sharding, NamedSharding)]
    if not meshes:
        return
    replicated = NamedSharding(meshes[0], PartitionSpec())
    nnx.update(optimizer, jax.tree.map(
        lambda x: x if isinstance(x.sharding, NamedSharding) else jax.device_put(x, replicated), state
    ))  # fmt: skip


def head_trains(model: Any, wrt: Any) -> bool:
    """Whether the LM head (the tied embedding, or an untied ``lm_head``) is among the ``wrt`` params."""
    state = nnx.state(model, wrt)
    return any(key in state for key in ("embedder", "lm_head"))


@nnx.jit(static_argnames=("chunk", "wrt"), graph_updates=False)
def micro_grads(model: Any, arrays: dict[str, jax.Array], chunk: int, wrt: Any) -> tuple[jax.Array, Any]:
    """Summed completion loss of one micro-batch and its gradient w.r.t. the trainable params
    (a frozen head takes ``head_loss_sum``'s cheaper backward).

    ``graph_updates=False``: only the variables the call changes come back out of the compiled
    function (none: the hidden states it sows are popped inside). With the default, every
    parameter was also an output, and XLA copied Gemma 3's 671 MB embedding every call."""
    diff = nnx.DiffState(0, wrt)
    trains = head_trains(model, wrt)
    return nnx.value_and_grad(lambda m: completion_loss_sum(m, arrays, chunk, trains), argnums=diff)(model)


@nnx.jit(graph_updates=False)
def apply_grads(model: Any, optimizer: nnx.Optimizer, grads: Any, n_targets: jax.Array) -> jax.Array:
    """Mean over the step's completion tokens, clip (inside the optax chain), update; returns the
    norm. Only the variables the update changes come back out (``micro_grads``)."""
    grads = jax.tree.map(lambda g: g / n_targets, grads)
    optimizer.update(model, grads)
    return optax.global_norm(grads)


def train_step(
    model: Any, optimizer: nnx.Optimizer, micro: list[dict[str, Any]], n_targets: int, chunk: int, wrt: Any
) -> tuple[float, float]:
    """One optimizer step over the micro-batches; returns ``(mean loss, grad norm before clipping)``."""
    loss_sum, total = 0.0, None
    for arrays in micro:
        part, grads = micro_grads(model, arrays, chunk, wrt)
        total = grads if total is None else jax.tree.map(jnp.add, total, grads)
        loss_sum += float(part)
    norm = apply_grads(model, optimizer, total, jnp.float32(n_targets))
    return loss_sum / n_targets, float(norm)
