"""Eval suites: which rule scores an item, and per-item verdicts for paired comparisons.

Two kinds of item:
- answer items ``{id, question, answer, meta}`` (GSM8K, reasoning-gym, YAML traces) go
  through the shared scorer (``evals.score``); items with ``meta.source == "reasoning_gym"``
  also get ``rg``: the task's own ``score_answer`` (through ``common.rewards``) equal to 1.
- prompt-suite items ``{id, question, checks, meta}`` (``evals/suites/multidomain.jsonl``)
  are scored by keyword and tool-call checks (``evals.suites.prompts``).

The suite follows from the items (``suite="auto"``), except the YAML-trace suite, which an
eval config asks for with ``suite: yaml_trace``: answer items whose completions also get
their ``<reasoning>`` trace executed (``evals.suites.yaml_trace``; primary metric ``solver``).

A suite's summary has the scorer's shape: ``n``, ``<metric>_accuracy`` with ``_ci95``,
``failures``, ``categories`` and ``primary_score`` (``evals.score.primary_score``; None for a
prompt suite, whose items have no gold answer).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from common.errors import InputError

ANSWER_METRICS = ["strict", "flexible", "partial", "format"]
PROMPT_METRICS = ["pass", "keywords", "tool"]
_VERDICT_KEYS = {"strict": "strict", "flexible": "flexible", "partial": "partial", "format": "format_ok"}
SUITES = ("auto", "yaml_trace")


def _check_suite(suite: str) -> None:
    if suite not in SUITES:
        raise InputError(f"suite: {suite!r} unknown; known: {', '.join(SUITES)}")


def summary_key(metric: str) -> str:
    """The summary field holding ``metric``'s rate (``parse`` -> ``parse_rate``, else ``<metric>_accuracy``)."""
    from evals.suites.yaml_trace import SUMMARY_KEYS

    return SUMMARY_KEYS.get(metric, f"{metric}_accuracy")


def is_prompt_suite(dataset: list[dict]) -> bool:
    kinds = {"checks" in rec for rec in dataset}
    if len(kinds) > 1:
        raise InputError("dataset mixes prompt-suite items (with checks) and answer items; split them")
    return kinds == {True}


def has_reasoning_gym(dataset: list[dict]) -> bool:
    return any((rec.get("meta") or {}).get("source") == "reasoning_gym" for rec in dataset)


def suite_name(dataset: list[dict], suite: str = "auto") -> str:
    """``prompts``, ``answers`` or ``yaml_trace``: what scores these items."""
    _check_suite(suite)
    if is_prompt_suite(dataset):
        if suite != "auto":
            raise InputError(
                f"suite: {suite} scores answer items, but these items are a prompt suite (checks)"
            )
        return "prompts"
    return "answers" if suite == "auto" else suite


def suite_metrics(dataset: list[dict], suite: str = "auto") -> tuple[list[str], str]:
    """``(metric names, primary metric)`` for a dataset."""
    if suite_name(dataset, suite) == "yaml_trace":
        from evals.suites import yaml_trace

        return list(yaml_trace.METRICS), yaml_trace.PRIMARY
    if is_prompt_suite(dataset):
        return list(PROMPT_METRICS), "pass"
    if has_reasoning_gym(dataset):
        return ["rg", *ANSWER_METRICS], "rg"
    return list(ANSWER_METRICS), "strict"


def _category(rec: dict) -> str | None:
    cat = (rec.get("meta") or {}).get("category")
    return str(cat) if cat is not None else None


def _rg_scores(completions: list[str], metas: list[dict]) -> list[float]:
    """The reasoning-gym task's own ``score_answer`` (0..1) on each completion's answer text."""
    from common.rewards import RewardConfig, reasoning_gym_score

    return reasoning_gym_score(None, completions, RewardConfig(reasoning_gym=1.0), meta=metas)


def item_verdicts(
    predictions: list[dict], by_id: dict[str, dict], suite: str = "auto"
) -> dict[str, dict[str, Any]]:
    """``{id: {metric: bool, ..., "category", "failure", "extracted"?}}`` for each prediction.

    Every prediction's id must be in ``by_id`` (the dataset by string id). The YAML-trace
    suite adds its trace verdicts (``parse``, ``valid``, ``solver``, ``agree``, ``trace_*``).
    """
    _check_suite(suite)
    items = [by_id[str(p["id"])] for p in predictions]
    if is_prompt_suite(items) if items else False:
        from evals.suites.prompts import check_completion

        out = {}
        for p, rec in zip(predictions, items, strict=True):
            v = check_completion(p["completion"], rec["checks"])
            out[str(p["id"])] = {**v, "category": _category(rec)}
        return out

    from evals.score import score_completion

    out = {}
    for p, rec in zip(predictions, items, strict=True):
        v = score_completion(p["completion"], rec["answer"])
        out[str(p["id"])] = {
            **{m: bool(v[k]) for m, k in _VERDICT_KEYS.items()},
            "failure": v.get("failure"),
            "extracted": v.get("extracted"),
            "category": _category(rec),
        }
    rg_items = [
        (p, rec)
        for p, rec in zip(predictions, items, strict=True)
        if (rec.get("meta") or {}).get("source") == "reasoning_gym"
    ]
    if rg_items:
        scores = _rg_scores([p["completion"] for p, _ in rg_items], [rec["meta"] for _, rec in rg_items])
        for (p, _), s in zip(rg_items, scores, strict=True):
            out[str(p["id"])]["rg"] = s >= 1.0
            out[str(p["id"])]["rg_score"] = s
    if has_reasoning_gym(items):  # non-rg items in a mixed file: rg falls back to strict
        for v in out.values():
            v.setdefault("rg", v["strict"])
    if suite == "yaml_trace":
        from common.rewards import gold_experts
        from evals.suites.yaml_trace import trace_verdict

        for p, rec in zip(predictions, items, strict=True):
            out[str(p["id"])].update(
                trace_verdict(p["completion"], rec["answer"], gold_experts(rec.get("meta")))
            )
    return out


def _summary(verdicts: list[dict[str, Any]], metrics: list[str]) -> dict[str, Any]:
    from evals.stats import wilson_interval

    out: dict[str, Any] = {"n": len(verdicts)}
    for m in metrics:
        scored = [v for v in verdicts if v.get(m) is not None]
        k = sum(bool(v[m]) for v in scored)
        out[f"{m}_accuracy"] = k / len(scored) if scored else None
        out[f"{m}_accuracy_ci95"] = list(wilson_interval(k, len(scored)))
        if len(scored) != len(verdicts):
            out[f"{m}_n"] = len(scored)
    out["failures"] = dict(Counter(v["failure"] for v in verdicts if v.get("failure")))
    return out


def summarize(predictions: list[dict], dataset: list[dict], suite: str = "auto") -> dict[str, Any]:
    """The suite's summary over ``dataset`` (each item counts; a missing prediction is wrong)."""
    metrics, primary = suite_metrics(dataset, suite)
    if not is_prompt_suite(dataset):
        from evals.score import score_predictions

        summary = dict(score_predictions(predictions, dataset))
        if "rg" in metrics:
            by_id = {str(r["id"]): r for r in dataset}
            have = [p for p in predictions if str(p["id"]) in by_id]
            verdicts = item_verdicts(have, by_id)
            rg = [verdicts.get(str(r["id"]), {"rg": False}) for r in dataset]
            summary.update({k: v for k, v in _summary(rg, ["rg"]).items() if k.startswith("rg")})
        if suite == "yaml_trace":
            from evals.suites.yaml_trace import add_trace_scores

            add_trace_scores(summary, predictions, dataset)
        summary["suite"] = suite_name(dataset, suite)
        summary["primary_metric"] = primary
        return summary
    by_id = {str(r["id"]): r for r in dataset}
    have = [p for p in predictions if str(p["id"]) in by_id]
    verdicts = item_verdicts(have, by_id)
    rows = []
    for rec in dataset:
        v = verdicts.get(str(rec["id"]))
        if v is None:
            checks = rec["checks"]
            v = {
                "pass": False,
                "keywords": False,
                "tool": False if ("tool" in checks or checks.get("no_tool")) else None,
                "failure": "missing_prediction",
                "category": _category(rec),
            }
        rows.append(v)
    summary = {
        "scorer": "showwork-prompt-suite/1",
        **_summary(rows, metrics),
        "suite": "prompts",
        "primary_metric": primary,
        "primary_score": None,  # strict accuracy of an <answer>: prompt-suite items have no gold answer
    }
    cats = sorted({r["category"] for r in rows if r.get("category") is not None})
    summary["categories"] = {c: _summary([r for r in rows if r.get("category") == c], metrics) for c in cats}
    summary["items_without_prediction"] = [r["id"] for r in dataset if str(r["id"]) not in verdicts]
    summary["predictions_without_item"] = [p["id"] for p in predictions if str(p["id"]) not in by_id]
    return summary
