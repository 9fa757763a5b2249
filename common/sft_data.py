"""SFT data, framework-agnostic (numpy only): records → token ids → packed rows → arrays.

Shared by ``trainers_torch.sft`` and ``trainers_jax.sft`` so both train on exactly the same
rows in the same order: the order of step k is a pure function of ``(seed, k)`` (``DataPlan``).

Packing: several examples share one row of at most ``data.pack_tokens`` tokens. Position ids
restart at 0 for every example and ``segment_ids`` number the examples of a row (0 is
padding), so each trainer can keep attention inside an example: transformers derives the
block-diagonal causal mask from the restarting position ids, the JAX trainer builds it from
the segment ids.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from common.errors import InputError
from common.prompts import end_of_turn, format_prompt, format_target
from common.records import allot, category_of, iter_records
from common.sft_config import DataConfig

IGNORE = -100  # target id of positions without loss


@dataclass
class Example:
    id: str
    line: int
    ids: list[int]
    n_prompt: int  # the first n_prompt ids are the prompt; the rest is the target

    def __len__(self) -> int:
        return len(self.ids)


def sample_by_category(
    records: list[dict[str, Any]], limit: int, shares: dict[str, float], seed: int | None, path: str | Path
) -> list[int]:
    """Indices (in file order) of ``limit`` records split over ``meta.category`` by ``shares``
    (largest remainders), each category's part a seeded sample of its records."""
    by_cat: dict[str, list[int]] = {}
    for i, rec in enumerate(records):
        by_cat.setdefault(category_of(rec), []).append(i)
    want = allot(limit, shares)
    chosen: list[int] = []
    for cat, n in sorted(want.items()):
        have = by_cat.get(cat, [])
        if not have:
            raise InputError(
                f"{path}: data.train_shares.{cat}: no record has meta.category {cat!r} "
                f"(categories: {', '.join(sorted(by_cat))})"
            )
        if n > len(have):
            raise InputError(
                f"{path}: data.train_shares.{cat}: {n} of data.train_limit={limit} wanted, "
                f"but the file has {len(have)} usable records of that category"
            )
        order = list(have)
        random.Random(f"subset-{seed}/{cat}").shuffle(order)
        chosen += order[:n]
    return sorted(chosen)


def encode_examples(
    tok: Any, lines_records: list[tuple[int, dict[str, Any]]], trace_format: str
) -> list[Example]:
    """``(line, record)`` pairs → examples: the chat prompt, then the target and the end of turn."""
    eot = end_of_turn(tok)
    prompts = [format_prompt(tok, r["question"], trace_format) for _, r in lines_records]
    targets = [format_target(r["reasoning"], r["answer"]) + eot for _, r in lines_records]
    prompt_ids = tok(prompts).input_ids if prompts else []
    target_ids = tok(targets, add_special_tokens=False).input_ids if targets else []
    return [Example(rec["id"], line, list(p) + list(t), len(p))
            for (line, rec), p, t in zip(lines_records, prompt_ids, target_ids, strict=True)]  # fmt: skip


def tokenize_records(
    path: str | Path,
    tok: Any,
    cfg: DataConfig,
    limit: int | None = None,
    seed: int | None = None,
    shares: dict[str, float] | None = None,
) -> tuple[list[Example], list[dict[str, Any]], dict[str, Any]]:
    """Tokenize a record file into examples; return ``(examples, records, report)``.

    ``limit`` keeps a sample of that many records (seeded shuffle when ``seed`` is given,
    else the first ones); with ``shares`` the sample is drawn per ``meta.category``
    (``sample_by_category``). Records whose prompt + target exceed ``max_len`` are counted and
    dropped, or raise ``InputError`` naming the first one (``on_overflow: fail``). Records
    marked ``meta.has_reasoning: false`` carry no worked reasoning and are skipped.
    """
    lines_records = [(ln, r) for ln, r in iter_records(path)]
    no_reasoning = [r["id"] for _, r in lines_records if (r.get("meta") or {}).get("has_reasoning") is False]
    lines_records = [
        (ln, r) for ln, r in lines_records if (r.get("meta") or {}).get("has_reasoning") is not False
    ]
    examples, records, overflow = [], [], []
    for (line, rec), ex in zip(
        lines_records, encode_examples(tok, lines_records, cfg.trace_format), strict=True
    ):
        if len(ex) > cfg.max_len:
            if cfg.on_overflow == "fail":
                raise InputError(
                    f"{path}:{line}: id {rec['id']!r}: prompt + target is {len(ex)} tokens, over "
                    f"data.max_len={cfg.max_len} (raise data.max_len or set data.on_overflow=drop)"
                )
            overflow.append(ex)
        else:
            examples.append(ex)
            records.append(rec)
    longest = max(overflow, key=len, default=None)
    n_total = len(lines_records)
    report = {
        "file": str(path),
        "records": n_total + len(no_reasoning),
        "skipped_no_reasoning": len(no_reasoning),
        "max_len": cfg.max_len,
        "policy": cfg.on_overflow,
        "overflow_count": len(overflow),
        "overflow_share": round(len(overflow) / n_total, 6) if n_total else 0.0,
        "overflow_longest": {"id": longest.id, "tokens": len(longest)} if longest else None,
        "overflow_ids": [ex.id for ex in overflow[:20]],
    }
    chosen: list[int] | None = None
    if shares is not None and limit is not None:
        chosen = sample_by_category(records, limit, shares, seed, path)
        report["by_category"] = dict(Counter(category_of(records[i]) for i in chosen))
    elif limit is not None and limit < len(examples):
        order = list(range(len(examples)))
        if seed is not None:
            random.Random(f"subset-{seed}").shuffle(order)
        chosen = sorted(order[:limit])
    if chosen is not None:
        examples = [examples[i] for i in chosen]
        records = [records[i] for i in chosen]
    report["used"] = len(examples)
    report["tokens"] = sum(len(e) for e in examples)
    report["target_tokens"] = sum(len(e) - e.n_prompt for e in examples)
    if not examples:
        raise InputError(f"{path}: no usable examples (all {n_total} over data.max_len={cfg.max_len}?)")
    return examples, records, report


def tokenize_train(cfg: DataConfig, tok: Any, seed: int) -> tuple[list[Example], dict[str, Any]]:
    """The training examples: ``train`` (sampled to ``train_limit``) plus each ``mix`` part
    (sampled to its ``n``), in that order; and one report over all of them (``parts``: each file's)."""
    examples, _, report = tokenize_records(cfg.train, tok, cfg, cfg.train_limit, seed, cfg.train_shares)
    if not cfg.mix:
        return examples, report
    parts = [report]
    for part in cfg.mix:
        more, _, part_report = tokenize_records(part.path, tok, cfg, part.n, seed)
        examples = examples + more
        parts.append(part_report)
    longest = max(
        (r["overflow_longest"] for r in parts if r["overflow_longest"]),
        key=lambda x: x["tokens"],
        default=None,
    )
    considered = sum(r["records"] - r["skipped_no_reasoning"] for r in parts)
    combined = {
        "file": " + ".join(r["file"] for r in parts),
        "policy": cfg.on_overflow,
        "max_len": cfg.max_len,
        "overflow_longest": longest,
        "overflow_ids": [i for r in parts for i in r["overflow_ids"]][:20],
        "parts": parts,
    }
    for key in ("records", "skipped_no_reasoning", "overflow_count", "used", "tokens", "target_tokens"):
        combined[key] = sum(r[key] for r in parts)
    combined["overflow_share"] = round(combined["overflow_count"] / considered, 6) if considered else 0.0
    if "by_category" in report:
        combined["by_category"] = report["by_category"]
    return examples, combined


def overflow_line(report: dict[str, Any]) -> str:
    n, share, longest = report["overflow_count"], report["overflow_share"], report["overflow_longest"]
    text = f"{report['file']}: {report['records']} records, {report['used']} used; over max_len={report['max_len']}: {n} ({share:.1%})"
    if longest:
        text += f", longest {longest['id']} with {longest['tokens']} tokens (dropped)"
    if report.get("by_category"):
        text += "; data.train by category: " + ", ".join(
            f"{k} {v}" for k, v in sorted(report["by_category"].items())
        )
    if report["skipped_no_reasoning"]:
        text += f"; {report['skipped_no_reasoning']} without reasoning skipped"
    return text


def pack_rows(lengths: list[int], order: list[int], pack_tokens: int) -> list[list[int]]:
    """Greedy in-order packing: fill a row with the next examples until the next one would not fit."""
    rows: list[list[int]] = []
    row: list[int] = []
    used = 0
    for i in order:
        if row and used + lengths[i] > pack_tokens:
            rows.append(row)
            row, used = [], 0
        row.append(i)
        used += lengths[i]
    if row:
        rows.append(row)
    return rows


@dataclass
class Batch:
    """One micro-batch of packed rows as numpy arrays (each trainer converts them to its tensors)."""

    input_ids: np.ndarray  # [B, L] int32
    position_ids: np.ndarray  # [B, L], restarting at 0 for every example (and for the padding)
    targets: np.ndarray  # [B, L], the next token where it is a completion token, else -100
    segment_ids: np.ndarray  # [B, L], 1..k for the k examples of a row, 0 for padding
    n_tokens: int
    n_targets: int
    n_examples: int


def collate(examples: list[Example], rows: list[list[int]], pad_id: int) -> Batch:
    """Packed rows → arrays. Rows shorter than the longest are padded; padding is segment 0."""
    width = max(sum(len(examples[i]) for i in row) for row in rows)
    ids = np.full((len(rows), width), pad_id, dtype=np.int32)
    pos = np.zeros((len(rows), width), dtype=np.int32)
    tgt = np.full((len(rows), width), IGNORE, dtype=np.int32)
    seg = np.zeros((len(rows), width), dtype=np.int32)
    for r, row in enumerate(rows):
        s = 0
        for k, i in enumerate(row, start=1):
            ex = examples[i]
            n, p = len(ex.ids), ex.n_prompt
            ids[r, s : s + n] = ex.ids
            pos[r, s : s + n] = np.arange(n)
            # position t predicts token t+1: a target only where token t+1 is in the completion
            tgt[r, s + p - 1 : s + n - 1] = ex.ids[p:]
            seg[r, s : s + n] = k
            s += n
        pos[r, s:] = np.arange(width - s)
    return Batch(
        input_ids=ids,
        position_ids=pos,
        targets=tgt,
        segment_ids=seg,
        n_tokens=sum(len(examples[i]) for row in rows for i in row),
        n_targets=int((tgt != IGNORE).sum()),
        n_examples=sum(len(row) for row in rows),
    )


class DataPlan:
    """The seeded order of packed rows over epochs; step k's rows are a pure function of (seed, k)."""

    def __init__(self, examples: list[Example], pack_tokens: int, rows_per_step: int, seed: int):
        self.lengths = [len(e) for e in examples]
        self.pack_tokens = pack_tokens
        self.rows_per_step = rows_per_step
        self.seed = seed
        self._epochs: list[list[list[int]]] = []

    def epoch_rows(self, epoch: int) -> list[list[int]]:
        while len(self._epochs) <= epoch:
            e = len(self._epochs)
            order = list(range(len(self.lengths)))
            random.Random(f"order-{self.seed}-{e}").shuffle(order)
            self._epochs.append(pack_rows(self.lengths, order, self.pack_tokens))
        return self._epochs[epoch]

    def total_steps(self, epochs: float, max_steps: int | None) -> int:
        if max_steps is not None:
            return max_steps
        whole, frac = int(epochs), epochs - int(epochs)
        rows = sum(len(self.epoch_rows(e)) for e in range(whole))
        if frac > 0:
            rows += math.ceil(frac * len(self.epoch_rows(whole)))
        return max(1, math.ceil(rows / self.rows_per_step))

    def position(self, rows_seen: int) -> tuple[int, int]:
        """``(epoch, row_in_epoch)`` after ``rows_seen`` rows."""
        epoch = 0
        while rows_seen >= len(self.epoch_rows(epoch)):
            rows_seen -= len(self.epoch_rows(epoch))
            epoch += 1
        return epoch, rows_seen

    def step_rows(self, step: int) -> list[list[int]]:
        start = step * self.rows_per_step
        epoch, r = self.position(start)
        out: list[list[int]] = []
        while len(out) < self.rows_per_step:
            rows = self.epoch_rows(epoch)
            take = rows[r : r + self.rows_per_step - len(out)]
            out += take
            epoch, r = epoch + 1, 0
        return out

    def epoch_float(self, rows_seen: int) -> float:
        epoch, r = self.position(rows_seen)
        return epoch + r / len(self.epoch_rows(epoch))
