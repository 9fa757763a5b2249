"""What filter, merge and split write and print, exactly, and each filter rule from both sides."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from common.errors import InputError
from common.runs import sha256_file
from scripts.dataset.tools import FilterConfig, SplitConfig, filter_file, merge, rule_failure, split_file
from tests.data_helpers import rec, write


@pytest.mark.parametrize(
    ("cfg", "kept", "rule", "reason"),
    [
        (FilterConfig(sources=["test"]), True, None, None),
        (FilterConfig(sources=["gsm8k"]), False, "sources", "source 'test' not in ['gsm8k']"),
        (FilterConfig(difficulties=["2"]), True, None, None),  # int difficulty compared as text
        (FilterConfig(difficulties=["3"]), False, "difficulties", "difficulty 2 not in ['3']"),
        (FilterConfig(min_steps=2), True, None, None),
        (FilterConfig(min_steps=3), False, "min_steps", "2 steps < 3"),
        (FilterConfig(max_steps=2), True, None, None),
        (FilterConfig(max_steps=1), False, "max_steps", "2 steps > 1"),
        (FilterConfig(max_chars=13), True, None, None),  # question 4 + reasoning 7 + answer 2
        (FilterConfig(max_chars=12), False, "max_chars", "13 chars > 12"),
        (FilterConfig(require_reasoning=True), True, None, None),
        (FilterConfig(language="en"), True, None, None),
    ],
)
def test_each_rule_keeps_at_its_limit_and_rejects_past_it(
    cfg: FilterConfig, kept: bool, rule: str | None, reason: str | None
) -> None:
    r = rec("a", question="How?", answer="12", steps=["3 + 4", "7"], difficulty=2)
    assert rule_failure(r, cfg) == (None if kept else (rule, reason))


def test_token_limit_both_sides_and_the_remaining_rules() -> None:
    r = rec("a")
    cfg = FilterConfig(max_tokens=10, tokenizer="tok")
    assert rule_failure(r, cfg, 10) is None and rule_failure(r, cfg, None) is None
    assert rule_failure(r, cfg, 11) == ("max_tokens", "11 tokens > 10")
    assert rule_failure(r, FilterConfig(), 10**6) is None  # no limit set
    placeholder = rec("p", steps=[])
    assert rule_failure(placeholder, FilterConfig(require_reasoning=True)) == (
        "require_reasoning",
        "no worked reasoning (placeholder)",
    )
    assert rule_failure(placeholder, FilterConfig()) is None
    assert rule_failure(rec("d", question="Wie viele Äpfel hat sie?"), FilterConfig(language="en")) == (
        "language",
        "does not look English",
    )
    assert rule_failure(rec("e", question="Wie viele Äpfel hat sie?"), FilterConfig()) is None
    calc = rec("c", steps=["3 + 4 = 7", "7 * 2 = 15"])
    calc["steps"][0]["calc"] = {"expr": "3+4", "result": "7"}
    calc["steps"][1]["calc"] = {"expr": "7*2", "result": "15"}
    assert rule_failure(calc, FilterConfig(verify_calc=True)) == ("verify_calc", "step 2: 7*2 is not 15")
    assert rule_failure(calc, FilterConfig()) is None
    calc["steps"][1]["calc"]["result"] = "14"
    assert rule_failure(calc, FilterConfig(verify_calc=True)) is None


def test_config_checks() -> None:
    with pytest.raises(ValueError, match="max_tokens needs tokenizer=DIR"):
        FilterConfig(max_tokens=5)
    with pytest.raises(ValueError, match="give exactly one of sizes"):
        SplitConfig(sizes={"valid": 1}, fractions={"valid": 0.1})
    with pytest.raises(ValueError, match="give exactly one of sizes"):
        SplitConfig()
    with pytest.raises(ValueError, match="rest split 'valid' must not also be sized"):
        SplitConfig(sizes={"valid": 1}, rest="valid")
    with pytest.raises(ValueError, match="rest split 'valid' must not also be sized"):
        SplitConfig(fractions={"valid": 0.5}, rest="valid")
    assert SplitConfig(fractions={"valid": 0.5}).rest == "train"


def test_filter_file_writes_kept_rejects_and_counts(tmp_path: Path) -> None:
    path = write(
        tmp_path / "in.jsonl",
        [rec("a", steps=["x"]), rec("b", steps=["x", "y", "z"]), rec("c", steps=["x", "y"]), rec("d")],
    )
    out = tmp_path / "f.jsonl"
    lines: list[str] = []
    result = filter_file(str(path), str(out), FilterConfig(min_steps=2, max_steps=2), echo=lines.append)
    assert result == {"kept": 1, "rejected": 3, "by_rule": {"min_steps": 2, "max_steps": 1}}
    assert [json.loads(x)["id"] for x in out.read_text().splitlines()] == ["c"]
    rejects = [json.loads(x) for x in (tmp_path / "f.rejects.jsonl").read_text().splitlines()]
    assert rejects == [
        {"line": 1, "id": "a", "rule": "min_steps", "reason": "1 steps < 2"},
        {"line": 2, "id": "b", "rule": "max_steps", "reason": "3 steps > 2"},
        {"line": 4, "id": "d", "rule": "min_steps", "reason": "1 steps < 2"},
    ]
    assert lines == [
        f"{path}: kept 1 of 4; 3 filtered out to {tmp_path / 'f.rejects.jsonl'}",
        "  2 x min_steps",
        "  1 x max_steps",
    ]


def test_merge_report_names_inputs_output_and_pairs(tmp_path: Path) -> None:
    a = write(tmp_path / "a.jsonl", [rec("a1", question="What is 2+2?"), rec("a2", question="Other?")])
    b = write(
        tmp_path / "b.jsonl", [rec("b1", question="what is 2 + 2", answer="7"), rec("b2", question="New?")]
    )
    c = write(tmp_path / "c.jsonl", [rec("c1", question="Other ?")])
    out = tmp_path / "m.jsonl"
    lines: list[str] = []
    report = merge([str(a), str(b), str(c)], str(out), echo=lines.append)
    assert report == json.loads((tmp_path / "m.duplicates.json").read_text())
    assert report["inputs"] == [
        {"path": str(a), "sha256": sha256_file(a), "records": 2},
        {"path": str(b), "sha256": sha256_file(b), "records": 2},
        {"path": str(c), "sha256": sha256_file(c), "records": 1},
    ]
    assert report["output"] == {"path": str(out), "records": 3, "sha256": sha256_file(out)}
    assert report["duplicates"] == 2 and report["duplicates_with_different_answers"] == 0
    assert report["pairs"] == [
        {
            "kept": {"id": "a1", "file": str(a), "line": 1, "answer": "7"},
            "dropped": {"id": "b1", "file": str(b), "line": 1, "answer": "7"},
            "answers_differ": False,
        },
        {
            "kept": {"id": "a2", "file": str(a), "line": 2, "answer": "7"},
            "dropped": {"id": "c1", "file": str(c), "line": 1, "answer": "7"},
            "answers_differ": False,
        },
    ]
    assert report["created"].startswith("20")
    assert lines == [
        f"merged 5 records from 3 files into {out}: 3 kept, 2 duplicates",
        f"duplicates listed in {tmp_path / 'm.duplicates.json'}",
    ]


def test_merge_names_both_places_of_a_reused_id(tmp_path: Path) -> None:
    a = write(tmp_path / "a.jsonl", [rec("z", question="Zero?"), rec("x", question="One?")])
    b = write(tmp_path / "b.jsonl", [rec("x", question="Two?")])
    with pytest.raises(InputError, match=rf"b.jsonl:1: id 'x' is already used by {a}:2 for another question"):
        merge([str(a), str(b)], str(tmp_path / "m.jsonl"), echo=lambda _: None)
    assert not (tmp_path / "m.jsonl").exists()


def test_split_manifest_and_lines(tmp_path: Path) -> None:
    path = write(tmp_path / "all.jsonl", [rec(f"r{k}") for k in range(12)])
    lines: list[str] = []
    manifest = split_file(
        str(path), str(tmp_path / "s"), SplitConfig(sizes={"valid": 3}, seed=4), lines.append
    )
    assert manifest == json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert manifest["source"] == {"path": str(path), "sha256": sha256_file(path), "records": 12}
    assert (
        manifest["seed"],
        manifest["method"],
        manifest["sizes"],
        manifest["fractions"],
        manifest["rest"],
    ) == (
        4,
        "size",
        {"valid": 3},
        {},
        "train",
    )
    assert {k: v["records"] for k, v in manifest["files"].items()} == {"valid": 3, "train": 9}
    assert lines == ["  valid: 3 records", "  train: 9 records", f"split {path} into {tmp_path / 's'}"]
    lines.clear()
    cfg = SplitConfig(fractions={"valid": 0.0}, rest="rest")
    manifest = split_file(str(path), str(tmp_path / "f"), cfg, lines.append)
    assert manifest["method"] == "fraction" and manifest["rest"] == "rest"
    assert lines[:2] == ["  valid: 0 records  (warning: empty)", "  rest: 12 records"]
