"""Compare two prediction files on the same items: paired deltas, exact McNemar, flips.

    python -m evals.compare A.jsonl B.jsonl --dataset D.jsonl --out compare.json

Both files are scored with the shared scorer (``evals.suites``), then paired on the ids
they share. Per metric: both accuracies with Wilson intervals, the delta ``B - A`` with a
paired 95% interval (Newcombe's method 10, built from the two Wilson intervals and the
correlation of the pairs), an exact McNemar test (two-sided binomial on the discordant
pairs) and the ids that flipped each way. Ids in one file only, or in no dataset item, are
listed, never dropped silently. When the items are too few to separate the two models, a
warning says so loudly, on stderr and in the JSON (seed 002: 90% on 10 items, ~2% on 100).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

from common.errors import InputError, cli
from common.evidence import write_evidence
from common.jsonl import iter_jsonl
from common.runs import sha256_file
from evals.score import PRIMARY_SCORE_DEFINITION, describe_primary_score, primary_score
from evals.stats import mcnemar_exact
from evals.suites import SUITES

ALPHA = 0.05
MIN_N = 200  # below this, a delta whose interval spans 0 gets the small-n warning


def best_possible_p(discordant: int) -> float:
    """The smallest McNemar p-value ``discordant`` pairs could give (all of them one way)."""
    return mcnemar_exact(0, discordant)


def _wilson(k: int, n: int) -> tuple[float, float]:
    from evals.stats import wilson_interval

    return tuple(wilson_interval(k, n))  # type: ignore[return-value]


def paired_delta_ci(both: int, a_only: int, b_only: int, neither: int) -> tuple[float, float]:
    """95% interval for ``p_B - p_A`` from paired outcomes (Newcombe 1998, method 10).

    ``both``: right in A and B; ``a_only``: right in A only; ``b_only``: right in B only;
    ``neither``: wrong in both. Combines the Wilson intervals of the two marginal rates
    with the phi correlation of the 2x2 table (phi taken as 0 when a margin is empty).
    """
    n = both + a_only + b_only + neither
    if n == 0:
        return (-1.0, 1.0)
    pa, pb = (both + a_only) / n, (both + b_only) / n
    la, ua = _wilson(both + a_only, n)
    lb, ub = _wilson(both + b_only, n)
    margins = (both + a_only) * (b_only + neither) * (both + b_only) * (a_only + neither)
    phi = (both * neither - a_only * b_only) / math.sqrt(margins) if margins else 0.0
    delta = pb - pa
    down = math.sqrt(max(0.0, (pb - lb) ** 2 - 2 * phi * (pb - lb) * (ua - pa) + (ua - pa) ** 2))
    up = math.sqrt(max(0.0, (ub - pb) ** 2 - 2 * phi * (ub - pb) * (pa - la) + (pa - la) ** 2))
    return (max(-1.0, delta - down), min(1.0, delta + up))


def compare_verdicts(
    a: dict[str, dict[str, Any]],
    b: dict[str, dict[str, Any]],
    metrics: list[str],
    primary: str,
    min_n: int = MIN_N,
) -> dict[str, Any]:
    """Paired comparison of per-item verdicts ``{id: {metric: bool, "category": str?}}``.

    Only ids in both are paired; the rest are listed under ``only_in_a`` / ``only_in_b``.
    """
    paired = [i for i in a if i in b]
    out: dict[str, Any] = {
        "n_paired": len(paired),
        "only_in_a": [i for i in a if i not in b],
        "only_in_b": [i for i in b if i not in a],
        "primary_metric": primary,
        "alpha": ALPHA,
        "min_n": min_n,
        "metrics": {},
    }
    for metric in metrics:
        out["metrics"][metric] = _paired_metric(a, b, paired, metric)
    cats = sorted({str(a[i].get("category")) for i in paired if a[i].get("category") is not None})
    if cats:
        out["categories"] = {
            c: _paired_metric(
                a, b, [i for i in paired if str(a[i].get("category")) == c], primary, with_ids=False
            )
            for c in cats
        }
    out["warnings"] = small_n_warnings(out["metrics"][primary], primary, min_n)
    out["too_small_to_separate"] = bool(out["warnings"])
    for metric in metrics:  # the other metrics' deltas get the same scrutiny
        if metric != primary:
            out["warnings"] += small_n_warnings(out["metrics"][metric], metric, min_n, whole_set=False)
    if out["only_in_a"] or out["only_in_b"]:
        out["warnings"].append(
            f"{len(out['only_in_a'])} ids only in A and {len(out['only_in_b'])} only in B are not paired "
            "(listed under only_in_a / only_in_b)"
        )
    return out


def _paired_metric(
    a: dict[str, dict], b: dict[str, dict], ids: list[str], metric: str, with_ids: bool = True
) -> dict[str, Any]:
    ids = [
        i for i in ids if a[i].get(metric) is not None and b[i].get(metric) is not None
    ]  # scored items only
    both = a_only = b_only = neither = 0
    gained, lost = [], []
    for i in ids:
        ra, rb = bool(a[i][metric]), bool(b[i][metric])
        if ra and rb:
            both += 1
        elif ra:
            a_only += 1
            lost.append(i)
        elif rb:
            b_only += 1
            gained.append(i)
        else:
            neither += 1
    n = len(ids)
    res: dict[str, Any] = {
        "n": n,
        "a": (both + a_only) / n if n else None,
        "a_ci95": list(_wilson(both + a_only, n)),
        "b": (both + b_only) / n if n else None,
        "b_ci95": list(_wilson(both + b_only, n)),
        "delta": (b_only - a_only) / n if n else None,
        "delta_ci95": list(paired_delta_ci(both, a_only, b_only, neither)),
        "table": {"both": both, "a_only": a_only, "b_only": b_only, "neither": neither},
        "mcnemar_p": mcnemar_exact(a_only, b_only),
        "best_possible_p": best_possible_p(a_only + b_only),
    }
    if with_ids:
        res["gained"] = gained  # wrong in A, right in B
        res["lost"] = lost  # right in A, wrong in B
    return res


def small_n_warnings(
    res: dict[str, Any], metric: str, min_n: int = MIN_N, whole_set: bool = True
) -> list[str]:
    """Why these items cannot separate A from B on ``metric``, if they cannot (else ``[]``).

    ``whole_set`` adds the warnings about the item count itself (given once, for the primary metric).
    """
    warnings = []
    n = res["n"]
    if n == 0:
        return [f"no paired items: nothing to compare on {metric}"] if whole_set else []
    if whole_set and best_possible_p(n) >= ALPHA:
        warnings.append(
            f"n={n} paired items cannot separate the two at all: even if every item flipped the same way, "
            f"the exact McNemar p would be {best_possible_p(n):.3f} >= {ALPHA}"
        )
    d = res["table"]["a_only"] + res["table"]["b_only"]
    if d and res["best_possible_p"] >= ALPHA:
        warnings.append(
            f"{metric}: only {d} discordant pairs, too few to separate the two: even if all went one way "
            f"the exact McNemar p would be {res['best_possible_p']:.3f} >= {ALPHA}"
        )
    lo, hi = res["delta_ci95"]
    spans = lo < 0 < hi
    if n < min_n and (spans or res["mcnemar_p"] >= ALPHA):
        warnings.append(
            f"{metric}: n={n} < {min_n}, the delta's 95% interval [{lo:+.3f}, {hi:+.3f}] "
            f"{'spans 0' if spans else 'excludes 0'} and the exact McNemar p is {res['mcnemar_p']:.3f}: these "
            "items are too few to tell the two apart (seed 002: 90% on 10 items was ~2% on 100)"
        )
    return warnings


def _load(path: str | Path) -> list[dict]:
    records = []
    for lineno, rec in iter_jsonl(path):
        if not isinstance(rec, dict) or "id" not in rec:
            raise InputError(f"{path}:{lineno}: id: missing (not a prediction record)")
        records.append(rec)
    if not records:
        raise InputError(f"{path}: no predictions")
    return records


def _provenance(records: list[dict], path: str | Path) -> dict[str, Any]:
    first = records[0]
    return {
        "path": str(path),
        "n_predictions": len(records),
        "model": first.get("model"),
        "decoding": first.get("decoding"),
    }


def consistency_notes(a: list[dict], b: list[dict]) -> list[str]:
    """Differences that make A and B not like-for-like beyond the model: prompts, decoding."""
    notes = []
    pa = {str(r["id"]): r.get("prompt") for r in a}
    differ = [str(r["id"]) for r in b if str(r["id"]) in pa and r.get("prompt") != pa[str(r["id"])]]
    if differ:
        notes.append(
            f"not like-for-like: {len(differ)} paired ids were generated from different prompts (first: {differ[0]})"
        )
    da, db = a[0].get("decoding"), b[0].get("decoding")
    if da != db:
        notes.append(f"not like-for-like: decoding settings differ: A {da} vs B {db}")
    fa, fb = (a[0].get("model") or {}).get("fingerprint"), (b[0].get("model") or {}).get("fingerprint")
    if fa and fa == fb:
        notes.append(
            "A and B were generated by the same weights (same model fingerprint): nothing was trained?"
        )
    return notes


def primary_scores(
    verdicts: dict[str, dict[str, dict[str, Any]]], eval_ids: list[str], suite: str
) -> dict[str, Any]:
    """``{side: evals.score.primary_score}`` over every eval item (a missing prediction counts 0).

    None per side for a prompt suite, whose items have no gold answer.
    """
    out: dict[str, Any] = {"definition": PRIMARY_SCORE_DEFINITION}
    for side, v in verdicts.items():
        scored = [v[i] for i in eval_ids if i in v]
        out[side] = (
            None
            if suite == "prompts"
            else primary_score(
                sum(x["strict"] for x in scored), sum(x["format"] for x in scored), len(eval_ids)
            )
        )
    return out


def compare_files(
    a_path: str | Path,
    b_path: str | Path,
    dataset_path: str | Path,
    min_n: int = MIN_N,
    suite: str = "auto",
    items: list[dict] | None = None,
) -> dict:
    """Score both prediction files against the dataset and compare them (the ``compare.json`` dict).

    ``suite``: ``auto`` (from the items) or ``yaml_trace`` (``evals.suites``). ``items``: the eval
    items when they are a sample of the dataset file (``evals.run_eval``); the primary scores
    count over them, every dataset item otherwise.
    """
    from evals.generate import load_items
    from evals.suites import item_verdicts, suite_metrics, suite_name

    a, b = _load(a_path), _load(b_path)
    dataset = load_items(dataset_path)
    eval_ids = [str(r["id"]) for r in (dataset if items is None else items)]
    by_id = {str(r["id"]): r for r in dataset}
    not_in_dataset = {
        "a": [r["id"] for r in a if str(r["id"]) not in by_id],
        "b": [r["id"] for r in b if str(r["id"]) not in by_id],
    }
    metrics, primary = suite_metrics(dataset, suite)
    va = item_verdicts([r for r in a if str(r["id"]) in by_id], by_id, suite)
    vb = item_verdicts([r for r in b if str(r["id"]) in by_id], by_id, suite)
    result = {
        "a": _provenance(a, a_path),
        "b": _provenance(b, b_path),
        "dataset": {"path": str(dataset_path), "sha256": sha256_file(dataset_path), "n_items": len(dataset)},
        "suite": suite_name(dataset, suite),
        **compare_verdicts(va, vb, metrics, primary, min_n),
        "primary_score": primary_scores({"a": va, "b": vb}, eval_ids, suite_name(dataset, suite)),
        "not_in_dataset": not_in_dataset,
    }
    if not_in_dataset["a"] or not_in_dataset["b"]:
        result["warnings"].append(
            f"{len(not_in_dataset['a'])} ids of A and {len(not_in_dataset['b'])} of B are in no dataset item "
            "(listed under not_in_dataset)"
        )
    result["warnings"] += consistency_notes(a, b)
    return result


def print_comparison(result: dict[str, Any]) -> None:
    primary = result["primary_metric"]
    print(f"paired n={result['n_paired']} (A={result['a']['path']}, B={result['b']['path']})")
    scores = result.get("primary_score") or {}
    if scores.get("a") or scores.get("b"):
        print(f"  primary score  A {describe_primary_score(scores['a'])}")
        print(f"                 B {describe_primary_score(scores['b'])}")
    for name, m in result["metrics"].items():
        if m["n"] == 0:
            continue
        lo, hi = m["delta_ci95"]
        star = " *" if name == primary else ""
        print(
            f"  {name:<10}{star:2} A {m['a']:.3f}  B {m['b']:.3f}  delta {m['delta']:+.3f} [{lo:+.3f}, {hi:+.3f}]  "
            f"McNemar p={m['mcnemar_p']:.4f}  gained {m['table']['b_only']} lost {m['table']['a_only']}"
        )
    for w in result["warnings"]:
        print(f"WARNING: {w}", file=sys.stderr)


@cli
def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("a", help="predictions A (e.g. the base model)")
    parser.add_argument("b", help="predictions B (e.g. the trained model)")
    parser.add_argument("--dataset", required=True, help="the eval items (id, answer or checks, meta)")
    parser.add_argument("--out", required=True, help="where to write compare.json")
    parser.add_argument("--min-n", type=int, default=MIN_N, help="small-n warning threshold")
    parser.add_argument(
        "--suite", default="auto", choices=SUITES, help="yaml_trace: also execute the YAML traces"
    )
    args = parser.parse_args(argv)
    result = compare_files(args.a, args.b, args.dataset, args.min_n, args.suite)
    write_evidence(args.out, "compare", result)
    print_comparison(result)
    return result


if __name__ == "__main__":
    main()
