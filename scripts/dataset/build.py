"""``build``: one config -> ``<out_dir>/<name>/<split>.jsonl`` + ``rejects.jsonl`` + ``manifest.json``.

The source (``kind``) is GSM8K, a reasoning-gym task mix, a user JSONL/CSV file with a
field mapping, the YAML-trace generator (``yaml_traces``) or GSM8K train converted to YAML
traces (``gsm8k_traces``). An optional ``valid`` split is carved from ``train`` by id hash.
An optional ``contamination`` gate checks the built splits against an evaluation set and
fails the build above its threshold. The new directory is written beside the old one and
swapped in only when complete (and clean).
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from common.config import to_dict
from common.errors import InputError
from common.jsonl import write_json, write_jsonl
from common.records import validate_record
from common.runs import git_commit, library_versions, now_iso, sha256_file
from scripts.dataset.contamination import ContaminationConfig, contamination
from scripts.dataset.sources import (
    Buckets,
    GSM8KSource,
    RGSource,
    UserSource,
    check_rg_splits,
    read_gsm8k,
    read_reasoning_gym,
    read_user,
)
from scripts.dataset.splits import split_by_size, write_split
from scripts.dataset.traces.generate import TraceGenConfig, generate
from scripts.dataset.traces.gsm8k import GSM8KTracesSource, read_gsm8k_traces

KINDS = ("gsm8k", "reasoning_gym", "user", "yaml_traces", "gsm8k_traces")


@dataclass
class ContaminationGate:
    """Word n-gram overlap of the built splits with an evaluation set; above ``threshold`` the build fails."""

    against: str = "data/built/gsm8k/test.jsonl"
    n: int = 8
    threshold: float = 0.01  # largest acceptable share of contaminated eval items, per split
    splits: list[str] | None = None  # None: every split


@dataclass
class BuildConfig:
    name: str  # output folder under out_dir
    kind: Literal["gsm8k", "reasoning_gym", "user", "yaml_traces", "gsm8k_traces"]
    seed: int = 0
    out_dir: str = "data/built"
    valid_size: int = 0  # records moved from 'train' to 'valid' (smallest id hashes)
    train_splits: list[str] = field(default_factory=lambda: ["train"])  # splits a trainer will learn from
    difficulty: Buckets = field(default_factory=Buckets)
    gsm8k: GSM8KSource | None = None
    reasoning_gym: RGSource | None = None
    user: UserSource | None = None
    yaml_traces: TraceGenConfig | None = None
    gsm8k_traces: GSM8KTracesSource | None = None
    contamination: ContaminationGate | None = None

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", self.name) or self.name.startswith("."):
            raise ValueError(f"name: {self.name!r} must be a plain folder name")
        if self.valid_size < 0:
            raise ValueError("valid_size: must be >= 0")
        for kind in KINDS:
            if kind != self.kind and getattr(self, kind) is not None:
                raise ValueError(f"section '{kind}' is given but kind is '{self.kind}'")
        if self.kind == "gsm8k" and self.gsm8k is None:
            self.gsm8k = GSM8KSource()
        if self.kind == "yaml_traces" and self.yaml_traces is None:
            self.yaml_traces = TraceGenConfig()
        if self.kind == "gsm8k_traces" and self.gsm8k_traces is None:
            self.gsm8k_traces = GSM8KTracesSource()
        if getattr(self, self.kind) is None:
            raise ValueError(f"kind '{self.kind}' needs a '{self.kind}:' section")


def read_source(
    cfg: BuildConfig,
) -> tuple[dict[str, list[dict[str, Any]]], list[dict[str, Any]], dict[str, Any], dict[str, Any] | None]:
    """Records per split, rejects, a description of the inputs (with sha256 of files), and the
    generator's or converter's report (None for the plain sources)."""
    report = None
    if cfg.kind == "gsm8k":
        assert cfg.gsm8k is not None
        splits, rejects, paths = read_gsm8k(cfg.gsm8k, cfg.difficulty)
        inputs: dict[str, Any] = {p: sha256_file(p) for p in paths.values()}
        inputs["origin"] = "openai/grade-school-math (MIT), vendored in data/gsm8k"
    elif cfg.kind == "reasoning_gym":
        assert cfg.reasoning_gym is not None
        check_rg_splits(cfg.reasoning_gym, cfg.train_splits)
        splits, rejects, inputs = read_reasoning_gym(cfg.reasoning_gym, cfg.seed, cfg.difficulty)
    elif cfg.kind == "yaml_traces":
        assert cfg.yaml_traces is not None
        splits, rejects, report = generate(cfg.yaml_traces, cfg.seed)
        files = sorted(
            [*Path(cfg.yaml_traces.patterns).glob("*/*.yaml"), *Path(cfg.yaml_traces.vocab).glob("*.yaml")]
        )
        inputs = {str(p): sha256_file(p) for p in files}
    elif cfg.kind == "gsm8k_traces":
        assert cfg.gsm8k_traces is not None
        splits, rejects, report = read_gsm8k_traces(cfg.gsm8k_traces)
        path = Path(cfg.gsm8k_traces.dir) / f"{cfg.gsm8k_traces.split}.jsonl"
        inputs = {
            str(path): sha256_file(path),
            "origin": "openai/grade-school-math (MIT), vendored in data/gsm8k",
        }
    else:
        assert cfg.user is not None
        splits, rejects, paths = read_user(cfg.user, cfg.difficulty)
        inputs = {p: sha256_file(p) for p in paths.values()}
    return splits, rejects, inputs, report


def check_contamination(folder: Path, splits: list[str], gate: ContaminationGate) -> dict[str, Any]:
    """Run the n-gram check of each split file in ``folder`` against ``gate.against``; reports are
    written beside the splits. Above the threshold: ``InputError`` (the build then writes nothing)."""
    if not Path(gate.against).is_file():
        raise InputError(
            f"contamination.against: {gate.against} not found (build it first, e.g. `make data`)"
        )
    cfg = ContaminationConfig(n=gate.n, threshold=gate.threshold)
    out = {}
    for split in gate.splits or splits:
        if split not in splits:
            raise InputError(f"contamination.splits: no split '{split}' (splits: {', '.join(splits)})")
        report = contamination(
            str(folder / f"{split}.jsonl"), gate.against, cfg, folder / f"contamination.{split}.json"
        )
        out[split] = {
            "against": gate.against,
            "n": gate.n,
            "contaminated": report["contaminated"],
            "share": report["contaminated_share"],
            "threshold": gate.threshold,
            "report": f"contamination.{split}.json",
        }
        if report["above_threshold"]:
            first = report["items"][0]
            raise InputError(
                f"contamination: split '{split}' shares a {gate.n}-gram with {report['contaminated']} of "
                f"{report['eval']['records']} items of {gate.against} ({report['contaminated_share']:.2%}, threshold "
                f"{gate.threshold:.2%}); e.g. {first['eval_id']} and {first['pairs'][0]['train_id']}: "
                f"{first['pairs'][0]['example']!r}. Reword the phrasings that copy it"
            )
    return out


def carve_valid(splits: dict[str, list[dict[str, Any]]], size: int, seed: int) -> None:
    if "valid" in splits:
        raise InputError("valid_size: the source already has a 'valid' split")
    if "train" not in splits:
        raise InputError(f"valid_size: no 'train' split to carve from (splits: {', '.join(splits)})")
    parts = split_by_size(splits.pop("train"), {"valid": size}, seed, rest="train")
    rest = dict(splits)
    splits.clear()
    splits.update({"train": parts["train"], "valid": parts["valid"], **rest})


def check_built(splits: dict[str, list[dict[str, Any]]]) -> None:
    """Every record valid, ids unique across splits, no split empty."""
    seen: dict[str, str] = {}
    for split, records in splits.items():
        if not records:
            raise InputError(f"split '{split}' has no records")
        for record in records:
            errors = validate_record(record)
            if errors:
                raise InputError(
                    f"split '{split}', id {record.get('id')!r}: built record is invalid: {'; '.join(errors)}"
                )
            if record["id"] in seen:
                raise InputError(
                    f"id {record['id']!r} appears twice (splits '{seen[record['id']]}' and '{split}')"
                )
            seen[record["id"]] = split


def split_counts(records: list[dict[str, Any]]) -> dict[str, Any]:
    def count(key: str) -> dict[str, int]:
        return dict(sorted(Counter(str(r["meta"][key]) for r in records).items()))

    return {
        "records": len(records),
        "by_source": count("source"),
        "by_category": count("category"),
        "by_difficulty": count("difficulty"),
    }


def build(cfg: BuildConfig, config_path: str | None = None) -> dict[str, Any]:
    """Build the dataset and return its manifest."""
    start = time.time()
    splits, rejects, inputs, report = read_source(cfg)
    if cfg.valid_size:
        carve_valid(splits, cfg.valid_size, cfg.seed)
    check_built(splits)

    out = Path(cfg.out_dir) / cfg.name
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{cfg.name}.", dir=out.parent))
    try:
        files = {}
        for split, records in splits.items():
            files[split] = write_split(tmp, split, records)
        if rejects:
            write_jsonl(tmp / "rejects.jsonl", rejects)
        checked = check_contamination(tmp, list(splits), cfg.contamination) if cfg.contamination else None
        manifest = {
            "name": cfg.name,
            "kind": cfg.kind,
            "source": inputs,
            "seed": cfg.seed,
            "config_path": config_path,
            "config": to_dict(cfg),
            "created": now_iso(),
            "build_seconds": round(time.time() - start, 2),
            "git_commit": git_commit(),
            "libraries": library_versions(),
            "files": files,
            "counts": {split: split_counts(records) for split, records in splits.items()},
            "rejects": {
                "count": len(rejects),
                "file": "rejects.jsonl" if rejects else None,
                "by_reason": dict(
                    Counter(f"{r.get('task', cfg.kind)}: {r['reason']}" for r in rejects).most_common(50)
                ),
            },
        }
        if report is not None:
            manifest["generator" if cfg.kind == "yaml_traces" else "conversion"] = report
        if checked is not None:
            manifest["contamination"] = checked
        write_json(tmp / "manifest.json", manifest)
        _make_readable(tmp)
        old = out.with_name(f".{out.name}.old")
        if out.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def _make_readable(folder: Path) -> None:
    """A temp dir is private (0700); give the built one the usual umask mode (files already have it)."""
    umask = os.umask(0)
    os.umask(umask)
    folder.chmod(0o777 & ~umask)


def summary(manifest: dict[str, Any], out: Path) -> str:
    lines = [f"built {out} in {manifest['build_seconds']} s"]
    for split, info in manifest["files"].items():
        cats = ", ".join(f"{k} {v}" for k, v in manifest["counts"][split]["by_category"].items())
        lines.append(f"  {split}: {info['records']} records ({cats})")
    if "generator" in manifest:
        lines += generator_lines(manifest["generator"])
    if "conversion" in manifest:
        conv = manifest["conversion"]
        lines.append(
            f"  converted {conv['kept']} of {conv['items']} items (yield {conv['yield']:.1%}); left out:"
        )
        lines += [
            f"    {k}: {v['count']} ({v['share']:.1%})" for k, v in conv["taxonomy"].items() if v["count"]
        ]
    for split, c in (manifest.get("contamination") or {}).items():
        lines.append(
            f"  contamination {split} vs {c['against']}: {c['contaminated']} items ({c['share']:.2%}) share a "
            f"{c['n']}-gram; threshold {c['threshold']:.2%}: passed"
        )
    rej = manifest["rejects"]
    if rej["count"]:
        lines.append(f"  dropped {rej['count']} items, listed in {out / 'rejects.jsonl'}:")
        lines += [f"    {n} x {reason}" for reason, n in rej["by_reason"].items()]
    return "\n".join(lines)


def generator_lines(report: dict[str, Any]) -> list[str]:
    """Per-expert and per-pattern counts of a yaml_traces build, as text lines."""
    patterns = report["patterns"]
    splits = sorted({s for p in patterns.values() for s in p["kept"]})
    lines = [
        f"  {report['n_patterns']} patterns, {report['templates']} phrasings; kept per split and expert:"
    ]
    experts = sorted({p["expert"] for p in patterns.values()})
    head = "    " + f"{'expert':<16}" + "".join(f"{s:>18}" for s in splits) + f"{'rejected':>10}"
    lines.append(head)
    for e in experts:
        group = [p for p in patterns.values() if p["expert"] == e]
        kept = "".join(f"{sum(p['kept'].get(s, 0) for p in group):>18}" for s in splits)
        lines.append(f"    {e:<16}{kept}{sum(p['rejected'] for p in group):>10}")
    lines.append(
        "    "
        + f"{'pattern':<28}{'expert':<15}"
        + "".join(f"{s:>18}" for s in splits)
        + f"{'samples':>9}{'rejected':>10}{'dups':>6}"
    )
    for name, p in patterns.items():
        kept = "".join(f"{p['kept'].get(s, 0):>18}" for s in splits)
        lines.append(
            f"    {name:<28}{p['expert']:<15}{kept}{p['samples']:>9}{p['rejected']:>10}{p['duplicates']:>6}"
        )
    return lines
