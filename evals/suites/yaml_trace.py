"""The YAML-trace suite: each completion's trace is executed and its value scored.

Per item (``trace_verdict``): ``parse`` (a trace was read from ``<reasoning>``), ``valid``
(it checked and executed), ``solver`` (its value equals gold, exactly), ``agree`` (the
``<answer>`` text is one number equal to that value; None when there is no value),
``trace_outcome`` (one of ``OUTCOMES``, with the wrong-expert outcome where the item's
``meta.experts`` is known), ``trace_tier`` (its reward tier), ``trace_experts`` (the experts
the trace names), ``trace_error_kind`` / ``trace_error`` and ``trace_value``. The answer-tag metrics (strict, flexible, …) come from the shared scorer
as for any answer suite; ``common.traces`` holds the trace rules.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from common.answers import answer_text, gold_text, parse_number
from common.records import category_of
from common.rewards import gold_experts
from common.traces import INVALID_KINDS, PARSE_KINDS, format_value, parse_trace
from common.traces import OUTCOMES as TRACE_OUTCOMES

OUTCOMES = (*TRACE_OUTCOMES, "missing_prediction")
METRICS = ["solver", "strict", "parse", "valid", "agree", "flexible", "partial", "format"]
PRIMARY = "solver"
# Summary keys of the trace metrics (the answer-tag ones are ``<metric>_accuracy``).
SUMMARY_KEYS = {
    "parse": "parse_rate",
    "valid": "valid_rate",
    "solver": "solver_accuracy",
    "agree": "agreement_rate",
}
RULES = {
    "parse_rate": "a YAML list of steps, {expert, trace} mapping or list of them was read from the first "
    "<reasoning>…</reasoning> block (yaml.safe_load, size and nesting limits)",
    "valid_rate": "the trace executed: it passed every step check (known ops and fields, defined variables, "
    "expert vocabulary, one final query not on an init-only variable) and ran to a value",
    "solver_accuracy": "the executed trace's value equals gold exactly (fractions)",
    "agreement_rate": "among items with an executed value: the <answer> text is one number equal to it",
}
ERROR_CHARS = 200
TRACE_SCORER = "showwork-yaml-trace/2"  # bump when a trace rule changes


def trace_verdict(completion: str, gold: Any, experts: list[str] | None = None) -> dict[str, Any]:
    """The trace verdicts on one completion against its gold answer (and gold experts, if known)."""
    result = parse_trace(completion)
    gold_value = parse_number(gold_text(gold))
    value = result.value if result.valid else None
    agree = None if value is None else parse_number(answer_text(completion)) == value
    error = result.error
    if error is not None and len(error) > ERROR_CHARS:
        error = error[:ERROR_CHARS] + "…"
    return {
        "parse": result.parsed,
        "valid": result.valid,
        "solver": value is not None and value == gold_value,
        "agree": agree,
        "trace_outcome": result.outcome(gold_value, experts),
        "trace_tier": result.tier(gold_value, experts),
        "trace_experts": "+".join(e or "-" for e in result.experts) or None,
        "trace_error_kind": result.error_kind,
        "trace_error": error,
        "trace_value": format_value(value),
    }


MISSING = {
    "parse": False,
    "valid": False,
    "solver": False,
    "agree": None,
    "trace_outcome": "missing_prediction",
    "trace_tier": "no_trace",
    "trace_experts": None,
    "trace_error_kind": None,
    "trace_error": None,
    "trace_value": None,
}


def trace_summary(verdicts: list[dict[str, Any]]) -> dict[str, Any]:
    """Rates with 95% Wilson intervals, outcome counts and error kinds over ``verdicts``."""
    from evals.stats import wilson_interval

    out: dict[str, Any] = {}
    for metric, key in SUMMARY_KEYS.items():
        scored = [v[metric] for v in verdicts if v[metric] is not None]
        out[key] = sum(scored) / len(scored) if scored else None
        out[f"{key}_ci95"] = list(wilson_interval(sum(scored), len(scored)))
        if metric == "agree":
            out["agreement_n"] = len(scored)
    counts = Counter(v["trace_outcome"] for v in verdicts)
    out["trace_outcomes"] = {k: counts.get(k, 0) for k in OUTCOMES}
    kinds = Counter(v["trace_error_kind"] for v in verdicts if v["trace_error_kind"])
    out["trace_error_kinds"] = {k: kinds[k] for k in (*PARSE_KINDS, *INVALID_KINDS) if kinds.get(k)}
    return out


def item_trace_verdicts(predictions: list[dict], dataset: list[dict]) -> list[dict[str, Any]]:
    """One trace verdict per dataset item, in dataset order (a missing prediction gets ``MISSING``)."""
    by_id = {str(p["id"]): p for p in predictions}
    out = []
    for rec in dataset:
        p = by_id.get(str(rec["id"]))
        experts = gold_experts(rec.get("meta"))
        out.append(dict(MISSING) if p is None else trace_verdict(p["completion"], rec["answer"], experts))
    return out


def add_trace_scores(
    summary: dict[str, Any], predictions: list[dict], dataset: list[dict], items: list[dict] | None = None
) -> dict[str, Any]:
    """Add the trace fields to an answer-scorer summary (overall and per category), in place.

    ``items``: the scorer's per-item records (dataset order), which get the trace verdicts too.
    """
    verdicts = item_trace_verdicts(predictions, dataset)
    summary["trace_scorer"] = TRACE_SCORER
    summary.update(trace_summary(verdicts))
    summary["rules"] = {**summary.get("rules", {}), **RULES}
    for name, cat in (summary.get("categories") or {}).items():
        cat.update(
            trace_summary([v for v, rec in zip(verdicts, dataset, strict=True) if category_of(rec) == name])
        )
    if items is not None:
        for item, v in zip(items, verdicts, strict=True):
            item.update(v)
    return summary
