"""Score model predictions against a dataset: format, strict, flexible and partial accuracy.

    python -m evals.score --predictions P.jsonl --dataset D.jsonl --out S.json [--per-item I.jsonl]
                          [--suite yaml_trace]

Prediction lines are ``{"id", "completion", ...}``; dataset lines ``{"id", "answer",
"meta": {"category"}?, ...}``. Every dataset item counts (a missing prediction is wrong), and
ids on one side only are listed in the output, never dropped silently. The rules are those of
``common.answers``; ``evals/SCORING.md`` states them with examples. ``--suite yaml_trace``
also executes each completion's YAML trace (``evals.suites.yaml_trace``) and adds its fields.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from common.answers import FAILURE_KINDS, gold_text, score_completion
from common.errors import InputError, cli
from common.jsonl import iter_jsonl, write_json, write_jsonl
from common.records import category_of
from evals.stats import proportion, wilson_interval

SCORER = "showwork-scoring/1"  # bump when a rule changes, so old and new scores are not compared
PRIMARY_SCORE = "showwork-primary/1"  # bump when the primary score's definition changes
PRIMARY_SCORE_DEFINITION = (
    "strict accuracy of the <answer> over all eval items (a missing prediction counts 0), "
    "with its 95% Wilson interval and n; beside it the format rate (format_ok) over the same items"
)
METRICS = ("format", "strict", "flexible", "partial")
RULES = {
    "format_accuracy": "format_ok: <reasoning>X</reasoning> <answer>Y</answer> and nothing else, "
    "X and Y non-empty, each tag once; trailing stop markers ignored",
    "strict_accuracy": "the last closed <answer> pair, minus $, thousands commas, whitespace and one "
    "trailing period, is one number equal to gold (exact decimal comparison)",
    "flexible_accuracy": "the last number in the last closed <answer> pair (or, with none, in the whole "
    "completion) equals gold",
    "partial_accuracy": "the strict number is within 10% of gold (|x - gold| <= |gold| / 10)",
    "non_numeric_gold": "strict = flexible = partial = the stripped answer text equals the stripped gold",
    "primary_score": PRIMARY_SCORE_DEFINITION,
}
EXTRACT_CHARS = 200  # per-item extracted text is cut to this length


def _check_id(record: Any, where: str) -> str:
    if not isinstance(record, dict):
        raise InputError(f"{where}: expected a JSON object, got {type(record).__name__}")
    if "id" not in record:
        raise InputError(f"{where}: id: missing")
    rid = record["id"]
    if isinstance(rid, bool) or not isinstance(rid, str | int) or rid == "":
        raise InputError(f"{where}: id: expected a non-empty string or an integer, got {rid!r}")
    return str(rid)


def check_predictions(records: Sequence[Any], where: Sequence[str]) -> dict[str, int]:
    """Validate prediction records; returns id -> index. ``where[i]`` locates record ``i``."""
    index: dict[str, int] = {}
    for i, rec in enumerate(records):
        rid = _check_id(rec, where[i])
        if "completion" not in rec:
            raise InputError(f"{where[i]}: completion: missing")
        if not isinstance(rec["completion"], str):
            raise InputError(
                f"{where[i]}: completion: expected a string, got {type(rec['completion']).__name__}"
            )
        if rid in index:
            raise InputError(f"{where[i]}: id: duplicate id {rid!r} (first at {where[index[rid]]})")
        index[rid] = i
    return index


def check_dataset(records: Sequence[Any], where: Sequence[str]) -> dict[str, int]:
    """Validate dataset records; returns id -> index. ``where[i]`` locates record ``i``."""
    index: dict[str, int] = {}
    for i, rec in enumerate(records):
        rid = _check_id(rec, where[i])
        if "answer" not in rec:
            raise InputError(f"{where[i]}: answer: missing")
        gold = rec["answer"]
        if isinstance(gold, bool) or not isinstance(gold, str | int | float) or not gold_text(gold).strip():
            raise InputError(f"{where[i]}: answer: expected a non-empty string or a number, got {gold!r}")
        meta = {} if rec.get("meta") is None else rec["meta"]
        if not isinstance(meta, dict):
            raise InputError(f"{where[i]}: meta: expected an object, got {type(meta).__name__}")
        if not isinstance(meta.get("category", ""), str):
            raise InputError(f"{where[i]}: meta.category: expected a string, got {meta['category']!r}")
        if rid in index:
            raise InputError(f"{where[i]}: id: duplicate id {rid!r} (first at {where[index[rid]]})")
        index[rid] = i
    return index


def primary_score(strict_right: int, format_ok: int, n: int) -> dict[str, Any]:
    """The headline every eval summary, comparison, report and package shows (``PRIMARY_SCORE_DEFINITION``).

    ``strict_right`` and ``format_ok`` count the eval items, out of all ``n`` (a missing
    prediction counts as neither), that are strictly right and well formed.
    """
    return {
        "id": PRIMARY_SCORE,
        "n": n,
        "correct": strict_right,
        "value": strict_right / n if n else None,
        "ci95": list(wilson_interval(strict_right, n)),
        "format_ok": format_ok,
        "format_rate": format_ok / n if n else None,
        "format_rate_ci95": list(wilson_interval(format_ok, n)),
    }


def describe_primary_score(score: dict[str, Any] | None) -> str:
    """``1.6% [0.8, 3.1] (8/500), format 93.4% [90.9, 95.3]``: the one way every output prints it."""
    if score is None or score["value"] is None:
        return "n/a"
    lo, hi = score["ci95"]
    flo, fhi = score["format_rate_ci95"]
    return (
        f"{100 * score['value']:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}] ({score['correct']}/{score['n']}), "
        f"format {100 * score['format_rate']:.1f}% [{100 * flo:.1f}, {100 * fhi:.1f}]"
    )


def _summary(items: list[dict[str, Any]]) -> dict[str, Any]:
    n = len(items)
    out: dict[str, Any] = {"n": n}
    for metric in METRICS:
        key = "format_ok" if metric == "format" else metric
        out.update(proportion(sum(it[key] for it in items), n, f"{metric}_accuracy"))
    failures = dict.fromkeys(FAILURE_KINDS, 0)
    for it in items:
        if it["failure"] is not None:
            failures[it["failure"]] += 1
    out["failures"] = failures
    return out


def score_predictions(
    predictions: list[dict], dataset: list[dict], *, per_item: bool = False
) -> dict[str, Any]:
    """Score ``predictions`` against ``dataset``; the summary that ``S.json`` holds.

    ``n`` is the number of dataset items; an item without a prediction scores as wrong
    (failure ``missing_prediction``). With ``per_item``, ``items`` holds one record per
    dataset item, in dataset order. Raises ``InputError`` on a malformed or duplicate record.
    """
    pred_index = check_predictions(predictions, [f"predictions[{i}]" for i in range(len(predictions))])
    data_index = check_dataset(dataset, [f"dataset[{i}]" for i in range(len(dataset))])
    has_categories = any("category" in (rec.get("meta") or {}) for rec in dataset)

    items = []
    for rec in dataset:
        rid = str(rec["id"])
        item: dict[str, Any] = {"id": rec["id"]}
        if has_categories:
            item["category"] = category_of(rec)
        item["gold"] = rec["answer"]
        if rid in pred_index:
            verdict = score_completion(predictions[pred_index[rid]]["completion"], rec["answer"])
            for key in ("extracted", "flexible_extracted"):
                if verdict[key] is not None and len(verdict[key]) > EXTRACT_CHARS:
                    verdict[key] = verdict[key][:EXTRACT_CHARS] + "…"
            item.update(verdict)
        else:
            item.update(
                format_ok=False,
                strict=False,
                flexible=False,
                partial=False,
                extracted=None,
                flexible_extracted=None,
                failure="missing_prediction",
            )
        items.append(item)

    out: dict[str, Any] = {"scorer": SCORER, **_summary(items), "n_predictions": len(predictions)}
    out["primary_score"] = primary_score(
        sum(it["strict"] for it in items), sum(it["format_ok"] for it in items), len(items)
    )
    out["rules"] = RULES
    if has_categories:
        names = sorted({it["category"] for it in items})
        out["categories"] = {c: _summary([it for it in items if it["category"] == c]) for c in names}
    out["predictions_without_item"] = [p["id"] for p in predictions if str(p["id"]) not in data_index]
    out["items_without_prediction"] = [it["id"] for it in items if it["failure"] == "missing_prediction"]
    if per_item:
        out["items"] = items
    return out


def _rate(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def load_records(path: str | Path, check: Any) -> list[dict]:
    """Read a JSONL file and validate it with ``check``; errors name ``file:line: field``."""
    records, where = [], []
    for lineno, value in iter_jsonl(path):
        records.append(value)
        where.append(f"{path}:{lineno}")
    check(records, where)
    return records


@cli
def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--predictions", required=True, help="JSONL of {id, completion}")
    parser.add_argument("--dataset", required=True, help="JSONL of {id, answer, meta?: {category?}}")
    parser.add_argument("--out", required=True, help="where to write the summary JSON")
    parser.add_argument("--per-item", help="also write one JSONL line of verdicts per dataset item here")
    parser.add_argument(
        "--suite",
        choices=("answers", "yaml_trace"),
        default="answers",
        help="yaml_trace: also execute the YAML trace in each completion's <reasoning>",
    )
    args = parser.parse_args(argv)

    predictions = load_records(args.predictions, check_predictions)
    dataset = load_records(args.dataset, check_dataset)
    if not dataset:
        raise InputError(f"{args.dataset}: no items")
    yaml_suite = args.suite == "yaml_trace"
    result = score_predictions(predictions, dataset, per_item=bool(args.per_item) or yaml_suite)
    items = result.pop("items", None)
    if yaml_suite:
        from evals.suites.yaml_trace import PRIMARY, add_trace_scores

        add_trace_scores(result, predictions, dataset, items)
        result["suite"], result["primary_metric"] = "yaml_trace", PRIMARY
    write_json(args.out, result)
    if args.per_item:
        write_jsonl(args.per_item, items)
    ci = result["strict_accuracy_ci95"]
    print(
        f"n={result['n']} strict={result['strict_accuracy']:.3f} [{ci[0]:.3f}, {ci[1]:.3f}] "
        f"flexible={result['flexible_accuracy']:.3f} partial={result['partial_accuracy']:.3f} "
        f"format={result['format_accuracy']:.3f} -> {args.out}"
    )
    print(f"primary score: {describe_primary_score(result['primary_score'])}")
    if yaml_suite:
        print(
            f"traces: parse={result['parse_rate']:.3f} valid={result['valid_rate']:.3f} "
            f"solver={result['solver_accuracy']:.3f} agreement={_rate(result['agreement_rate'])} "
            f"(n={result['agreement_n']}) outcomes={result['trace_outcomes']}"
        )
    if result["items_without_prediction"] or result["predictions_without_item"]:
        print(
            f"note: {len(result['items_without_prediction'])} items without a prediction (scored wrong), "
            f"{len(result['predictions_without_item'])} predictions without an item (ignored, listed)"
        )
    return result


if __name__ == "__main__":
    main()
