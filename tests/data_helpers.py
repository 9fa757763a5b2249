"""Small record builders shared by the dataset tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from common.jsonl import write_jsonl
from common.records import make_record


def rec(
    rid: str,
    question: str = "How many apples does Ann have if she buys 3 and then 4 more?",
    answer: str = "7",
    steps: list[str] | None = None,
    category: str = "additive",
    source: str = "test",
    difficulty: str | int = "easy",
) -> dict[str, Any]:
    """A valid record; ``steps`` are step texts."""
    texts = ["Ann buys 3 + 4 = 7 apples."] if steps is None else steps
    step_dicts = [{"i": k + 1, "type": "text", "content": t} for k, t in enumerate(texts)]
    meta = {"source": source, "category": category, "difficulty": difficulty}
    return make_record(rid, question, answer, step_dicts, meta)


def write(path: Path, records: list[Any]) -> Path:
    write_jsonl(path, records)
    return path
