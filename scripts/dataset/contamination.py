"""``contamination``: word n-gram overlap of a training set against an evaluation set.

Text is lowercased with punctuation stripped (``scripts.dataset.text.words``). An eval
item is contaminated when it shares at least ``min_shared`` n-grams with one training
item; texts shorter than n words count as one n-gram of their whole text. The eval set is
indexed (it is usually the small side) and the training set streamed past it. The report
lists each contaminated eval id with the training ids it overlaps; exit status 1 when the
contaminated share of eval items is above ``threshold``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from common.jsonl import write_json
from common.records import iter_records
from common.runs import now_iso, sha256_file
from scripts.dataset.text import words

TEXT_FIELDS = ("question", "reasoning", "answer")


@dataclass
class ContaminationConfig:
    n: int = 8
    threshold: float = 0.01  # largest acceptable share of contaminated eval items
    min_shared: int = 1  # shared n-grams that make a pair
    train_fields: list[str] = field(default_factory=lambda: ["question"])
    eval_fields: list[str] = field(default_factory=lambda: ["question"])
    max_pairs_per_item: int = 20
    seed: int = 0

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError("n: must be >= 1")
        for name in ("train_fields", "eval_fields"):
            bad = [f for f in getattr(self, name) if f not in TEXT_FIELDS]
            if bad or not getattr(self, name):
                raise ValueError(f"{name}: choose from {', '.join(TEXT_FIELDS)}")


def ngrams(text: str, n: int) -> set[str]:
    tokens = words(text)
    if len(tokens) < n:
        return {" ".join(tokens)} if tokens else set()
    return {" ".join(tokens[i : i + n]) for i in range(len(tokens) - n + 1)}


def record_text(record: dict[str, Any], fields: list[str]) -> str:
    return "\n".join(record[f] for f in fields)


def default_report_path(train: str, eval_path: str) -> Path:
    t = Path(train)
    return t.with_name(
        f"{t.name.removesuffix('.jsonl')}.contamination.{Path(eval_path).name.removesuffix('.jsonl')}.json"
    )


def contamination(train: str, eval_path: str, cfg: ContaminationConfig, out: str | Path) -> dict[str, Any]:
    """The overlap report, also written to ``out``."""
    index: dict[str, list[int]] = defaultdict(list)
    eval_ids: list[str] = []
    for _, record in iter_records(eval_path):
        for gram in ngrams(record_text(record, cfg.eval_fields), cfg.n):
            index[gram].append(len(eval_ids))
        eval_ids.append(record["id"])
    shared: dict[int, dict[str, list[str]]] = defaultdict(dict)  # eval index -> train id -> shared n-grams
    n_train = 0
    for _, record in tqdm(iter_records(train), desc="contamination", unit=" train", leave=False):
        n_train += 1
        hits: dict[int, list[str]] = defaultdict(list)
        for gram in ngrams(record_text(record, cfg.train_fields), cfg.n):
            for k in index.get(gram, ()):
                hits[k].append(gram)
        for k, grams in hits.items():
            if len(grams) >= cfg.min_shared:
                shared[k][record["id"]] = grams
    items = []
    for k in sorted(shared):
        ranked = sorted(shared[k].items(), key=lambda kv: (-len(kv[1]), kv[0]))
        items.append({
            "eval_id": eval_ids[k],
            "train_matches": len(ranked),
            "pairs": [{"train_id": tid, "shared_ngrams": len(g), "example": sorted(g)[0]}
                      for tid, g in ranked[: cfg.max_pairs_per_item]],
        })  # fmt: skip
    share = len(items) / len(eval_ids)
    report = {
        "created": now_iso(),
        "train": {
            "path": train,
            "sha256": sha256_file(train),
            "records": n_train,
            "fields": cfg.train_fields,
        },
        "eval": {
            "path": eval_path,
            "sha256": sha256_file(eval_path),
            "records": len(eval_ids),
            "fields": cfg.eval_fields,
        },
        "n": cfg.n,
        "min_shared": cfg.min_shared,
        "normalisation": "lowercase, punctuation stripped, whitespace words",
        "contaminated": len(items),
        "contaminated_share": round(share, 6),
        "train_items_involved": len({tid for matches in shared.values() for tid in matches}),
        "threshold": cfg.threshold,
        "above_threshold": share > cfg.threshold,
        "items": items,
    }
    write_json(out, report)
    return report


def summary(report: dict[str, Any], out: str | Path, echo: Callable[[str], None] = print) -> None:
    verdict = "ABOVE" if report["above_threshold"] else "within"
    k, n = report["min_shared"], report["n"]
    grams = f"a {n}-gram" if k == 1 else f"at least {k} {n}-grams"
    echo(
        f"{report['contaminated']} of {report['eval']['records']} eval items "
        f"({100 * report['contaminated_share']:.2f}%) share {grams} with an item of "
        f"{report['train']['path']} ({report['train_items_involved']} of {report['train']['records']} "
        f"training items involved); {verdict} threshold {100 * report['threshold']:.2f}%; report: {out}"
    )
