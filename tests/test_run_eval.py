"""evals.run_eval end to end on a tiny run dir: base vs trained, same items, every file written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from common.config import load_config
from common.jsonl import read_jsonl
from evals import run_eval
from evals.generate import GenerateConfig
from evals.score import describe_primary_score


def _dataset(path: Path) -> Path:
    rows = [
        {"id": f"t{i}", "question": q, "answer": a, "meta": {"category": c}}
        for i, (q, a, c) in enumerate(
            [
                ("2+3?", "5", "add"),
                ("7+11?", "18", "add"),
                ("6*7?", "42", "mul"),
                ("3*3?", "9", "mul"),
                ("1+1?", "2", "add"),
            ]
        )
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def evaluated(tiny_gemma3, tmp_path_factory):
    from tests.tiny_runs import build_trained_run

    root = tmp_path_factory.mktemp("eval")
    run = build_trained_run(tiny_gemma3, root / "runs" / "sft-tiny")
    (run / "metrics.jsonl").write_text(
        "".join(json.dumps({"step": s, "loss": 3 - s / 10, "lr": 1e-4}) + "\n" for s in range(1, 11))
    )
    data = _dataset(root / "d.jsonl")
    overrides = [
        f"data.path={data}",
        "data.n=4",
        "decode.max_new_tokens=8",
        "batch_size=3",
        "data.prompt=plain",
    ]
    cfg = load_config(GenerateConfig, "configs/eval/gsm8k_cpu.yaml", overrides)
    summary = run_eval.evaluate_run(run, cfg, progress=False, cache_dir=root / "cache")
    return run, cfg, summary, root


def test_eval_dir_has_every_file_with_provenance(evaluated, tiny_gemma3):
    run, _, summary, _ = evaluated
    ev = run / "eval"
    for name in (
        "predictions_base.jsonl",
        "predictions_trained.jsonl",
        "eval_summary.json",
        "compare.json",
        "report.html",
        "report.md",
    ):
        assert (ev / name).is_file(), name
    saved = json.loads((ev / "eval_summary.json").read_text())
    assert saved == json.loads(json.dumps(summary))
    base, trained = saved["base"], saved["trained"]
    assert base["n"] == trained["n"] == 4 and "strict_accuracy_ci95" in base and "failures" in trained
    assert base["model"]["path"] == str(tiny_gemma3) and base["model"]["kind"] == "hf"
    assert trained["model"]["weights_dir"].endswith("merged") and trained["decoding"] == base["decoding"]
    assert base["model"]["fingerprint"] != trained["model"]["fingerprint"]
    assert saved["base_source"].endswith("config.yaml or run_manifest.json")
    ids = lambda name: sorted(r["id"] for r in read_jsonl(ev / name))  # noqa: E731
    assert ids("predictions_base.jsonl") == ids("predictions_trained.jsonl")  # the same held-out items
    cmp = json.loads((ev / "compare.json").read_text())
    assert cmp["n_paired"] == 4 and cmp["a"]["label"] == "base" and cmp["too_small_to_separate"]
    assert any("too few" in w or "cannot separate" in w for w in cmp["warnings"])
    # one primary score: eval summary, comparison and report headline show the same one
    assert (
        cmp["primary_score"]["a"] == base["primary_score"]
        and cmp["primary_score"]["b"] == trained["primary_score"]
    )
    assert (
        trained["primary_score"]["n"] == 4 and trained["primary_score"]["value"] == trained["strict_accuracy"]
    )
    for name in ("report.html", "report.md"):
        assert describe_primary_score(trained["primary_score"]) in (ev / name).read_text()
    assert (run / "plots" / "training_curves.png").is_file()


def test_base_predictions_are_cached_and_everything_resumes(evaluated):
    run, cfg, _, root = evaluated
    again = run_eval.evaluate_run(run, cfg, progress=False, cache_dir=root / "cache", report=False)
    assert (
        again["base"]["generation"]["n_generated_now"]
        == 0
        == again["trained"]["generation"]["n_generated_now"]
    )
    assert again["trained"]["generation"]["load_seconds"] < 0.5  # nothing to do: the model is not even loaded
    assert len(list((root / "cache").glob("base-*.jsonl"))) == 1


def test_run_without_trained_weights_is_an_error(tmp_path, capsys):
    run = tmp_path / "runs" / "unfinished"
    (run / "checkpoints").mkdir(parents=True)
    (run / "run_manifest.json").write_text("{}")
    with pytest.raises(SystemExit) as err:
        run_eval.main(["--run", str(run), "--config", "configs/eval/gsm8k_cpu.yaml"])
    assert err.value.code == 2 and "without final/" in capsys.readouterr().err


def test_prompt_suite_run_end_to_end(tiny_gemma3, tmp_path):
    from tests.tiny_runs import build_trained_run

    run = build_trained_run(tiny_gemma3, tmp_path / "runs" / "suite")
    cfg = load_config(
        GenerateConfig, "configs/eval/multidomain_cpu.yaml", ["decode.max_new_tokens=6", "batch_size=6"]
    )
    summary = run_eval.evaluate_run(run, cfg, progress=False, cache_dir=tmp_path / "cache")
    assert summary["primary_metric"] == "pass" and summary["trained"]["n"] == 12
    assert set(summary["trained"]["categories"]) == {"code", "reasoning", "tool_calling"}
    html = (run / "eval" / "report.html").read_text()
    assert "pass (primary)" in html and "tool_calling" in html and "<script" not in html


def test_yaml_trace_suite_fields_reach_summary_compare_and_report(evaluated):
    import shutil

    run, _, _, root = evaluated
    copy = root / "runs" / "yaml-suite"
    shutil.copytree(run, copy)  # same predictions: both sides resume instead of generating
    overrides = [f"data.path={root / 'd.jsonl'}", "data.n=4", "decode.max_new_tokens=8", "batch_size=3"]
    cfg = load_config(GenerateConfig, "configs/eval/yaml_trace_cpu.yaml", [*overrides, "data.prompt=plain"])
    assert cfg.suite == "yaml_trace"
    summary = run_eval.evaluate_run(copy, cfg, progress=False, cache_dir=root / "cache")
    written = json.loads((copy / "eval" / "eval_summary.json").read_text())
    assert written["suite"] == "yaml_trace" and written["primary_metric"] == "solver"
    for side in ("base", "trained"):
        s = written[side]
        assert s["parse_rate"] == 0.0 and s["solver_accuracy"] == 0.0  # a tiny random model writes no YAML
        assert sum(s["trace_outcomes"].values()) == s["n"] == 4
        assert s["trace_outcomes"]["parse_failure"] == 4
    assert summary["metrics"][:2] == ["solver", "strict"]
    compare = json.loads((copy / "eval" / "compare.json").read_text())
    assert compare["primary_metric"] == "solver" and compare["metrics"]["parse"]["n"] == 4
    html = (copy / "eval" / "report.html").read_text()
    assert "Trace outcomes" in html and "solver (primary)" in html
    assert "| solver |" in (copy / "eval" / "report.md").read_text()
