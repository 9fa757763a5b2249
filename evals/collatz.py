"""Score a learned Collatz ranking function beside the two references, in one run.

    python -m evals.collatz --build-set                 # data/built/collatz/eval_50k.csv (make collatz-data)
    python -m evals.collatz --run runs/<name>           # runs/<name>/eval/collatz.json, report.html, PNGs
    python -m evals.collatz --run runs/<name> --export best   # best/ (train.valid_orbits) → eval-best/

The eval set is drawn as lab notebook 003 drew its CSV: Python's ``random`` seeded 42, bit
length k uniform in 2..128, n uniform in [2^(k−1), 2^k − 1] made odd (+1), duplicates redrawn,
50,000 rows with T(n), the growth flag, the standard-map stopping time and maximum, and
w_expansion = 1 + log10(max_n / n). For every pair, m = V(n) − V(T n) passes when m > 0:
Pass %, Weighted % (by w_expansion), Growth %, Growth-weighted %, growth margin min. Along each
test orbit (111, 27, 703, 26623, 626331: 429 steps) a step with V(next) ≥ V(current) is a
violation. The same numbers are computed in the same run for V = ln n and for the closed-form
V_L(n) = max_{j ≤ L} [ln T^j(n) + ε·j] with the run's L. The model is read from the run's
``final/`` export and evaluated in float64 numpy (no framework needed).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import html
import itertools
import math
import random
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from common.collatz import (
    FALLBACK_SEED,
    TEST_SEEDS,
    View,
    check_start,
    closed_form_values,
    features,
    leaked_transitions,
    load_export,
    log_values,
    mlp_outputs,
    mlp_values,
    model_values,
    orbit,
    pair_metrics,
    protocol_pools,
    seed_states,
    state_features,
    syracuse,
    trajectory_metrics,
    walk,
    window_max,
)
from common.collatz_config import CollatzConfig
from common.config import load_config
from common.errors import InputError, cli
from common.jsonl import atomic_open, write_json
from common.runs import now_iso, read_metrics
from evals.report import CSS, _img, _png

EVAL_SET = Path("data/built/collatz/eval_50k.csv")
EVAL_ROWS, EVAL_SEED, EVAL_MAX_BITS = 50_000, 42, 128
COLUMNS = ("n", "t1", "is_growth", "sigma_n", "max_n", "w_expansion")
# sha256 of the notebook's own eval/collatz_eval_50k.csv: the built file is byte-identical to it
NOTEBOOK_SET_SHA256 = "a1cccffac2c5f83ff5cbd764a3188fc4b2cf21f63971facf9f09c31c4790dc39"
# The notebook's best run, as its log reports it (not re-run here): the bar a new model must clear.
NOTEBOOK_RUN3 = {
    "violations": 80,
    "pass": 95.68,
    "weighted": 94.97,
    "growth": 98.72,
    "growth_weighted": 98.31,
}

# ---------------------------------------------------------------------------------------------
# The eval set
# ---------------------------------------------------------------------------------------------


def standard_map_stats(n: int) -> tuple[int, int]:
    """``(stopping time, max value)`` of n's orbit under the standard map n → n/2, 3n + 1.

    From an odd s > 1 the standard map takes 1 + k steps to T(s) and peaks at 3s + 1.
    """
    steps, peak = 0, n
    while n != 1:
        x = 3 * n + 1
        k = (x & -x).bit_length() - 1
        steps += 1 + k
        peak = max(peak, x)
        n = x >> k
    return steps, peak


def draw_eval_rows(
    count: int = EVAL_ROWS, seed: int = EVAL_SEED, max_bits: int = EVAL_MAX_BITS
) -> list[dict[str, Any]]:
    """The notebook's draw: ``count`` distinct odd n with their successor and difficulty weight."""
    rng = random.Random(seed)
    seen: set[int] = set()
    rows: list[dict[str, Any]] = []
    while len(rows) < count:
        bits = rng.randint(2, max_bits)
        n = rng.randint(2 ** (bits - 1), 2**bits - 1)
        if n % 2 == 0:
            n += 1
        if n in seen:
            continue
        seen.add(n)
        t1, _ = syracuse(n)
        sigma, peak = standard_map_stats(n)
        rows.append({
            "n": n, "t1": t1, "is_growth": int(t1 > n), "sigma_n": sigma, "max_n": peak,
            "w_expansion": math.log10(max(1.0, peak / n)) + 1.0,
        })  # fmt: skip
    return rows


def build_eval_set(path: Path = EVAL_SET, count: int = EVAL_ROWS) -> dict[str, Any]:
    """Write the eval CSV (w_expansion to 4 decimals, as the notebook's) and its manifest, atomically."""
    rows = draw_eval_rows(count)
    with atomic_open(path) as fh:
        out = csv.writer(fh)  # \r\n line ends, as the notebook's file
        out.writerow(COLUMNS)
        for r in rows:
            out.writerow(
                [r["n"], r["t1"], r["is_growth"], r["sigma_n"], r["max_n"], f"{r['w_expansion']:.4f}"]
            )
    manifest = {
        "path": str(path),
        "rows": len(rows),
        "growth_rows": sum(r["is_growth"] for r in rows),
        "seed": EVAL_SEED,
        "bit_lengths": [2, EVAL_MAX_BITS],
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "built": now_iso(),
        "drawn_as": "lab notebook 003's collatz_eval_gen.py (Python random, seed 42)",
    }
    if count == EVAL_ROWS:
        manifest["identical_to_notebook_csv"] = manifest["sha256"] == NOTEBOOK_SET_SHA256
    write_json(path.with_name("manifest.json"), manifest)
    return manifest


def load_eval_set(path: Path) -> dict[str, Any]:
    """The eval CSV as lists/arrays; every row is checked (T(n) and the growth flag recomputed)."""
    if not path.is_file():
        raise InputError(f"{path}: eval set not found; build it with `make collatz-data`")
    ns, t1s, growth, weight = [], [], [], []
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        if next(reader, None) != list(COLUMNS):
            raise InputError(f"{path}:1: header is not {','.join(COLUMNS)}")
        for lineno, row in enumerate(reader, start=2):
            try:
                n, t1, g, w = int(row[0]), int(row[1]), int(row[2]), float(row[5])
            except (ValueError, IndexError):
                raise InputError(f"{path}:{lineno}: not a row of {','.join(COLUMNS)}") from None
            check_start(n, f"{path}:{lineno}: n")
            if syracuse(n)[0] != t1 or g != int(t1 > n):
                raise InputError(f"{path}:{lineno}: t1/is_growth do not match n = {n}")
            ns.append(n)
            t1s.append(t1)
            growth.append(g == 1)
            weight.append(w)
    return {"n": ns, "t1": t1s, "growth": np.array(growth), "weight": np.array(weight)}


# ---------------------------------------------------------------------------------------------
# Values of the model and the references
# ---------------------------------------------------------------------------------------------

EXPORTS = ("final", "best")
ValueFn = Callable[[Sequence[int]], np.ndarray]
PairFn = Callable[[Sequence[int], Sequence[int]], tuple[np.ndarray, np.ndarray]]


def model_pair_values(
    params: dict[str, np.ndarray], view: View, ns: Sequence[int]
) -> tuple[np.ndarray, np.ndarray]:
    """V(n) and V(T n) from one walk of L + 1 steps per n (the model's base V_L from the same walk)."""
    lookahead, base_eps = view.lookahead, view.base_eps
    keep = range(lookahead + 2) if base_eps is not None else (0, 1)
    ks, kept = walk(ns, lookahead + 1, keep=keep)
    b0 = b1 = None
    if base_eps is not None:
        b0, b1 = window_max(kept, 0, lookahead, base_eps), window_max(kept, 1, lookahead, base_eps)
    v0 = mlp_values(params, state_features(kept[0], ks[:, :lookahead], view), b0)
    v1 = mlp_values(params, state_features(kept[1], ks[:, 1:], view), b1)
    return v0, v1


def ranking_functions(
    params: dict[str, np.ndarray], view: View, eps: float
) -> list[tuple[str, PairFn, ValueFn]]:
    """The model (computed from ``view``) and the two references with the same window, V_L with
    ε = ``eps`` and ln n: ``(name, V on (n, T n) pairs, V on a list of states)``."""
    lookahead = view.lookahead

    def model(states: Sequence[int]) -> np.ndarray:
        return model_values(params, states, view)

    def closed(states: Sequence[int]) -> np.ndarray:
        return closed_form_values(states, lookahead, eps)

    return [
        ("model", lambda ns, _t1: model_pair_values(params, view, ns), model),
        (f"V_{lookahead} closed form", lambda ns, t1: (closed(ns), closed(t1)), closed),
        ("V = ln n", lambda ns, t1: (log_values(ns), log_values(t1)), log_values),
    ]


def score(
    name: str, pair_fn: PairFn, value_fn: ValueFn, data: dict[str, Any], extra_orbits: Sequence[int] = ()
) -> dict[str, Any]:
    """The pair metrics on the eval set and the trajectory test of one ranking function."""
    v0, v1 = pair_fn(data["n"], data["t1"])
    margin = v0 - v1
    values = {s: value_fn(orbit(s)) for s in TEST_SEEDS}
    out = {
        "name": name,
        **pair_metrics(margin, data["growth"], data["weight"]),
        "trajectory": trajectory_metrics(values),
        "_margin": margin,
        "_orbit_values": values,
    }
    if extra_orbits:
        out["extra_orbits"] = trajectory_metrics({s: value_fn(orbit(s)) for s in extra_orbits})
    return out


def violating_steps(
    params: dict[str, np.ndarray], view: View, seeds: Sequence[int] = TEST_SEEDS
) -> dict[str, Any]:
    """Where the model's V fails to decrease along the orbits of ``seeds``, step by step: the state,
    its valuation k, n mod 3 (the parity of the step that produced n, which the residue inputs
    see), V's change, and how it splits between the closed-form base V_L and the MLP's correction
    (its output before the softplus; V = softplus(V_L + correction)). ``by_kind`` counts them by
    growth / decay and n mod 3."""
    steps, kinds = [], Counter[str]()
    for seed in seeds:
        states = orbit(seed)
        correction = mlp_outputs(params, features(states, view))
        base = None if view.base_eps is None else closed_form_values(states, view.lookahead, view.base_eps)
        v = model_values(params, states, view)
        margin = v[:-1] - v[1:]
        for i in np.flatnonzero(margin <= 0):
            n, nxt = states[i], states[i + 1]
            kinds[f"{'growth' if nxt > n else 'decay'}, n ≡ {n % 3} (mod 3)"] += 1
            steps.append(
                {
                    "seed": seed,
                    "step": int(i),
                    "n": n,
                    "next": nxt,
                    "k": syracuse(n)[1],
                    "n_mod_3": n % 3,
                    "margin": float(margin[i]),
                    "base_change": None if base is None else float(base[i] - base[i + 1]),
                    "correction_change": float(correction[i] - correction[i + 1]),
                }
            )
    return {"steps": steps, "by_kind": dict(sorted(kinds.items()))}


def faithful_leak(cfg: CollatzConfig) -> dict[str, Any]:
    """How many of the 429 test steps start from a state the faithful protocol samples as "hard"."""
    pools = protocol_pools("faithful", cfg.task.training_seeds(), 1, frozenset())
    states = {s for p in pools.values() for s in p} | set(seed_states(FALLBACK_SEED))
    by_seed = leaked_transitions(states)
    return {"transitions": sum(by_seed.values()), "by_seed": {str(k): v for k, v in by_seed.items()}}


# ---------------------------------------------------------------------------------------------
# The report
# ---------------------------------------------------------------------------------------------


def plot_orbits(results: list[dict[str, Any]]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(TEST_SEEDS), 1, figsize=(9, 2.6 * len(TEST_SEEDS)))
    for ax, seed in zip(axes, TEST_SEEDS, strict=True):
        for res, style in zip(results, ("-", "--", ":"), strict=False):
            v = res["_orbit_values"][seed]
            line = ax.plot(v, style, label=res["name"])[0]
            bad = np.nonzero(v[1:] >= v[:-1])[0] + 1
            ax.plot(bad, v[bad], "x", color=line.get_color(), markersize=6)
        viol = {r["name"]: r["trajectory"]["by_seed"][str(seed)]["violations"] for r in results}
        ax.set_title(
            f"orbit of {seed}: violations " + ", ".join(f"{k} {v}" for k, v in viol.items()), fontsize=9
        )
        ax.set_xlabel("step")
        ax.set_ylabel("V")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    return _png(fig)


def plot_margins(results: list[dict[str, Any]], growth: np.ndarray) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(5 * len(results), 3.4))
    for ax, res in zip(np.atleast_1d(axes), results, strict=True):
        m = res["_margin"]
        lo, hi = np.percentile(m, [0.5, 99.5])
        bins = np.linspace(min(lo, -0.1), max(hi, 0.1), 80)
        ax.hist(m[growth], bins=bins, alpha=0.6, label=f"growth (n={int(growth.sum())})")
        ax.hist(m[~growth], bins=bins, alpha=0.6, label=f"decay (n={int((~growth).sum())})")
        ax.axvline(0, color="k", lw=0.8)
        ax.set_yscale("log")
        ax.set_title(f"{res['name']}: V(n) − V(T n)", fontsize=9)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return _png(fig)


def plot_training(metrics: list[dict[str, Any]]) -> bytes | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    loss = [(r["step"], r["loss"]) for r in metrics if "loss" in r]
    valid = [(r["step"], r["valid_pass"], r["valid_growth_pass"]) for r in metrics if "valid_pass" in r]
    if not loss:
        return None
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.4))
    a.plot(*zip(*loss, strict=True))
    a.set_yscale("log")
    a.set_title("training loss", fontsize=9)
    a.set_xlabel("step")
    if valid:
        steps, vp, vg = zip(*valid, strict=True)
        b.plot(steps, vp, "o-", label="pass %")
        b.plot(steps, vg, "o-", label="growth pass %")
        b.legend(fontsize=8)
    b.set_title("validation pairs (random, never the test orbits)", fontsize=9)
    b.set_xlabel("step")
    for ax in (a, b):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return _png(fig)


def _fmt(x: Any, digits: int = 2) -> str:
    return "—" if x is None else (f"{x:.{digits}f}" if isinstance(x, float) else str(x))


def _view(out: dict[str, Any]) -> View:
    """The evaluated model's view, from an eval result (``evaluate``'s ``out``)."""
    return View.from_meta({**out["model"], "lookahead": out["lookahead"]})


def _violations_html(found: dict[str, Any] | None) -> str:
    """The model's violating test-orbit steps (``violating_steps``) as a table."""
    if not found or not found["steps"]:
        return ""
    kinds = "; ".join(f"{kind}: {count}" for kind, count in found["by_kind"].items())
    rows = "".join(
        f"<tr><td>{s['seed']}</td><td class=num>{s['step']}</td><td class=num>{s['n']}</td>"
        f"<td class=num>{s['next']}</td><td class=num>{s['k']}</td><td class=num>{s['n_mod_3']}</td>"
        f"<td class=num>{s['margin']:+.3f}</td><td class=num>{_fmt(s['base_change'], 3)}</td>"
        f"<td class=num>{s['correction_change']:+.3f}</td></tr>"
        for s in found["steps"]
    )
    return (
        f"<h2>The model's violations</h2><p>By kind: {html.escape(kinds)}. V(n) − V(T n) splits into the "
        "closed-form base's change and the MLP correction's change (its output before the softplus).</p>"
        "<table><tr><th>seed</th><th>step</th><th>n</th><th>T n</th><th>k</th><th>n mod 3</th>"
        f"<th>V(n) − V(T n)</th><th>base change</th><th>correction change</th></tr>{rows}</table>"
    )


def report_html(out: dict[str, Any], pngs: dict[str, bytes | None]) -> str:
    esc = html.escape
    rows = []
    for r in [*out["results"], {"name": "notebook Run 3 (its log, not re-run)", **NOTEBOOK_RUN3}]:
        traj = r.get("trajectory", {})
        rows.append(
            f"<tr><td>{esc(r['name'])}</td><td class=num>{traj.get('violations', r.get('violations'))}</td>"
            f"<td class=num>{_fmt(traj.get('growth_violations'))}</td>"
            + "".join(
                f"<td class=num>{_fmt(r.get(k))}</td>"
                for k in ("pass", "weighted", "growth", "growth_weighted")
            )
            + f"<td class=num>{_fmt(r.get('growth_margin_min'), 3)}</td></tr>"
        )
    seeds = "".join(
        f"<tr><td>{s}</td><td class=num>{out['results'][0]['trajectory']['by_seed'][str(s)]['steps']}</td>"
        + "".join(
            f"<td class=num>{r['trajectory']['by_seed'][str(s)]['violations']}</td>"
            f"<td class=num>{_fmt(r['trajectory']['by_seed'][str(s)]['worst_margin'], 3)}</td>"
            for r in out["results"]
        )
        + f"<td class=num>{out['faithful_leak']['by_seed'][str(s)]}</td></tr>"
        for s in TEST_SEEDS
    )
    growth_steps = sum(b > a for s in TEST_SEEDS for a, b in itertools.pairwise(orbit(s)))
    heads = "".join(f"<th>{esc(r['name'])} viol.</th><th>worst m</th>" for r in out["results"])
    m = out["model"]
    body = (
        f"<h1>Collatz ranking function: {esc(out['run'])}</h1>"
        f"<p>backend <b>{esc(str(m['backend']))}</b>, protocol <b>{esc(out['protocol'])}</b>, L = {out['lookahead']}, "
        f"MLP {esc(str(m['widths']))}"
        + (f" on the closed form V_L (ε = {m['base_eps']})" if m.get("base") == "closed_form" else "")
        + (f" without {' or '.join(left_out)}" if (left_out := _view(out).left_out()) else "")
        + f", {m['steps']} steps"
        + (
            f" (best/: the export with the fewest violations, {m['valid_orbit_violations']}, on the validation orbits)"
            if out.get("export") == "best"
            else ""
        )
        + f"; eval set {esc(out['eval_set']['path'])} "
        f"({out['eval_set']['rows']:,} rows, sha256 {out['eval_set']['sha256'][:12]}…"
        f"{', byte-identical to the notebook’s CSV' if out['eval_set']['identical_to_notebook_csv'] else ''}). A pair passes when "
        "V(n) − V(T n) &gt; 0; a trajectory step is a violation when V(next) ≥ V(current).</p>"
        f"<h2>Model beside the references</h2><table><tr><th>ranking function</th><th>violations /429</th><th>on growth steps (of {growth_steps})</th>"
        "<th>Pass %</th><th>Weighted %</th><th>Growth %</th><th>Growth-weighted %</th><th>growth margin min</th></tr>"
        + "".join(rows)
        + "</table>"
        f"<p>The faithful protocol's hard-state pools (the notebook's seeds) contain the start of "
        f"<b>{out['faithful_leak']['transitions']}</b> of the 429 test steps. This run's training draws hit "
        f"{_fmt(out['run_test_states_drawn'])} distinct test-orbit states, the start of "
        f"{_fmt(out['run_test_transitions_trained'])} of the 429 test steps.</p>"
        f"<h2>Test orbits</h2><table><tr><th>seed</th><th>steps</th>{heads}<th>faithful leak</th></tr>{seeds}</table>"
        + _violations_html(out.get("model_violations"))
        + _img(pngs["orbits"], "V along each test orbit (x: violations)")
        + "<h2>Margins on the eval set, growth vs decay</h2>"
        + _img(pngs["margins"], "margin histograms")
        + "<h2>Training</h2>"
        + _img(pngs["training"], "training curves")
    )
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{esc(out["run"])}</title>'
        f"<style>{CSS}</style></head><body>{body}<p class='muted'>Generated {esc(out['time'])} by evals/collatz.py</p>"
        "</body></html>"
    )


# ---------------------------------------------------------------------------------------------
# The eval run
# ---------------------------------------------------------------------------------------------


def eval_dir(run: Path, export: str = "final") -> Path:
    """Where the eval of ``run/<export>`` goes: ``eval/`` for ``final``, ``eval-<export>/`` otherwise."""
    return run / ("eval" if export == "final" else f"eval-{export}")


def evaluate(
    run: Path,
    eval_set: Path = EVAL_SET,
    eps: float = 0.01,
    extra_orbits: Sequence[int] = (),
    export: str = "final",
) -> dict[str, Any]:
    """Score ``run``'s export (``final/``, or ``best/``: the checkpoint the validation orbits chose)
    and both references; write ``collatz.json``, ``report.html`` and PNGs into ``eval_dir``."""
    cfg_path = run / "config.yaml"
    if not cfg_path.is_file():
        raise InputError(f"{run}: no config.yaml (not a run directory of trainers_*.collatz)")
    cfg = load_config(CollatzConfig, cfg_path)
    if export not in EXPORTS:
        raise InputError(f"--export {export!r}: expected one of {', '.join(EXPORTS)}")
    params, meta = load_export(run / export)
    view = View.from_meta(meta)
    lookahead = view.lookahead
    data = load_eval_set(eval_set)
    eval_manifest = eval_set.with_name("manifest.json")
    set_info = {
        "path": str(eval_set),
        "rows": len(data["n"]),
        "sha256": hashlib.sha256(eval_set.read_bytes()).hexdigest(),
    }
    set_info["identical_to_notebook_csv"] = set_info["sha256"] == NOTEBOOK_SET_SHA256

    functions = ranking_functions(params, view, eps)
    results = [score(*fn, data, extra_orbits) for fn in functions]
    summary = _read_summary(run)
    out = {
        "run": str(run),
        "time": now_iso(),
        "protocol": cfg.protocol,
        "lookahead": lookahead,
        "closed_form_eps": eps,
        "export": export,
        "model": {
            k: meta.get(k)
            for k in (
                "backend",
                "widths",
                "steps",
                "drift_coef",
                "target",
                "base",
                "base_eps",
                "scale_free",
                "residues",
                "valid_orbit_violations",
            )
        },
        "eval_set": set_info | ({"manifest": str(eval_manifest)} if eval_manifest.exists() else {}),
        "results": results,
        "model_violations": violating_steps(params, view),
        "faithful_leak": faithful_leak(cfg),
        "run_test_states_drawn": summary.get("test_states_drawn"),
        "run_test_transitions_trained": summary.get("test_transitions_trained"),
        "notebook_run3": NOTEBOOK_RUN3,
    }
    pngs = {
        "orbits": plot_orbits(results),
        "margins": plot_margins(results[:2], data["growth"]),
        "training": plot_training(read_metrics(run)),
    }
    run_eval = eval_dir(run, export)
    for name, png in pngs.items():
        if png is not None:
            with atomic_open(run_eval / f"collatz_{name}.png", "wb") as fh:
                fh.write(png)
    with atomic_open(run_eval / "report.html") as fh:
        fh.write(report_html(out, pngs))
    public = {**out, "results": [{k: v for k, v in r.items() if not k.startswith("_")} for r in results]}
    write_json(run_eval / "collatz.json", public)
    return public


def _read_summary(run: Path) -> dict[str, Any]:
    import json

    path = run / "summary.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def headline(out: dict[str, Any], summary: dict[str, Any]) -> dict[str, Any]:
    """The one-line JSON ``make collatz`` prints, read from the run's files."""
    model, closed = out["results"][0], out["results"][1]
    return {
        "backend": out["model"]["backend"],
        "protocol": out["protocol"],
        "L": out["lookahead"],
        "base": out["model"].get("base") or "none",
        "inputs": _view(out).inputs(),
        "violations": model["trajectory"]["violations"],
        "violations_by_seed": {s: v["violations"] for s, v in model["trajectory"]["by_seed"].items()},
        "pass": round(model["pass"], 2),
        "weighted": round(model["weighted"], 2),
        "growth": round(model["growth"], 2),
        "growth_weighted": round(model["growth_weighted"], 2),
        "growth_margin_min": round(model["growth_margin_min"], 4),
        "closed_form_violations": closed["trajectory"]["violations"],
        "closed_form_pass": round(closed["pass"], 2),
        "closed_form_growth_weighted": round(closed["growth_weighted"], 2),
        "faithful_leaked_transitions": out["faithful_leak"]["transitions"],
        "run_test_transitions_trained": out.get("run_test_transitions_trained"),
        "train_seconds": summary.get("train_seconds"),
        "steps": out["model"]["steps"],
        "export": out.get("export", "final"),
        # best/ records its own count; final/ is the last step, whose count the summary holds
        "valid_orbit_violations": out["model"].get("valid_orbit_violations")
        or summary.get("valid_orbit_violations"),
    }


def _parse_orbits(text: str) -> list[int]:
    out = []
    for part in text.split(","):
        try:
            value = int(part)
        except ValueError:
            raise InputError(f"--orbits: {part!r} is not an integer") from None
        out.append(check_start(value, "--orbits"))
    return out


@cli
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m evals.collatz", description=__doc__.split("\n\n")[0])
    what = ap.add_mutually_exclusive_group(required=True)
    what.add_argument("--run", help="run directory of trainers_torch.collatz / trainers_jax.collatz")
    what.add_argument("--build-set", action="store_true", help=f"draw the eval set into --set ({EVAL_SET})")
    what.add_argument("--headline", help="print the one-line JSON of an evaluated run dir")
    ap.add_argument("--set", default=str(EVAL_SET), help="the eval CSV")
    ap.add_argument(
        "--export", default="final", choices=EXPORTS,
        help="final/ (the last step) or best/ (fewest violations on the validation orbits, train.valid_orbits)",
    )  # fmt: skip
    ap.add_argument("--eps", type=float, default=0.01, help="ε of the closed-form reference V_L")
    ap.add_argument(
        "--orbits", default="", help="extra orbit starts to score (odd, positive, comma-separated)"
    )
    args = ap.parse_args(argv)
    import json

    if args.build_set:
        print(json.dumps(build_eval_set(Path(args.set))))
        return 0
    if args.headline:
        run = Path(args.headline)
        try:
            path = eval_dir(run, args.export) / "collatz.json"
            out = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            raise InputError(f"{path}: not readable ({err}); run the eval first") from None
        print(json.dumps(headline(out, _read_summary(run))))
        return 0
    extra = _parse_orbits(args.orbits) if args.orbits else []
    out = evaluate(Path(args.run), Path(args.set), args.eps, extra, args.export)
    model, closed = out["results"][0], out["results"][1]
    print(
        f"{args.run}: model {model['trajectory']['violations']}/429 violations, pass {model['pass']:.2f}%, "
        f"growth-weighted {model['growth_weighted']:.2f}% | V_{out['lookahead']} {closed['trajectory']['violations']}/429, "
        f"pass {closed['pass']:.2f}% | report {eval_dir(Path(args.run), args.export) / 'report.html'}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
