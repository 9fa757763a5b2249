"""Orbax checkpoints of the JAX trainers: the trainable params, the optimizer state and a JSON
meta item per step (written to a temp dir and renamed when complete), restored for resume or,
params only, for evaluation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flax import nnx

from common.config import load_config
from common.errors import InputError
from common.runs import refuse_existing_run
from trainers_jax.config import JaxSFTConfig
from trainers_jax.lora import build_model, trainable_filter
from trainers_jax.model import make_mesh


def checkpoint_manager(path: Path, keep_last: int) -> Any:
    import orbax.checkpoint as ocp

    options = ocp.CheckpointManagerOptions(max_to_keep=max(1, keep_last), create=True)
    return ocp.CheckpointManager(path.resolve(), options=options)


def save_checkpoint(
    mgr: Any, step: int, model: Any, optimizer: nnx.Optimizer, wrt: Any, meta: dict[str, Any]
) -> None:
    """Orbax writes into a temp dir and renames it when complete: a killed save leaves no step."""
    import orbax.checkpoint as ocp

    mgr.save(
        step,
        args=ocp.args.Composite(
            params=ocp.args.StandardSave(nnx.state(model, wrt)),
            optimizer=ocp.args.StandardSave(nnx.state(optimizer, nnx.optimizer.OptState)),
            meta=ocp.args.JsonSave(meta),
        ),
    )
    mgr.wait_until_finished()


def restore_checkpoint(mgr: Any, step: int, model: Any, optimizer: nnx.Optimizer, wrt: Any) -> dict[str, Any]:
    import orbax.checkpoint as ocp

    restored = mgr.restore(
        step,
        args=ocp.args.Composite(
            params=ocp.args.StandardRestore(nnx.state(model, wrt)),
            optimizer=ocp.args.StandardRestore(nnx.state(optimizer, nnx.optimizer.OptState)),
            meta=ocp.args.JsonRestore(),
        ),
    )
    nnx.update(model, restored["params"])
    nnx.update(optimizer, restored["optimizer"])
    return dict(restored["meta"])


def load_checkpoint_for_eval(
    step_dir: str | Path, base: str | None = None, dtype: str | None = None
) -> tuple[Any, Any, JaxSFTConfig]:
    """``(model, tokenizer, run config)`` from one checkpoint step dir of a ``trainers_jax.sft`` run.

    The run is ``step_dir``'s grandparent (``runs/<name>/checkpoints/<step>``); its
    ``config.yaml`` gives the base model (``base`` overrides it), the dtype (``dtype``
    overrides it) and the LoRA settings. The model is built as the trainer builds it, on a
    one-device mesh, and only the checkpoint's ``params`` item is read (not the optimizer).
    A checkpoint that does not restore onto that model is an ``InputError`` naming it.
    """
    import orbax.checkpoint as ocp

    step_dir = Path(step_dir)
    cfg_path = step_dir.parent.parent / "config.yaml"
    if not cfg_path.is_file():
        raise InputError(f"{step_dir}: Orbax checkpoint without its run's {cfg_path}")
    overrides = [f"model.path={base}"] if base else []
    cfg = load_config(JaxSFTConfig, cfg_path, [*overrides, *([f"model.dtype={dtype}"] if dtype else [])])
    mesh = make_mesh(1, 1)
    model, tok = build_model(cfg, mesh)
    wrt = trainable_filter(cfg.train, model.config.num_layers)
    checkpointer = ocp.Checkpointer(ocp.CompositeCheckpointHandler())
    try:
        with mesh:
            restored = checkpointer.restore(
                step_dir.resolve(),
                args=ocp.args.Composite(params=ocp.args.StandardRestore(nnx.state(model, wrt))),
            )
    except Exception as err:  # orbax / tensorstore raise many types for a damaged or mismatched checkpoint
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise InputError(
            f"{step_dir}: could not restore the Orbax checkpoint's params: {first[:300]}"
        ) from None
    finally:
        checkpointer.close()
    nnx.update(model, restored["params"])
    return model, tok, cfg


def prepare_run_dir(cfg: Any) -> Path:
    """The run dir of an SFT or GRPO config; refuses to clobber an existing run unless the config
    resumes (from the newest complete Orbax step) or overwrites it."""
    run_path = Path(cfg.output_dir) / cfg.run_name
    has_run = any((run_path / "checkpoints").glob("[0-9]*")) or (run_path / "merged").exists()
    refuse_existing_run(run_path, has_run, cfg.resume, cfg.overwrite, "checkpoints or merged/")
    return run_path
