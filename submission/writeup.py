"""README_SUBMISSION.md and WRITEUP.md of a package, rendered from its evidence alone.

Both are functions of the package's members (``contents.Evidence``), so ``submission.verify``
renders them again from the zip and any figure that disagrees with the evidence shows up as a
differing line. Every number here is read from an evidence file; the prose around the numbers
states only what those files record. WRITEUP.md is a draft of the competition's writeup and
must stay within its word limit.
"""

from __future__ import annotations

import json
from typing import Any

from common.errors import InputError
from evals.report import category_pairs, ci, pct, signed
from evals.score import PRIMARY_SCORE_DEFINITION, describe_primary_score
from submission.checkpoint import CHECKPOINT
from submission.contents import (
    BEST_PARAMS,
    MANIFEST,
    MODEL,
    NOTEBOOK,
    NOTEBOOK_LOG,
    README,
    WRITEUP,
    Evidence,
)

WORD_LIMIT = 1500  # the competition's limit for the writeup
# Resolved-config keys the recipe section names when the run's config has them.
RECIPE_KEYS = (
    "train.method", "lora.rank", "lora.alpha", "lora.dropout", "train.epochs", "train.max_steps",
    "train.micro_batch_rows", "train.grad_accum", "data.max_len", "data.train_limit", "data.on_overflow",
    "optim.name", "optim.lr", "optim.schedule", "optim.warmup_steps", "optim.weight_decay", "optim.max_grad_norm",
    "generation.prompts_per_step", "generation.num_generations", "generation.max_new_tokens",
    "generation.temperature", "grpo.loss_type", "grpo.beta", "rewards.names", "seed",
)  # fmt: skip


def word_count(text: str) -> int:
    return len(text.split())


def check_word_limit(text: str) -> None:
    words = word_count(text)
    if words > WORD_LIMIT:
        raise InputError(
            f"{WRITEUP}: {words} words, over the {WORD_LIMIT}-word limit of the competition's writeup"
        )


def _dotted(config: dict[str, Any], key: str) -> Any:
    value: Any = config
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def _num(x: Any) -> str:
    if isinstance(x, float):
        return f"{x:.4g}"
    return str(x)


def _p(x: float) -> str:
    return f"{x:.2g}"


def _delta_ci(pair: list[float]) -> str:
    return f"[{100 * pair[0]:+.1f}, {100 * pair[1]:+.1f}]"


def base_model(run: dict[str, Any]) -> str:
    """The model the run started from, as its manifest (else its resolved config) records it."""
    return (run["manifest"].get("model") or {}).get("path") or _dotted(run["config"], "model.path") or "?"


def _series(metrics: list[dict[str, Any]], key: str) -> list[tuple[int, float]]:
    """``(step, value)`` of every metrics.jsonl record that logged ``key``."""
    return [(r["step"], r[key]) for r in metrics if isinstance(r.get(key), int | float) and "step" in r]


# --------------------------------------------------------------------------------------------
# Pieces shared by both documents
# --------------------------------------------------------------------------------------------


def headline_rows(run: dict[str, Any]) -> list[str]:
    """The primary-score table of a run's eval: base and trained, as ``describe_primary_score`` prints."""
    s = run["eval"]
    rows = ["| model | primary score, 95% Wilson interval (correct/n), format rate |", "| --- | --- |"]
    rows.append(
        f"| base `{s['base']['model']['path']}` | {describe_primary_score(s['base']['primary_score'])} |"
    )
    rows.append(f"| trained `{run['name']}` | {describe_primary_score(s['trained']['primary_score'])} |")
    return rows


def paired_lines(run: dict[str, Any]) -> list[str]:
    """Each metric's paired delta from compare.json, primary metric first."""
    c = run["compare"]
    names = [c["primary_metric"], *(m for m in c["metrics"] if m != c["primary_metric"])]
    out = []
    for name in names:
        m = c["metrics"][name]
        if not m["n"]:
            continue
        out.append(
            f"- {name}{' (primary metric)' if name == c['primary_metric'] else ''}: "
            f"{pct(m['a'])} → {pct(m['b'])}, delta {signed(m['delta'])} {_delta_ci(m['delta_ci95'])}, "
            f"McNemar p = {_p(m['mcnemar_p'])}, {m['table']['b_only']} gained / {m['table']['a_only']} lost"
        )
    return out


def eval_set_line(run: dict[str, Any]) -> str:
    s, c = run["eval"], run["compare"]
    d = s["dataset"]
    return (
        f"Eval set `{d['path']}` (sha256 `{d['sha256'][:12]}`): {d['n_sampled']} items sampled with seed "
        f"{d['seed']}, {c['n_paired']} of them paired by id across the two models' predictions; decoding `{json.dumps(s['trained']['decoding'], sort_keys=True)}`; "
        f"scorer `{s['trained']['scorer']}`."
    )


def warnings_lines(run: dict[str, Any]) -> list[str]:
    warnings = list(dict.fromkeys((run["compare"] or {}).get("warnings") or []))
    return [f"- {w}" for w in warnings] or ["- none"]


def training_line(run: dict[str, Any]) -> str:
    m, metrics = run["manifest"], run["metrics"]
    parts = [f"trainer `{m.get('trainer', '?')}` from `{base_model(run)}`"]
    steps = [r["step"] for r in metrics if "step" in r]
    if steps:
        parts.append(f"{max(steps)} steps logged")
    loss = _series(metrics, "loss")
    if loss:
        parts.append(
            f"train loss {_num(loss[0][1])} (step {loss[0][0]}) → {_num(loss[-1][1])} (step {loss[-1][0]})"
        )
    for key, label in (("valid_loss", "held-out loss"), ("reward", "reward")):
        if series := _series(metrics, key):
            parts.append(f"{label} {_num(series[-1][1])} (step {series[-1][0]})")
    parts.append(f"{m.get('start_time')} → {m.get('end_time')} on {m.get('device')}")
    return "; ".join(parts)


def _other_runs(ev: Evidence) -> list[dict[str, Any]]:
    return [ev.run(r) for r in ev.package["runs"] if r != ev.package["run"]]


# --------------------------------------------------------------------------------------------
# README_SUBMISSION.md
# --------------------------------------------------------------------------------------------


def render_readme(ev: Evidence) -> str:
    pkg = ev.package
    run = ev.run(pkg["run"])
    src = pkg["source"]
    lines = [
        f"# showwork submission: {pkg['run']}",
        "",
        f"`{pkg['name']}`, built by `make package` from commit `{src['git_commit'] or 'unknown (no git checkout)'}` "
        f"(source sha256 `{src['source_sha256'][:12]}`), dated {pkg['date']}. Every figure below is read from "
        f"the evidence in this package; `python -m submission.verify {pkg['name']}` checks them again, and every "
        f"member against `{MANIFEST}` (sha256 and size).",
        "",
        "## Headline",
        "",
        f"Primary score: {PRIMARY_SCORE_DEFINITION}.",
        "",
        *headline_rows(run),
        "",
        f"Paired on the same items (`{run['prefix']}eval/compare.json`):",
        "",
        *paired_lines(run),
        "",
        eval_set_line(run),
        "",
        "Warnings recorded by the comparison:",
        "",
        *warnings_lines(run),
        "",
        "## Runs",
        "",
        f"- `{run['name']}` (packaged): {training_line(run)}.",
    ]
    for other in _other_runs(ev):
        score = (
            describe_primary_score(other["eval"]["trained"]["primary_score"])
            if other["eval"]
            else "not evaluated"
        )
        lines.append(f"- `{other['name']}`: {training_line(other)}; primary score {score}.")
    lines += ["", f"Recorded command of `{run['name']}`: `{run['manifest'].get('command')}`."]
    if any(m.startswith(f"{MODEL}/") for m in ev.members):
        lines += [
            "",
            "## Model",
            "",
            f"`{MODEL}/{CHECKPOINT}/` is the final checkpoint of `{pkg['run']}` in the Orbax layout of Google's "
            f"released Gemma 3 checkpoints; `{MODEL}/config.json` and the tokenizer files come from the run's HF "
            "export. Tunix's Gemma 3 code loads it: `tunix.models.gemma3.params.create_model_from_checkpoint("
            f"'{MODEL}/{CHECKPOINT}', model_config)`, with the `ModelConfig` that `trainers_jax.model.tunix_config"
            f"('{MODEL}')` maps from `config.json`.",
        ]
    if ev.has(BEST_PARAMS):
        lines += ["", "## Sweep", "", *sweep_lines(ev.json(BEST_PARAMS))]
    if ev.has(NOTEBOOK_LOG):
        lines += ["", "## Notebook run log", "", *notebook_lines(ev.json(NOTEBOOK_LOG))]
    lines += ["", "## Contents", "", *contents_lines(ev)]
    return "\n".join(lines) + "\n"


def sweep_lines(best: dict[str, Any]) -> list[str]:
    lines = [
        f"`{BEST_PARAMS}` from sweep `{best['sweep']}` (`{best['source']}`, trainer `{best['trainer']}`, "
        f"scheduler {best['scheduler']['name']}): {best['mode']} {best['metric']} = {_num(best['best_value'])} "
        f"in trial `{best['best_trial_id']}`; {best['n_trials']} trials, {best['n_completed']} completed, "
        f"{best['n_stopped_early']} stopped early, {best['n_errors']} failed. Promoted config: "
        f"`{best['promoted_config']}`.",
        "",
        "| key | best value | searched |",
        "| --- | --- | --- |",
    ]
    for key in sorted(best["params"]):
        (kind, values), *_ = best["search_space"].get(key, {"?": []}).items()
        lines.append(f"| `{key}` | {best['params'][key]} | {kind} {values} |")
    return lines


def notebook_lines(log: dict[str, Any]) -> list[str]:
    lines = [
        f"Notebook config `{log['notebook_config']}`.",
        "",
        "| stage | seconds | exit status |",
        "| --- | --- | --- |",
    ]
    lines += [f"| {s['stage']} | {s['seconds']:.1f} | {s['exit_status']} |" for s in log["stages"]]
    return lines


def contents_lines(ev: Evidence) -> list[str]:
    """Every member with its size (the model as one line), but the three generated ones."""
    lines = [
        f"This file, `{WRITEUP}` (a draft of the competition's writeup, at most {WORD_LIMIT} words) and "
        f"`{MANIFEST}` (sha256 and size of every other member) are generated; the rest are copied:",
        "",
        "| member | bytes |",
        "| --- | --- |",
    ]
    model = [m for m in ev.members if m.startswith(f"{MODEL}/")]
    for name in ev.members:
        if name in (README, WRITEUP, MANIFEST) or name in model:
            continue
        lines.append(f"| `{name}` | {ev.sizes[name]:,} |")
    if model:
        total = sum(ev.sizes[m] for m in model)
        lines.append(f"| `{MODEL}/` ({len(model)} files: the final checkpoint, Orbax) | {total:,} |")
    return lines


# --------------------------------------------------------------------------------------------
# WRITEUP.md
# --------------------------------------------------------------------------------------------


def recipe_lines(run: dict[str, Any]) -> list[str]:
    m, cfg = run["manifest"], run["config"]
    lines = [f"- Trainer: `{m.get('trainer', '?')}`; base model `{base_model(run)}`."]
    params = m.get("parameters") or {}
    if params.get("trainable") and params.get("total"):
        share = 100 * params["trainable"] / params["total"]
        lines.append(
            f"- Trainable parameters: {params['trainable']:,} of {params['total']:,} ({share:.2f}%)."
        )
    settings = [(k, _dotted(cfg, k)) for k in RECIPE_KEYS]
    shown = ", ".join(f"`{k}={_num(v)}`" for k, v in settings if v is not None)
    if shown:
        lines.append(f"- Settings (from the resolved config): {shown}.")
    if m.get("total_steps") is not None:
        lines.append(f"- Optimizer steps planned: {m['total_steps']}.")
    lines.append(f"- The full resolved config is `{run['prefix']}config.yaml`.")
    return lines


def data_lines(run: dict[str, Any]) -> list[str]:
    m = run["manifest"]
    lines = []
    reports = m.get("data_report") or {}
    for split, info in sorted((m.get("data") or {}).items()):
        line = f"- {split}: `{info['path']}` (sha256 `{info['sha256'][:12]}`)"
        rep = reports.get(split) or {}
        facts = []
        if rep.get("records") is not None:
            facts.append(f"{rep['records']:,} records")
        if rep.get("used") is not None:
            facts.append(f"{rep['used']:,} used")
        if rep.get("overflow_count") is not None and rep.get("max_len") is not None:
            facts.append(
                f"{rep['overflow_count']:,} longer than {rep['max_len']} tokens, policy `{rep.get('policy')}`"
            )
        lines.append(line + (": " + ", ".join(facts) if facts else "") + ".")
    return lines or ["- The run manifest records no data files."]


def generation_lines(run: dict[str, Any]) -> list[str]:
    out = []
    for side in ("base", "trained"):
        g = run["eval"][side].get("generation") or {}
        stops = g.get("stop_reasons") or {}
        if not stops:
            continue
        parts = ", ".join(f"{k} {v}" for k, v in sorted(stops.items()))
        mean = g.get("mean_completion_tokens")
        out.append(
            f"- {side}: stop reasons {parts}"
            + (f"; mean completion {mean:.1f} tokens" if isinstance(mean, int | float) else "")
            + "."
        )
    return out


def category_lines(run: dict[str, Any]) -> list[str]:
    pairs = category_pairs(run["eval"])
    if not pairs:
        return []
    lines = ["| category | n | base strict | trained strict |", "| --- | --- | --- | --- |"]
    for c, b, t in pairs:
        lines.append(
            f"| {c} | {t.get('n', b.get('n'))} | {pct(b.get('strict_accuracy'))} {ci(b.get('strict_accuracy_ci95'))} "
            f"| {pct(t.get('strict_accuracy'))} {ci(t.get('strict_accuracy_ci95'))} |"
        )
    return lines


def render_writeup(ev: Evidence) -> str:
    pkg = ev.package
    run = ev.run(pkg["run"])
    s = run["eval"]
    base, trained = s["base"]["primary_score"], s["trained"]["primary_score"]
    model = base_model(run)
    lines = [
        f"# Showing its work: `{model}` trained to answer as `<reasoning>…</reasoning><answer>…</answer>`",
        "",
        "## Summary",
        "",
        f"Run `{run['name']}` fine-tuned `{model}` with `{run['manifest'].get('trainer', '?')}`. On the same "
        f"{trained['n']} held-out items, the primary score (strict accuracy of the `<answer>`) went from "
        f"{pct(base['value'])} to {pct(trained['value'])} and the format rate from {pct(base['format_rate'])} "
        f"to {pct(trained['format_rate'])}.",
        "",
        *headline_rows(run),
        "",
        "## Recipe",
        "",
        *recipe_lines(run),
        "",
        "## Data",
        "",
        *data_lines(run),
        "",
        "## Results",
        "",
        f"Primary score: {PRIMARY_SCORE_DEFINITION}. {eval_set_line(run)}",
        "",
        "Paired comparison of base and trained on the same items (exact McNemar test, Newcombe interval):",
        "",
        *paired_lines(run),
    ]
    cats = category_lines(run)
    if cats:
        lines += ["", "By category (strict accuracy, 95% Wilson interval):", "", *cats]
    gen = generation_lines(run)
    if gen:
        lines += ["", "Generation:", "", *gen]
    lines += ["", "## Training", "", f"- {training_line(run)}."]
    for other in _other_runs(ev):
        lines.append(f"- `{other['name']}`: {training_line(other)}.")
    for plot in run["plots"]:
        lines += ["", f"![{plot.rsplit('/', 1)[-1]}]({plot})"]
    if ev.has(BEST_PARAMS):
        best = ev.json(BEST_PARAMS)
        lines += ["", "## Hyperparameters from the sweep", "", *sweep_lines(best)[:1]]
    lines += ["", "## Caveats the evidence records", "", *warnings_lines(run)]
    if not any(m.startswith(f"{MODEL}/") for m in ev.members):
        lines.append("- This package holds no model weights (built without `WITH_MODEL=1`).")
    lines += [
        "",
        "## Reproduce",
        "",
        f"The notebook `{NOTEBOOK}` and the configs it names are in this package. The packaged run was started "
        f"with `{run['manifest'].get('command')}`; `make eval RUN={run['name']}` evaluates it and "
        f"`make package RUN={run['name']}` builds this package.",
    ]
    return "\n".join(lines) + "\n"


def render_documents(ev: Evidence) -> dict[str, str]:
    """``{README_SUBMISSION.md: text, WRITEUP.md: text}``; the writeup checked against the word limit."""
    docs = {README: render_readme(ev), WRITEUP: render_writeup(ev)}
    check_word_limit(docs[WRITEUP])
    return docs
