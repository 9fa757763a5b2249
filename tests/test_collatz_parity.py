"""Torch vs JAX: the same weights and batch give the same loss, gradients, AdamW step and exported V."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from common.collatz import NOTEBOOK_TRAIN_SEEDS, Sampler, View, closed_form_values, iterate, mlp_values
from common.collatz_config import LossConfig, OptimConfig
from trainers_jax import ranking as jr
from trainers_torch import ranking as tr

LOOKAHEAD, WIDTHS = 6, [16, 12, 8]
LOSS = LossConfig(t4=0.5, t8=0.2, target="adaptive", drift_coef=0.3)
CLOSED = LossConfig(t4=0.5, target="closed_form")
OPTIM = OptimConfig(lr=3e-3, weight_decay=0.01)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def sampled(base_eps: float | None):
    s = Sampler(
        protocol="clean", seeds=NOTEBOOK_TRAIN_SEEDS, view=View(LOOKAHEAD, base_eps), offsets=(1, 4, 8), max_bits=100,
        hard_share=0.25, weights=LOSS.weights(), mine_share=None, mine_direct=0.3, pool_cap=10,
        replay_share=0.0, seed=5, closed_form_eps=0.01,
    )  # fmt: skip
    s.set_active(10)
    return s.batch(96)


@pytest.fixture(scope="module")
def batch():
    return sampled(None)


@pytest.fixture(scope="module")
def based_batch():
    """The same draw for a model with a base: V_L(T^j n), ε = 0.02, at every offset."""
    return sampled(0.02)


def torch_model() -> tr.RankingMLP:
    torch.manual_seed(0)
    return tr.RankingMLP(LOOKAHEAD, WIDTHS, LOSS.drift_coef, learn_drift=True)


def jax_params_of(model: tr.RankingMLP) -> dict:
    layers = [{"weight": jnp.asarray(lin.weight.detach().numpy()), "bias": jnp.asarray(lin.bias.detach().numpy())}
              for lin in model.layers]  # fmt: skip
    return {"layers": layers, "drift_coef": jnp.float32(model.drift_coef.item())}


@pytest.mark.parametrize(
    ("loss_cfg", "anchor", "based"),
    [(LOSS, 1.0, False), (LOSS, 0.01, False), (CLOSED, 1.0, False), (LOSS, 1.0, True)],
)
def test_same_loss_and_gradients(
    batch, based_batch, loss_cfg: LossConfig, anchor: float, based: bool
) -> None:
    batch = based_batch if based else batch
    model = torch_model()
    params = jax_params_of(model)
    loss_t, parts_t = tr.ranking_loss(model, tr.batch_tensors(batch), loss_cfg, anchor)
    loss_t.backward()
    (loss_j, parts_j), grads = jax.value_and_grad(jr.ranking_loss, has_aux=True)(
        params, jr.batch_arrays(batch), loss_cfg, jnp.float32(anchor), loss_cfg.drift_coef
    )
    assert loss_t.item() > 0
    np.testing.assert_allclose(float(loss_j), loss_t.item(), rtol=1e-5)
    for key in ("rank", "t4", "anchor", *(("t8",) if loss_cfg.t8 else ())):
        np.testing.assert_allclose(float(parts_j[key]), parts_t[key].item(), rtol=1e-5, atol=1e-7)
    for lin, g in zip(model.layers, grads["layers"], strict=True):
        np.testing.assert_allclose(np.asarray(g["weight"]), lin.weight.grad.numpy(), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(np.asarray(g["bias"]), lin.bias.grad.numpy(), rtol=1e-4, atol=1e-5)
    beta_grad = model.drift_coef.grad.item() if loss_cfg.target == "adaptive" else 0.0  # unused: no gradient
    assert (model.drift_coef.grad is None) == (loss_cfg.target != "adaptive")
    np.testing.assert_allclose(float(grads["drift_coef"]), beta_grad, rtol=1e-4)


def test_same_adamw_steps_and_export(batch) -> None:
    model = torch_model()
    params = jax_params_of(model)
    opt_t = torch.optim.AdamW(model.parameters(), lr=OPTIM.lr, weight_decay=OPTIM.weight_decay)
    opt_j = jr.make_optimizer(OPTIM)
    state = opt_j.init(params)
    step_j = jr.make_train_step(LOSS, opt_j, LOSS.drift_coef)
    arrays = jr.batch_arrays(batch)
    for lr in (OPTIM.lr, OPTIM.lr / 2, OPTIM.lr / 2):  # the plateau factor sets the rate each step
        for group in opt_t.param_groups:
            group["lr"] = lr
        loss, _ = tr.ranking_loss(model, tr.batch_tensors(batch), LOSS, 1.0)
        opt_t.zero_grad()
        loss.backward()
        opt_t.step()
        params, state, _, _ = step_j(params, state, arrays, jnp.float32(1.0), jnp.float32(lr))
    exported_t, exported_j = model.export_params(), jr.export_params(params)
    assert exported_t.keys() == exported_j.keys()
    for key, value in exported_t.items():
        np.testing.assert_allclose(exported_j[key], value, rtol=1e-4, atol=1e-6, err_msg=key)
    # the eval's numpy V (float64) agrees with both frameworks' float32 forward
    v_np = mlp_values(exported_t, batch.x[0])
    np.testing.assert_allclose(model(torch.from_numpy(batch.x[0])).detach().numpy(), v_np, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(jr.values(params, batch.x[0])), v_np, rtol=1e-4)


def test_a_based_model_starts_at_the_closed_form(based_batch) -> None:
    """Zero output layer: V = softplus(V_L) + 1e-6 on both backends and in the eval's numpy V."""
    assert set(based_batch.base) == {0, 1, 4, 8}
    for j, b in based_batch.base.items():  # V_L(T^j n), as the eval's reference computes it
        shifted = [iterate(n, j) for n in based_batch.states]
        np.testing.assert_allclose(b, closed_form_values(shifted, LOOKAHEAD, 0.02), rtol=1e-6, err_msg=str(j))
    torch.manual_seed(0)
    model = tr.RankingMLP(LOOKAHEAD, WIDTHS, 0.35, learn_drift=False, zero_output=True)
    params = jr.init_params(jax.random.key(0), LOOKAHEAD, WIDTHS, 0.35, learn_drift=False, zero_output=True)
    x0, b0 = based_batch.x[0], based_batch.base[0]
    expected = np.logaddexp(0.0, b0.astype(np.float64)) + 1e-6
    np.testing.assert_allclose(
        model(torch.from_numpy(x0), torch.from_numpy(b0)).detach().numpy(), expected, rtol=1e-6
    )
    np.testing.assert_allclose(np.asarray(jr.values(params, x0, b0)), expected, rtol=1e-6)
    np.testing.assert_allclose(mlp_values(model.export_params(), x0, b0), expected, rtol=1e-6)
    # the margins rank pairs as V_L does (softplus is increasing)
    sign = np.sign(based_batch.base[0] - based_batch.base[1])
    np.testing.assert_array_equal(np.sign(tr.margins(model, based_batch)), sign)
    np.testing.assert_array_equal(np.sign(jr.margins(params, based_batch)), sign)
    assert (sign < 0).any() and (sign > 0).any()


def test_same_init_distribution() -> None:
    """JAX draws its init like torch.nn.Linear: uniform in ±1/√fan_in (not the same numbers)."""
    params = jr.init_params(jax.random.key(0), LOOKAHEAD, [256], 0.35, learn_drift=False)
    w = np.asarray(params["layers"][0]["weight"])
    bound = 1 / np.sqrt(6 + LOOKAHEAD)
    assert w.shape == (256, 6 + LOOKAHEAD) and "drift_coef" not in params
    assert np.abs(w).max() <= bound and np.abs(w).max() > 0.95 * bound
    assert abs(w.mean()) < 0.02 and np.std(w) == pytest.approx(bound / np.sqrt(3), rel=0.05)


def test_limit_threads_adds_one_real_xla_flag(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XLA_FLAGS", "--xla_backend_optimization_level=0")
    jr.limit_threads(1)
    jr.limit_threads(1)  # once only
    assert os.environ["XLA_FLAGS"].split() == [
        "--xla_backend_optimization_level=0", "--xla_cpu_multi_thread_eigen=false"
    ]  # fmt: skip
    monkeypatch.setenv("XLA_FLAGS", "")
    jr.limit_threads(None)
    jr.limit_threads(2)
    assert os.environ["XLA_FLAGS"] == ""
