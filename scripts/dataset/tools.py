"""``validate``, ``filter``, ``merge`` and ``split``: record files in, record files out, nothing dropped silently.

Every record left out goes to a side file with its line and reason (``OUT.rejects.jsonl``
or ``OUT.duplicates.json``), and the counts are printed.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from tqdm import tqdm

from common.errors import InputError
from common.jsonl import atomic_open, dumps, write_json, write_jsonl
from common.records import iter_records, scan_records
from common.runs import now_iso, sha256_file
from scripts.dataset.solutions import calc_is_right
from scripts.dataset.splits import split_by_fraction, split_by_size, write_split
from scripts.dataset.text import looks_english, normalise

EXIT_BAD = 2


def side_file(out: str | Path, tag: str) -> Path:
    """``good.jsonl`` + ``rejects.jsonl`` -> ``good.rejects.jsonl``."""
    p = Path(out)
    stem = p.name[: -len(".jsonl")] if p.name.endswith(".jsonl") else p.name
    return p.with_name(f"{stem}.{tag}")


# --- validate ----------------------------------------------------------------------------------


def validate(path: str, skip_bad: str | None = None, echo: Callable[[str], None] = print) -> int:
    """Report every bad line as ``file:line: reason``; exit status 2 if any (0 with ``skip_bad`` once written)."""
    good = bad = 0
    with contextlib.ExitStack() as stack:
        keep = rejects = None
        if skip_bad:
            keep = stack.enter_context(atomic_open(skip_bad))
            rejects = stack.enter_context(atomic_open(side_file(skip_bad, "rejects.jsonl")))
        for lineno, value, reasons in tqdm(scan_records(path), desc="validate", unit=" lines", leave=False):
            if reasons:
                bad += 1
                reason = "; ".join(reasons)
                echo(f"{path}:{lineno}: {reason}")
                if rejects is not None:
                    rid = value.get("id") if isinstance(value, dict) else None
                    rejects.write(dumps({"line": lineno, "id": rid, "reason": reason}) + "\n")
            else:
                good += 1
                if keep is not None:
                    keep.write(dumps(value) + "\n")
    if good + bad == 0:
        echo(f"{path}: no records (empty file)")
        return EXIT_BAD
    echo(f"{path}: {good + bad} records, {good} good, {bad} bad")
    if skip_bad:
        echo(
            f"wrote {good} good records to {skip_bad} and {bad} rejects to {side_file(skip_bad, 'rejects.jsonl')}"
        )
        return 0 if good else EXIT_BAD
    return EXIT_BAD if bad else 0


# --- filter ------------------------------------------------------------------------------------


@dataclass
class FilterConfig:
    seed: int = 0
    categories: list[str] | None = None  # keep only these
    exclude_categories: list[str] = field(default_factory=list)
    sources: list[str] | None = None
    difficulties: list[str] | None = None  # compared as text
    min_steps: int | None = None
    max_steps: int | None = None
    max_chars: int | None = None  # question + reasoning + answer
    max_tokens: int | None = None  # prompt + target, needs tokenizer
    tokenizer: str | None = None
    language: Literal["en"] | None = None  # heuristic, see scripts.dataset.text.looks_english
    require_reasoning: bool = False  # drop records with a placeholder (meta.has_reasoning false)
    verify_calc: bool = False  # drop records with a calculator annotation that evaluates wrongly

    def __post_init__(self) -> None:
        if self.max_tokens is not None and not self.tokenizer:
            raise ValueError("max_tokens needs tokenizer=DIR")


def rule_failure(
    record: dict[str, Any], cfg: FilterConfig, n_tokens: int | None = None
) -> tuple[str, str] | None:
    """The first rule ``record`` breaks, as ``(rule, reason)``, or None when it is kept."""
    meta, steps = record["meta"], record["steps"]
    if cfg.categories is not None and meta["category"] not in cfg.categories:
        return "categories", f"category {meta['category']!r} not in {cfg.categories}"
    if meta["category"] in cfg.exclude_categories:
        return "exclude_categories", f"category {meta['category']!r} excluded"
    if cfg.sources is not None and meta["source"] not in cfg.sources:
        return "sources", f"source {meta['source']!r} not in {cfg.sources}"
    if cfg.difficulties is not None and str(meta["difficulty"]) not in cfg.difficulties:
        return "difficulties", f"difficulty {meta['difficulty']!r} not in {cfg.difficulties}"
    if cfg.min_steps is not None and len(steps) < cfg.min_steps:
        return "min_steps", f"{len(steps)} steps < {cfg.min_steps}"
    if cfg.max_steps is not None and len(steps) > cfg.max_steps:
        return "max_steps", f"{len(steps)} steps > {cfg.max_steps}"
    chars = len(record["question"]) + len(record["reasoning"]) + len(record["answer"])
    if cfg.max_chars is not None and chars > cfg.max_chars:
        return "max_chars", f"{chars} chars > {cfg.max_chars}"
    if cfg.max_tokens is not None and n_tokens is not None and n_tokens > cfg.max_tokens:
        return "max_tokens", f"{n_tokens} tokens > {cfg.max_tokens}"
    if cfg.language == "en" and not looks_english(f"{record['question']}\n{record['reasoning']}"):
        return "language", "does not look English"
    if cfg.require_reasoning and meta.get("has_reasoning") is False:
        return "require_reasoning", "no worked reasoning (placeholder)"
    if cfg.verify_calc:
        for step in steps:
            if "calc" in step and not calc_is_right(step["calc"]):
                return (
                    "verify_calc",
                    f"step {step['i']}: {step['calc']['expr']} is not {step['calc']['result']}",
                )
    return None


def filter_file(
    path: str, out: str, cfg: FilterConfig, echo: Callable[[str], None] = print
) -> dict[str, Any]:
    """Keep the records that pass every rule; the others go to ``OUT.rejects.jsonl`` with the reason."""
    lines, records = zip(*iter_records(path), strict=True)
    tokens: list[int | None] = [None] * len(records)
    if cfg.max_tokens is not None:
        from scripts.dataset.stats import load_tokenizer, token_lengths

        prompt, target = token_lengths(load_tokenizer(cfg.tokenizer or ""), list(records))
        tokens = [p + t for p, t in zip(prompt, target, strict=True)]
    kept, rejects = [], []
    for lineno, record, n_tokens in zip(lines, records, tokens, strict=True):
        failure = rule_failure(record, cfg, n_tokens)
        if failure is None:
            kept.append(record)
        else:
            rejects.append({"line": lineno, "id": record["id"], "rule": failure[0], "reason": failure[1]})
    write_jsonl(out, kept)
    write_jsonl(side_file(out, "rejects.jsonl"), rejects)
    echo(
        f"{path}: kept {len(kept)} of {len(records)}; {len(rejects)} filtered out to {side_file(out, 'rejects.jsonl')}"
    )
    by_rule = Counter(r["rule"] for r in rejects)
    for rule, n in by_rule.most_common():
        echo(f"  {n} x {rule}")
    return {"kept": len(kept), "rejected": len(rejects), "by_rule": dict(by_rule)}


# --- merge -------------------------------------------------------------------------------------


def merge(paths: list[str], out: str, echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Concatenate record files, keeping the first record of each normalised question; report the rest."""
    kept: list[dict[str, Any]] = []
    first: dict[str, dict[str, Any]] = {}  # normalised question -> where its kept record came from
    ids: dict[str, tuple[str, int, str]] = {}
    duplicates: list[dict[str, Any]] = []
    inputs: list[dict[str, Any]] = []
    for path in paths:
        n = 0
        for lineno, record in tqdm(iter_records(path), desc=f"merge {Path(path).name}", leave=False):
            n += 1
            key = normalise(record["question"])
            if record["id"] in ids and ids[record["id"]][2] != key:
                where = ids[record["id"]]
                raise InputError(
                    f"{path}:{lineno}: id {record['id']!r} is already used by {where[0]}:{where[1]} for another question"
                )
            here = {"id": record["id"], "file": path, "line": lineno, "answer": record["answer"]}
            if key in first:
                kept_from = first[key]
                duplicates.append(
                    {
                        "kept": kept_from,
                        "dropped": here,
                        "answers_differ": kept_from["answer"] != record["answer"],
                    }
                )
                continue
            first[key] = here
            ids[record["id"]] = (path, lineno, key)
            kept.append(record)
        inputs.append({"path": path, "sha256": sha256_file(path), "records": n})
    write_jsonl(out, kept)
    report = {
        "created": now_iso(),
        "inputs": inputs,
        "output": {"path": out, "records": len(kept), "sha256": sha256_file(out)},
        "duplicates": len(duplicates),
        "duplicates_with_different_answers": sum(d["answers_differ"] for d in duplicates),
        "pairs": duplicates,
    }
    write_json(side_file(out, "duplicates.json"), report)
    total = sum(i["records"] for i in inputs)
    echo(
        f"merged {total} records from {len(paths)} files into {out}: {len(kept)} kept, {len(duplicates)} duplicates"
    )
    echo(f"duplicates listed in {side_file(out, 'duplicates.json')}")
    return report


# --- split -------------------------------------------------------------------------------------


@dataclass
class SplitConfig:
    seed: int = 0
    sizes: dict[str, int] = field(default_factory=dict)  # e.g. {valid: 500}: smallest id hashes
    fractions: dict[str, float] = field(default_factory=dict)  # e.g. {valid: 0.1}: hash below 0.1
    rest: str = "train"  # where everything else goes

    def __post_init__(self) -> None:
        if bool(self.sizes) == bool(self.fractions):
            raise ValueError(
                "give exactly one of sizes (e.g. sizes.valid=500) or fractions (e.g. fractions.valid=0.1)"
            )
        if self.rest in self.sizes or self.rest in self.fractions:
            raise ValueError(f"rest split '{self.rest}' must not also be sized")


def split_file(
    path: str, out_dir: str, cfg: SplitConfig, echo: Callable[[str], None] = print
) -> dict[str, Any]:
    """Write ``<out_dir>/<split>.jsonl`` for each split, stable by id hash, and a manifest."""
    records = [record for _, record in iter_records(path)]
    if cfg.sizes:
        parts = split_by_size(records, cfg.sizes, cfg.seed, cfg.rest)
    else:
        parts = split_by_fraction(records, cfg.fractions, cfg.seed, cfg.rest)
    out = Path(out_dir)
    files = {}
    for name, part in parts.items():
        files[name] = write_split(out, name, part)
        echo(f"  {name}: {len(part)} records" + ("  (warning: empty)" if not part else ""))
    manifest = {
        "source": {"path": path, "sha256": sha256_file(path), "records": len(records)},
        "seed": cfg.seed,
        "method": "size" if cfg.sizes else "fraction",
        "sizes": cfg.sizes,
        "fractions": cfg.fractions,
        "rest": cfg.rest,
        "created": now_iso(),
        "files": files,
    }
    write_json(out / "manifest.json", manifest)
    echo(f"split {path} into {out}")
    return manifest
