"""Small trace-record files for the SFT tests (the record schema of ``common/records.py``)."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path
from typing import Any

from common.records import make_record

GSM8K = Path(__file__).resolve().parents[1] / "data" / "gsm8k"  # vendored raw GSM8K


def record(rid: str, question: str, answer: str, steps: list[str]) -> dict[str, Any]:
    step_dicts = [{"i": i + 1, "type": "compute", "content": s} for i, s in enumerate(steps)]
    return make_record(
        rid,
        question,
        answer,
        step_dicts,
        {"source": "test", "category": "arithmetic", "difficulty": len(steps)},
    )


def arithmetic_records(n: int, seed: int = 0, prefix: str = "t") -> list[dict[str, Any]]:
    """Short synthetic problems: cheap for the character-level tiny tokenizer."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        a, b, c = rng.randint(1, 99), rng.randint(1, 99), rng.randint(1, 9)
        steps = [f"{a}+{b}={a + b}"] + ([f"{a + b}*{c}={(a + b) * c}"] if i % 2 else [])
        ans = str((a + b) * c if i % 2 else a + b)
        q = f"{a} and {b}" + (f", times {c}?" if i % 2 else "?")
        out.append(record(f"{prefix}-{i:04d}", q, ans, steps))
    return out


def gsm8k_records(split: str, n: int) -> list[dict[str, Any]]:
    """The first ``n`` raw GSM8K items as records (calculator annotations removed, one step per line)."""
    out = []
    with (GSM8K / f"{split}.jsonl").open() as fh:
        for k, line in enumerate(fh):
            if k >= n:
                break
            item = json.loads(line)
            body, answer = item["answer"].split("####")
            steps = [re.sub(r"<<[^>]*>>", "", s).strip() for s in body.strip().splitlines() if s.strip()]
            out.append(
                record(f"gsm8k-{split}-{k:05d}", item["question"], answer.strip().replace(",", ""), steps)
            )
    return out


def write_records(path: Path, records: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path
