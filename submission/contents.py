"""What a package holds, and what its evidence must show before it ships.

Shared by ``submission.package`` (which builds the members) and ``submission.verify`` (which
reads them back from the zip): the member names, the schema each evidence file follows, and
the checks a finished run's evidence must pass (no null or placeholder figures, and the same
primary score in the eval summary and the comparison).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator, Mapping
from pathlib import PurePosixPath
from typing import Any

import yaml

from common.errors import InputError

FORMAT = "showwork-package/1"
MANIFEST = "MANIFEST.json"
README = "README_SUBMISSION.md"
WRITEUP = "WRITEUP.md"
EVIDENCE = "evidence"
MODEL = "model"
BEST_PARAMS = f"{EVIDENCE}/best_params.json"
NOTEBOOK_LOG = f"{EVIDENCE}/notebook_log.json"
NOTEBOOK = "submission/kaggle_notebook.ipynb"
# The files of a run dir that are evidence (the weights and checkpoints are not), and its folders taken whole.
RUN_FILES = ("config.yaml", "run_manifest.json", "metrics.jsonl", "summary.json", "samples.jsonl")
RUN_DIRS = ("plots", "eval")
# A whole JSON string that stands in for a value nobody measured.
PLACEHOLDER = re.compile(
    r"^\s*(todo|tbd|fixme|placeholder|xxx+|n/?a|null|nan|\?+|\.\.\.|…|<[^<>]*>)\s*$", re.I
)


def run_prefix(run: str) -> str:
    return f"{EVIDENCE}/runs/{run}/"


def schema_for(member: str) -> str | None:
    """The evidence schema (``submission/schemas/<name>.json``) a member must follow, if any."""
    if member == MANIFEST:
        return "package_manifest"
    if member == BEST_PARAMS:
        return "best_params"
    if member == NOTEBOOK_LOG:
        return "notebook_log"
    parts = PurePosixPath(member).parts
    if len(parts) < 4 or parts[:2] != (EVIDENCE, "runs"):
        return None
    inner = "/".join(parts[3:])
    return {"run_manifest.json": "run_manifest", "eval/eval_summary.json": "eval_summary",
            "eval/compare.json": "compare"}.get(inner)  # fmt: skip


class Evidence:
    """A package's members read as evidence.

    ``sizes``: every member's size; ``files``: the bytes of every member but the model's (which
    nothing here reads); ``package``: MANIFEST.json's ``package`` block.
    """

    def __init__(self, files: Mapping[str, bytes], sizes: Mapping[str, int], package: dict[str, Any]):
        self.files = files
        self.sizes = sizes
        self.package = package

    @property
    def members(self) -> list[str]:
        return sorted(self.sizes)

    def has(self, name: str) -> bool:
        return name in self.files

    def text(self, name: str) -> str:
        if name not in self.files:
            raise InputError(f"{name}: not in the package")
        try:
            return self.files[name].decode("utf-8")
        except UnicodeDecodeError:
            raise InputError(f"{name}: not UTF-8 text") from None

    def json(self, name: str) -> Any:
        try:
            return json.loads(self.text(name))
        except ValueError as err:
            raise InputError(f"{name}: invalid JSON: {err}") from None

    def optional_json(self, name: str) -> Any:
        return self.json(name) if self.has(name) else None

    def run(self, run: str) -> dict[str, Any]:
        """One run's evidence: manifest, resolved config, metrics, summary, eval summary, comparison, plots."""
        prefix = run_prefix(run)
        config = yaml.safe_load(self.text(prefix + "config.yaml")) if self.has(prefix + "config.yaml") else {}
        metrics = []
        if self.has(prefix + "metrics.jsonl"):
            for line in self.text(prefix + "metrics.jsonl").splitlines():
                try:
                    metrics.append(json.loads(line))
                except ValueError:
                    continue  # a torn last line of a killed run, as common.runs.read_metrics reads it
        return {
            "name": run,
            "prefix": prefix,
            "manifest": self.optional_json(prefix + "run_manifest.json") or {},
            "config": config or {},
            "metrics": metrics,
            "summary": self.optional_json(prefix + "summary.json"),
            "eval": self.optional_json(prefix + "eval/eval_summary.json"),
            "compare": self.optional_json(prefix + "eval/compare.json"),
            "plots": sorted(
                m for m in self.members if m.startswith(prefix + "plots/") and m.endswith(".png")
            ),
        }


# --------------------------------------------------------------------------------------------
# A finished run's evidence: no nulls, no placeholders, one primary score everywhere
# --------------------------------------------------------------------------------------------


def _leaves(value: Any, path: str = "$") -> Iterator[tuple[str, Any]]:
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _leaves(v, f"{path}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _leaves(v, f"{path}[{i}]")
    else:
        yield path, value


def _placeholders(doc: Any) -> list[str]:
    out = []
    for path, v in _leaves(doc):
        if isinstance(v, str) and PLACEHOLDER.match(v):
            out.append(f"{path} is a placeholder ({v!r})")
        elif isinstance(v, float) and not math.isfinite(v):
            out.append(f"{path} is {v}")
    return out


def _score_problems(score: Any, where: str) -> list[str]:
    if not isinstance(score, dict) or score.get("value") is None:
        return [f"{where} is null: no primary score was measured"]
    n = score["n"]
    if n <= 0:
        return [f"{where}.n is {n}: scored over no items"]
    out = []
    if score["value"] != score["correct"] / n:
        out.append(f"{where}.value {score['value']} is not correct/n = {score['correct']}/{n}")
    if score["format_rate"] != score["format_ok"] / n:
        out.append(
            f"{where}.format_rate {score['format_rate']} is not format_ok/n = {score['format_ok']}/{n}"
        )
    return out


def eval_problems(summary: dict[str, Any], compare: dict[str, Any] | None) -> list[tuple[str, str]]:
    """``(file, problem)`` for an eval whose headline is missing, null, or differs between the two files."""
    out = []
    for side in ("base", "trained"):
        out += [
            ("eval_summary.json", p)
            for p in _score_problems(summary[side]["primary_score"], f"$.{side}.primary_score")
        ]
    if summary["base"]["n"] != summary["trained"]["n"]:
        out.append(
            (
                "eval_summary.json",
                f"base scored {summary['base']['n']} items, trained {summary['trained']['n']}",
            )
        )
    if compare is None:
        return [*out, ("compare.json", "missing: the paired comparison of base and trained")]
    for cside, sside in (("a", "base"), ("b", "trained")):
        if compare["primary_score"][cside] != summary[sside]["primary_score"]:
            out.append(
                (
                    "compare.json",
                    f"$.primary_score.{cside} differs from eval_summary.json $.{sside}.primary_score",
                )
            )
    primary = compare["metrics"].get(compare["primary_metric"])
    if primary is None or primary["n"] == 0 or primary["delta"] is None:
        out.append(("compare.json", f"$.metrics.{compare['primary_metric']}: no paired items"))
    return out


def best_params_problems(best: dict[str, Any]) -> list[str]:
    """What keeps a sweep's best_params.json from being a finished sweep's result."""
    out = []
    if not math.isfinite(best["best_value"]):
        out.append(f"$.best_value is {best['best_value']}")
    unknown = sorted(set(best["params"]) - set(best["search_space"]))
    if unknown:
        out.append(f"$.params: {', '.join(unknown)} not in the search space")
    ended = best["n_completed"] + best["n_stopped_early"] + best["n_errors"]
    if ended > best["n_trials"]:
        out.append(f"$.n_trials: {best['n_trials']}, but {ended} trials completed, stopped or failed")
    return out


def finished_problems(ev: Evidence) -> list[tuple[str, str]]:
    """``(member, problem)`` for everything that keeps this evidence from being a finished run's.

    The packaged run (``package.run``) must have completed, logged a finite loss or reward, and
    been evaluated; every other run in the package must have completed. No JSON evidence may hold
    a placeholder string or a non-finite number.
    """
    out: list[tuple[str, str]] = []
    for name in ev.members:
        if name.endswith(".json") and name.startswith(f"{EVIDENCE}/"):
            out += [(name, p) for p in _placeholders(ev.json(name))]
    for run in ev.package["runs"]:
        r = ev.run(run)
        prefix = r["prefix"]
        if r["manifest"].get("status") != "completed":
            out.append(
                (
                    prefix + "run_manifest.json",
                    f"status {r['manifest'].get('status')!r}: the run has not finished",
                )
            )
        logged = [r.get(k) for r in r["metrics"] for k in ("loss", "reward")]
        if not any(isinstance(v, int | float) and math.isfinite(v) for v in logged):
            out.append((prefix + "metrics.jsonl", "no finite loss or reward logged"))
        if r["eval"] is None:
            if run == ev.package["run"]:
                out.append(
                    (
                        prefix + "eval/eval_summary.json",
                        f"missing: evaluate the run first (make eval RUN={run})",
                    )
                )
            continue
        out += [(prefix + "eval/" + f, p) for f, p in eval_problems(r["eval"], r["compare"])]
    if ev.has(BEST_PARAMS):
        out += [(BEST_PARAMS, p) for p in best_params_problems(ev.json(BEST_PARAMS))]
    return out
