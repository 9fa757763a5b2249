"""Learn a Collatz ranking function V(n) > 0: an MLP that should decrease along every orbit step.

    python -m trainers_torch.collatz --config configs/collatz_cpu.yaml key=value ...

Read top to bottom: config (``common/collatz_config.py``, the same YAML drives
``trainers_jax.collatz``) → data (``common/collatz.py``: a fresh batch every step, random odd
states plus the seed curriculum and mined states, leak-filtered by the protocol) → model and loss
(``trainers_torch/ranking.py``) → the loop (curriculum, mining, AdamW with the plateau factor,
metrics, atomic checkpoints, ``resume=true``) → export (``final/model.safetensors`` +
``model.json``, which ``python -m evals.collatz --run runs/<name>`` scores). What is decided
when is ``common/collatz_train.py``, shared with the JAX recipe step for step.
"""

from __future__ import annotations

import pickle
import time
from functools import partial
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError

from common import collatz_train as plan
from common.collatz_config import CollatzConfig
from common.config import config_from_cli
from common.errors import InputError, cli
from common.runs import say
from trainers_torch.checkpoint import latest_checkpoint, load_checkpoint, remove_partial, save_checkpoint
from trainers_torch.ranking import (
    RankingMLP,
    batch_tensors,
    build_model,
    build_optimizer,
    margins,
    ranking_loss,
)

BACKEND = "torch"


# --------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------


def restore(path: Path, model: RankingMLP, optimizer: torch.optim.Optimizer, plateau: Any) -> dict[str, Any]:
    """``load_checkpoint`` with every way a damaged file can fail turned into one ``InputError``."""
    try:
        return load_checkpoint(path, model, optimizer, plateau)
    except (
        OSError,
        RuntimeError,
        ValueError,
        KeyError,
        EOFError,
        pickle.UnpicklingError,
        SafetensorError,
    ) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise InputError(f"{path}: unreadable checkpoint ({first[:200]})") from None


# --------------------------------------------------------------------------------------------
# The training loop
# --------------------------------------------------------------------------------------------


def train(cfg: CollatzConfig) -> dict[str, Any]:
    """Run one training job end to end; return its summary (also ``summary.json``)."""
    t_start = time.perf_counter()
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    ckpts = Path(cfg.output_dir) / cfg.run_name / "checkpoints"
    resume_from = latest_checkpoint(ckpts) if cfg.resume else None
    run_path = plan.prepare_run_dir(cfg, latest_checkpoint(ckpts) is not None)

    sampler = plan.build_sampler(cfg)
    valid = plan.validation_batch(cfg)
    model = build_model(cfg)
    optimizer = build_optimizer(model, cfg)
    plateau = plan.make_plateau(cfg)
    start_step, clock = 0, plan.StepClock()
    if resume_from is not None:  # weights, optimizer, plateau, sampler and RNG before anything is written
        state = restore(resume_from, model, optimizer, plateau)
        start_step, clock = plan.restore_state(cfg, resume_from, state, sampler, plateau)

    n_params = sum(p.numel() for p in model.parameters())
    run = plan.start_run(cfg, run_path, BACKEND, sampler, n_params, resume_from, start_step)
    removed = remove_partial(run.checkpoints)
    if removed:
        say(f"removed unfinished checkpoint writes: {', '.join(removed)}")

    selection = plan.Selection(cfg, run, BACKEND, resume_from is not None)
    progress = plan.Progress(cfg, run, start_step)
    for step in range(start_step, cfg.train.steps):
        anchor = plan.before_step(cfg, sampler, step)
        plan.mine(cfg, sampler, step, partial(margins, model), progress)

        clock.start()
        batch = sampler.batch(cfg.train.batch_size)
        clock.data_done()
        lr = plan.learning_rate(cfg, plateau, step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss, parts = ranking_loss(model, batch_tensors(batch), cfg.loss, anchor)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        progress.losses.append(loss.item())
        plateau.step(progress.losses[-1])
        clock.step_done()

        steps_done = step + 1
        if progress.due(steps_done, cfg.train.log_every):
            figures = {k: v.item() for k, v in parts.items() if k != "margin"}
            violations = int((parts["margin"] <= 0).sum())
            beta = model.drift_coef.item()
            progress.record(steps_done, sampler, clock, figures, violations, lr, anchor, beta)
        if progress.due(steps_done, cfg.train.valid_every):
            chosen = selection.update(steps_done, model.export_params(), model.drift_coef.item())
            progress.log(steps_done, **plan.valid_figures(margins(model, valid), valid), **chosen)
        if progress.due(steps_done, cfg.checkpoint.every_steps):
            state = plan.checkpoint_state(cfg, steps_done, sampler, plateau, clock)
            keep = cfg.checkpoint.keep_last
            path = save_checkpoint(
                run.checkpoints, steps_done, model, optimizer, plateau, state, keep_last=keep
            )
            say(f"checkpoint saved: {path}")
        progress.bar.update(1)
    progress.close()

    # ---- export: the weights as numpy (final/), scored by evals.collatz whichever backend trained them
    extra = {"parameters": n_params, "wall_seconds_this_attempt": round(time.perf_counter() - t_start, 2),
             "resumed_from_step": start_step if resume_from is not None else None,
             **selection.summary()}  # fmt: skip
    return plan.finish(
        cfg, run, BACKEND, sampler, clock, model.export_params(), model.drift_coef.item(), extra
    )


@cli
def main(argv: list[str] | None = None) -> int:
    train(config_from_cli(CollatzConfig, argv, "python -m trainers_torch.collatz", __doc__))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
