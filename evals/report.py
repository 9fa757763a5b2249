"""Self-contained HTML (+ markdown) eval reports, for one run or across runs.

    python -m evals.report --run runs/<name>                       # runs/<name>/eval/report.html, report.md
    python -m evals.report --compare runs/a runs/b --out runs/_compare   # report.html, report.md there

Everything is read from the run dirs (``eval/eval_summary.json``, ``eval/compare.json``,
``eval/predictions_*.jsonl``, ``metrics.jsonl``, ``run_manifest.json``) and the dataset they
name. The HTML has inline CSS, PNG plots embedded as base64 and no scripts; every piece of
model output or data is HTML-escaped. Plots are also saved under ``runs/<name>/plots/``.
"""

from __future__ import annotations

import argparse
import base64
import html
import io
import json
from pathlib import Path
from typing import Any

from common.errors import InputError, cli
from common.jsonl import atomic_open, iter_jsonl
from common.runs import now_iso, read_metrics
from evals.score import PRIMARY_SCORE_DEFINITION, describe_primary_score
from evals.suites import summary_key

MAX_SAMPLES_PER_KIND = 8  # flipped items of each direction shown side by side
MAX_OTHER_SAMPLES = 6
MAX_COMPLETION_CHARS = 4000

CSS = """
body{font-family:system-ui,-apple-system,"DejaVu Sans",sans-serif;margin:24px auto;max-width:1150px;color:#1d2330;
line-height:1.45;padding:0 16px}
h1{font-size:1.6em;margin-bottom:.2em}h2{margin-top:1.6em;border-bottom:1px solid #dde;padding-bottom:.2em}
table{border-collapse:collapse;margin:.6em 0;font-size:.92em}th,td{border:1px solid #d6d9e0;padding:4px 8px;
text-align:left;vertical-align:top}th{background:#f1f3f7}td.num{text-align:right;font-variant-numeric:tabular-nums}
.warn{background:#fff1f0;border:2px solid #d93025;color:#8a1c12;padding:10px 14px;margin:12px 0;border-radius:6px}
.warn ul{margin:.3em 0}.ok{color:#137333}.bad{color:#b3261e}.muted{color:#667}
.meta td:first-child{font-weight:600;white-space:nowrap}
.pair{display:grid;grid-template-columns:1fr 1fr;gap:10px;margin:.4em 0 1.2em}
.pair>div{border:1px solid #d6d9e0;border-radius:6px;padding:8px;min-width:0}
pre{white-space:pre-wrap;word-break:break-word;background:#f7f8fa;padding:6px;margin:.3em 0;font-size:.85em}
.item{border-top:1px solid #e4e6eb;padding-top:.6em}
img{max-width:100%;border:1px solid #e4e6eb}
code{background:#f1f3f7;padding:0 3px}
"""


def esc(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def ci(pair: list[float] | None) -> str:
    return "" if not pair else f"[{100 * pair[0]:.1f}, {100 * pair[1]:.1f}]"


def signed(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:+.1f} pt"


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return buf.getvalue()


def _img(png: bytes | None, alt: str) -> str:
    if png is None:
        return f'<p class="muted">{esc(alt)}: nothing to plot.</p>'
    return f'<img alt="{esc(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


# ----------------------------------------------------------------------------- plots

CURVE_KEYS = (("loss", ("loss", "train_loss")), ("eval loss", ("eval_loss", "valid_loss", "val_loss")),
              ("learning rate", ("lr", "learning_rate")), ("reward", ("reward", "reward_mean", "rewards/mean")))  # fmt: skip


def curve_series(metrics: list[dict[str, Any]]) -> dict[str, tuple[list[float], list[float]]]:
    """``{panel title: (steps, values)}`` for the loss / lr / reward keys present in ``metrics``."""
    out = {}
    for title, keys in CURVE_KEYS:
        for key in keys:
            pts = [
                (m["step"], m[key]) for m in metrics if isinstance(m.get(key), int | float) and "step" in m
            ]
            if pts:
                out[title] = ([p[0] for p in pts], [p[1] for p in pts])
                break
    return out


def plot_curves(runs: dict[str, list[dict[str, Any]]]) -> bytes | None:
    """Training curves, one panel per quantity, one line per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = {name: curve_series(m) for name, m in runs.items()}
    panels = [t for t, _ in CURVE_KEYS if any(t in s for s in series.values())]
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.2), squeeze=False)
    for ax, title in zip(axes[0], panels, strict=True):
        for name, s in series.items():
            if title in s:
                ax.plot(*s[title], label=name, linewidth=1.3)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if title == "learning rate":
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    if len(runs) > 1:
        axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    return _png(fig)


def plot_categories(sides: dict[str, dict[str, Any]], metric: str) -> bytes | None:
    """Accuracy by category with 95% Wilson intervals, one bar group per category."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    key = summary_key(metric)
    cats = sorted({c for s in sides.values() for c in (s.get("categories") or {})})
    rows: list[tuple[str, dict[str, Any]]] = [("overall", dict(sides))]
    rows += [(c, {n: (s.get("categories") or {}).get(c) for n, s in sides.items()}) for c in cats]
    if not any(v and v.get(key) is not None for _, d in rows for v in d.values()):
        return None
    fig, ax = plt.subplots(figsize=(max(5.0, 1.1 * len(rows) * max(1, len(sides)) * 0.6 + 2), 3.4))
    width = 0.8 / max(1, len(sides))
    for k, name in enumerate(sides):
        xs, ys, lo, hi = [], [], [], []
        for j, (_, d) in enumerate(rows):
            s = d.get(name)
            if not s or s.get(key) is None:
                continue
            xs.append(j + (k - (len(sides) - 1) / 2) * width)
            ys.append(100 * s[key])
            lo.append(100 * (s[key] - s[f"{key}_ci95"][0]))
            hi.append(100 * (s[f"{key}_ci95"][1] - s[key]))
        ax.bar(xs, ys, width, yerr=[lo, hi], capsize=3, label=name)
    ax.set_xticks(range(len(rows)), [f"{c}\n(n={_n(d)})" for c, d in rows], fontsize=8)
    ax.set_ylabel(f"{metric} accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title(f"{metric} accuracy by category, 95% Wilson intervals")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return _png(fig)


def _n(d: dict[str, Any]) -> str:
    ns = {v.get("n") for v in d.values() if v}
    return "/".join(str(n) for n in sorted(ns)) if ns else "0"


# ----------------------------------------------------------------------------- loading


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise InputError(f"{path}: missing (run `python -m evals.run_eval --run {path.parent.parent}` first)")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as err:
        raise InputError(f"{path}: invalid JSON: {err}") from None


def load_run(run: Path, eval_dir: str = "eval") -> dict[str, Any]:
    """What a run's report needs: eval summary, comparison, predictions (from ``run/eval_dir``),
    dataset items, metrics."""
    if not run.is_dir():
        raise InputError(f"--run {run}: no such run directory")
    ev = run / eval_dir
    summary = _read_json(ev / "eval_summary.json")
    compare = _read_json(ev / "compare.json") if (ev / "compare.json").is_file() else None
    preds = {}
    for side in ("base", "trained"):
        path = ev / f"predictions_{side}.jsonl"
        preds[side] = {str(r["id"]): r for _, r in iter_jsonl(path)} if path.is_file() else {}
    items: dict[str, dict] = {}
    data_path = Path(summary["dataset"]["path"])
    if data_path.is_file():
        wanted = set(preds["base"]) | set(preds["trained"])
        items = {str(r["id"]): r for _, r in iter_jsonl(data_path) if str(r.get("id")) in wanted}
    manifest_path = run / "run_manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    return {
        "name": run.name,
        "path": run,
        "summary": summary,
        "compare": compare,
        "predictions": preds,
        "items": items,
        "metrics": read_metrics(run),
        "manifest": manifest,
    }


# ----------------------------------------------------------------------------- html pieces


def warnings_html(warnings: list[str]) -> str:
    if not warnings:
        return ""
    lis = "".join(f"<li>{esc(w)}</li>" for w in warnings)
    return f'<div class="warn"><strong>WARNING: read these numbers with care</strong><ul>{lis}</ul></div>'


def primary_score_lines(summary: dict[str, Any]) -> list[str]:
    """The headline: each side's primary score as ``evals.score.describe_primary_score`` prints it."""
    if not (summary["base"].get("primary_score") or summary["trained"].get("primary_score")):
        return []
    return [
        f"Primary score ({PRIMARY_SCORE_DEFINITION}):",
        *(
            f"{side}: {describe_primary_score(summary[side].get('primary_score'))}"
            for side in ("base", "trained")
        ),
    ]


def headline_table(compare: dict[str, Any] | None, summary: dict[str, Any]) -> str:
    lines = primary_score_lines(summary)
    head = (
        f"<p><strong>{esc(lines[0])}</strong></p><ul>{''.join(f'<li>{esc(x)}</li>' for x in lines[1:])}</ul>"
        if lines
        else ""
    )
    rows = []
    metrics = summary.get("metrics") or []
    for m in metrics:
        b, t = summary["base"], summary["trained"]
        c = (compare or {}).get("metrics", {}).get(m)
        star = " (primary)" if m == summary.get("primary_metric") else ""
        rows.append(
            f"<tr><td>{esc(m)}{star}</td>"
            f'<td class="num">{pct(b.get(summary_key(m)))} {ci(b.get(summary_key(m) + "_ci95"))}</td>'
            f'<td class="num">{pct(t.get(summary_key(m)))} {ci(t.get(summary_key(m) + "_ci95"))}</td>'
            + (
                f'<td class="num">{signed(c["delta"])} {ci(c["delta_ci95"])}</td>'
                f'<td class="num">{c["mcnemar_p"]:.4g}</td>'
                f'<td class="num">{c["table"]["b_only"]} / {c["table"]["a_only"]}</td>'
                if c and c["n"]
                else "<td></td><td></td><td></td>"
            )
            + "</tr>"
        )
    n = summary["base"].get("n")
    return head + (
        f"<p>n = {esc(n)} items, the same for both models; intervals are 95% (Wilson for accuracies, "
        "Newcombe paired for deltas); p is the exact McNemar test on the discordant pairs.</p>"
        "<table><tr><th>metric</th><th>base</th><th>trained</th><th>delta (trained − base)</th>"
        "<th>McNemar p</th><th>gained / lost</th></tr>" + "".join(rows) + "</table>"
    )


def category_pairs(summary: dict[str, Any]) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """``(category, base's summary, trained's summary)`` for every category either side has."""
    base, trained = summary["base"].get("categories") or {}, summary["trained"].get("categories") or {}
    return [(c, base.get(c, {}), trained.get(c, {})) for c in sorted(set(base) | set(trained))]


def category_table(summary: dict[str, Any], metric: str) -> str:
    key = summary_key(metric)
    pairs = category_pairs(summary)
    if not pairs:
        return '<p class="muted">The items carry no categories.</p>'
    rows = []
    for c, b, t in pairs:
        rows.append(
            f"<tr><td>{esc(c)}</td><td class='num'>{esc(b.get('n'))}</td>"
            f"<td class='num'>{pct(b.get(key))} {ci(b.get(key + '_ci95'))}</td>"
            f"<td class='num'>{pct(t.get(key))} {ci(t.get(key + '_ci95'))}</td></tr>"
        )
    return (
        f"<table><tr><th>category</th><th>n</th><th>base {esc(metric)}</th><th>trained {esc(metric)}</th></tr>"
        + "".join(rows)
        + "</table>"
    )


def failure_table(summary: dict[str, Any]) -> str:
    fb, ft = summary["base"].get("failures") or {}, summary["trained"].get("failures") or {}
    kinds = [k for k in dict.fromkeys([*fb, *ft]) if fb.get(k) or ft.get(k)]
    if not kinds:
        return '<p class="muted">No failures recorded.</p>'
    rows = "".join(
        f"<tr><td>{esc(k)}</td><td class='num'>{esc(fb.get(k, 0))}</td><td class='num'>{esc(ft.get(k, 0))}</td></tr>"
        for k in kinds
    )
    return f"<table><tr><th>failure</th><th>base</th><th>trained</th></tr>{rows}</table>"


def trace_table(summary: dict[str, Any]) -> str:
    """Trace outcomes and invalid-trace kinds of the YAML-trace suite ("" for other suites)."""
    ob, ot = summary["base"].get("trace_outcomes"), summary["trained"].get("trace_outcomes")
    if ob is None and ot is None:
        return ""
    ob, ot = ob or {}, ot or {}
    rows = "".join(
        f"<tr><td>{esc(k)}</td><td class='num'>{esc(ob.get(k, 0))}</td><td class='num'>{esc(ot.get(k, 0))}</td></tr>"
        for k in dict.fromkeys([*ob, *ot])
    )
    kb, kt = summary["base"].get("trace_error_kinds") or {}, summary["trained"].get("trace_error_kinds") or {}
    kinds = "".join(
        f"<tr><td>{esc(k)}</td><td class='num'>{esc(kb.get(k, 0))}</td><td class='num'>{esc(kt.get(k, 0))}</td></tr>"
        for k in dict.fromkeys([*kb, *kt])
    )
    return (
        "<h2>Trace outcomes (YAML traces executed)</h2>"
        f"<table><tr><th>outcome</th><th>base</th><th>trained</th></tr>{rows}</table>"
        + (
            f"<table><tr><th>why not parsed / not valid</th><th>base</th><th>trained</th></tr>{kinds}</table>"
            if kinds
            else ""
        )
    )


def _suite(summary: dict[str, Any]) -> str:
    """The ``suite`` argument of ``item_verdicts`` for an eval summary."""
    return "yaml_trace" if summary.get("suite") == "yaml_trace" else "auto"


def generation_table(summary: dict[str, Any]) -> str:
    rows = []
    for side in ("base", "trained"):
        g = summary[side].get("generation") or {}
        stops = g.get("stop_reasons") or {}
        trunc = g.get("truncated_fraction")
        cls = "bad" if trunc and trunc > 0.1 else ""
        rows.append(
            f"<tr><td>{side}</td><td class='num'>{esc(stops.get('end_of_turn', 0))}</td>"
            f"<td class='num'>{esc(stops.get('eos', 0))}</td>"
            f"<td class='num {cls}'>{esc(stops.get('max_new_tokens', 0))} ({pct(trunc)})</td>"
            f"<td class='num'>{(g.get('mean_completion_tokens') or 0):.1f}</td>"
            f"<td class='num'>{esc(g.get('empty_completions'))}</td>"
            f"<td class='num'>{esc(g.get('items_per_second'))}</td></tr>"
        )
    return (
        "<table><tr><th></th><th>stopped at end of turn</th><th>eos</th><th>cut at max_new_tokens</th>"
        "<th>mean completion tokens</th><th>empty</th><th>items/s (this run)</th></tr>"
        + "".join(rows)
        + "</table>"
    )


def provenance_table(summary: dict[str, Any], manifest: dict[str, Any]) -> str:
    rows = [("dataset", f"{summary['dataset']['path']} (sha256 {summary['dataset']['sha256'][:12]}…), "
             f"{summary['dataset']['n_sampled']} items sampled with seed {summary['dataset']['seed']}")]  # fmt: skip
    for side in ("base", "trained"):
        m = summary[side]["model"]
        desc = f"{m['path']} — {m['source']}; weights sha256 {str(m['weights_sha256'])[:12]}…"
        if m.get("adapter_sha256"):
            desc += f"; adapter sha256 {m['adapter_sha256'][:12]}…"
        rows.append((f"{side} model", desc + f"; {m['backend']} {m['dtype']}"))
    rows.append(("decoding", json.dumps(summary["base"]["decoding"])))
    rows.append(("base found from", summary.get("base_source", "")))
    rows.append(("scorer", summary["base"].get("scorer", "")))
    rows.append(("eval git commit", summary.get("git_commit") or "unknown"))
    if manifest:
        rows.append(("training run", f"{manifest.get('command', '')} (status {manifest.get('status', '?')})"))
    rows.append(("eval written", summary.get("created", "")))
    body = "".join(f"<tr><td>{esc(k)}</td><td>{esc(v)}</td></tr>" for k, v in rows)
    return f'<table class="meta">{body}</table>'


def _verdict_line(v: dict[str, Any] | None, rec: dict[str, Any] | None, primary: str) -> str:
    parts = []
    if rec:
        parts.append(f"stop: {rec.get('stop_reason')}, {rec.get('completion_tokens')} tokens")
    if v:
        ok = v.get(primary)
        parts.insert(
            0, f"<span class='{'ok' if ok else 'bad'}'>{primary}: {'right' if ok else 'wrong'}</span>"
        )
        if v.get("failure"):
            parts.append(f"failure: {esc(v['failure'])}")
        if v.get("extracted") is not None:
            parts.append(f"extracted: <code>{esc(v['extracted'])}</code>")
        if v.get("trace_outcome"):
            parts.append(f"trace: {esc(v['trace_outcome'])}")
            if v.get("trace_value") is not None:
                parts.append(f"trace value: <code>{esc(v['trace_value'])}</code>")
            if v.get("trace_error"):
                parts.append(f"<code>{esc(v['trace_error'])}</code>")
    return " · ".join(parts)


def _clip(text: str) -> str:
    return (
        text if len(text) <= MAX_COMPLETION_CHARS else text[:MAX_COMPLETION_CHARS] + f"… [{len(text)} chars]"
    )


def samples_html(data: dict[str, Any]) -> str:
    """Flipped items first (each way), then a few others: question, gold, both completions."""
    from evals.suites import item_verdicts

    summary, compare, preds, items = data["summary"], data["compare"], data["predictions"], data["items"]
    primary = summary["primary_metric"]
    if not items:
        return '<p class="muted">Dataset file not found; no samples.</p>'
    verdicts = {}
    for side in ("base", "trained"):
        have = [r for i, r in preds[side].items() if i in items]
        verdicts[side] = item_verdicts(have, items, _suite(summary)) if have else {}
    m = (compare or {}).get("metrics", {}).get(primary, {})
    groups = [
        ("Gained: wrong in base, right in trained", m.get("gained", [])[:MAX_SAMPLES_PER_KIND]),
        ("Lost: right in base, wrong in trained", m.get("lost", [])[:MAX_SAMPLES_PER_KIND]),
    ]
    flipped = set(m.get("gained", [])) | set(m.get("lost", []))
    others = [i for i in items if i not in flipped and i in preds["base"] and i in preds["trained"]]
    groups.append(("Unchanged (first few)", others[:MAX_OTHER_SAMPLES]))
    out = []
    for title, ids in groups:
        out.append(f"<h3>{esc(title)} — {len(ids)} shown</h3>")
        for i in ids:
            rec = items[i]
            gold = rec.get("answer", rec.get("checks"))
            cols = []
            for side in ("base", "trained"):
                p = preds[side].get(i)
                text = _clip(p["completion"]) if p else "(no prediction)"
                cols.append(
                    f"<div><strong>{side}</strong><br>{_verdict_line(verdicts[side].get(i), p, primary)}"
                    f"<pre>{esc(text)}</pre></div>"
                )
            out.append(
                f'<div class="item"><strong>{esc(i)}</strong> <span class="muted">'
                f"{esc((rec.get('meta') or {}).get('category', ''))}</span>"
                f"<pre>{esc(rec.get('question'))}</pre>gold: <code>{esc(json.dumps(gold) if isinstance(gold, dict) else gold)}</code>"
                f'<div class="pair">{"".join(cols)}</div></div>'
            )
    return "".join(out)


def flips_html(compare: dict[str, Any] | None, primary: str) -> str:
    if not compare:
        return ""
    m = compare["metrics"].get(primary, {})
    parts = []
    for key, label in (("gained", "gained (wrong → right)"), ("lost", "lost (right → wrong)")):
        ids = m.get(key, [])
        parts.append(
            f"<p><strong>{esc(label)}: {len(ids)}</strong> <span class='muted'>{esc(', '.join(map(str, ids)))}</span></p>"
        )
    for key in ("only_in_a", "only_in_b"):
        if compare.get(key):
            parts.append(f"<p class='bad'>{esc(key)}: {esc(', '.join(map(str, compare[key])))}</p>")
    return "".join(parts)


def page(title: str, body: str) -> str:
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>'
        f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{CSS}</style></head>'
        f"<body>{body}<p class='muted'>Generated {esc(now_iso())} by evals/report.py</p></body></html>"
    )


# ----------------------------------------------------------------------------- run report


def run_report(data: dict[str, Any]) -> tuple[str, str, dict[str, bytes]]:
    """``(html, markdown, {png name: bytes})`` for one run."""
    summary, compare = data["summary"], data["compare"]
    primary = summary["primary_metric"]
    warnings = list((compare or {}).get("warnings") or []) + list(summary.get("warnings") or [])
    warnings = list(dict.fromkeys(warnings))
    pngs = {}
    curves = plot_curves({data["name"]: data["metrics"]})
    if curves:
        pngs["training_curves.png"] = curves
    cats = plot_categories({"base": summary["base"], "trained": summary["trained"]}, primary)
    if cats:
        pngs["accuracy_by_category.png"] = cats
    body = (
        f"<h1>Eval report: {esc(data['name'])}</h1>"
        + warnings_html(warnings)
        + "<h2>Headline</h2>"
        + headline_table(compare, summary)
        + "<h2>Provenance</h2>"
        + provenance_table(summary, data["manifest"])
        + f"<h2>By category ({esc(primary)})</h2>"
        + category_table(summary, primary)
        + _img(pngs.get("accuracy_by_category.png"), "accuracy by category")
        + "<h2>Failure taxonomy</h2>"
        + failure_table(summary)
        + trace_table(summary)
        + "<h2>Generation</h2>"
        + generation_table(summary)
        + "<h2>Training curves</h2>"
        + _img(curves, "training curves (metrics.jsonl)")
        + f"<h2>Flipped items ({esc(primary)})</h2>"
        + flips_html(compare, primary)
        + "<h2>Samples side by side</h2>"
        + samples_html(data)
    )
    return page(f"eval: {data['name']}", body), run_markdown(data, warnings), pngs


def run_markdown(data: dict[str, Any], warnings: list[str]) -> str:
    summary, compare = data["summary"], data["compare"]
    lines = [f"# Eval: {data['name']}", ""]
    lines += [f"> **WARNING:** {w}" for w in warnings]
    if warnings:
        lines.append("")
    d = summary["dataset"]
    lines += [
        f"Dataset `{d['path']}` (sha256 `{d['sha256'][:12]}`), n={d['n_sampled']} items, seed {d['seed']}; "
        f"base `{summary['base']['model']['path']}`, trained `{summary['trained']['model']['path']}`.",
        "",
    ]
    score = primary_score_lines(summary)
    if score:
        lines += [f"**{score[0]}**", "", *(f"- {x}" for x in score[1:]), ""]
    lines += [
        "| metric | base | trained | delta (95% CI) | McNemar p |",
        "| --- | --- | --- | --- | --- |",
    ]
    for m in summary.get("metrics") or []:
        b, t = summary["base"], summary["trained"]
        c = (compare or {}).get("metrics", {}).get(m)
        delta = f"{signed(c['delta'])} {ci(c['delta_ci95'])}" if c and c["n"] else ""
        p = f"{c['mcnemar_p']:.4g}" if c and c["n"] else ""
        lines.append(
            f"| {m} | {pct(b.get(summary_key(m)))} {ci(b.get(summary_key(m) + '_ci95'))} "
            f"| {pct(t.get(summary_key(m)))} {ci(t.get(summary_key(m) + '_ci95'))} | {delta} | {p} |"
        )
    primary = summary["primary_metric"]
    cats = sorted(summary["trained"].get("categories") or {})
    if cats:
        lines += ["", f"| category | n | base {primary} | trained {primary} |", "| --- | --- | --- | --- |"]
        for cat in cats:
            b = (summary["base"].get("categories") or {}).get(cat, {})
            t = summary["trained"]["categories"][cat]
            key = summary_key(primary)
            lines.append(f"| {cat} | {t.get('n')} | {pct(b.get(key))} | {pct(t.get(key))} |")
    return "\n".join(lines) + "\n"


def write_run_report(run: str | Path, eval_dir: str = "eval") -> Path:
    """Write ``<eval_dir>/report.html``, ``<eval_dir>/report.md`` and ``plots/*.png`` for a run; returns the HTML path."""
    run = Path(run)
    data = load_run(run, eval_dir)
    html_text, md, pngs = run_report(data)
    (run / "plots").mkdir(parents=True, exist_ok=True)
    for name, png in pngs.items():
        with atomic_open(run / "plots" / name, "wb") as fh:
            fh.write(png)
    with atomic_open(run / eval_dir / "report.md") as fh:
        fh.write(md)
    out = run / eval_dir / "report.html"
    with atomic_open(out) as fh:
        fh.write(html_text)
    return out


# ----------------------------------------------------------------------------- across runs


def comparability_warnings(runs: list[dict[str, Any]]) -> list[str]:
    """Reasons the runs' numbers are not like-for-like (different items, decoding, scorer, base)."""
    out = []
    first = runs[0]["summary"]
    for r in runs[1:]:
        s = r["summary"]
        for label, get in (
            ("dataset", lambda x: x["dataset"]["sha256"]),
            ("item sample (n, seed)", lambda x: (x["dataset"]["n_sampled"], x["dataset"]["seed"])),
            ("decoding", lambda x: x["trained"]["decoding"]),
            ("scorer", lambda x: x["trained"].get("scorer")),
            ("base weights", lambda x: x["base"]["model"]["fingerprint"]),
        ):
            if get(s) == get(first):
                continue
            if label == "base weights":
                out.append(
                    f"{r['name']} and {runs[0]['name']} start from different base models: "
                    "a comparison of models (and their fine-tunes), not of recipes on one model"
                )
            else:
                out.append(
                    f"{r['name']} and {runs[0]['name']} differ in {label}: not comparable like-for-like"
                )
    return out


def compared_metrics(summary: dict[str, Any]) -> list[str]:
    """The primary metric, then format compliance when the suite scores it."""
    primary = summary["primary_metric"]
    extra = ["format"] if primary != "format" and "format_accuracy" in summary["trained"] else []
    return [primary, *extra]


def cross_run_pairs(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each run's trained predictions against the first run's, paired on shared ids."""
    from evals.compare import compare_verdicts
    from evals.suites import item_verdicts

    out = []
    ref = runs[0]
    primary = ref["summary"]["primary_metric"]

    def verdicts(r: dict[str, Any]) -> dict[str, dict]:
        have = [p for i, p in r["predictions"]["trained"].items() if i in r["items"]]
        return item_verdicts(have, r["items"], _suite(r["summary"])) if have else {}

    va = verdicts(ref)
    for r in runs[1:]:
        res = compare_verdicts(va, verdicts(r), compared_metrics(ref["summary"]), primary)
        out.append({"a": ref["name"], "b": r["name"], **res})
    return out


def comparison_report(runs: list[dict[str, Any]]) -> tuple[str, str, dict[str, bytes]]:
    primary = runs[0]["summary"]["primary_metric"]
    key = summary_key(primary)
    warnings = comparability_warnings(runs)
    pairs = cross_run_pairs(runs)
    for pair in pairs:
        warnings += [f"{pair['b']} vs {pair['a']}: {w}" for w in pair["warnings"]]
    for r in runs:
        warnings += [f"{r['name']}: {w}" for w in (r["compare"] or {}).get("warnings", [])]
    pngs = {}
    curves = plot_curves({r["name"]: r["metrics"] for r in runs})
    if curves:
        pngs["training_curves.png"] = curves
    sides = {"base": runs[0]["summary"]["base"], **{r["name"]: r["summary"]["trained"] for r in runs}}
    cats = plot_categories(sides, primary)
    if cats:
        pngs["accuracy_by_category.png"] = cats
    metrics = compared_metrics(runs[0]["summary"])
    fmt = "format" in metrics  # a column of the trained format rate
    rows, md_rows = [], []
    for r in runs:
        s, c = r["summary"], (r["compare"] or {}).get("metrics", {}).get(primary)
        t, b = s["trained"], s["base"]
        delta = f"{signed(c['delta'])} {ci(c['delta_ci95'])}" if c and c["n"] else ""
        p = f"{c['mcnemar_p']:.4g}" if c and c["n"] else ""
        rows.append(
            f"<tr><td>{esc(r['name'])}</td><td>{esc(t['model']['path'])}</td><td class='num'>{esc(t.get('n'))}</td>"
            f"<td class='num'>{pct(b.get(key))} {ci(b.get(key + '_ci95'))}</td>"
            f"<td class='num'>{pct(t.get(key))} {ci(t.get(key + '_ci95'))}</td>"
            f"<td class='num'>{esc(delta)}</td><td class='num'>{esc(p)}</td>"
            + (f"<td class='num'>{pct(t.get('format_accuracy'))} {ci(t.get('format_accuracy_ci95'))}</td>" if fmt else "")
            + "</tr>"
        )  # fmt: skip
        md_rows.append(
            f"| {r['name']} | {t.get('n')} | {pct(b.get(key))} | {pct(t.get(key))} {ci(t.get(key + '_ci95'))} "
            f"| {delta} | {p} |" + (f" {pct(t.get('format_accuracy'))} {ci(t.get('format_accuracy_ci95'))} |" if fmt else "")
        )  # fmt: skip
    pair_rows = "".join(
        f"<tr><td>{esc(p['b'])} vs {esc(p['a'])}</td><td>{esc(m)}</td><td class='num'>{p['n_paired']}</td>"
        f"<td class='num'>{signed(p['metrics'][m]['delta'])} {ci(p['metrics'][m]['delta_ci95'])}</td>"
        f"<td class='num'>{p['metrics'][m]['mcnemar_p']:.4g}</td></tr>"
        for p in pairs
        if p["n_paired"]
        for m in metrics
    )
    md_pairs = [
        f"| {p['b']} vs {p['a']} | {m} | {p['n_paired']} | {signed(p['metrics'][m]['delta'])} "
        f"{ci(p['metrics'][m]['delta_ci95'])} | {p['metrics'][m]['mcnemar_p']:.4g} |"
        for p in pairs
        if p["n_paired"]
        for m in metrics
    ]
    body = (
        f"<h1>Runs compared: {esc(', '.join(r['name'] for r in runs))}</h1>"
        + warnings_html(list(dict.fromkeys(warnings)))
        + f"<h2>{esc(primary)} accuracy per run</h2><table><tr><th>run</th><th>trained model</th><th>n</th>"
        "<th>base</th><th>trained</th><th>delta vs base</th><th>McNemar p</th>"
        + ("<th>format (trained)</th>" if fmt else "")
        + "</tr>"
        + "".join(rows)
        + "</table>"
        + (
            f"<h2>Trained runs against {esc(runs[0]['name'])} (paired)</h2><table><tr><th>pair</th><th>metric</th>"
            f"<th>n</th><th>delta</th><th>McNemar p</th></tr>{pair_rows}</table>"
            if pair_rows
            else ""
        )
        + f"<h2>By category ({esc(primary)})</h2>"
        + _img(cats, "accuracy by category")
        + "<h2>Training curves</h2>"
        + _img(curves, "training curves")
    )
    md_lines = [f"# Runs compared ({primary})", ""]
    md_lines += [f"> **WARNING:** {w}" for w in dict.fromkeys(warnings)]
    fmt_col = " format (trained) |" if fmt else ""
    md_lines += ["", f"| run | n | base | trained (95% CI) | delta vs base (95% CI) | McNemar p |{fmt_col}",
                 "| --- " * (6 + bool(fmt_col)) + "|"]  # fmt: skip
    md_lines = md_lines + md_rows
    if md_pairs:
        md_lines += ["", f"Trained runs against {runs[0]['name']}, paired on the same items:", "",
                     "| pair | metric | n | delta (95% CI) | McNemar p |", "| --- " * 5 + "|", *md_pairs]  # fmt: skip
    md = "\n".join(md_lines)
    return page("runs compared", body), md + "\n", pngs


def write_comparison_report(runs: list[str | Path], out_dir: str | Path, eval_dir: str = "eval") -> Path:
    if len(runs) < 2:
        raise InputError("--compare needs at least two run dirs")
    data = [load_run(Path(r), eval_dir) for r in runs]
    html_text, md, pngs = comparison_report(data)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name, png in pngs.items():
        with atomic_open(out / name, "wb") as fh:
            fh.write(png)
    with atomic_open(out / "report.md") as fh:
        fh.write(md)
    with atomic_open(out / "report.html") as fh:
        fh.write(html_text)
    return out / "report.html"


@cli
def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--run", help="runs/<name>: writes eval/report.html and eval/report.md")
    group.add_argument("--compare", nargs="+", metavar="RUN", help="two or more run dirs")
    parser.add_argument("--out", default="runs/_compare", help="output dir for --compare")
    parser.add_argument(
        "--eval-dir", default="eval", help="the eval under each run: eval (GSM8K), eval-multidomain, ..."
    )
    args = parser.parse_args(argv)
    if args.run:
        path = write_run_report(args.run, args.eval_dir)
    else:
        path = write_comparison_report(args.compare, args.out, args.eval_dir)
    print(f"report: {path}")
    return path


if __name__ == "__main__":
    main()
