"""The YAML-trace evals: held-out synthetic sets and GSM8K test, solver answers, and the paired
comparison with a free-text run on the same GSM8K items.

    python -m evals.traces --run runs/<name> --config configs/eval/yaml_traces_cpu.yaml [key=value ...]

For every set in ``sets`` (held-out seed, held-out template, GSM8K test: each ``n`` items
sampled with ``seed``) the run's model writes completions with the YAML-trace prompt and
solver-answer decoding (``evals/solver_answer.py``), into
``runs/<name>/eval/traces/predictions_<set>.jsonl`` (resumable). Each set is scored with the
YAML-trace suite: parse / executed / solver-correct rates with 95% Wilson intervals, the
accuracy of the answer that is submitted (the solver's when the trace executed, else the
model's) and of the answer the model wrote itself, per expert (synthetic) or per operation
mix (GSM8K), on the items whose numbers are all distinct vs those that repeat one, and the
outcome taxonomy. On ``freetext_set`` the submitted answers are paired
item by item with ``freetext`` (the predictions of a free-text run on the same items): both
rates, the paired difference with its interval and the exact McNemar test.

Writes ``traces_summary.json`` and a self-contained ``traces_report.html`` under
``runs/<name>/eval/`` and prints one line of JSON with the headline figures, each read from
those files and the run's ``summary.json``. ``only=[...]`` generates just those sets (run
several at once on separate cores, then once without ``only`` to score).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.answers import numbers_in, parse_number
from common.config import load_config, split_cli
from common.errors import InputError, cli
from common.jsonl import atomic_open, iter_jsonl, write_json
from evals import generate as gen
from evals.compare import compare_verdicts
from evals.report import ci, esc, page, pct
from evals.score import score_completion
from evals.stats import proportion
from evals.suites import summarize


@dataclass
class EvalSet:
    name: str
    path: str
    n: int = 500  # sampled with the config's seed; 0 = all


@dataclass
class TracesEvalConfig:
    sets: list[EvalSet] = field(
        default_factory=lambda: [
            EvalSet("heldout_seed", "data/built/yaml_traces/heldout_seed.jsonl"),
            EvalSet("heldout_template", "data/built/yaml_traces/heldout_template.jsonl"),
            EvalSet("gsm8k", "data/built/gsm8k/test.jsonl"),
        ]
    )
    model: gen.ModelSpec = field(default_factory=gen.ModelSpec)  # model.path: the run (set by --run)
    decode: gen.DecodeSettings = field(
        default_factory=lambda: gen.DecodeSettings(max_new_tokens=320, solver_answer=True)
    )
    batch_size: int = 16
    seed: int = 0  # the item sample: same seed, same items as other evals of these files
    # Predictions of a free-text run on the same GSM8K items (e.g. `make eval` of the SFT default);
    # compared item by item on `freetext_set`. A missing file is reported as null.
    freetext: str | None = "runs/sft-gemma3-270m-cpu/eval/predictions_trained.jsonl"
    freetext_set: str = "gsm8k"
    only: list[str] | None = None  # generate just these sets, score nothing

    def __post_init__(self) -> None:
        names = [s.name for s in self.sets]
        if len(set(names)) != len(names):
            raise ValueError(f"sets: duplicate names {names}")
        for name in self.only or []:
            if name not in names:
                raise ValueError(f"only: no set {name!r}; sets: {', '.join(names)}")


def set_items(s: EvalSet, seed: int) -> list[dict[str, Any]]:
    return gen.sample_items(gen.load_items(s.path), s.n, seed)


def generate_set(cfg: TracesEvalConfig, s: EvalSet, run: Path) -> Path:
    out = run / "eval" / "traces" / f"predictions_{s.name}.jsonl"
    gcfg = gen.GenerateConfig(
        model=cfg.model,
        data=gen.DataSpec(path=s.path, n=s.n, prompt="yaml"),
        decode=cfg.decode,
        batch_size=cfg.batch_size,
        seed=cfg.seed,
        out=str(out),
        suite="yaml_trace",
    )
    print(f"[{s.name}] {cfg.model.path} -> {out}", file=sys.stderr)
    gen.print_summary(gen.run(gcfg))
    return out


def _strict(predictions: list[dict], items: list[dict], key: str) -> dict[str, bool]:
    by_id = {str(p["id"]): p for p in predictions}
    out = {}
    for rec in items:
        p = by_id.get(str(rec["id"]))
        out[str(rec["id"])] = p is not None and bool(
            score_completion(p.get(key, p["completion"]), rec["answer"])["strict"]
        )
    return out


def repeats_a_number(question: str) -> bool:
    """Whether some value appears twice among the question's numbers ("$14" and "14" alike):
    copying a value into the trace then leaves its role to the wording alone."""
    values = [parse_number(n.replace("$", "")) for n in numbers_in(question)]
    known = [v for v in values if v is not None]
    return len(known) != len(set(known))


def score_set(predictions: list[dict], items: list[dict]) -> dict[str, Any]:
    """The YAML-trace suite summary plus the model-written answers' accuracy, the answer sources
    and the accuracy on the items whose numbers are all distinct vs those repeating one."""
    summary = summarize(predictions, items, "yaml_trace")
    written = _strict(predictions, items, "model_completion")
    summary.update(proportion(sum(written.values()), len(written), "model_answer_accuracy"))
    submitted = _strict(predictions, items, "completion")
    groups: dict[str, list[str]] = {"all distinct": [], "a number repeated": []}
    for rec in items:
        label = "a number repeated" if repeats_a_number(rec["question"]) else "all distinct"
        groups[label].append(str(rec["id"]))
    summary["by_question_numbers"] = {
        label: {"n": len(ids), **proportion(sum(submitted[i] for i in ids), len(ids), "strict_accuracy")}
        for label, ids in groups.items()
    }
    summary["answer_sources"] = dict(Counter(p.get("answer_source", "model") for p in predictions))
    by_expert: dict[str, list[bool]] = {}
    verdict_rows = {}
    from evals.suites.yaml_trace import item_trace_verdicts

    for rec, v in zip(items, item_trace_verdicts(predictions, items), strict=True):
        verdict_rows[str(rec["id"])] = v
        by_expert.setdefault(v["trace_experts"] or "(no trace)", []).append(v["solver"])
    summary["by_trace_experts"] = {
        k: {"n": len(v), **proportion(sum(v), len(v), "solver_accuracy")}
        for k, v in sorted(by_expert.items())
    }
    return summary


def freetext_comparison(
    cfg: TracesEvalConfig, predictions: list[dict], items: list[dict]
) -> dict[str, Any] | None:
    """Submitted answers (this run) vs a free-text run's, paired by id on the same items."""
    if not cfg.freetext or not Path(cfg.freetext).is_file():
        return None
    theirs = [r for _, r in iter_jsonl(cfg.freetext)]
    ids = {str(r["id"]) for r in items}
    their_ids = {str(r["id"]) for r in theirs}
    if ids != their_ids:
        raise InputError(
            f"freetext: {cfg.freetext} covers {len(their_ids)} items, {len(their_ids & ids)} of the {len(ids)} "
            f"{cfg.freetext_set} items sampled here (n, seed and data must match)"
        )
    a = {i: {"strict": v} for i, v in _strict(theirs, items, "completion").items()}
    b = {i: {"strict": v} for i, v in _strict(predictions, items, "completion").items()}
    res = compare_verdicts(a, b, ["strict"], "strict")
    model = (theirs[0].get("model") or {}) if theirs else {}
    return {"freetext": cfg.freetext, "freetext_model": model.get("path"), **res}


def headline(summary: dict[str, Any], run: Path) -> dict[str, Any]:
    """The one-line JSON of ``make train-traces``, from the eval summary and the run's summary.json."""
    sets = summary["sets"]
    run_summary = json.loads((run / "summary.json").read_text()) if (run / "summary.json").is_file() else {}
    gsm = sets.get("gsm8k") or {}
    paired = summary.get("freetext") or {}
    strict = (paired.get("metrics") or {}).get("strict") or {}
    return {
        "run": str(run),
        "synthetic_seed_accuracy": (sets.get("heldout_seed") or {}).get("strict_accuracy"),
        "synthetic_seed_parse": (sets.get("heldout_seed") or {}).get("parse_rate"),
        "synthetic_seed_executed": (sets.get("heldout_seed") or {}).get("valid_rate"),
        "synthetic_template_accuracy": (sets.get("heldout_template") or {}).get("strict_accuracy"),
        "gsm8k_n": gsm.get("n"),
        "gsm8k_accuracy": gsm.get("strict_accuracy"),
        "gsm8k_ci95": gsm.get("strict_accuracy_ci95"),
        "gsm8k_model_answer_accuracy": gsm.get("model_answer_accuracy"),
        "freetext_gsm8k_accuracy": strict.get("a"),
        "paired_p": strict.get("mcnemar_p"),
        "train_seconds": run_summary.get("train_seconds"),
    }


# ----------------------------------------------------------------------------- report

SET_ROWS = [
    ("strict_accuracy", "accuracy (submitted answer: the solver's when the trace executed)"),
    ("model_answer_accuracy", "accuracy of the answer the model wrote itself"),
    ("solver_accuracy", "trace executes to gold"),
    ("parse_rate", "a trace was parsed"),
    ("valid_rate", "the trace executed"),
    ("format_accuracy", "exact output format"),
]


def _rate_table(
    name: str, split: str, columns: tuple[str, str], groups: dict[str, dict[str, Any]], rate: str
) -> str:
    """An HTML table of a set's ``groups`` (``split`` says by what): each group's n and one rate
    with its 95% interval (``rate``, ``rate_ci95``)."""
    rows = "".join(
        f"<tr><td>{esc(k)}</td><td class='num'>{v['n']}</td><td class='num'>{pct(v[rate])} {ci(v[rate + '_ci95'])}</td></tr>"
        for k, v in groups.items()
    )
    return f"<h3>{esc(name)}: {split}</h3><table><tr><th>{columns[0]}</th><th>n</th><th>{columns[1]}</th></tr>{rows}</table>"


def report_html(summary: dict[str, Any], head: dict[str, Any]) -> str:
    sets = summary["sets"]
    names = list(sets)
    parts = [f"<h1>YAML-trace evals: {esc(summary['run'])}</h1>"]
    parts.append("<p>Greedy decoding with the YAML-trace prompt; the submitted answer is the solver's value of the "
                 "trace when it executes, else the model's own (<code>evals/solver_answer.py</code>). Rates with 95% "
                 "Wilson intervals; n items per set.</p>")  # fmt: skip
    rows = "".join(
        f"<tr><td>{esc(label)}</td>"
        + "".join(f"<td class='num'>{pct(sets[n].get(k))} <span class='muted'>{ci(sets[n].get(f'{k}_ci95'))}</span></td>" for n in names)
        + "</tr>"
        for k, label in SET_ROWS
    )  # fmt: skip
    head_row = "".join(f"<th>{esc(n)} (n={sets[n]['n']})</th>" for n in names)
    parts.append(f"<h2>Headline</h2><table><tr><th>metric</th>{head_row}</tr>{rows}</table>")
    paired = summary.get("freetext")
    parts.append("<h2>Against the free-text run (same GSM8K items)</h2>")
    if paired:
        m = paired["metrics"]["strict"]
        t = m["table"]
        parts.append(
            f"<p>free text: <code>{esc(paired['freetext'])}</code></p><table>"
            f"<tr><th>n paired</th><th>free text</th><th>YAML traces</th><th>difference</th><th>McNemar p (exact)</th>"
            f"<th>both / free text only / traces only / neither</th></tr>"
            f"<tr><td class='num'>{m['n']}</td><td class='num'>{pct(m['a'])} {ci(m['a_ci95'])}</td>"
            f"<td class='num'>{pct(m['b'])} {ci(m['b_ci95'])}</td><td class='num'>{pct(m['delta'])} {ci(m['delta_ci95'])}</td>"
            f"<td class='num'>{m['mcnemar_p']:.3g}</td><td class='num'>{t['both']} / {t['a_only']} / {t['b_only']} / {t['neither']}</td></tr></table>"
        )  # fmt: skip
        for w in paired.get("warnings") or []:
            parts.append(f"<div class='warn'>{esc(w)}</div>")
    else:
        parts.append("<p class='muted'>no free-text predictions found: not compared</p>")
    for n in names:
        s = sets[n]
        cats = s.get("categories") or {}
        if cats:
            parts.append(f"<h2>{esc(n)}: by {'expert' if n != 'gsm8k' else 'operation mix'}</h2><table>"
                         "<tr><th>category</th><th>n</th><th>accuracy</th><th>parsed</th><th>executed</th><th>trace correct</th></tr>")  # fmt: skip
            for c, v in cats.items():
                parts.append(
                    f"<tr><td>{esc(c)}</td><td class='num'>{v['n']}</td><td class='num'>{pct(v.get('strict_accuracy'))} {ci(v.get('strict_accuracy_ci95'))}</td>"
                    f"<td class='num'>{pct(v.get('parse_rate'))}</td><td class='num'>{pct(v.get('valid_rate'))}</td>"
                    f"<td class='num'>{pct(v.get('solver_accuracy'))}</td></tr>"
                )  # fmt: skip
            parts.append("</table>")
        parts.append(_rate_table(n, "by the experts the trace names", ("experts", "trace correct"),
                                 s["by_trace_experts"], "solver_accuracy"))  # fmt: skip
        parts.append(_rate_table(n, "by the question's numbers", ("numbers", "accuracy"),
                                 s.get("by_question_numbers", {}), "strict_accuracy"))  # fmt: skip
        parts.append(f"<h3>{esc(n)}: outcomes</h3><table><tr><th>outcome</th><th>items</th></tr>")
        parts += [
            f"<tr><td>{esc(k)}</td><td class='num'>{v}</td></tr>" for k, v in s["trace_outcomes"].items()
        ]
        parts.append("</table><table><tr><th>error kind</th><th>items</th></tr>")
        parts += [
            f"<tr><td>{esc(k)}</td><td class='num'>{v}</td></tr>" for k, v in s["trace_error_kinds"].items()
        ]
        parts.append(f"</table><p>answer sources: {esc(s['answer_sources'])}</p>")
    parts.append(f"<h2>Headline JSON</h2><pre>{esc(json.dumps(head, indent=1))}</pre>")
    return page(f"YAML-trace evals {summary['run']}", "".join(parts))


# ----------------------------------------------------------------------------- the script


def run_evals(cfg: TracesEvalConfig, run: Path) -> dict[str, Any] | None:
    """Generate (resumably) and score every set; None when ``only`` asked for generation alone."""
    if not run.is_dir():
        raise InputError(f"--run {run}: no such run directory")
    cfg.model.path = str(run)
    chosen = [s for s in cfg.sets if cfg.only is None or s.name in cfg.only]
    outs = {s.name: generate_set(cfg, s, run) for s in chosen}
    if cfg.only is not None:
        return None
    summary: dict[str, Any] = {"run": str(run), "seed": cfg.seed, "decoding": vars(cfg.decode), "sets": {}}
    for s in cfg.sets:
        items = set_items(s, cfg.seed)
        predictions = [r for _, r in iter_jsonl(outs[s.name])]
        summary["sets"][s.name] = {"path": s.path, **score_set(predictions, items)}
        if s.name == cfg.freetext_set:
            summary["freetext"] = freetext_comparison(cfg, predictions, items)
    head = headline(summary, run)
    summary["headline"] = head
    write_json(run / "eval" / "traces_summary.json", summary)
    with atomic_open(run / "eval" / "traces_report.html") as fh:
        fh.write(report_html(summary, head))
    return summary


@cli
def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    flags, overrides = split_cli(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", required=True, help="runs/<name>: the trained run")
    parser.add_argument("--config", help="YAML config (TracesEvalConfig); key=value overrides follow")
    args = parser.parse_args(flags)
    cfg = load_config(TracesEvalConfig, args.config, overrides)
    summary = run_evals(cfg, Path(args.run))
    if summary is None:
        print(f"generated {', '.join(cfg.only or [])}; run again without only= to score", file=sys.stderr)
        return None
    print(f"report: {Path(args.run) / 'eval' / 'traces_report.html'}", file=sys.stderr)
    print(json.dumps(summary["headline"]))
    return summary


if __name__ == "__main__":
    main()
