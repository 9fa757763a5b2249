"""Learn a Collatz ranking function V(n) > 0 in JAX: the twin of ``trainers_torch.collatz``.

    python -m trainers_jax.collatz --config configs/collatz_cpu.yaml key=value ...

The same YAML keys (``common/collatz_config.py``), the same batches in the same order (the
sampler in ``common/collatz.py`` is seeded by ``seed`` alone), the same decisions step for step
(``common/collatz_train.py``), the same loss (``trainers_jax/ranking.py``) and the same export,
so ``python -m evals.collatz --run runs/<name>`` scores either backend's run. Read top to
bottom: config → data → model (a pytree MLP, torch's init) → the loop (jitted AdamW step with
the plateau factor, mining, metrics, Orbax checkpoints, ``resume=true``) → export.

``train.threads`` becomes XLA's CPU flags when it is set and ``XLA_FLAGS`` does not already
say otherwise (they take effect because no JAX computation has run yet).
"""

from __future__ import annotations

import time
from functools import partial
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp

from common import collatz_train as plan
from common.collatz_config import CollatzConfig
from common.config import config_from_cli
from common.errors import cli
from common.runs import say
from trainers_jax.checkpoint import checkpoint_manager
from trainers_jax.ranking import (
    batch_arrays,
    export_params,
    init_params,
    limit_threads,
    make_optimizer,
    make_train_step,
    margins,
    restore_checkpoint,
    save_checkpoint,
)

BACKEND = "jax"


def drift_value(params: dict[str, Any], cfg: CollatzConfig) -> float:
    """β: trained (adaptive target) or the config's."""
    return float(params["drift_coef"]) if "drift_coef" in params else cfg.loss.drift_coef


# --------------------------------------------------------------------------------------------
# The training loop
# --------------------------------------------------------------------------------------------


def train(cfg: CollatzConfig) -> dict[str, Any]:
    """Run one training job end to end; return its summary (also ``summary.json``)."""
    t_start = time.perf_counter()
    limit_threads(cfg.train.threads)
    mgr = checkpoint_manager(Path(cfg.output_dir) / cfg.run_name / "checkpoints", cfg.checkpoint.keep_last)
    latest = mgr.latest_step()
    resume_from = latest if cfg.resume else None
    run_path = plan.prepare_run_dir(cfg, latest is not None)

    sampler = plan.build_sampler(cfg)
    valid = plan.validation_batch(cfg)
    learn_drift = cfg.loss.target == "adaptive"
    params = init_params(
        jax.random.key(cfg.seed),
        cfg.task.lookahead,
        cfg.model.widths,
        cfg.loss.drift_coef,
        learn_drift,
        zero_output=cfg.model.base != "none",
    )
    optimizer = make_optimizer(cfg.optim)
    opt_state = optimizer.init(params)
    train_step = make_train_step(cfg.loss, optimizer, cfg.loss.drift_coef)
    plateau = plan.make_plateau(cfg)
    start_step, clock = 0, plan.StepClock()
    if resume_from is not None:  # weights, optimizer, plateau and sampler before anything is written
        params, opt_state, state = restore_checkpoint(mgr, resume_from, params, opt_state)
        start_step, clock = plan.restore_state(
            cfg, Path(mgr.directory) / str(resume_from), state, sampler, plateau
        )

    n_params = sum(int(p.size) for p in jax.tree.leaves(params))
    where = Path(mgr.directory) / str(resume_from) if resume_from is not None else None
    run = plan.start_run(cfg, run_path, BACKEND, sampler, n_params, where, start_step)
    if resume_from is None and cfg.overwrite:  # start_run cleared checkpoints/: a manager on the empty dir
        mgr.close()
        mgr = checkpoint_manager(run.checkpoints, cfg.checkpoint.keep_last)

    selection = plan.Selection(cfg, run, BACKEND, resume_from is not None)
    progress = plan.Progress(cfg, run, start_step)
    for step in range(start_step, cfg.train.steps):
        anchor = plan.before_step(cfg, sampler, step)
        plan.mine(cfg, sampler, step, partial(margins, params), progress)

        clock.start()
        batch = batch_arrays(sampler.batch(cfg.train.batch_size))
        clock.data_done()
        lr = plan.learning_rate(cfg, plateau, step)
        params, opt_state, loss, parts = train_step(
            params, opt_state, batch, jnp.float32(anchor), jnp.float32(lr)
        )
        progress.losses.append(float(loss))  # waits for the step: the clock measures the computation
        plateau.step(progress.losses[-1])
        clock.step_done()

        steps_done = step + 1
        if progress.due(steps_done, cfg.train.log_every):
            figures = {k: float(v) for k, v in parts.items() if k != "margin"}
            violations = int((parts["margin"] <= 0).sum())
            progress.record(
                steps_done, sampler, clock, figures, violations, lr, anchor, drift_value(params, cfg)
            )
        if progress.due(steps_done, cfg.train.valid_every):
            chosen = selection.update(steps_done, export_params(params), drift_value(params, cfg))
            progress.log(steps_done, **plan.valid_figures(margins(params, valid), valid), **chosen)
        if progress.due(steps_done, cfg.checkpoint.every_steps):
            state = plan.checkpoint_state(cfg, steps_done, sampler, plateau, clock)
            save_checkpoint(mgr, steps_done, params, opt_state, state)
            say(f"checkpoint saved: {mgr.directory / str(steps_done)}")
        progress.bar.update(1)
    progress.close()
    mgr.close()

    # ---- export: the weights as numpy (final/), scored by evals.collatz whichever backend trained them
    extra = {"parameters": n_params, "wall_seconds_this_attempt": round(time.perf_counter() - t_start, 2),
             "resumed_from_step": start_step if resume_from is not None else None,
             **selection.summary()}  # fmt: skip
    return plan.finish(
        cfg, run, BACKEND, sampler, clock, export_params(params), drift_value(params, cfg), extra
    )


@cli
def main(argv: list[str] | None = None) -> int:
    train(config_from_cli(CollatzConfig, argv, "python -m trainers_jax.collatz", __doc__))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
