"""``curriculum``: place each record in an ordered stage by rules on category, source, difficulty and steps.

Rules are tried in order and the first match wins; a record no rule matches is an error,
or goes to the catch-all stage named by ``unmatched``. Writes ``stage_<name>.jsonl`` per
stage (in stage order) and ``split_stats.json``. A lab note such as "Stage A:
synthetic+golden_style (2 steps); Stage B: reasoning with 3 steps; Stage C: reasoning 4+
steps + edge_case" reads::

    stages: [A, B, C]
    rules:
      - {stage: A, categories: [synthetic, golden_style], max_steps: 2}
      - {stage: B, categories: [reasoning], min_steps: 3, max_steps: 3}
      - {stage: C, categories: [reasoning], min_steps: 4}
      - {stage: C, categories: [edge_case]}
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.config import to_dict
from common.errors import InputError
from common.jsonl import write_json, write_jsonl
from common.records import iter_records
from common.runs import now_iso, sha256_file
from scripts.dataset.stats import histogram_text


@dataclass
class StageRule:
    stage: str
    categories: list[str] | None = None  # None: any
    sources: list[str] | None = None
    difficulties: list[str] | None = None  # compared as text
    min_steps: int | None = None
    max_steps: int | None = None

    def matches(self, record: dict[str, Any]) -> bool:
        meta, n = record["meta"], len(record["steps"])
        return (
            (self.categories is None or meta["category"] in self.categories)
            and (self.sources is None or meta["source"] in self.sources)
            and (self.difficulties is None or str(meta["difficulty"]) in self.difficulties)
            and (self.min_steps is None or n >= self.min_steps)
            and (self.max_steps is None or n <= self.max_steps)
        )

    def describe(self) -> str:
        parts = [f"{k} {v}" for k, v in to_dict(self).items() if k != "stage" and v is not None]
        return f"stage {self.stage}: " + (", ".join(parts) or "everything")


@dataclass
class CurriculumConfig:
    stages: list[str]  # in training order
    rules: list[StageRule]
    unmatched: str = "error"  # 'error', or the name of a catch-all stage in `stages`
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.stages:
            raise ValueError("stages: at least one stage is needed")
        for name in self.stages:
            if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
                raise ValueError(f"stages: {name!r} must be a plain name (it becomes stage_<name>.jsonl)")
        if len(set(self.stages)) != len(self.stages):
            raise ValueError(f"stages: names repeat in {self.stages}")
        for k, rule in enumerate(self.rules):
            if rule.stage not in self.stages:
                raise ValueError(f"rules[{k}].stage: {rule.stage!r} is not one of the stages {self.stages}")
        if self.unmatched != "error" and self.unmatched not in self.stages:
            raise ValueError(
                f"unmatched: {self.unmatched!r} must be 'error' or one of the stages {self.stages}"
            )


def assign_stage(record: dict[str, Any], cfg: CurriculumConfig) -> str | None:
    """The stage of the first matching rule, else the catch-all stage, else None."""
    for rule in cfg.rules:
        if rule.matches(record):
            return rule.stage
    return None if cfg.unmatched == "error" else cfg.unmatched


def stage_stats(records: list[dict[str, Any]]) -> dict[str, Any]:
    steps = Counter(len(r["steps"]) for r in records)
    return {
        "by_category": dict(sorted(Counter(r["meta"]["category"] for r in records).items())),
        "by_source": dict(sorted(Counter(r["meta"]["source"] for r in records).items())),
        "steps_histogram": {str(k): steps[k] for k in sorted(steps)},
        "steps_histogram_text": histogram_text(steps) if steps else "",
    }


def build_curriculum(
    path: str, out_dir: str, cfg: CurriculumConfig, echo: Callable[[str], None] = print
) -> dict:
    """Write one file per stage and ``split_stats.json``; raise on an unmatched record when unmatched=error."""
    staged: dict[str, list[dict[str, Any]]] = {name: [] for name in cfg.stages}
    n = 0
    for lineno, record in iter_records(path):
        n += 1
        stage = assign_stage(record, cfg)
        if stage is None:
            raise InputError(
                f"{path}:{lineno}: no curriculum rule matches id {record['id']!r} (category "
                f"{record['meta']['category']!r}, {len(record['steps'])} steps); add a rule or set unmatched=<stage>"
            )
        staged[stage].append(record)
    out = Path(out_dir)
    stages = []
    for order, name in enumerate(cfg.stages):
        file = out / f"stage_{name}.jsonl"
        write_jsonl(file, staged[name])
        stages.append({"name": name, "order": order, "file": file.name, "records": len(staged[name]),
                       "sha256": sha256_file(file), **stage_stats(staged[name])})  # fmt: skip
        echo(
            f"  stage {name}: {len(staged[name])} records"
            + ("  (warning: empty)" if not staged[name] else "")
        )
    report = {
        "source": {"path": path, "sha256": sha256_file(path), "records": n},
        "seed": cfg.seed,
        "created": now_iso(),
        "rules": [rule.describe() for rule in cfg.rules],
        "unmatched": cfg.unmatched,
        "stages": stages,
        "per_category": {
            cat: {s["name"]: s["by_category"].get(cat, 0) for s in stages}
            for cat in sorted({c for s in stages for c in s["by_category"]})
        },
    }
    write_json(out / "split_stats.json", report)
    echo(f"wrote {len(stages)} stages of {path} to {out}")
    return report
