"""The GRPO prompts both trainers share: record file → prompt strings and ids, the seeded
order of prompts step by step, and the shared rewards' scores of their completions."""

from __future__ import annotations

import functools
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.errors import InputError
from common.grpo_config import GRPOConfig, PromptDataConfig
from common.prompts import format_prompt
from common.records import iter_records


@dataclass
class Prompt:
    record: dict[str, Any]
    line: int
    text: str
    ids: list[int]


def load_prompts(
    path: str | Path, tok: Any, cfg: PromptDataConfig, limit: int | None = None, seed: int | None = None
) -> tuple[list[Prompt], dict[str, Any]]:
    """The prompts of a record file that fit ``max_prompt_tokens``, and a report of the rest.

    ``limit`` keeps that many (a seeded sample when ``seed`` is given, else the first ones).
    """
    pairs = list(iter_records(path))
    texts = [format_prompt(tok, r["question"], cfg.trace_format) for _, r in pairs]
    ids = tok(texts).input_ids if texts else []
    prompts, too_long = [], []
    for (line, rec), text, p_ids in zip(pairs, texts, ids, strict=True):
        if len(p_ids) > cfg.max_prompt_tokens:
            if cfg.on_overflow == "fail":
                raise InputError(
                    f"{path}:{line}: id {rec['id']!r}: prompt is {len(p_ids)} tokens, over "
                    f"data.max_prompt_tokens={cfg.max_prompt_tokens} (raise it or set data.on_overflow=drop)"
                )
            too_long.append((rec["id"], len(p_ids)))
            continue
        prompts.append(Prompt(rec, line, text, list(p_ids)))
    if not prompts:
        raise InputError(
            f"{path}: no usable prompts ({len(pairs)} records, all over data.max_prompt_tokens?)"
        )
    if limit is not None and limit < len(prompts):
        order = list(range(len(prompts)))
        if seed is not None:
            random.Random(f"grpo-subset-{seed}").shuffle(order)
        prompts = [prompts[i] for i in sorted(order[:limit])]
    report = {
        "file": str(path),
        "records": len(pairs),
        "used": len(prompts),
        "max_prompt_tokens": cfg.max_prompt_tokens,
        "overflow_count": len(too_long),
        "overflow_ids": [i for i, _ in too_long[:20]],
        "prompt_tokens_max": max(len(p.ids) for p in prompts),
    }
    return prompts, report


@functools.lru_cache(maxsize=8)
def _epoch_order(n: int, seed: int, epoch: int) -> tuple[int, ...]:
    order = list(range(n))
    random.Random(f"grpo-order-{seed}-{epoch}").shuffle(order)
    return tuple(order)


def step_prompt_indices(n: int, per_step: int, seed: int, step: int) -> list[int]:
    """Prompts of step ``step`` (0-based): consecutive slices through seeded per-epoch shuffles."""
    start = step * per_step
    return [_epoch_order(n, seed, (start + k) // n)[(start + k) % n] for k in range(per_step)]


REWARD_COLUMNS = ("id", "question", "answer", "reasoning", "steps", "meta")  # what each reward receives


def score_rewards(
    reward_fns: list[Any],
    weights: list[float],
    prompts: list[str],
    completions: list[str],
    records: list[dict],
) -> tuple[list[float], dict[str, list[float]]]:
    """``(total per completion, {reward name: raw values})``; totals are the weighted sums."""
    columns = {k: [r.get(k) for r in records] for k in REWARD_COLUMNS}
    per: dict[str, list[float]] = {}
    for fn in reward_fns:
        values = fn(prompts, completions, **columns)
        if len(values) != len(completions):
            raise InputError(f"reward {fn.__name__}: {len(values)} values for {len(completions)} completions")
        values = [float(v) for v in values]
        if not all(math.isfinite(v) for v in values):
            raise InputError(f"reward {fn.__name__}: returned a non-finite value {values}")
        per[fn.__name__] = values
    totals = [
        sum(w * per[fn.__name__][i] for fn, w in zip(reward_fns, weights, strict=True))
        for i in range(len(completions))
    ]
    return totals, per


def load_prompt_sets(cfg: GRPOConfig, tok: Any) -> tuple[list[Prompt], list[Prompt], dict[str, Any]]:
    """``(train prompts, held-out prompts, {"train", "valid": reports})``: a seeded sample of
    ``data.train_limit`` training prompts, and the first ``eval.n`` of ``data.valid``."""
    train, train_report = load_prompts(cfg.data.train, tok, cfg.data, cfg.data.train_limit, cfg.seed)
    held_out: list[Prompt] = []
    valid_report = None
    if cfg.data.valid and cfg.eval.n > 0:
        held_out, valid_report = load_prompts(cfg.data.valid, tok, cfg.data)
        held_out = held_out[: cfg.eval.n]
    return train, held_out, {"train": train_report, "valid": valid_report}


def data_files(cfg: GRPOConfig, held_out: list[Prompt]) -> dict[str, str]:
    """The record files a run's manifest hashes."""
    return {"train": cfg.data.train, **({"valid": cfg.data.valid} if held_out and cfg.data.valid else {})}
