"""evals/score.py: the summary, categories, missing/extra ids and the CLI's error handling."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from common.errors import InputError
from evals.score import main, score_predictions
from evals.stats import wilson_interval

R = "<reasoning>r</reasoning>"
DATASET = [
    {"id": "a", "answer": "18", "meta": {"category": "easy"}},
    {"id": "b", "answer": "1,234", "meta": {"category": "easy"}},
    {"id": "c", "answer": "7", "meta": {"category": "hard"}},
    {"id": "d", "answer": "100", "meta": {"category": "hard"}},
    {"id": "e", "answer": "5"},
]
PREDICTIONS = [
    {"id": "a", "completion": f"{R}<answer>18</answer><end_of_turn>"},  # all right
    {"id": "b", "completion": "<answer>$1,234.00.</answer>", "extra": 1},  # right, bad format
    {"id": "c", "completion": f"{R}<answer>7 apples</answer>"},  # flexible only
    {"id": "d", "completion": f"{R}<answer>95</answer>"},  # partial only
    {"id": "zz", "completion": "<answer>1</answer>"},  # no dataset item; "e" has no prediction
]


def test_summary() -> None:
    s = score_predictions(PREDICTIONS, DATASET)
    assert s["n"] == 5 and s["n_predictions"] == 5
    assert s["format_accuracy"] == 3 / 5
    assert s["strict_accuracy"] == 2 / 5
    assert s["flexible_accuracy"] == 3 / 5
    assert s["partial_accuracy"] == 3 / 5
    assert s["strict_accuracy_ci95"] == list(wilson_interval(2, 5))
    assert s["failures"] == {
        "missing_prediction": 1,
        "no_answer": 0,
        "not_a_number": 1,
        "wrong_number": 1,
        "wrong_text": 0,
        "bad_format": 1,
    }
    assert s["predictions_without_item"] == ["zz"]
    assert s["items_without_prediction"] == ["e"]
    assert set(s["rules"]) >= {"format_accuracy", "strict_accuracy", "flexible_accuracy", "partial_accuracy"}
    assert "items" not in s


def test_categories() -> None:
    cats = score_predictions(PREDICTIONS, DATASET)["categories"]
    assert set(cats) == {"easy", "hard", "(none)"}
    assert cats["easy"]["n"] == 2 and cats["easy"]["strict_accuracy"] == 1.0
    assert cats["easy"]["strict_accuracy_ci95"] == list(wilson_interval(2, 2))
    assert cats["hard"]["strict_accuracy"] == 0.0 and cats["hard"]["partial_accuracy"] == 0.5
    assert cats["(none)"]["failures"]["missing_prediction"] == 1
    no_cats = [{"id": r["id"], "answer": r["answer"]} for r in DATASET]
    assert "categories" not in score_predictions(PREDICTIONS, no_cats)


def test_per_item() -> None:
    items = score_predictions(PREDICTIONS, DATASET, per_item=True)["items"]
    assert [it["id"] for it in items] == ["a", "b", "c", "d", "e"]
    assert items[1] == {
        "id": "b",
        "category": "easy",
        "gold": "1,234",
        "format_ok": False,
        "strict": True,
        "flexible": True,
        "partial": True,
        "extracted": "$1,234.00.",
        "flexible_extracted": "$1,234.00",
        "failure": "bad_format",
    }
    assert items[4]["failure"] == "missing_prediction" and items[4]["extracted"] is None


def test_ids_may_be_integers_and_long_extractions_are_cut() -> None:
    s = score_predictions(
        [{"id": 1, "completion": "<answer>" + "x" * 500 + "</answer>"}],
        [{"id": 1, "answer": 3}],
        per_item=True,
    )
    assert s["n"] == 1 and s["items"][0]["failure"] == "not_a_number"
    assert len(s["items"][0]["extracted"]) == 201


def test_empty_inputs() -> None:
    s = score_predictions([], [])
    assert s["n"] == 0 and s["strict_accuracy"] is None and s["strict_accuracy_ci95"] == [0.0, 1.0]
    s = score_predictions([], DATASET[:2])
    assert s["strict_accuracy"] == 0.0 and s["items_without_prediction"] == ["a", "b"]


def test_null_meta_is_no_meta() -> None:
    s = score_predictions(
        [], [{"id": "a", "answer": "1", "meta": None}, {"id": "b", "answer": "2", "meta": {}}]
    )
    assert s["n"] == 2 and "categories" not in s


@pytest.mark.parametrize(
    ("predictions", "dataset", "message"),
    [
        ([{"id": "a"}], DATASET, r"predictions\[0\]: completion: missing"),
        ([{"completion": "x"}], DATASET, r"predictions\[0\]: id: missing"),
        ([{"id": "a", "completion": None}], DATASET, r"predictions\[0\]: completion: expected a string"),
        ([{"id": True, "completion": ""}], DATASET, r"predictions\[0\]: id: expected"),
        (["x"], DATASET, r"predictions\[0\]: expected a JSON object, got str"),
        (
            PREDICTIONS[:1] * 2,
            DATASET,
            r"predictions\[1\]: id: duplicate id 'a' \(first at predictions\[0\]\)",
        ),
        ([], [{"id": "a"}], r"dataset\[0\]: answer: missing"),
        ([], [{"id": "a", "answer": " "}], r"dataset\[0\]: answer: expected"),
        ([], [{"id": "a", "answer": True}], r"dataset\[0\]: answer: expected"),
        ([], [{"id": "a", "answer": "1", "meta": []}], r"dataset\[0\]: meta: expected an object"),
        ([], [{"id": "a", "answer": "1", "meta": {"category": 3}}], r"dataset\[0\]: meta.category"),
        ([], [{"id": 1, "answer": "1"}, {"id": "1", "answer": "2"}], r"dataset\[1\]: id: duplicate id '1'"),
    ],
)
def test_bad_records(predictions: list, dataset: list, message: str) -> None:
    with pytest.raises(InputError, match=message):
        score_predictions(predictions, dataset)


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    preds = write_lines(tmp_path / "p.jsonl", [json.dumps(p) for p in PREDICTIONS])
    data = write_lines(tmp_path / "d.jsonl", [json.dumps(d) for d in DATASET])
    return preds, data


def test_cli_writes_summary_and_per_item(files: tuple[Path, Path], tmp_path: Path, capsys) -> None:
    preds, data = files
    out, per_item = tmp_path / "s.json", tmp_path / "items.jsonl"
    main(
        ["--predictions", str(preds), "--dataset", str(data), "--out", str(out), "--per-item", str(per_item)]
    )
    summary = json.loads(out.read_text())
    assert summary == score_predictions(PREDICTIONS, DATASET)
    items = [json.loads(line) for line in per_item.read_text().splitlines()]
    assert [it["id"] for it in items] == ["a", "b", "c", "d", "e"]
    printed = capsys.readouterr().out
    assert "strict=0.400" in printed and "1 items without a prediction" in printed


@pytest.mark.parametrize(
    ("which", "lines", "message"),
    [
        ("p", ['{"id": "a", "completion": "x"}', "{not json"], "p.jsonl:2: invalid JSON"),
        ("p", ['{"id": "a", "completion": "x"}', "", '{"id": "b"}'], "p.jsonl:3: completion: missing"),
        ("p", ['{"id": "a", "completion": 5}'], "p.jsonl:1: completion: expected a string, got int"),
        ("p", ['{"id": "a", "completion": ""}', '{"id": "a", "completion": ""}'], "p.jsonl:2: id: duplicate"),
        ("d", ['{"id": "a", "answer": "1"}', '{"id": "b"}'], "d.jsonl:2: answer: missing"),
        ("d", ['{"answer": "1"}'], "d.jsonl:1: id: missing"),
        ("d", ['{"id": "a", "answer": "1"}', '{"id": "a", "answer": "2"}'], "d.jsonl:2: id: duplicate"),
        ("d", ["[1, 2]"], "d.jsonl:1: expected a JSON object, got list"),
        ("d", [], "d.jsonl: no items"),
    ],
)
def test_cli_bad_input_exits_2_naming_file_and_line(
    files: tuple[Path, Path], tmp_path: Path, capsys, which: str, lines: list[str], message: str
) -> None:
    preds, data = files
    write_lines(preds if which == "p" else data, lines)
    out = tmp_path / "s.json"
    with pytest.raises(SystemExit) as exc:
        main(["--predictions", str(preds), "--dataset", str(data), "--out", str(out)])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err
    assert not out.exists()


def test_cli_as_a_module(files: tuple[Path, Path], tmp_path: Path) -> None:
    preds, data = files
    out = tmp_path / "s.json"
    argv = [sys.executable, "-m", "evals.score", "--predictions", str(preds), "--dataset", str(data)]
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([*argv, "--out", str(out)], capture_output=True, text=True, check=False, cwd=root)
    assert done.returncode == 0, done.stderr
    assert json.loads(out.read_text())["n"] == 5
    argv[-1] = str(tmp_path / "nope.jsonl")
    missing = subprocess.run(
        [*argv, "--out", str(out)], capture_output=True, text=True, check=False, cwd=root
    )
    assert missing.returncode == 2 and "nope.jsonl: file not found" in missing.stderr
