"""``stats``: counts, step histogram and token lengths of a record file, as stats.json/stats.txt and PNGs.

Token lengths are of what a trainer feeds the model: the prompt (``format_prompt``, with
the tokenizer's BOS) plus the target (``format_target`` and the end-of-turn marker).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from common.errors import InputError
from common.jsonl import atomic_open, write_json
from common.prompts import end_of_turn, format_prompt
from common.records import iter_records, target_text
from common.runs import now_iso, sha256_file

PERCENTILES = (50, 90, 99)
MAX_LENS = (256, 384, 512, 768, 1024)


@dataclass
class StatsConfig:
    tokenizer: str | None = None  # HF tokenizer folder; without it no token statistics
    max_len: int = 512
    seed: int = 0


def load_tokenizer(path: str) -> Any:
    if not Path(path).is_dir():
        raise InputError(f"{path}: tokenizer folder not found")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def token_lengths(
    tokenizer: Any, records: list[dict[str, Any]], batch: int = 512
) -> tuple[list[int], list[int]]:
    """Token counts of each record's prompt (with BOS) and target (with end-of-turn)."""
    eot = end_of_turn(tokenizer)
    prompt, target = [], []
    for start in tqdm(range(0, len(records), batch), desc="tokenize", unit=" batches", leave=False):
        chunk = records[start : start + batch]
        prompts = [format_prompt(tokenizer, r["question"]) for r in chunk]
        targets = [target_text(r) + eot for r in chunk]
        prompt += [len(ids) for ids in tokenizer(prompts, add_special_tokens=True)["input_ids"]]
        target += [len(ids) for ids in tokenizer(targets, add_special_tokens=False)["input_ids"]]
    return prompt, target


def percentiles(values: list[int]) -> dict[str, float]:
    arr = np.asarray(values)
    out: dict[str, float] = {f"p{p}": int(np.percentile(arr, p, method="inverted_cdf")) for p in PERCENTILES}
    out["mean"] = round(float(arr.mean()), 1)
    out["max"] = int(arr.max())
    return out


def histogram_text(hist: dict[int, int], width: int = 40) -> str:
    """One line per step count: ``  3 | ##########           2520  (33.7%)``."""
    total, top = sum(hist.values()), max(hist.values())
    lines = []
    for k in range(min(hist), max(hist) + 1):
        n = hist.get(k, 0)
        bar = "#" * round(width * n / top)
        lines.append(f"{k:>3} | {bar:<{width}} {n:>6}  ({100 * n / total:.1f}%)")
    return "\n".join(lines)


def compute_stats(path: str, cfg: StatsConfig) -> tuple[dict[str, Any], list[int]]:
    """The statistics, and each record's prompt + target token count (empty without a tokenizer)."""
    records = [record for _, record in iter_records(path)]

    def count(key: str) -> dict[str, int]:
        return dict(sorted(Counter(str(r["meta"][key]) for r in records).items()))

    by_cat_diff: dict[str, dict[str, int]] = {}
    for r in records:
        cell = by_cat_diff.setdefault(str(r["meta"]["category"]), {})
        cell[str(r["meta"]["difficulty"])] = cell.get(str(r["meta"]["difficulty"]), 0) + 1
    steps = Counter(len(r["steps"]) for r in records)
    stats: dict[str, Any] = {
        "file": path,
        "sha256": sha256_file(path),
        "created": now_iso(),
        "seed": cfg.seed,
        "records": len(records),
        "by_source": count("source"),
        "by_category": count("category"),
        "by_difficulty": count("difficulty"),
        "by_category_difficulty": {c: dict(sorted(d.items())) for c, d in sorted(by_cat_diff.items())},
        "without_reasoning": sum(r["meta"].get("has_reasoning") is False for r in records),
        "steps": {
            "histogram": {str(k): steps[k] for k in sorted(steps)},
            "mean": round(sum(k * n for k, n in steps.items()) / len(records), 2),
            "text": histogram_text(steps),
        },
        "tokens": None,
    }
    if cfg.tokenizer:
        prompt, target = token_lengths(load_tokenizer(cfg.tokenizer), records)
        total = [p + t for p, t in zip(prompt, target, strict=True)]
        over = sum(n > cfg.max_len for n in total)
        stats["tokens"] = {
            "tokenizer": cfg.tokenizer,
            "counted": "prompt (format_prompt, with BOS) + target (format_target + end-of-turn)",
            "total": percentiles(total),
            "prompt": percentiles(prompt),
            "target": percentiles(target),
            "max_len": cfg.max_len,
            "truncated": over,
            "truncated_share": round(over / len(records), 4),
            "truncated_share_by_max_len": {
                str(m): round(sum(n > m for n in total) / len(records), 4)
                for m in sorted({*MAX_LENS, cfg.max_len})
            },
        }
        return stats, total
    return stats, []


def report_text(stats: dict[str, Any]) -> str:
    def row(title: str, counts: dict[str, int]) -> str:
        return f"{title}: " + ", ".join(f"{k} {v}" for k, v in counts.items())

    lines = [
        f"{stats['file']}: {stats['records']} records ({stats['without_reasoning']} without reasoning)",
        row("source", stats["by_source"]),
        row("category", stats["by_category"]),
        row("difficulty", stats["by_difficulty"]),
        f"steps (mean {stats['steps']['mean']}):",
        stats["steps"]["text"],
    ]
    tok = stats["tokens"]
    if tok:
        for part in ("total", "prompt", "target"):
            p = tok[part]
            lines.append(
                f"tokens {part}: p50 {p['p50']}, p90 {p['p90']}, p99 {p['p99']}, max {p['max']}, mean {p['mean']}"
            )
        lines.append(
            f"truncated at max_len {tok['max_len']}: {tok['truncated']} ({100 * tok['truncated_share']:.2f}%)"
        )
    return "\n".join(lines)


def plot(stats: dict[str, Any], total_tokens: list[int], out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    hist = stats["steps"]["histogram"]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.bar([int(k) for k in hist], list(hist.values()), color="tab:blue")
    ax.set(xlabel="steps per record", ylabel="records", title=f"Steps: {Path(stats['file']).name}")
    fig.tight_layout()
    fig.savefig(out / "steps_histogram.png", dpi=100)
    plt.close(fig)
    written.append("steps_histogram.png")
    if stats["tokens"]:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.hist(total_tokens, bins=50, color="tab:green")
        ax.axvline(
            stats["tokens"]["max_len"],
            color="tab:red",
            linestyle="--",
            label=f"max_len {stats['tokens']['max_len']}",
        )
        ax.set(xlabel="prompt + target tokens", ylabel="records", title="Token lengths")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "token_lengths.png", dpi=100)
        plt.close(fig)
        written.append("token_lengths.png")
    return written


def run_stats(path: str, out_dir: str, cfg: StatsConfig) -> dict[str, Any]:
    """Compute, write ``stats.json``, ``stats.txt`` and the PNGs under ``out_dir``; return the stats."""
    stats, total_tokens = compute_stats(path, cfg)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stats["plots"] = plot(stats, total_tokens, out)
    text = report_text(stats)
    write_json(out / "stats.json", stats)
    with atomic_open(out / "stats.txt") as fh:
        fh.write(text + "\n")
    return stats
