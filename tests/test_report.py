"""evals.report: escaped, self-contained HTML that renders in headless Chromium without console errors."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from evals import report
from evals.compare import compare_files
from evals.suites import summarize

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
EVIL = "<script>alert('x')</script></pre><img src=x onerror=alert(1)>"
ANSWERS = [7, 12, 30, 4, 9, 100, 18, 2, 5, 64]


def _model(path: str, fp: str) -> dict:
    return {"path": path, "kind": "hf", "source": "HF model directory", "weights_dir": path,
            "weights_sha256": fp * 8, "adapter_sha256": None, "backend": "torch", "dtype": "float32",
            "fingerprint": fp * 8}  # fmt: skip


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def make_run(
    root: Path, name: str, right_base: set[int], right_trained: set[int], metrics: bool = True
) -> Path:
    """A run dir with eval outputs, as ``evals.run_eval`` writes them (without generating)."""
    run = root / name
    ev = run / "eval"
    ev.mkdir(parents=True)
    items = [
        {"id": f"g{i}", "question": f"Q{i}: {EVIL} what is it?", "answer": str(a),
         "meta": {"category": "easy" if i < 5 else "hard"}}
        for i, a in enumerate(ANSWERS)
    ]  # fmt: skip
    data = _write_jsonl(root / "data.jsonl", items)
    decoding = {"max_new_tokens": 64, "temperature": 0.0}
    sides = {}
    for side, right, fp in (("base", right_base, "a"), ("trained", right_trained, name[0])):
        preds = [
            {"id": it["id"], "prompt": "P " + it["question"],
             "completion": f"<reasoning>{EVIL} & so on</reasoning><answer>{it['answer'] if i in right else 0}</answer>",
             "prompt_tokens": 10, "completion_tokens": 20, "stop_reason": "end_of_turn" if i % 4 else "max_new_tokens",
             "model": _model(f"models/{side}", fp), "decoding": decoding}
            for i, it in enumerate(items)
        ]  # fmt: skip
        path = _write_jsonl(ev / f"predictions_{side}.jsonl", preds)
        sides[side] = {
            **summarize(preds, items),
            "model": preds[0]["model"],
            "decoding": decoding,
            "generation": {"stop_reasons": {"end_of_turn": 7, "max_new_tokens": 3}, "truncated_fraction": 0.3,
                           "mean_completion_tokens": 20.0, "empty_completions": 0, "items_per_second": 1.5},
            "predictions": str(path),
        }  # fmt: skip
    summary = {
        "created": "2026-01-01T00:00:00+00:00", "git_commit": "abc", "run": str(run), "suite": "answers",
        "primary_metric": "strict", "metrics": ["strict", "flexible", "partial", "format"],
        "dataset": {"path": str(data), "sha256": "f" * 64, "n_sampled": len(items), "seed": 0},
        "base_source": "config.yaml", **sides,
    }  # fmt: skip
    (ev / "eval_summary.json").write_text(json.dumps(summary))
    cmp = compare_files(ev / "predictions_base.jsonl", ev / "predictions_trained.jsonl", data)
    (ev / "compare.json").write_text(json.dumps(cmp))
    if metrics:
        rows = [
            {"step": s, "loss": 2.5 / s, "lr": 1e-4 * min(1, s / 3), "reward": s / 20} for s in range(1, 21)
        ]
        _write_jsonl(run / "metrics.jsonl", rows)
    (run / "run_manifest.json").write_text(
        json.dumps({"command": "python -m trainers_torch.sft", "status": "completed"})
    )
    return run


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("runs")
    return [
        make_run(root, "sft-a", {0, 1, 2, 5}, {0, 1, 2, 3, 4, 6}),
        make_run(root, "grpo-b", {0, 1, 2, 5}, {0, 1, 2, 3, 4, 5, 6, 7}, metrics=False),
    ]


def test_run_report_is_escaped_self_contained_and_complete(runs):
    path = report.write_run_report(runs[0])
    text = path.read_text()
    assert "<script" not in text and "onerror=alert" not in text.replace("onerror=alert(1)&gt;", "")
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in text  # shown, not run
    assert "http://" not in text and "https://" not in text  # nothing fetched from outside
    assert text.count("data:image/png;base64,") == 2  # category accuracy + training curves
    for needle in ("Headline", "By category", "Failure taxonomy", "Samples side by side", "McNemar", "wrong_number",
                   "Gained: wrong in base, right in trained", "g3", "WARNING"):  # fmt: skip
        assert needle in text, needle
    md = (runs[0] / "eval" / "report.md").read_text()
    assert md.startswith("# Eval: sft-a") and "| strict |" in md and "| easy |" in md
    assert (runs[0] / "plots" / "accuracy_by_category.png").read_bytes()[:4] == b"\x89PNG"


def test_comparison_report_across_runs(runs, tmp_path):
    path = report.main(["--compare", *map(str, runs), "--out", str(tmp_path / "cmp")])
    text = path.read_text()
    assert "sft-a" in text and "grpo-b" in text and "Trained runs against sft-a" in text
    assert "<script" not in text and text.count("data:image/png;base64,") == 2
    assert "differ in" not in text and "different base models" not in text  # like-for-like
    md = (tmp_path / "cmp" / "report.md").read_text()
    assert md.count("| sft-a |") == 1 and "format (trained)" in md
    assert "| grpo-b vs sft-a | strict |" in md and "| grpo-b vs sft-a | format |" in md


def test_comparison_of_another_eval_dir(runs, tmp_path):
    """--eval-dir picks each run's other eval (e.g. eval-multidomain); without it the runs' eval/."""
    copies = []
    for run in runs:
        shutil.copytree(run, tmp_path / run.name)
        (tmp_path / run.name / "eval").rename(tmp_path / run.name / "eval-other")
        copies.append(str(tmp_path / run.name))
    out = tmp_path / "cmp-other"
    assert (
        report.main(["--compare", *copies, "--eval-dir", "eval-other", "--out", str(out)])
        == out / "report.html"
    )
    assert "| grpo-b vs sft-a | strict |" in (out / "report.md").read_text()
    with pytest.raises(SystemExit) as err:
        report.main(["--compare", *copies, "--out", str(tmp_path / "none")])
    assert err.value.code == 2


def test_missing_eval_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "r").mkdir()
    with pytest.raises(SystemExit) as err:
        report.main(["--run", str(tmp_path / "r")])
    assert err.value.code == 2 and "eval_summary.json: missing" in capsys.readouterr().err


# ----------------------------------------------------------------------------- headless Chromium


def chromium(*args: str) -> subprocess.CompletedProcess:
    profile = tempfile.mkdtemp(prefix="chromium-")
    try:
        return subprocess.run(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
             "--enable-logging=stderr", "--v=0", *args],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
    finally:
        shutil.rmtree(profile, ignore_errors=True)


def console_messages(stderr: str) -> list[str]:
    """Messages the page wrote to the console (a report has no scripts, so any is a failure)."""
    return [line for line in stderr.splitlines() if ":CONSOLE" in line or "Uncaught" in line]


def render(html_path: Path, png: Path) -> tuple[str, list[str]]:
    """``(rendered DOM, console messages)``; writes a screenshot to ``png``."""
    dom = chromium("--dump-dom", html_path.resolve().as_uri())
    shot = chromium(f"--screenshot={png}", "--window-size=1200,2000", html_path.resolve().as_uri())
    return dom.stdout, console_messages(dom.stderr) + console_messages(shot.stderr)


needs_chromium = pytest.mark.skipif(
    not Path(CHROMIUM).exists(),
    reason="chromium is not installed and scripts/ensure_chromium.sh could not install it (no root / no apt)",
)


@needs_chromium
def test_console_check_catches_errors(tmp_path):
    page = tmp_path / "boom.html"
    page.write_text(
        "<!DOCTYPE html><html><body><p>x</p><script>throw new Error('boom')</script></body></html>"
    )
    _, messages = render(page, tmp_path / "boom.png")
    assert any("Uncaught Error: boom" in m for m in messages)


@needs_chromium
def test_report_renders_in_chromium(runs, tmp_path):
    html_path = report.write_run_report(runs[0])
    png = tmp_path / "report.png"
    dom, messages = render(html_path, png)
    assert messages == []
    assert "<h1>Eval report: sft-a</h1>" in dom and "<table" in dom and "data:image/png;base64," in dom
    assert "<script" not in dom and 'src="x"' not in dom  # the model's markup stayed text
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000
    shutil.copyfile(
        png, Path(tempfile.gettempdir()) / "showwork_report_screenshot.png"
    )  # for a human to look at
