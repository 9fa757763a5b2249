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
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from tqdm import tqdm

from common import collatz_train as plan
from common.collatz import save_export
from common.collatz_config import CollatzConfig
from common.config import config_from_cli
from common.errors import InputError, cli
from common.runs import MetricsLogger, say
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
    run = plan.start_run(cfg, run_path, BACKEND, sampler, n_params, resumed=resume_from is not None)
    removed = remove_partial(run.checkpoints)
    if removed:
        say(f"removed unfinished checkpoint writes: {', '.join(removed)}")
    if resume_from is not None:
        run.truncate_metrics(start_step)
        say(f"resumed from {resume_from} (step {start_step})")
    elif cfg.resume:
        say(f"resume=true but {run.checkpoints} holds no complete checkpoint: starting from step 0")
    say(
        f"{cfg.protocol} protocol: {len(sampler.seeds)} of {len(cfg.task.seeds)} training seeds kept; "
        f"MLP {cfg.model.widths}, {n_params:,} parameters; {cfg.train.steps} steps of {cfg.train.batch_size}"
    )

    logger = MetricsLogger(run.path, tensorboard=False)
    window: list[float] = []
    bar = tqdm(
        total=cfg.train.steps,
        initial=start_step,
        unit="step",
        dynamic_ncols=True,
        desc=cfg.run_name,
        mininterval=5,
    )
    for step in range(start_step, cfg.train.steps):
        anchor = plan.before_step(cfg, sampler, step)
        if plan.mining_due(cfg, step):
            cands = plan.mining_candidates(cfg, sampler)
            logger.log(step, **plan.add_mined(cfg, sampler, cands, margins(model, cands)))

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
        loss_value = loss.item()
        plateau.step(loss_value)
        clock.step_done()
        window.append(loss_value)

        done = step + 1 == cfg.train.steps
        if (step + 1) % cfg.train.log_every == 0 or done:
            parts_f = {k: v.item() for k, v in parts.items() if k != "margin"}
            rate = (step + 1) * cfg.train.batch_size / clock.total  # all attempts
            violations = int((parts["margin"] <= 0).sum())
            record = plan.step_record(
                cfg, sampler, window, parts_f, violations, lr, anchor, model.drift_coef.item(), rate
            )
            logger.log(step + 1, **record)
            bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{lr:.1e}")
            window.clear()
        if (step + 1) % cfg.train.valid_every == 0 or done:
            logger.log(step + 1, **plan.valid_figures(margins(model, valid), valid))
        if done or (step + 1) % cfg.checkpoint.every_steps == 0:
            state = plan.checkpoint_state(cfg, step + 1, sampler, plateau, clock)
            path = save_checkpoint(
                run.checkpoints,
                step + 1,
                model,
                optimizer,
                plateau,
                state,
                keep_last=cfg.checkpoint.keep_last,
            )
            say(f"checkpoint saved: {path}")
        bar.update(1)
    bar.close()
    logger.close()

    # ---- export: the weights as numpy, scored by evals.collatz whichever backend trained them
    meta = plan.export_meta(cfg, BACKEND, float(model.drift_coef), cfg.train.steps)
    save_export(run.path / "final", model.export_params(), meta)
    summary = plan.finish(
        cfg, run, BACKEND, sampler, clock,
        {"parameters": n_params, "wall_seconds_this_attempt": round(time.perf_counter() - t_start, 2),
         "resumed_from_step": start_step if resume_from is not None else None},
    )  # fmt: skip
    say(f"done: {run.path} (loss {summary['final_loss']:.4f}, valid pass {summary['valid_pass']}%)")
    return summary


@cli
def main(argv: list[str] | None = None) -> int:
    train(config_from_cli(CollatzConfig, argv, "python -m trainers_torch.collatz", __doc__))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
