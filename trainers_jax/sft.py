"""Supervised fine-tuning on Tunix (Flax NNX): LoRA (qwix) or full, packed, completion-only loss.

    python -m trainers_jax.sft --config configs/sft_gemma3_270m_cpu.yaml key=value ... [mesh.fsdp=2]

The JAX twin of ``trainers_torch.sft``: the same YAML keys (``common/sft_config.py``) plus
``mesh: {fsdp, tp}``, the same data rows in the same order (``common/sft_data.py``), the same
loss, schedule and ``metrics.jsonl`` fields, so reports and plots read both.

Read top to bottom: config (``trainers_jax/config.py``) → data (``common/sft_records.py``) →
model (Tunix Gemma 3 or 2 from HF safetensors on the mesh, qwix LoRA or full, optional
freezing: ``trainers_jax/lora.py``) → optimizer and step (optax: ``trainers_jax/optim.py``; the
loss: decoder body, block-diagonal causal mask from the segment ids (on Gemma 3 only within a
band of ``data.max_len`` tokens, ``trainers_jax/attention.py``), LM head in chunks on
completion positions only, ``trainers_jax/losses.py``) → the loop (grad accumulation,
clipping, warmup + cosine, held-out loss, Orbax checkpoints in ``trainers_jax/checkpoint.py``,
resume) → export (merged HF safetensors in ``merged/``, ``trainers_jax/export.py``).

Why not Tunix's ``PeftTrainer``: its loop averages per-micro-batch mean losses under
gradient accumulation and owns the data iteration, metrics names and checkpoint layout. The
torch recipe's semantics are a mean over *all* completion tokens of the optimizer step
(micro-batches weighted by their target counts), rows chosen by ``DataPlan`` as a pure
function of ``(seed, step)``, and the shared ``metrics.jsonl`` fields. Expressing those
through PeftTrainer's hooks would hide more than it saves, so the step below is a short nnx
loop; it still uses Tunix's model code and loader, qwix for LoRA and Orbax for checkpoints.

Differences from torch that the frameworks force (and say so at start-up):
- LoRA targets: Tunix fuses k and v (``kv_einsum``, or q/k/v in ``qkv_einsum`` when there
  are as many kv heads as heads), so ``k_proj``/``v_proj`` pick the fused module.
- ``lora.dropout`` is not applied (qwix's LoRA dropout needs an rng stream inside the module
  call; the trainer runs deterministic). ``optim.name: adafactor`` is optax's Adafactor, not
  torch's; ``model.attn_implementation`` and ``train.threads`` are torch-only.

The held-out generation check (``eval.generate_n`` greedy completions, ``gen_*`` metrics and
``eval/predictions-step-*.jsonl``) is ``evals.heldout``, the torch trainer's own, on the LoRA
model as trained through Tunix's sampler.
"""

from __future__ import annotations

import time
from typing import Any

import jax
from tqdm import tqdm

from common import sft_data, sft_records
from common.config import config_from_cli
from common.errors import cli
from common.runs import (
    MetricsLogger,
    RunDir,
    check_resume,
    resume_hash,
    say,
    write_plots,
)
from common.sft_config import SFTConfig, lr_factor
from common.sft_data import DataPlan, Example, pack_rows
from common.sft_records import SFTData
from evals.heldout import generation_eval, heldout_records
from trainers_jax.checkpoint import checkpoint_manager, prepare_run_dir, restore_checkpoint, save_checkpoint
from trainers_jax.config import JaxSFTConfig
from trainers_jax.export import export_merged
from trainers_jax.lora import build_model, parameter_counts, trainable_filter
from trainers_jax.losses import device_arrays, eval_loss_sum
from trainers_jax.model import make_mesh, use_compilation_cache
from trainers_jax.optim import build_optimizer, train_step

# --------------------------------------------------------------------------------------------
# Held-out eval: completion-token loss, and the greedy generation check through evals/
# --------------------------------------------------------------------------------------------


def heldout_loss(model: Any, examples: list[Example], cfg: SFTConfig, pad_id: int) -> float:
    """Mean completion-token loss on held-out examples (packed in file order), as in torch."""
    rows = pack_rows([len(e) for e in examples], list(range(len(examples))), cfg.data.pack_tokens)
    total, n = 0.0, 0
    for i in range(0, len(rows), cfg.train.micro_batch_rows):
        batch = sft_data.collate(examples, rows[i : i + cfg.train.micro_batch_rows], pad_id)
        arrays = device_arrays(batch, cfg.train.loss_chunk_tokens, cfg.data.pack_tokens, cfg.data.max_len)
        total += float(eval_loss_sum(model, arrays, cfg.train.loss_chunk_tokens))
        n += batch.n_targets
    return total / max(1, n)


def evaluate(
    model: Any, tok: Any, data: SFTData, records: list[dict[str, Any]], cfg: JaxSFTConfig, run: RunDir,
    step: int, final: bool, mesh: Any,
) -> dict[str, Any]:  # fmt: skip
    """Held-out loss, and (at the end, or at every eval with ``eval.generate_during``) the
    generation check on ``records`` with the LoRA model as trained (Tunix sampler)."""
    out: dict[str, Any] = {}
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
    with mesh:
        if data.valid:
            out["valid_loss"] = heldout_loss(model, data.valid, cfg, pad_id)
        if records and (final or cfg.eval.generate_during):
            path = run.eval / f"predictions-step-{step:06d}.jsonl"
            out.update({f"gen_{k}": v for k, v in generation_eval(model, tok, records, cfg, path).items()})
    return out


# --------------------------------------------------------------------------------------------
# The recipe: config → data → model → optimizer → (resume) → loop → eval → export
# --------------------------------------------------------------------------------------------


def train(cfg: JaxSFTConfig) -> dict[str, Any]:
    """Run one SFT job end to end; return its summary (also written to ``summary.json``)."""
    t_start = time.perf_counter()
    cfg.model.resolve_dtype(accelerator=jax.default_backend() != "cpu")
    run_path = prepare_run_dir(cfg)

    # Everything that can fail on bad input happens before the run dir is touched.
    xla_cache = use_compilation_cache()  # a rerun or resume loads its compiled programs
    mesh = make_mesh(cfg.mesh.fsdp, cfg.mesh.tp)
    model, tok = build_model(cfg, mesh)
    data = sft_records.load_sft_data(cfg, tok)
    records = heldout_records(cfg)  # the generation check's items
    rows_per_step = cfg.train.micro_batch_rows * cfg.train.grad_accum
    plan = DataPlan(data.train, cfg.data.pack_tokens, rows_per_step, cfg.seed)
    total_steps = plan.total_steps(cfg.train.epochs, cfg.train.max_steps)
    wrt = trainable_filter(cfg.train, model.config.num_layers)
    with mesh:
        optimizer = build_optimizer(model, cfg, wrt, total_steps)
    counts = parameter_counts(model, wrt)
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
    chunk = cfg.train.loss_chunk_tokens
    lora_alpha = cfg.lora.alpha if cfg.train.method == "lora" else None

    if cfg.overwrite and not cfg.resume:
        RunDir(run_path).clear()
    notes = []
    if cfg.train.method == "lora" and cfg.lora.dropout > 0:
        notes.append(
            f"lora.dropout={cfg.lora.dropout} is not applied by the JAX trainer (deterministic LoRA)"
        )
    lost = cfg.model.lost_updates_note(cfg.train.method, adapters_in_float32=False)
    if lost:
        notes.append(lost)
    run = RunDir.start(
        run_path,
        cfg,
        data_files=sft_records.data_files(cfg),
        model_dir=cfg.model.path,
        device=f"{jax.devices()[0].platform} x{len(mesh.devices.flat)} (fsdp={cfg.mesh.fsdp}, tp={cfg.mesh.tp})",
        extra={
            "trainer": "trainers_jax.sft",
            "xla_cache": xla_cache,
            "data_report": data.reports,
            "parameters": counts,
            "total_steps": total_steps,
            "rows_per_epoch": len(plan.epoch_rows(0)),
            "notes": notes,
        },
    )
    for note in notes:
        say(f"note: {note}")
    sft_records.announce(cfg, data, plan, total_steps, counts, f"{cfg.train.method}, JAX")

    mgr = checkpoint_manager(run.checkpoints, cfg.checkpoint.keep_last)
    start_step, tokens_seen = 0, 0
    latest = mgr.latest_step() if cfg.resume else None
    if latest is not None:
        with mesh:
            meta = restore_checkpoint(mgr, latest, model, optimizer, wrt)
        check_resume(meta, cfg, f"{run.checkpoints}/{latest}")
        start_step, tokens_seen = int(meta["step"]), int(meta["tokens_seen"])
        run.truncate_metrics(start_step)
        say(f"resumed from {run.checkpoints}/{latest} (step {start_step})")
    elif cfg.resume:
        say(f"resume=true but {run.checkpoints} holds no complete checkpoint: starting from step 0")

    logger = MetricsLogger(run.path)
    bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True, desc=cfg.run_name)
    for step in range(start_step, total_steps):
        t0 = time.perf_counter()
        rows = plan.step_rows(step)
        batches = [sft_data.collate(data.train, rows[i : i + cfg.train.micro_batch_rows], pad_id)
                   for i in range(0, len(rows), cfg.train.micro_batch_rows)]  # fmt: skip
        n_targets = sum(b.n_targets for b in batches)
        lr = cfg.optim.lr * lr_factor(step, total_steps, cfg.optim)
        with mesh:
            micro = [device_arrays(b, chunk, cfg.data.pack_tokens, cfg.data.max_len) for b in batches]
            loss, grad_norm = train_step(model, optimizer, micro, n_targets, chunk, wrt)
        tokens_seen += sum(b.n_tokens for b in batches)
        out = {"loss": loss, "lr": lr, "grad_norm": grad_norm}
        metrics = sft_records.step_metrics(
            step, out, batches, tokens_seen, time.perf_counter() - t0, plan, rows_per_step
        )
        logger.log(step + 1, **metrics)
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", tok_s=f"{metrics['tokens_per_s']:.0f}")
        done = step + 1 == total_steps
        if cfg.eval.every_steps > 0 and (step + 1) % cfg.eval.every_steps == 0 and not done:
            out = evaluate(model, tok, data, records, cfg, run, step + 1, False, mesh)
            sft_records.log_eval(logger, step + 1, out)
        if done or (cfg.checkpoint.every_steps > 0 and (step + 1) % cfg.checkpoint.every_steps == 0):
            epoch, row = plan.position((step + 1) * rows_per_step)
            meta = {"step": step + 1, "epoch": epoch, "row_in_epoch": row, "rows_seen": (step + 1) * rows_per_step,
                    "tokens_seen": tokens_seen, "config_hash": resume_hash(cfg)}  # fmt: skip
            with mesh:
                save_checkpoint(mgr, step + 1, model, optimizer, wrt, meta)
            say(f"checkpoint saved: {run.checkpoints}/{step + 1}")
    bar.close()
    mgr.close()
    final_eval = evaluate(model, tok, data, records, cfg, run, total_steps, True, mesh)
    sft_records.log_eval(logger, total_steps, final_eval)
    logger.close()
    write_plots(run)
    exported = {}
    if cfg.export:
        exported["merged"] = str(export_merged(model, tok, cfg.model.path, run.path / "merged", lora_alpha))
    resumed = start_step if latest is not None else None
    summary = sft_records.summary(
        run, total_steps, final_eval, len(data.train), tokens_seen, t_start, resumed,
        trainer="trainers_jax.sft", **exported,
    )  # fmt: skip
    return run.complete(summary, sft_records.done_line(summary))


@cli
def main(argv: list[str] | None = None) -> int:
    train(config_from_cli(JaxSFTConfig, argv, "python -m trainers_jax.sft", __doc__))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
