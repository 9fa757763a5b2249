"""Supervised fine-tuning on trace records: LoRA (PEFT) or full, packed, completion-only loss.

    python -m trainers_torch.sft --config configs/sft_gemma3_270m_cpu.yaml key=value ...

Read top to bottom: config (``common/sft_config.py``) → data (``common/sft_data.py``,
shared with the JAX trainer) (tokenize, overflow check, packing) → model (LoRA or
full, optional freezing) → the loss (decoder body, then the LM head in chunks on completion
positions only) → the training loop (grad accumulation, clipping, warmup + cosine,
held-out eval, atomic checkpoints, resume) → export (PEFT adapter in ``final/``, merged HF
safetensors in ``merged/``).

Packing: several examples share one row of at most ``data.pack_tokens`` tokens; position ids
restart at 0 for each example and no attention mask is passed, so transformers builds a
block-diagonal causal mask from the position ids (``find_packed_sequence_indices`` in
``masking_utils``; for Gemma 3 it is combined with the sliding window of the sliding layers).
``tests/test_sft_loss.py`` checks packed == unpacked loss with sdpa and eager attention.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from tqdm import tqdm

from common import sft_records
from common.config import config_from_cli
from common.errors import cli
from common.prompts import load_tokenizer
from common.runs import MetricsLogger, RunDir, check_resume, resume_hash, say, seed_everything, write_plots
from common.sft_config import SFTConfig
from common.sft_data import DataPlan, Example, pack_rows
from common.sft_records import SFTData
from evals.heldout import generation_eval, heldout_records
from trainers_torch.checkpoint import load_checkpoint, prepare_run_dir, remove_partial, save_checkpoint
from trainers_torch.data import Batch, collate
from trainers_torch.export import export
from trainers_torch.losses import completion_loss_sum
from trainers_torch.model import (
    build_model,
    check_model_dir,
    generation_mode,
    keep_freed_memory,
    parameter_counts,
    resolve_device,
)
from trainers_torch.optim import build_optimizer, build_scheduler

# --------------------------------------------------------------------------------------------
# The step: micro-batches' summed losses / the step's completion tokens, clip, update
# --------------------------------------------------------------------------------------------


def sft_step(
    model: Any, optimizer: Any, scheduler: Any, micro: list[Batch], cfg: SFTConfig
) -> dict[str, float]:
    """One optimizer step: the mean loss over all completion tokens of its micro-batches
    (gradient accumulation), clipping, the update; returns loss, lr and the pre-clip grad norm."""
    n_targets = sum(b.n_targets for b in micro)
    loss_sum = 0.0
    for b in micro:
        part = completion_loss_sum(model, b, cfg.train.loss_chunk_tokens)
        (part / n_targets).backward()
        loss_sum += part.item()
    params = [p for p in model.parameters() if p.requires_grad]
    max_norm = cfg.optim.max_grad_norm if cfg.optim.max_grad_norm > 0 else float("inf")
    grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
    lr = scheduler.get_last_lr()[0]
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return {"loss": loss_sum / n_targets, "lr": lr, "grad_norm": grad_norm}


# --------------------------------------------------------------------------------------------
# Held-out eval: completion-token loss, and the greedy generation check through evals/
# --------------------------------------------------------------------------------------------


@torch.no_grad()
def heldout_loss(model: Any, examples: list[Example], cfg: SFTConfig, pad_id: int) -> float:
    """Mean completion-token loss on held-out examples (packed in file order)."""
    was_training = model.training
    model.eval()
    rows = pack_rows([len(e) for e in examples], list(range(len(examples))), cfg.data.pack_tokens)
    total, n = 0.0, 0
    for i in range(0, len(rows), cfg.train.micro_batch_rows):
        batch = collate(examples, rows[i : i + cfg.train.micro_batch_rows], pad_id)
        total += completion_loss_sum(model, batch, cfg.train.loss_chunk_tokens).item()
        n += batch.n_targets
    model.train(was_training)
    return total / max(1, n)


def evaluate(
    model: Any, tok: Any, data: SFTData, records: list[dict[str, Any]], cfg: SFTConfig, run: RunDir, step: int,
    final: bool,
) -> dict[str, Any]:  # fmt: skip
    """Held-out loss, and (at the end, or at every eval with ``eval.generate_during``) the
    generation check on ``records``; the training RNG is left where it was."""
    out: dict[str, Any] = {}
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
    with torch.random.fork_rng(devices=[]):
        if data.valid:
            out["valid_loss"] = heldout_loss(model, data.valid, cfg, pad_id)
        if records and (final or cfg.eval.generate_during):
            with generation_mode(model):
                path = run.eval / f"predictions-step-{step:06d}.jsonl"
                out.update(
                    {f"gen_{k}": v for k, v in generation_eval(model, tok, records, cfg, path).items()}
                )
    return out


# --------------------------------------------------------------------------------------------
# Checkpoints: weights (adapter), optimizer, schedule, RNG and the data position
# --------------------------------------------------------------------------------------------


def checkpoint(
    run: RunDir, step: int, model: Any, optimizer: Any, scheduler: Any, plan: DataPlan, tokens_seen: int,
    cfg: SFTConfig,
) -> None:  # fmt: skip
    rows_per_step = cfg.train.micro_batch_rows * cfg.train.grad_accum
    epoch, row = plan.position(step * rows_per_step)
    meta = {"epoch": epoch, "row_in_epoch": row, "rows_seen": step * rows_per_step, "tokens_seen": tokens_seen,
            "config_hash": resume_hash(cfg)}  # fmt: skip
    lora = cfg.train.method == "lora"
    path = save_checkpoint(
        run.checkpoints, step, model, optimizer, scheduler, meta,
        save_adapter=model.save_pretrained if lora else None, keep_last=cfg.checkpoint.keep_last,
    )  # fmt: skip
    say(f"checkpoint saved: {path}")


# --------------------------------------------------------------------------------------------
# The recipe: config → data → model → optimizer → (resume) → loop → eval → export
# --------------------------------------------------------------------------------------------


def train(cfg: SFTConfig) -> dict[str, Any]:
    """Run one SFT job end to end; return its summary (also written to ``summary.json``)."""
    t_start = time.perf_counter()
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    device = resolve_device(cfg.model.device)
    keep_freed_memory(device)
    cfg.model.resolve_dtype(accelerator=device != "cpu")
    run_path, resume_from = prepare_run_dir(cfg)

    # Everything that can fail on bad input happens before the run dir is touched.
    tok = load_tokenizer(check_model_dir(cfg.model.path))
    data = sft_records.load_sft_data(cfg, tok)
    records = heldout_records(cfg)  # the generation check's items
    seed_everything(cfg.seed)  # LoRA init and dropout follow the seed
    model = build_model(cfg.model, cfg.lora, cfg.train)
    rows_per_step = cfg.train.micro_batch_rows * cfg.train.grad_accum
    plan = DataPlan(data.train, cfg.data.pack_tokens, rows_per_step, cfg.seed)
    total_steps = plan.total_steps(cfg.train.epochs, cfg.train.max_steps)
    optimizer = build_optimizer(model, cfg.optim)
    scheduler = build_scheduler(optimizer, total_steps, cfg.optim)
    counts = parameter_counts(model)
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
    start_step, tokens_seen = 0, 0
    if resume_from is not None:  # restore weights, optimizer, schedule and RNG before writing anything
        state = load_checkpoint(resume_from, model, optimizer, scheduler)
        check_resume(state, cfg, resume_from)
        start_step, tokens_seen = int(state["step"]), int(state["tokens_seen"])

    if resume_from is None and cfg.overwrite:
        RunDir(run_path).clear()
    run = RunDir.start(
        run_path,
        cfg,
        data_files=sft_records.data_files(cfg),
        model_dir=cfg.model.path,
        device=device,
        extra={
            "trainer": "trainers_torch.sft",
            "data_report": data.reports,
            "parameters": counts,
            "total_steps": total_steps,
            "rows_per_epoch": len(plan.epoch_rows(0)),
        },
    )
    removed = remove_partial(run.checkpoints)
    if removed:
        say(f"removed unfinished checkpoint writes: {', '.join(removed)}")
    sft_records.announce(cfg, data, plan, total_steps, counts, cfg.train.method)
    if resume_from is not None:
        run.truncate_metrics(start_step)
        say(f"resumed from {resume_from} (step {start_step})")
    elif cfg.resume:
        say(f"resume=true but {run.checkpoints} holds no complete checkpoint: starting from step 0")

    logger = MetricsLogger(run.path)
    model.train()
    bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True, desc=cfg.run_name)
    for step in range(start_step, total_steps):
        t0 = time.perf_counter()
        rows = plan.step_rows(step)
        micro = [collate(data.train, rows[i : i + cfg.train.micro_batch_rows], pad_id)
                 for i in range(0, len(rows), cfg.train.micro_batch_rows)]  # fmt: skip
        out = sft_step(model, optimizer, scheduler, micro, cfg)
        tokens_seen += sum(b.n_tokens for b in micro)
        metrics = sft_records.step_metrics(
            step, out, micro, tokens_seen, time.perf_counter() - t0, plan, rows_per_step
        )
        logger.log(step + 1, **metrics)
        bar.update(1)
        bar.set_postfix(
            loss=f"{out['loss']:.4f}", lr=f"{out['lr']:.2e}", tok_s=f"{metrics['tokens_per_s']:.0f}"
        )
        done = step + 1 == total_steps
        if cfg.eval.every_steps > 0 and (step + 1) % cfg.eval.every_steps == 0 and not done:
            sft_records.log_eval(
                logger, step + 1, evaluate(model, tok, data, records, cfg, run, step + 1, False)
            )
            write_plots(run)
        if done or (cfg.checkpoint.every_steps > 0 and (step + 1) % cfg.checkpoint.every_steps == 0):
            checkpoint(run, step + 1, model, optimizer, scheduler, plan, tokens_seen, cfg)
    bar.close()
    final_eval = evaluate(model, tok, data, records, cfg, run, total_steps, True)
    sft_records.log_eval(logger, total_steps, final_eval)
    logger.close()
    write_plots(run)
    exported = export(model, tok, cfg.train.method, run.path) if cfg.export else {}
    resumed = start_step if resume_from is not None else None
    summary = sft_records.summary(
        run, total_steps, final_eval, len(data.train), tokens_seen, t_start, resumed, **exported
    )
    return run.complete(summary, sft_records.done_line(summary))


@cli
def main(argv: list[str] | None = None) -> int:
    train(config_from_cli(SFTConfig, argv, "python -m trainers_torch.sft", __doc__))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
