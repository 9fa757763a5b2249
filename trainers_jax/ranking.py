"""The Collatz ranking MLP, its loss and its Orbax checkpoints in JAX (used by ``trainers_jax.collatz``).

The same function and loss as ``trainers_torch/ranking.py`` (see its docstring): parameters
are a plain pytree ``{"layers": [{"weight": (out, in), "bias": (out,)}, …]}`` plus
``"drift_coef"`` when β is trained, initialised like ``torch.nn.Linear`` (uniform ±1/√fan_in).
The optimizer is optax's AdamW with the learning rate injected, so the shared plateau factor
can set it every step. A plain pytree and optax instead of Flax NNX: the model is eight dense
layers, and a pytree keeps the export, the parity test and the Orbax state one-to-one with torch.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from common.collatz import LEAKY_SLOPE, V_FLOOR, PairBatch, layer_sizes
from common.collatz_config import LossConfig, OptimConfig
from common.errors import InputError

Params = dict[str, Any]


def limit_threads(threads: int | None) -> None:
    """Single-threaded Eigen kernels when ``threads == 1`` (pinned runs); must run before the first JAX op.

    XLA has no thread-count flag: pin the process (``taskset``) to bound its cores.
    """
    if threads == 1 and "xla_cpu_multi_thread_eigen" not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = (
            os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false"
        ).strip()


def init_params(
    key: jax.Array,
    lookahead: int,
    widths: Sequence[int],
    drift_coef: float,
    learn_drift: bool,
    zero_output: bool = False,
) -> Params:
    """torch.nn.Linear's default init: weight and bias uniform in ±1/√fan_in (the last layer zero
    with ``zero_output``: a model with a base starts at it)."""
    layers = []
    for fan_in, fan_out in layer_sizes(lookahead, widths):
        key, kw, kb = jax.random.split(key, 3)
        bound = 1.0 / math.sqrt(fan_in)
        layers.append({
            "weight": jax.random.uniform(kw, (fan_out, fan_in), jnp.float32, -bound, bound),
            "bias": jax.random.uniform(kb, (fan_out,), jnp.float32, -bound, bound),
        })  # fmt: skip
    if zero_output:
        layers[-1] = jax.tree.map(jnp.zeros_like, layers[-1])
    params: Params = {"layers": layers}
    if learn_drift:
        params["drift_coef"] = jnp.float32(drift_coef)
    return params


def values(params: Params, x: jax.Array, base: jax.Array | None = None) -> jax.Array:
    """V(x) = softplus(MLP(x)) + 1e-6, or softplus(base + MLP(x)) + 1e-6 with a base."""
    layers = params["layers"]
    for layer in layers[:-1]:
        x = jax.nn.leaky_relu(x @ layer["weight"].T + layer["bias"], LEAKY_SLOPE)
    out = (x @ layers[-1]["weight"].T + layers[-1]["bias"])[:, 0]
    return jax.nn.softplus(out if base is None else out + base) + V_FLOOR


def batch_arrays(batch: PairBatch) -> dict[str, np.ndarray]:
    """The batch's arrays by the loss's names: ``x0``, ``x1`` (and ``x4``/``x8``), ``log_n``, ``drift``,
    ``weight``, and the model's base ``b0``, ``b1``, … when it has one."""
    out = {f"x{j}": x for j, x in batch.x.items()} | {
        k: getattr(batch, k) for k in ("log_n", "drift", "weight")
    }
    out |= {f"b{j}": b for j, b in (batch.base or {}).items()}
    if batch.closed_form is not None:
        out["closed_form"] = batch.closed_form
    return out


def hinge(v_a: jax.Array, v_b: jax.Array, margin: float) -> jax.Array:
    return jax.nn.relu(margin - (v_a - v_b))


def ranking_loss(
    params: Params, t: dict[str, jax.Array], cfg: LossConfig, anchor: jax.Array, fixed_drift: float
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The total loss and its parts, plus the batch's one-step margins (as ``trainers_torch.ranking``)."""
    v0 = values(params, t["x0"], t.get("b0"))
    v1 = values(params, t["x1"], t.get("b1"))
    rank = jnp.mean(hinge(v0, v1, cfg.margin) * t["weight"])
    total = rank
    parts = {"rank": rank}
    for j, coef in ((4, cfg.t4), (8, cfg.t8)):
        if coef > 0:
            parts[f"t{j}"] = jnp.mean(hinge(v0, values(params, t[f"x{j}"], t.get(f"b{j}")), cfg.margin))
            total = total + coef * parts[f"t{j}"]
    beta = params.get("drift_coef", fixed_drift)
    target = t["closed_form"] if cfg.target == "closed_form" else t["log_n"] + beta * t["drift"]
    parts["anchor"] = jnp.mean((v0 - target) ** 2)
    total = total + anchor * parts["anchor"]
    parts["margin"] = v0 - v1
    return total, parts


def make_optimizer(cfg: OptimConfig) -> optax.GradientTransformation:
    """AdamW as torch's (decoupled weight decay on every parameter), learning rate injectable."""
    return optax.inject_hyperparams(optax.adamw)(
        learning_rate=cfg.lr, b1=cfg.betas[0], b2=cfg.betas[1], eps=cfg.eps, weight_decay=cfg.weight_decay
    )


def make_train_step(cfg: LossConfig, optimizer: optax.GradientTransformation, fixed_drift: float) -> Callable:
    """``step(params, opt_state, batch, anchor, lr) → (params, opt_state, loss, parts)``, jitted."""

    def step(
        params: Params, opt_state: Any, t: dict[str, jax.Array], anchor: jax.Array, lr: jax.Array
    ) -> tuple[Params, Any, jax.Array, dict[str, jax.Array]]:
        (loss, parts), grads = jax.value_and_grad(ranking_loss, has_aux=True)(
            params, t, cfg, anchor, fixed_drift
        )
        opt_state.hyperparams["learning_rate"] = lr
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss, parts

    return jax.jit(step)


@jax.jit
def _margins(params: Params, t: dict[str, jax.Array]) -> jax.Array:
    return values(params, t["x0"], t.get("b0")) - values(params, t["x1"], t.get("b1"))


def margins(params: Params, batch: PairBatch) -> np.ndarray:
    """V(n) − V(T n) for every pair of ``batch`` (float32, as trained)."""
    t = batch_arrays(batch)
    return np.asarray(_margins(params, {k: t[k] for k in ("x0", "x1", "b0", "b1") if k in t}))


def export_params(params: Params) -> dict[str, np.ndarray]:
    """The export's names (``layers.{i}.weight``/``.bias``), as torch's state dict has them."""
    return {
        f"layers.{i}.{name}": np.asarray(layer[name])
        for i, layer in enumerate(params["layers"])
        for name in ("weight", "bias")
    }


# --------------------------------------------------------------------------------------------
# Orbax checkpoints: params, optimizer state and the JSON state of the plan, one step per dir
# --------------------------------------------------------------------------------------------


def save_checkpoint(mgr: Any, step: int, params: Params, opt_state: Any, state: dict[str, Any]) -> None:
    """Orbax writes into a temp dir and renames it when complete: a killed save leaves no step."""
    import orbax.checkpoint as ocp

    mgr.save(
        step,
        args=ocp.args.Composite(
            params=ocp.args.StandardSave(params),
            opt_state=ocp.args.StandardSave(opt_state),
            state=ocp.args.JsonSave(state),
        ),
    )
    mgr.wait_until_finished()


def restore_checkpoint(
    mgr: Any, step: int, params: Params, opt_state: Any
) -> tuple[Params, Any, dict[str, Any]]:
    """``(params, opt_state, state)`` of ``step``; a damaged or mismatched checkpoint is an ``InputError``."""
    import orbax.checkpoint as ocp

    try:
        restored = mgr.restore(
            step,
            args=ocp.args.Composite(
                params=ocp.args.StandardRestore(params),
                opt_state=ocp.args.StandardRestore(opt_state),
                state=ocp.args.JsonRestore(),
            ),
        )
    except Exception as err:  # orbax / tensorstore raise many types for a damaged or mismatched checkpoint
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise InputError(f"{mgr.directory / str(step)}: unreadable checkpoint ({first[:200]})") from None
    return restored["params"], restored["opt_state"], dict(restored["state"])
