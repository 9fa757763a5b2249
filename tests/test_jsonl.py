from __future__ import annotations

import json

import pytest

from common.errors import InputError
from common.jsonl import JsonlAppender, atomic_open, iter_jsonl, read_jsonl, scan_jsonl, write_jsonl


def test_roundtrip_and_blank_lines(tmp_path):
    p = tmp_path / "a.jsonl"
    assert write_jsonl(p, [{"id": "1", "q": "ünï"}, {"id": "2"}]) == 2
    p.write_text(p.read_text() + "\n\n")
    assert read_jsonl(p) == [{"id": "1", "q": "ünï"}, {"id": "2"}]


def test_bad_json_names_file_and_line(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text('{"id": 1}\n\n{"id": 2,}\n')
    with pytest.raises(InputError, match=rf"^{p}:3: invalid JSON"):
        list(iter_jsonl(p))


def test_scan_reports_every_problem_without_raising(tmp_path):
    p = tmp_path / "mixed.jsonl"
    p.write_bytes(b'{"ok": 1}\n\xff\xfe\n{oops\n' + b'"' + b"x" * 2000 + b'"\n{"ok": 2}\n')
    rows = list(scan_jsonl(p, max_line_bytes=1000))
    assert [r[0] for r in rows] == [1, 2, 3, 4, 5]
    assert rows[0][1] == {"ok": 1} and rows[4][1] == {"ok": 2}
    assert "not UTF-8" in rows[1][2]
    assert "invalid JSON" in rows[2][2]
    assert "longer than 1000 bytes" in rows[3][2]


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="file not found"):
        read_jsonl(tmp_path / "none.jsonl")


def test_atomic_open_leaves_old_file_on_failure(tmp_path):
    p = tmp_path / "out.json"
    p.write_text("old")
    with pytest.raises(RuntimeError), atomic_open(p) as fh:
        fh.write("half-writ")
        raise RuntimeError("boom")
    assert p.read_text() == "old"
    assert list(tmp_path.iterdir()) == [p]


def test_atomic_files_get_the_usual_mode(tmp_path):
    import os
    import stat

    p = tmp_path / "x.jsonl"
    write_jsonl(p, [{"a": 1}])
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(p.stat().st_mode) == 0o666 & ~umask


def test_appender_cuts_torn_line_and_resumes(tmp_path):
    p = tmp_path / "preds.jsonl"
    with JsonlAppender(p) as app:
        app.append({"id": "a"})
        app.append({"id": "b"})
    with p.open("a") as fh:
        fh.write('{"id": "c", "compl')  # killed mid-write
    app = JsonlAppender(p)
    assert [r["id"] for r in app.existing] == ["a", "b"]
    app.append({"id": "c"})
    app.close()
    assert [json.loads(x)["id"] for x in p.read_text().splitlines()] == ["a", "b", "c"]


def test_appender_on_a_new_nested_path_and_on_a_file_of_one_torn_line(tmp_path):
    p = tmp_path / "a" / "b" / "preds.jsonl"
    with JsonlAppender(p) as app:
        assert app.existing == []
        app.append({"id": "é"})
    assert p.read_text(encoding="utf-8") == '{"id": "é"}\n'
    torn = tmp_path / "torn.jsonl"
    torn.write_bytes(b'{"id": "a", "comp')  # killed before the first newline
    with JsonlAppender(torn) as app:
        assert app.existing == []
    assert torn.read_bytes() == b""
    whole = tmp_path / "whole.jsonl"
    whole.write_bytes(b'{"id": "a"}\n{"id": "b"}\n')
    with JsonlAppender(whole) as app:
        assert [r["id"] for r in app.existing] == ["a", "b"]
    assert whole.read_bytes() == b'{"id": "a"}\n{"id": "b"}\n'


def test_line_length_limit_from_both_sides(tmp_path):
    limit = 20
    fits = json.dumps({"k": "x" * (limit - 9)})  # exactly `limit` bytes before the newline
    assert len(fits) == limit
    over = json.dumps({"k": "x" * (limit - 8)})
    p = tmp_path / "lines.jsonl"
    p.write_text(f"{fits}\n{over}\n{fits}")  # the last line: exactly the limit, no newline at the end
    rows = list(scan_jsonl(p, max_line_bytes=limit))
    assert rows == [
        (1, {"k": "x" * 11}, None),
        (2, None, f"line longer than {limit} bytes"),
        (3, {"k": "x" * 11}, None),
    ]
    p.write_text('{"a": 1}')  # a short last line without its newline is fine
    assert list(scan_jsonl(p, max_line_bytes=limit)) == [(1, {"a": 1}, None)]
    p.write_text(f"{over}\n")
    with pytest.raises(InputError) as err:
        list(iter_jsonl(p, max_line_bytes=limit))
    assert str(err.value) == f"{p}:1: line longer than {limit} bytes"


def test_a_directory_is_named_as_such(tmp_path):
    with pytest.raises(InputError) as err:
        list(scan_jsonl(tmp_path))
    assert str(err.value) == f"{tmp_path}: is a directory, expected a .jsonl file"


def test_write_json_is_indented_utf8_with_a_final_newline(tmp_path):
    from common.jsonl import dumps, write_json

    value = {"name": "Zoë", "n": [1, 2]}
    write_json(tmp_path / "v.json", value)
    assert (tmp_path / "v.json").read_text(
        encoding="utf-8"
    ) == '{\n  "name": "Zoë",\n  "n": [\n    1,\n    2\n  ]\n}\n'
    assert dumps(value) == '{"name": "Zoë", "n": [1, 2]}'
