"""The JAX trainers' Orbax checkpoints on a small NNX module (no model load, no training run)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

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


def saved_lora_run(tmp_path: Path, model_dir: Path) -> tuple[Path, Any, Any]:
    """A run dir as ``trainers_jax.sft`` leaves it (config.yaml, an Orbax step 1) with LoRA weights
    moved off their initial values, without a training loop; ``(step dir, model, config)``."""
    import jax

    from common.config import load_config
    from common.runs import dump_yaml
    from trainers_jax.config import JaxSFTConfig
    from trainers_jax.lora import build_model, trainable_filter
    from trainers_jax.model import make_mesh

    root = Path(__file__).resolve().parents[1]
    cfg = load_config(
        JaxSFTConfig,
        root / "configs" / "sft_gemma3_270m_cpu.yaml",
        [f"model.path={model_dir}", f"output_dir={tmp_path}", "run_name=r", "lora.rank=2"],
    )
    run = tmp_path / "r"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(dump_yaml(cfg))
    mesh = make_mesh(1, 1)
    model, _ = build_model(cfg, mesh)
    wrt = trainable_filter(cfg.train, model.config.num_layers)
    state = nnx.state(model, wrt)
    leaves = jax.tree_util.tree_leaves(state)
    moved = jax.tree_util.tree_unflatten(
        jax.tree_util.tree_structure(state), [x + 0.01 * (i + 1) for i, x in enumerate(leaves)]
    )
    nnx.update(model, moved)
    optimizer = nnx.Optimizer(model, optax.sgd(0.1), wrt=wrt)
    with mesh:
        ckpt.save_checkpoint(ckpt.checkpoint_manager(run / "checkpoints", 1), 1, model, optimizer, wrt, {})
    return run / "checkpoints" / "1", model, cfg


def trained_leaves(model: Any, cfg: Any) -> list[Any]:
    import jax

    from trainers_jax.lora import trainable_filter

    return jax.tree_util.tree_leaves(nnx.state(model, trainable_filter(cfg.train, model.config.num_layers)))


def test_eval_load_restores_the_trained_params_onto_the_runs_model(tiny_gemma3: Path, tmp_path: Path) -> None:
    step_dir, saved, cfg = saved_lora_run(tmp_path, tiny_gemma3)
    model, tok, loaded_cfg = ckpt.load_checkpoint_for_eval(step_dir)
    assert loaded_cfg.lora.rank == 2 and loaded_cfg.model.path == str(tiny_gemma3)
    want, got = trained_leaves(saved, cfg), trained_leaves(model, loaded_cfg)
    assert len(got) == len(want) > 0 and all(jnp.array_equal(g, w) for g, w in zip(got, want, strict=True))
    assert tok("1 and 2").input_ids  # the base's tokenizer came with it
    assert ckpt.load_checkpoint_for_eval(step_dir, None, "bfloat16")[2].model.dtype == "bfloat16"


def test_eval_load_refuses_a_missing_config_a_wrong_base_and_a_mismatched_checkpoint(
    tiny_gemma3: Path, tiny_gemma2: Path, tmp_path: Path
) -> None:
    step_dir, _, _ = saved_lora_run(tmp_path / "a", tiny_gemma3)
    lone = tmp_path / "lone" / "checkpoints" / "1"
    lone.mkdir(parents=True)
    with pytest.raises(
        InputError, match=r"lone/checkpoints/1: Orbax checkpoint without its run's .*config\.yaml"
    ):
        ckpt.load_checkpoint_for_eval(lone)
    with pytest.raises(InputError, match=r"checkpoints/1: could not restore the Orbax checkpoint's params"):
        ckpt.load_checkpoint_for_eval(step_dir, str(tiny_gemma2))  # another base: other shapes
    (tmp_path / "a" / "r" / "config.yaml").write_text(
        (tmp_path / "a" / "r" / "config.yaml").read_text().replace("rank: 2", "rank: 3")
    )
    with pytest.raises(InputError, match="could not restore"):
        ckpt.load_checkpoint_for_eval(step_dir)


def test_refusal_names_the_run_and_what_it_holds(tmp_path: Path) -> None:
    (tmp_path / "r" / "merged").mkdir(parents=True)
    with pytest.raises(InputError) as err:
        ckpt.prepare_run_dir(run_cfg(tmp_path))
    assert str(err.value).startswith(f"{tmp_path / 'r'}: already holds a run (checkpoints or merged/);")
