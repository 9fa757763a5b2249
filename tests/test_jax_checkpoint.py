"""The JAX trainers' Orbax checkpoints on a small NNX module (no model load, no training run)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import jax.numpy as jnp
import optax
import pytest
from flax import nnx

from common.errors import InputError
from trainers_jax import checkpoint as ckpt


def trainer(seed: int) -> tuple[nnx.Linear, nnx.Optimizer]:
    model = nnx.Linear(3, 2, rngs=nnx.Rngs(seed))
    return model, nnx.Optimizer(model, optax.adam(0.1), wrt=nnx.Param)


def step(model: nnx.Linear, optimizer: nnx.Optimizer) -> None:
    grads = nnx.grad(lambda m: m(jnp.ones((1, 3))).sum())(model)
    optimizer.update(model, grads)


def test_save_then_restore_params_optimizer_and_meta(tmp_path: Path) -> None:
    model, optimizer = trainer(0)
    step(model, optimizer)
    mgr = ckpt.checkpoint_manager(tmp_path / "checkpoints", keep_last=2)
    ckpt.save_checkpoint(mgr, 1, model, optimizer, nnx.Param, {"step": 1, "tokens_seen": 12})
    step(model, optimizer)
    after_two = model.kernel[...]

    model2, optimizer2 = trainer(1)
    meta = ckpt.restore_checkpoint(mgr, 1, model2, optimizer2, nnx.Param)
    assert meta == {"step": 1, "tokens_seen": 12}
    step(model2, optimizer2)  # the restored Adam moments and count give the same second step
    assert jnp.allclose(model2.kernel[...], after_two)
    assert int(optimizer2.step[...]) == 2


@pytest.mark.parametrize(("keep_last", "kept"), [(0, [3]), (1, [3]), (2, [2, 3])])
def test_manager_keeps_the_newest_steps(tmp_path: Path, keep_last: int, kept: list[int]) -> None:
    model, optimizer = trainer(0)
    mgr = ckpt.checkpoint_manager(tmp_path / "checkpoints", keep_last)
    for s in (1, 2, 3):
        ckpt.save_checkpoint(mgr, s, model, optimizer, nnx.Param, {"step": s})
    assert sorted(mgr.all_steps()) == kept
    assert sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir()) == kept


def run_cfg(tmp_path: Path, resume: bool = False, overwrite: bool = False) -> SimpleNamespace:
    return SimpleNamespace(output_dir=str(tmp_path), run_name="r", resume=resume, overwrite=overwrite)


@pytest.mark.parametrize("holds", ["checkpoints/3", "merged"])
def test_prepare_run_dir_refuses_to_clobber_a_run(tmp_path: Path, holds: str) -> None:
    assert ckpt.prepare_run_dir(run_cfg(tmp_path)) == tmp_path / "r"
    (tmp_path / "r" / "checkpoints" / "tmp-not-a-step").mkdir(parents=True)  # not a step: no run yet
    assert ckpt.prepare_run_dir(run_cfg(tmp_path)) == tmp_path / "r"
    (tmp_path / "r" / holds).mkdir(parents=True)
    with pytest.raises(InputError, match=r"already holds a run \(checkpoints or merged/\)"):
        ckpt.prepare_run_dir(run_cfg(tmp_path))
    assert ckpt.prepare_run_dir(run_cfg(tmp_path, resume=True)) == tmp_path / "r"
    assert ckpt.prepare_run_dir(run_cfg(tmp_path, overwrite=True)) == tmp_path / "r"
