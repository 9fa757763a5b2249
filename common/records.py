"""The trace record: one JSONL line per problem, shared by builders, trainers, evals and tools.

    {"id": "gsm8k-train-00042", "question": "...", "answer": "72",
     "reasoning": "Natalia sold 48/2 = 24 clips in May.\\n...",
     "steps": [{"i": 1, "type": "compute", "content": "Natalia sold 48/2 = 24 clips in May.",
                "calc": {"expr": "48/2", "result": "24"}}, ...],
     "meta": {"source": "gsm8k", "category": "mixed", "difficulty": "easy", ...}}

Rules checked by ``validate_record``: the six top-level fields and no others; ``id``,
``question``, ``answer`` and ``reasoning`` are non-blank strings; steps are numbered
``i = 1, 2, ...`` and carry a non-blank ``type`` and ``content`` (other step keys are
allowed; an optional ``calc`` is ``{"expr": str, "result": str}``); ``reasoning`` is the
steps' contents joined by newlines, or, when there are no steps, a placeholder with
``meta.has_reasoning = false``; ``meta`` has string ``source`` and ``category`` and a
string or int ``difficulty`` (other meta keys are free). Ids are unique within a file.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from common.errors import InputError
from common.jsonl import scan_jsonl
from common.prompts import format_target

FIELDS = ("id", "question", "answer", "reasoning", "steps", "meta")
TEXT_FIELDS = ("id", "question", "answer", "reasoning")
NO_CATEGORY = "(none)"  # the category of a record whose meta names none


def allot(total: int, weights: dict[str, float]) -> dict[str, int]:
    """``total`` split by ``weights`` with largest remainders (ties by name)."""
    norm = sum(weights.values())
    if total == 0 or norm <= 0:
        return dict.fromkeys(weights, 0)
    raw = {k: total * w / norm for k, w in weights.items()}
    out = {k: math.floor(v) for k, v in raw.items()}
    for k in sorted(raw, key=lambda k: (out[k] - raw[k], k))[: total - sum(out.values())]:
        out[k] += 1
    return out


def category_of(record: dict[str, Any]) -> str:
    """``meta.category`` of a record (``NO_CATEGORY`` when it has none)."""
    return (record.get("meta") or {}).get("category", NO_CATEGORY)


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    names: dict[type, str] = {dict: "object", list: "list"}
    return names.get(type(value), type(value).__name__)


def _check_str(value: Any, where: str, errors: list[str], blank_ok: bool = False) -> None:
    if not isinstance(value, str):
        errors.append(f"{where}: expected str, got {_kind(value)}")
    elif not blank_ok and not value.strip():
        errors.append(f"{where}: empty")


def _check_step(step: Any, k: int, errors: list[str]) -> None:
    where = f"steps[{k}]"
    if not isinstance(step, dict):
        errors.append(f"{where}: expected object, got {_kind(step)}")
        return
    for key in ("i", "type", "content"):
        if key not in step:
            errors.append(f"{where}.{key}: missing")
    i = step.get("i")
    if "i" in step:
        if not isinstance(i, int) or isinstance(i, bool):
            errors.append(f"{where}.i: expected int, got {_kind(i)}")
        elif i != k + 1:
            errors.append(f"{where}.i: expected {k + 1} (steps are numbered from 1), got {i}")
    for key in ("type", "content"):
        if key in step:
            _check_str(step[key], f"{where}.{key}", errors)
    if "calc" in step:
        calc = step["calc"]
        if not isinstance(calc, dict):
            errors.append(f"{where}.calc: expected object, got {_kind(calc)}")
        else:
            for key in ("expr", "result"):
                if key not in calc:
                    errors.append(f"{where}.calc.{key}: missing")
                else:
                    _check_str(calc[key], f"{where}.calc.{key}", errors)


def validate_record(obj: Any) -> list[str]:
    """Every way ``obj`` breaks the record schema, each naming the field; empty when valid."""
    if not isinstance(obj, dict):
        return [f"record: expected object, got {_kind(obj)}"]
    errors: list[str] = []
    for key in FIELDS:
        if key not in obj:
            errors.append(f"{key}: missing")
    for key in obj:
        if key not in FIELDS:
            errors.append(f"{key}: unknown field (allowed: {', '.join(FIELDS)})")
    for key in TEXT_FIELDS:
        if key in obj:
            _check_str(obj[key], key, errors)
    steps = obj.get("steps")
    if "steps" in obj and not isinstance(steps, list):
        errors.append(f"steps: expected list, got {_kind(steps)}")
        steps = None
    for k, step in enumerate(steps or []):
        _check_step(step, k, errors)
    meta = obj.get("meta")
    if "meta" in obj:
        if not isinstance(meta, dict):
            errors.append(f"meta: expected object, got {_kind(meta)}")
            meta = None
        else:
            for key in ("source", "category", "difficulty"):
                if key not in meta:
                    errors.append(f"meta.{key}: missing")
            for key in ("source", "category"):
                if key in meta:
                    _check_str(meta[key], f"meta.{key}", errors)
            diff = meta.get("difficulty")
            if "difficulty" in meta and (not isinstance(diff, str | int) or isinstance(diff, bool)):
                errors.append(f"meta.difficulty: expected str or int, got {_kind(diff)}")
            has = meta.get("has_reasoning")
            if "has_reasoning" in meta and not isinstance(has, bool):
                errors.append(f"meta.has_reasoning: expected bool, got {_kind(has)}")
    if errors or steps is None:
        return errors
    if steps:
        if obj["reasoning"] != reasoning_from_steps(steps):
            errors.append("reasoning: differs from the steps' contents joined by newlines")
    elif meta is not None and meta.get("has_reasoning") is not False:
        errors.append("steps: empty, but meta.has_reasoning is not false")
    return errors


def reasoning_from_steps(steps: list[dict[str, Any]]) -> str:
    """The ``reasoning`` text of a record: its steps' contents, one per line."""
    return "\n".join(step["content"] for step in steps)


def target_text(record: dict[str, Any]) -> str:
    """What a trainer teaches the model to write for this record."""
    return format_target(record["reasoning"], record["answer"])


def make_record(
    rid: str,
    question: str,
    answer: str,
    steps: list[dict[str, Any]],
    meta: dict[str, Any],
    placeholder: str = "No worked reasoning is available for this problem.",
) -> dict[str, Any]:
    """A record with ``reasoning`` derived from ``steps`` (or a placeholder when there are none)."""
    meta = dict(meta)
    if steps:
        meta.setdefault("has_reasoning", True)
    else:
        meta["has_reasoning"] = False
    reasoning = reasoning_from_steps(steps) if steps else placeholder
    return {
        "id": rid,
        "question": question,
        "answer": answer,
        "reasoning": reasoning,
        "steps": steps,
        "meta": meta,
    }


def scan_records(path: str | Path) -> Iterator[tuple[int, Any, list[str]]]:
    """Yield ``(line, value, reasons)`` for every non-blank line; ``reasons`` is empty for a good record.

    Never raises on content: bad JSON, non-UTF-8 bytes, over-long lines, schema errors and
    repeated ids all come back as reasons.
    """
    seen: dict[str, int] = {}
    for lineno, value, error in scan_jsonl(path):
        if error is not None:
            yield lineno, None, [error]
            continue
        reasons = validate_record(value)
        if not reasons:
            first = seen.setdefault(value["id"], lineno)
            if first != lineno:
                reasons = [f"id: duplicate of line {first} ({value['id']!r})"]
        yield lineno, value, reasons


def iter_records(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line, record)``; raise ``InputError("file:line: field: reason")`` on the first bad line."""
    n = 0
    for lineno, value, reasons in scan_records(path):
        if reasons:
            raise InputError(f"{path}:{lineno}: {'; '.join(reasons)}")
        n += 1
        yield lineno, value
    if n == 0:
        raise InputError(f"{path}: no records (empty file)")


def load_records(path: str | Path) -> list[dict[str, Any]]:
    """All records of a file, strictly validated; an empty file is an error."""
    return [record for _, record in iter_records(path)]
