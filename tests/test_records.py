"""The record schema: validate_record reasons, load_records errors (file:line: field: reason)."""

from __future__ import annotations

import copy
import json
import tracemalloc
from pathlib import Path

import pytest

from common.errors import InputError
from common.jsonl import MAX_LINE_BYTES
from common.records import load_records, make_record, scan_records, target_text, validate_record
from tests.data_helpers import rec, write


def test_valid_record_has_no_reasons() -> None:
    assert validate_record(rec("a", steps=["one", "two"])) == []


def test_reasoning_is_the_steps_joined_and_target_wraps_it() -> None:
    r = rec("a", steps=["First 3 + 4 = 7.", "So 7."])
    assert r["reasoning"] == "First 3 + 4 = 7.\nSo 7."
    assert target_text(r) == "<reasoning>First 3 + 4 = 7.\nSo 7.</reasoning><answer>7</answer>"


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda r: r.pop("answer"), "answer: missing"),
        (lambda r: r.update(question=5), "question: expected str, got int"),
        (lambda r: r.update(id="  "), "id: empty"),
        (lambda r: r.update(extra=1), "extra: unknown field"),
        (lambda r: r.update(steps={}), "steps: expected list, got object"),
        (lambda r: r["steps"][2].update(content=3), "steps[2].content: expected str, got int"),
        (lambda r: r["steps"][1].update(i=5), "steps[1].i: expected 2"),
        (lambda r: r["steps"][0].update(i=True), "steps[0].i: expected int, got bool"),
        (lambda r: r["steps"][0].pop("type"), "steps[0].type: missing"),
        (lambda r: r["steps"][0].update(calc={"expr": "1+1"}), "steps[0].calc.result: missing"),
        (lambda r: r["steps"][0].update(calc=[1]), "steps[0].calc: expected object, got list"),
        (lambda r: r["meta"].pop("category"), "meta.category: missing"),
        (lambda r: r["meta"].update(difficulty=1.5), "meta.difficulty: expected str or int, got float"),
        (lambda r: r["meta"].update(has_reasoning="yes"), "meta.has_reasoning: expected bool, got str"),
        (lambda r: r.update(meta=None), "meta: expected object, got null"),
        (lambda r: r.update(reasoning="something else"), "reasoning: differs from the steps"),
    ],
)
def test_each_schema_break_is_named(mutate, reason: str) -> None:
    r = rec("a", steps=["one", "two", "three"])
    mutate(r)
    errors = validate_record(r)
    assert any(e.startswith(reason) for e in errors), errors


def test_no_steps_needs_has_reasoning_false() -> None:
    r = make_record("a", "q?", "1", [], {"source": "s", "category": "c", "difficulty": 1})
    assert r["meta"]["has_reasoning"] is False and r["reasoning"]
    assert validate_record(r) == []
    bad = copy.deepcopy(r)
    bad["meta"]["has_reasoning"] = True
    assert validate_record(bad) == ["steps: empty, but meta.has_reasoning is not false"]


def test_not_an_object() -> None:
    assert validate_record([1, 2]) == ["record: expected object, got list"]


def test_load_records_roundtrip(tmp_path: Path) -> None:
    records = [rec("a"), rec("b")]
    assert load_records(write(tmp_path / "r.jsonl", records)) == records


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"", "no records (empty file)"),
        (b"\n  \n", "no records (empty file)"),
        (b'{"id": "a",\n', ":1: invalid JSON"),
        (b'{"id": "\xff\xfe"}\n', ":1: not UTF-8"),
        (b"[1, 2]\n", ":1: record: expected object, got list"),
    ],
)
def test_load_records_errors_name_file_and_line(tmp_path: Path, content: bytes, expected: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_bytes(content)
    with pytest.raises(InputError) as err:
        load_records(path)
    assert str(err.value).startswith(str(path))
    assert expected in str(err.value)


def test_load_records_stops_at_first_bad_line_with_field(tmp_path: Path) -> None:
    good = rec("a", steps=["x", "y", "z"])
    bad = copy.deepcopy(good)
    bad["id"] = "b"
    bad["steps"][2]["content"] = 7
    path = write(tmp_path / "r.jsonl", [good, bad, {"junk": 1}])
    with pytest.raises(InputError, match=r"r\.jsonl:2: steps\[2\]\.content: expected str, got int$"):
        load_records(path)


def test_duplicate_ids_are_reported(tmp_path: Path) -> None:
    path = write(tmp_path / "r.jsonl", [rec("a"), rec("b"), rec("a")])
    with pytest.raises(InputError, match=r":3: id: duplicate of line 1"):
        load_records(path)


def test_scan_records_never_raises_and_reports_every_line(tmp_path: Path) -> None:
    path = tmp_path / "mixed.jsonl"
    lines = [json.dumps(rec("a")).encode(), b"{oops", b"\xc3\x28", json.dumps({"id": 1}).encode()]
    path.write_bytes(b"\n".join(lines) + b"\n")
    out = list(scan_records(path))
    assert [(n, bool(reasons)) for n, _, reasons in out] == [(1, False), (2, True), (3, True), (4, True)]
    assert "id: expected str, got int" in out[3][2]


def test_100mb_line_is_reported_without_holding_it(tmp_path: Path) -> None:
    """A 100 MB line is named as file:line; reading it never holds much more than the line cap."""
    path = tmp_path / "huge.jsonl"
    chunk = b"x" * (1 << 20)
    with path.open("wb") as fh:
        fh.write(json.dumps(rec("a")).encode() + b"\n")
        fh.write(b'{"id": "big", "question": "')
        for _ in range(100):
            fh.write(chunk)
        fh.write(b'"}\n')
        fh.write(json.dumps(rec("c")).encode() + b"\n")
    assert path.stat().st_size > 100 * (1 << 20)
    tracemalloc.start()
    try:
        out = [(n, reasons) for n, _, reasons in scan_records(path)]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert out[0] == (1, []) and out[2] == (3, [])
    assert out[1][0] == 2 and "line longer than" in out[1][1][0]
    assert peak < 2 * MAX_LINE_BYTES + (8 << 20), f"peak {peak / 2**20:.0f} MiB"
    with pytest.raises(InputError, match=r"huge\.jsonl:2: line longer than"):
        load_records(path)


def test_every_fault_of_a_record_is_named_in_order() -> None:
    from common.records import make_record, validate_record

    step = {"i": 1, "type": "calc", "content": "1+2=3", "calc": {"expr": "1+2", "result": "3"}}
    good = make_record("r1", "q?", "3", [step], {"source": "s", "category": "c", "difficulty": 1})
    assert validate_record(good) == []
    bad = dict(
        good,
        steps=["x", {"i": 1, "type": 5, "content": "a", "calc": {"expr": 1, "result": "3"}},
               {"i": 3, "content": "b", "calc": {"result": 2}}],
        meta={"source": 1, "category": None, "difficulty": 1},
        extra=1,
    )  # fmt: skip
    assert validate_record(bad) == [
        "extra: unknown field (allowed: id, question, answer, reasoning, steps, meta)",
        "steps[0]: expected object, got str",
        "steps[1].i: expected 2 (steps are numbered from 1), got 1",
        "steps[1].type: expected str, got int",
        "steps[1].calc.expr: expected str, got int",
        "steps[2].type: missing",
        "steps[2].calc.expr: missing",
        "steps[2].calc.result: expected str, got int",
        "meta.source: expected str, got int",
        "meta.category: expected str, got null",
    ]
    assert validate_record(dict(good, meta=[1])) == ["meta: expected object, got list"]
    assert validate_record(dict(good, steps="abc")) == ["steps: expected list, got str"]


def test_make_record_marks_reasoning_and_category_defaults() -> None:
    from common.records import NO_CATEGORY, category_of, make_record

    step = {"i": 1, "type": "text", "content": "think"}
    assert make_record("a", "q", "1", [step], {"source": "s"})["meta"]["has_reasoning"] is True
    assert (
        make_record("a", "q", "1", [step], {"source": "s", "has_reasoning": False})["meta"]["has_reasoning"]
        is False
    )
    bare = make_record("b", "q", "1", [], {"source": "s", "has_reasoning": True})
    assert bare["reasoning"] == "No worked reasoning is available for this problem."
    assert bare["meta"] == {"source": "s", "has_reasoning": False} and bare["steps"] == []
    assert category_of({"meta": None}) == category_of({}) == NO_CATEGORY == "(none)"
    assert category_of({"meta": {"category": "geometry"}}) == "geometry"


def test_a_bad_line_lists_all_its_reasons(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps({"id": "a", "question": 1, "answer": 2}) + "\n")
    with pytest.raises(InputError) as err:
        load_records(path)
    assert str(err.value).startswith(
        f"{path}:1: reasoning: missing; steps: missing; meta: missing; question: "
    )
