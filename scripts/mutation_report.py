"""Mutation score per module from a finished ``mutmut run`` (what ``make mutation`` prints).

mutmut keeps each mutated file's verdicts in ``mutants/<path>.meta``. This reads them and
prints, per module, how many mutants the tests killed (a failing test or a timeout), how
many survived, how many no selected test reached and how many were not run yet; then each survivor, marked when
``tests/equivalent_mutants.txt`` lists it as equivalent (no behaviour change is possible),
with the reason given there. ``mutmut show <name>`` prints a mutant's diff.

    python -m scripts.mutation_report [--mutants mutants] [--equivalent tests/equivalent_mutants.txt]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from common.errors import InputError, cli
from common.jsonl import write_json

# mutmut's exit codes (mutmut.stats.status_by_exit_code): a failing run kills the mutant.
KILLED = {1, 3}
TIMEOUT = {24, -24, 36, 152, 255}
SURVIVED = {0}
NO_TESTS = {5, 33}


def verdict(exit_code: int | None) -> str:
    if exit_code in KILLED:
        return "killed"
    if exit_code in TIMEOUT:
        return "timeout"
    if exit_code in SURVIVED:
        return "survived"
    if exit_code in NO_TESTS:
        return "no tests"
    return "not checked" if exit_code is None else "other"


def read_equivalent(path: Path) -> dict[str, str]:
    """``{mutant name: reason}`` from lines ``name  # reason`` (blank and ``#`` lines skipped)."""
    if not path.is_file():
        return {}
    out = {}
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, sep, reason = line.partition("#")
        if not sep or not reason.strip() or len(name.split()) != 1:
            raise InputError(f"{path}:{lineno}: expected 'mutant_name  # why it is equivalent'")
        out[name.strip()] = reason.strip()
    return out


def module_scores(mutants: Path) -> dict[str, dict[str, Any]]:
    """``{source path: {counts by verdict, total, score, survivors}}`` from ``mutants/**/*.meta``."""
    metas = sorted(mutants.rglob("*.py.meta"))
    if not metas:
        raise InputError(f"{mutants}: no *.py.meta files; run `mutmut run` (make mutation) first")
    out: dict[str, dict[str, Any]] = {}
    for meta in metas:
        try:
            codes = json.loads(meta.read_text())["exit_code_by_key"]
        except (ValueError, KeyError) as err:
            raise InputError(f"{meta}: not a mutmut result file ({err})") from None
        counts = {v: 0 for v in ("killed", "timeout", "survived", "no tests", "not checked", "other")}
        survivors = []
        for name, code in sorted(codes.items()):
            v = verdict(code)
            counts[v] += 1
            if v in ("survived", "no tests"):
                survivors.append(name)
        total = len(codes)
        detected = counts["killed"] + counts["timeout"]
        out[str(meta.relative_to(mutants))[: -len(".meta")]] = {
            **counts,
            "total": total,
            "score": detected / total if total else 1.0,
            "survivors": survivors,
        }
    return out


def report(scores: dict[str, dict[str, Any]], equivalent: dict[str, str]) -> str:
    """The per-module table (``score``: detected / all mutants; ``w/o equiv``: detected / the
    mutants not listed as equivalent), then every survivor, equivalents marked with their reason."""
    head = ("mutants", "killed", "timeout", "survived", "no test", "unrun", "equiv", "score", "w/o equiv")
    lines = [f"{'module':<30}" + "".join(f"{h:>10}" for h in head)]
    total = detected_all = equiv_all = 0
    for path, s in scores.items():
        equiv = sum(n in equivalent for n in s["survivors"])
        detected = s["killed"] + s["timeout"]
        counts = (
            s["total"],
            s["killed"],
            s["timeout"],
            s["survived"],
            s["no tests"],
            s["not checked"],
            equiv,
        )
        lines.append(
            f"{path:<30}" + "".join(f"{c:>10}" for c in counts)
            + f"{s['score']:>10.1%}{detected / max(1, s['total'] - equiv):>10.1%}"
        )  # fmt: skip
        total, detected_all, equiv_all = total + s["total"], detected_all + detected, equiv_all + equiv
    lines.append(
        f"{'all':<30}{total:>10}{detected_all:>20}" + " " * 40 + f"{equiv_all:>10}"
        + f"{detected_all / max(1, total):>10.1%}{detected_all / max(1, total - equiv_all):>10.1%}"
    )  # fmt: skip
    survivors = [n for s in scores.values() for n in s["survivors"]]
    unexplained = [n for n in survivors if n not in equivalent]
    lines.append(f"\n{len(survivors)} survivors, {len(survivors) - len(unexplained)} listed as equivalent:")
    lines += [f"  {n}  # equivalent: {equivalent[n]}" if n in equivalent else f"  {n}" for n in survivors]
    stale = sorted(set(equivalent) - set(survivors))
    if stale:
        lines.append(f"\nlisted as equivalent but not surviving (update the list): {', '.join(stale)}")
    return "\n".join(lines)


@cli
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m scripts.mutation_report", description=(__doc__ or "").split("\n\n")[0]
    )
    ap.add_argument("--mutants", default="mutants", help="mutmut's working dir (default: mutants)")
    ap.add_argument("--equivalent", default="tests/equivalent_mutants.txt")
    ap.add_argument("--out", default="runs/mutation/report.json", help="scores and survivors as JSON")
    args = ap.parse_args(argv)
    scores = module_scores(Path(args.mutants))
    equivalent = read_equivalent(Path(args.equivalent))
    print(report(scores, equivalent))
    write_json(args.out, {"modules": scores, "equivalent": equivalent})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
