"""Finished, evaluated run dirs for packaging tests, written by the project's own writers.

The manifest comes from ``RunDir``, metrics from ``MetricsLogger``, plots from ``write_plots``,
the eval summary from the shared scorer, the comparison from ``evals.compare`` and the report
from ``evals.report``; only the completions are made up (no model generates them).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from common.config import load_config
from common.evidence import write_evidence
from common.runs import MetricsLogger, RunDir, now_iso, write_plots
from common.sft_config import SFTConfig
from evals.compare import compare_files
from evals.report import write_run_report
from evals.suites import summarize

ANSWERS = [18, 3, 70, 5, 12, 1080, 42, 9]
BEST_PARAMS = {
    "source": "runs/sweeps/sft-lr", "sweep": "sft-lr", "trainer": "trainers_torch.sft",
    "base_config": "configs/sft_gemma3_270m_cpu.yaml", "promoted_config": "configs/promoted/sft-lr.yaml",
    "params": {"optim.lr": 0.0005, "lora.rank": 8},
    "search_space": {"optim.lr": {"loguniform": [1e-5, 1e-3]}, "lora.rank": {"choice": [8, 16]}},
    "metric": "valid_loss", "mode": "min", "best_value": 0.97, "best_trial_id": "t2",
    "best_run_dir": "runs/sweeps/sft-lr/t2", "n_trials": 3, "n_completed": 2, "n_stopped_early": 1, "n_errors": 0,
    "scheduler": {"name": "asha", "max_t": 100, "grace_period": 20, "reduction_factor": 2}, "seed": 0,
    "created_by": "python -m scripts.sweep --config configs/sweeps/sft_lr.yaml", "created_at": "2026-01-01T00:00:00+00:00",
    "ray_version": "2.60.0",
}  # fmt: skip
NOTEBOOK_LOG = {
    "notebook_config": "configs/kaggle/notebook.yaml",
    "stages": [
        {"stage": "setup", "commands": [], "started": "2026-01-01T00:00:00+00:00",
         "ended": "2026-01-01T00:05:00+00:00", "seconds": 300.0, "exit_status": 0},
        {"stage": "sft", "commands": [["python", "-m", "trainers_jax.sft", "--config", "c.yaml"]],
         "started": "2026-01-01T00:05:00+00:00", "ended": "2026-01-01T01:05:00+00:00", "seconds": 3600.0,
         "exit_status": 0},
    ],
}  # fmt: skip
DECODING = {"max_new_tokens": 64, "temperature": 0.0, "top_k": 0, "top_p": 1.0}


def write_items(path: Path) -> list[dict[str, Any]]:
    items = [
        {"id": f"t{i}", "question": f"What is item {i}?", "answer": str(a),
         "meta": {"category": "short" if i % 2 else "long"}}
        for i, a in enumerate(ANSWERS)
    ]  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(it) + "\n" for it in items))
    return items


def _side(run: Path, side: str, items: list[dict], right: set[int], model_path: str) -> dict[str, Any]:
    model = {"path": model_path, "kind": "hf", "source": "HF model directory", "weights_dir": model_path,
             "weights_sha256": (side[0] * 64), "adapter_sha256": None, "backend": "torch", "dtype": "float32",
             "fingerprint": side[0] * 16}  # fmt: skip
    preds = [
        {"id": it["id"], "prompt": f"<start_of_turn>user\n{it['question']}",
         "completion": (f"<reasoning>Work for {it['id']}.</reasoning><answer>{it['answer'] if i in right else 0}</answer>"
                        if side == "trained" else f"The answer is {it['answer'] if i in right else 0}."),
         "completion_tokens": 12, "stop_reason": "end_of_turn", "model": model, "decoding": DECODING}
        for i, it in enumerate(items)
    ]  # fmt: skip
    path = run / "eval" / f"predictions_{side}.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in preds))
    return {
        **summarize(preds, items),
        "model": model,
        "decoding": DECODING,
        "generation": {
            "stop_reasons": {"end_of_turn": len(items)},
            "truncated_fraction": 0.0,
            "mean_completion_tokens": 12.0,
            "empty_completions": 0,
        },
        "predictions": str(path),
    }


def build_run(
    root: Path,
    name: str = "sft-tiny",
    *,
    model_dir: Path | None = None,
    right_base: frozenset[int] = frozenset({0}),
    right_trained: frozenset[int] = frozenset({0, 1, 2, 3, 5}),
    evaluate: bool = True,
) -> Path:
    """``root/runs/<name>``: config, manifest, metrics, plots, summary and (``evaluate``) eval/ with report."""
    data = root / "data" / "items.jsonl"
    items = write_items(data)
    model_path = str(model_dir or "models/tiny")
    cfg = load_config(
        SFTConfig,
        None,
        [
            f"run_name={name}",
            f"model.path={model_path}",
            f"data.train={data}",
            f"data.valid={data}",
            "train.max_steps=6",
        ],
    )
    run = RunDir.start(root / "runs" / name, cfg, data_files={"train": data}, device="cpu",
                       extra={"trainer": "trainers_torch.sft", "total_steps": 6,
                              "parameters": {"total": 1000, "trainable": 50}})  # fmt: skip
    with MetricsLogger(run.path, tensorboard=False) as log:
        for step in range(1, 7):
            log.log(step, loss=2.0 / step, lr=1e-3, **({"valid_loss": 1.5 / step} if step % 3 == 0 else {}))
    write_plots(run)
    summary = {"steps": 6, "final_loss": 2.0 / 6, "valid_loss": 0.5}
    (run.path / "summary.json").write_text(json.dumps(summary) + "\n")
    run.finish(summary=summary)
    if not evaluate:
        return run.path
    sides = {
        "base": _side(run.path, "base", items, set(right_base), model_path),
        "trained": _side(run.path, "trained", items, set(right_trained), f"{run.path}/merged"),
    }
    eval_summary = {
        "created": now_iso(), "git_commit": None, "run": str(run.path), "suite": "answers",
        "primary_metric": "strict", "metrics": ["strict", "flexible", "partial", "format"],
        "dataset": {"path": str(data), "sha256": __import__("hashlib").sha256(data.read_bytes()).hexdigest(),
                    "n_sampled": len(items), "seed": 0},
        "config": {}, "base_source": "config.yaml", **sides,
    }  # fmt: skip
    write_evidence(run.eval / "eval_summary.json", "eval_summary", eval_summary)
    comparison = compare_files(
        run.eval / "predictions_base.jsonl", run.eval / "predictions_trained.jsonl", data
    )
    comparison["a"]["label"], comparison["b"]["label"] = "base", "trained"
    write_evidence(run.eval / "compare.json", "compare", comparison)
    write_run_report(run.path)
    return run.path
