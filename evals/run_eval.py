"""``make eval``: the base model and a trained run on the same held-out items, compared honestly.

    python -m evals.run_eval --run runs/<name> --config configs/eval/gsm8k_cpu.yaml [key=value ...]

Writes ``runs/<name>/eval/`` (``--eval-dir`` names another folder of the run, e.g.
``eval-multidomain`` for a second suite): ``predictions_base.jsonl``, ``predictions_trained.jsonl``,
``eval_summary.json`` (``base`` and ``trained``: the scorer's fields, the primary score among
them, plus model, decoding and generation provenance), ``compare.json`` (paired deltas, McNemar,
flips, small-n warnings, both primary scores), ``report.html`` and ``report.md``. The two JSON
files are checked against their schemas (``submission/schemas/``) before they are written.

The trained model comes from the run dir: ``merged/`` (an HF export), ``final/`` (a PEFT
adapter, or a full HF model), or else the newest Orbax checkpoint of a ``trainers_jax.sft``
run (``checkpoints/<step>/``). The base is the model the run started from (its config.yaml /
run_manifest.json, or the adapter's base), unless ``--base`` names another. Base predictions
are cached under ``runs/.eval_cache/`` by weights, items and decoding, so evaluating several
runs of one base generates them once. Both generations resume after a crash.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import hashlib
import json
import shutil
import sys
from pathlib import Path
from typing import Any

from common.config import load_config, split_cli, to_dict
from common.errors import InputError, cli
from common.evidence import write_evidence
from common.jsonl import iter_jsonl
from common.runs import git_commit, now_iso, sha256_file
from evals import generate as gen
from evals import load

CACHE_DIR = Path("runs/.eval_cache")


def base_model_of(run: Path, trained: load.ModelRef) -> tuple[str, str]:
    """``(path, how it was found)`` of the model the run was trained from."""
    if trained.kind in ("adapter", "orbax"):
        return trained.weights_dir, f"the {'adapter' if trained.kind == 'adapter' else 'checkpoint'}'s base"
    recorded = load.run_base_model(run)
    if recorded:
        return recorded, f"{run}/config.yaml or run_manifest.json"
    raise InputError(
        f"{run}: records no base model (config.yaml model.path / run_manifest.json model.path); pass --base"
    )


def _cache_key(cfg: gen.GenerateConfig, fingerprint: str, data_sha: str) -> str:
    parts = {
        "fingerprint": fingerprint,
        "data_sha256": data_sha,
        "n": cfg.data.n,
        "prompt": cfg.data.prompt,
        "seed": cfg.seed,
        "decode": gen.decoding_record(cfg.decode),
        "backend": cfg.model.backend,
        "dtype": cfg.model.dtype,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def _generate(cfg: gen.GenerateConfig, label: str, progress: bool) -> dict[str, Any]:
    print(f"[{label}] {cfg.model.path} -> {cfg.out}", file=sys.stderr)
    summary = gen.run(cfg, progress=progress)
    gen.print_summary(summary)
    gc.collect()  # one model in memory at a time
    return summary


def _checked_predictions(path: Path, fingerprint: str, ids: list[str]) -> list[dict]:
    """The predictions in ``path``; refuse anything but real completions of these weights for these ids."""
    records = [r for _, r in iter_jsonl(path)]
    wrong = [r["id"] for r in records if (r.get("model") or {}).get("fingerprint") != fingerprint]
    if wrong:
        raise InputError(f"{path}: {len(wrong)} predictions come from other weights (first id {wrong[0]!r})")
    missing = sorted(set(ids) - {str(r["id"]) for r in records})
    if missing:
        raise InputError(f"{path}: {len(missing)} sampled items have no prediction (first {missing[0]!r})")
    if not any(r["completion"].strip() for r in records):
        raise InputError(f"{path}: every completion is empty; not scoring it")
    return records


def evaluate_run(
    run: Path,
    cfg: gen.GenerateConfig,
    base: str | None = None,
    progress: bool = True,
    report: bool = True,
    cache_dir: Path = CACHE_DIR,
    eval_name: str = "eval",
) -> dict[str, Any]:
    """Generate, score, compare and report one run into ``run/eval_name``; returns the eval summary."""
    from evals.compare import compare_files, print_comparison
    from evals.suites import suite_metrics, suite_name, summarize

    if not run.is_dir():
        raise InputError(f"--run {run}: no such run directory")
    trained_ref = load.resolve_model(str(run), cfg.model.base, cfg.model.prefer)
    base_path, base_source = (base, "--base") if base else base_model_of(run, trained_ref)
    base_ref = load.resolve_model(base_path)
    if base_ref.kind != "hf":
        raise InputError(f"base model {base_path}: expected an HF model directory, got a {base_ref.kind}")

    if not eval_name or Path(eval_name).name != eval_name:
        raise InputError(f"--eval-dir {eval_name!r}: a directory name inside the run, e.g. eval-multidomain")
    eval_dir = run / eval_name
    eval_dir.mkdir(parents=True, exist_ok=True)
    items = gen.sample_items(gen.load_items(cfg.data.path), cfg.data.n, cfg.seed)
    ids = [str(it["id"]) for it in items]
    data_sha = sha256_file(cfg.data.path)

    base_fp = load.model_provenance(base_ref, cfg.model.backend, cfg.model.dtype)["fingerprint"]
    cached = cache_dir / f"base-{_cache_key(cfg, base_fp, data_sha)}.jsonl"
    base_cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, path=base_path), out=str(cached))
    trained_cfg = dataclasses.replace(
        cfg,
        model=dataclasses.replace(cfg.model, path=str(run)),
        out=str(eval_dir / "predictions_trained.jsonl"),
    )
    sides = {"base": _generate(base_cfg, "base", progress)}
    shutil.copyfile(cached, eval_dir / "predictions_base.jsonl")
    sides["base"]["out"] = str(eval_dir / "predictions_base.jsonl")
    sides["base"]["cache"] = str(cached)
    sides["trained"] = _generate(trained_cfg, "trained", progress)

    metrics, primary = suite_metrics(items, cfg.suite)
    summary: dict[str, Any] = {
        "created": now_iso(),
        "git_commit": git_commit(),
        "run": str(run),
        "suite": suite_name(items, cfg.suite),
        "primary_metric": primary,
        "metrics": metrics,
        "dataset": {"path": cfg.data.path, "sha256": data_sha, "n_sampled": len(items), "seed": cfg.seed},
        "config": to_dict(cfg),
        "base_source": base_source,
    }
    for side, gen_summary in sides.items():
        path = Path(gen_summary["out"])
        records = _checked_predictions(path, gen_summary["model"]["fingerprint"], ids)
        scored = summarize(records, items, cfg.suite)
        summary[side] = {
            **scored,
            "model": gen_summary["model"],
            "decoding": gen_summary["decoding"],
            "generation": {k: v for k, v in gen_summary.items() if k not in ("model", "decoding")},
            "predictions": str(path),
        }
    write_evidence(eval_dir / "eval_summary.json", "eval_summary", summary)

    comparison = compare_files(
        eval_dir / "predictions_base.jsonl",
        eval_dir / "predictions_trained.jsonl",
        cfg.data.path,
        suite=cfg.suite,
        items=items,
    )
    comparison["a"]["label"], comparison["b"]["label"] = "base", "trained"
    write_evidence(eval_dir / "compare.json", "compare", comparison)
    print_comparison(comparison)

    if report:
        from evals.report import write_run_report

        html_path = write_run_report(run, eval_name)
        print(f"report: {html_path}")
    return summary


@cli
def main(argv: list[str] | None = None) -> dict[str, Any]:
    flags, overrides = split_cli(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", required=True, help="runs/<name> (final/ adapter and/or merged/ export)")
    parser.add_argument("--config", required=True, help="eval config (configs/eval/*.yaml)")
    parser.add_argument("--base", help="base model dir (default: the one the run was trained from)")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--no-report", action="store_true", help="skip report.html / report.md")
    parser.add_argument(
        "--eval-dir", default="eval", help="where in the run to write (default eval; e.g. eval-multidomain)"
    )
    args = parser.parse_args(flags)
    cfg = load_config(gen.GenerateConfig, args.config, overrides)
    return evaluate_run(
        Path(args.run), cfg, args.base, progress=not args.no_progress, report=not args.no_report,
        eval_name=args.eval_dir,
    )  # fmt: skip


if __name__ == "__main__":
    main()
