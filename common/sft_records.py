"""What both SFT trainers load, print and write around their loop: the tokenized train and
held-out examples, the start lines, each held-out eval's metrics line, and ``summary.json``."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from common.runs import MetricsLogger, RunDir, read_metrics, say
from common.sft_config import SFTConfig
from common.sft_data import DataPlan, Example, overflow_line, tokenize_records, tokenize_train


@dataclass
class SFTData:
    train: list[Example]
    valid: list[Example]  # the held-out loss's examples (empty without data.valid)
    reports: dict[str, dict[str, Any] | None]  # {"train", "valid"}: tokenize_records' reports


def load_sft_data(cfg: SFTConfig, tok: Any) -> SFTData:
    """The train examples (a seeded sample of ``data.train_limit``, plus each ``data.mix`` file's
    sample) and the held-out ones."""
    train, train_report = tokenize_train(cfg.data, tok, cfg.seed)
    valid: list[Example] = []
    valid_report = None
    if cfg.data.valid:
        valid, _, valid_report = tokenize_records(cfg.data.valid, tok, cfg.data, cfg.data.valid_limit)
    return SFTData(train, valid, {"train": train_report, "valid": valid_report})


def data_files(cfg: SFTConfig) -> dict[str, str]:
    """The record files a run's manifest hashes (the mix files as ``mix1``, ``mix2``, ...)."""
    mix = {f"mix{k + 1}": part.path for k, part in enumerate(cfg.data.mix)}
    return {"train": cfg.data.train, **mix, **({"valid": cfg.data.valid} if cfg.data.valid else {})}


def announce(
    cfg: SFTConfig, data: SFTData, plan: DataPlan, total_steps: int, counts: dict[str, int], method: str
) -> None:
    """The start lines: what each data file gave, and what trains on how many rows."""
    for report in data.reports.values():
        if report:
            say(overflow_line(report))
    rows_per_step = cfg.train.micro_batch_rows * cfg.train.grad_accum
    say(
        f"model {cfg.model.path} ({method}): {counts['trainable']:,} of {counts['total']:,} parameters "
        f"train; {len(data.train)} examples → {len(plan.epoch_rows(0))} packed rows/epoch "
        f"(pack_tokens={cfg.data.pack_tokens}); {total_steps} steps of {rows_per_step} rows"
    )


def log_eval(logger: MetricsLogger, step: int, out: dict[str, Any]) -> None:
    """Log a held-out eval's metrics at ``step`` and print them on one line."""
    if not out:
        return
    logger.log(step, **out)
    say(
        f"step {step}: "
        + ", ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in out.items())
    )


def summary(
    run: RunDir,
    total_steps: int,
    final_eval: dict[str, Any],
    n_examples: int,
    tokens_seen: int,
    t_start: float,
    resumed_from_step: int | None,
    **extra: Any,
) -> dict[str, Any]:
    """``summary.json`` of an SFT run, its rates read back from ``metrics.jsonl`` (all attempts)."""
    records = [r for r in read_metrics(run.path) if "loss" in r]
    examples_seen = sum(r.get("examples", 0) for r in records)
    step_seconds = sum(r.get("step_time_s", 0.0) for r in records)
    head = {k: extra.pop(k) for k in ("trainer",) if k in extra}
    return {
        "run_dir": str(run.path),
        **head,
        "steps": total_steps,
        "final_loss": records[-1]["loss"] if records else None,
        "valid_loss": final_eval.get("valid_loss"),
        "final_eval": final_eval,
        "examples": n_examples,
        "examples_seen": examples_seen,
        "tokens_seen": tokens_seen,
        "train_seconds": round(step_seconds, 2),  # optimizer steps only (no eval/checkpoints), all attempts
        "samples_per_s": round(examples_seen / step_seconds, 3) if step_seconds > 0 else None,
        "tokens_per_s": round(tokens_seen / step_seconds, 1) if step_seconds > 0 else None,
        "wall_seconds_this_attempt": round(time.perf_counter() - t_start, 2),
        "resumed_from_step": resumed_from_step,
        **extra,
    }


def done_line(summary: dict[str, Any]) -> str:
    line = f"done: {summary['run_dir']} (final loss {summary['final_loss']:.4f}"
    if summary["valid_loss"] is not None:
        return line + f", valid loss {summary['valid_loss']:.4f})"
    return line + ")"


def step_metrics(
    step: int,
    out: dict[str, float],
    batches: list[Any],
    tokens_seen: int,
    seconds: float,
    plan: DataPlan,
    rows_per_step: int,
) -> dict[str, Any]:
    """One optimizer step's ``metrics.jsonl`` record (0-based ``step``; ``out``: loss, lr, grad_norm;
    ``batches``: its micro-batches, numpy or torch, with n_tokens / n_targets / n_examples)."""
    n_tokens = sum(b.n_tokens for b in batches)
    return {
        **out,
        "tokens_per_s": n_tokens / seconds,
        "tokens": n_tokens,
        "completion_tokens": sum(b.n_targets for b in batches),
        "examples": sum(b.n_examples for b in batches),
        "tokens_seen": tokens_seen,
        "epoch": round(plan.epoch_float((step + 1) * rows_per_step), 4),
        "step_time_s": round(seconds, 4),
    }
