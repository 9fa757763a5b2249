"""A minimal stand-in for the shared scorer (``evals.score``, ``evals.stats``, issue 3).

Used only by tests, and only while the real modules are not on this branch: ``install()``
registers these functions under the real module names when importing those fails. Delete
this file once issue 3 is merged.
"""

from __future__ import annotations

import importlib
import math
import re
import sys
import types
from typing import Any

_NUM = re.compile(r"-?\d+(?:\.\d+)?")


def wilson_interval(k: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (0.0 if k == 0 else max(0.0, centre - half), 1.0 if k == n else min(1.0, centre + half))


def score_completion(completion: str, gold: Any) -> dict[str, Any]:
    text = completion.strip()
    m = re.search(r"<answer>(.*?)</answer>(?!.*<answer>)", text, re.DOTALL)
    extracted = m.group(1).strip() if m else None
    fmt = bool(re.fullmatch(r"<reasoning>.+?</reasoning>\s*<answer>.+?</answer>", text, re.DOTALL))
    g = float(str(gold).replace(",", ""))
    try:
        value = float(extracted.replace(",", "").replace("$", "")) if extracted else None
    except ValueError:
        value = None
    nums = _NUM.findall(extracted if extracted is not None else text)
    strict = value is not None and value == g
    failure = (
        None
        if strict and fmt
        else "no_answer"
        if not extracted
        else "bad_format"
        if strict
        else "wrong_number"
    )
    return {
        "format_ok": fmt,
        "strict": strict,
        "flexible": bool(nums) and float(nums[-1]) == g,
        "partial": value is not None and abs(value - g) <= abs(g) / 10,
        "extracted": extracted,
        "flexible_extracted": nums[-1] if nums else None,
        "failure": failure,
    }


def _summary(items: list[dict]) -> dict[str, Any]:
    out: dict[str, Any] = {"n": len(items)}
    for metric, key in (
        ("format", "format_ok"),
        ("strict", "strict"),
        ("flexible", "flexible"),
        ("partial", "partial"),
    ):
        k = sum(it[key] for it in items)
        out[f"{metric}_accuracy"] = k / len(items) if items else None
        out[f"{metric}_accuracy_ci95"] = list(wilson_interval(k, len(items)))
    failures: dict[str, int] = {}
    for it in items:
        if it["failure"]:
            failures[it["failure"]] = failures.get(it["failure"], 0) + 1
    out["failures"] = failures
    return out


def score_predictions(predictions: list[dict], dataset: list[dict], **_: Any) -> dict[str, Any]:
    preds = {str(p["id"]): p for p in predictions}
    items = []
    for rec in dataset:
        p = preds.get(str(rec["id"]))
        v = score_completion(p["completion"], rec["answer"]) if p else {
            "format_ok": False, "strict": False, "flexible": False, "partial": False, "failure": "missing_prediction"
        }  # fmt: skip
        items.append({**v, "category": (rec.get("meta") or {}).get("category", "(none)")})
    out = {"scorer": "test-standin", **_summary(items)}
    cats = sorted({it["category"] for it in items})
    out["categories"] = {c: _summary([it for it in items if it["category"] == c]) for c in cats}
    return out


def install() -> None:
    """Register the stand-in as ``evals.score`` / ``evals.stats`` where the real ones are missing."""
    for name, funcs in (
        ("evals.stats", {"wilson_interval": wilson_interval}),
        ("evals.score", {"score_completion": score_completion, "score_predictions": score_predictions}),
    ):
        try:
            importlib.import_module(name)
        except ImportError:
            mod = types.ModuleType(name)
            mod.__dict__.update(funcs)
            mod.__dict__["STANDIN"] = True
            sys.modules[name] = mod
