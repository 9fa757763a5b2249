"""scripts/mutation_report.py: per-module scores from mutmut's result files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from common.errors import InputError
from scripts.mutation_report import main, module_scores, read_equivalent, report, verdict


def write_meta(mutants: Path, source: str, codes: dict[str, int | None]) -> None:
    meta = mutants / f"{source}.meta"
    meta.parent.mkdir(parents=True, exist_ok=True)
    meta.write_text(json.dumps({"exit_code_by_key": codes, "durations_by_key": {}}))


def test_verdicts_follow_mutmut_exit_codes() -> None:
    assert [verdict(c) for c in (1, 3, 0, 33, 5, 36, -24, None, 34)] == [
        "killed",
        "killed",
        "survived",
        "no tests",
        "no tests",
        "timeout",
        "timeout",
        "not checked",
        "other",
    ]


def test_scores_count_kills_and_timeouts_as_detected(tmp_path: Path) -> None:
    write_meta(tmp_path, "common/a.py", {"common.a.x_f__mutmut_1": 1, "common.a.x_f__mutmut_2": 36})
    write_meta(
        tmp_path,
        "common/b.py",
        {"common.b.x_g__mutmut_1": 1, "common.b.x_g__mutmut_2": 0, "common.b.x_g__mutmut_3": 33},
    )
    scores = module_scores(tmp_path)
    assert scores["common/a.py"]["score"] == 1.0 and scores["common/a.py"]["survivors"] == []
    b = scores["common/b.py"]
    assert (b["total"], b["killed"], b["survived"], b["no tests"]) == (3, 1, 1, 1)
    assert b["score"] == pytest.approx(1 / 3)
    assert b["survivors"] == ["common.b.x_g__mutmut_2", "common.b.x_g__mutmut_3"]
    text = report(scores, {"common.b.x_g__mutmut_2": "same result", "common.c.x_h__mutmut_1": "gone"})
    assert "common.b.x_g__mutmut_2  # equivalent: same result" in text
    assert "\n  common.b.x_g__mutmut_3\n" in text
    assert "2 survivors, 1 listed as equivalent" in text
    assert "not surviving (update the list): common.c.x_h__mutmut_1" in text
    # 3 of 5 detected; 3 of the 4 not listed as equivalent
    assert text.splitlines()[3].split() == ["all", "5", "3", "1", "60.0%", "75.0%"]
    assert text.splitlines()[2].split() == ["common/b.py", "3", "1", "0", "1", "1", "0", "1", "33.3%", "50.0%"]  # fmt: skip


def test_equivalent_list_format(tmp_path: Path) -> None:
    listed = tmp_path / "eq.txt"
    listed.write_text("# header\n\ncommon.a.x_f__mutmut_1  # find == rfind: the tag occurs once\n")
    assert read_equivalent(listed) == {"common.a.x_f__mutmut_1": "find == rfind: the tag occurs once"}
    assert read_equivalent(tmp_path / "missing.txt") == {}
    listed.write_text("common.a.x_f__mutmut_1\n")
    with pytest.raises(InputError, match=r"eq.txt:1: expected"):
        read_equivalent(listed)


def test_cli_writes_json_and_exits_2_without_results(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--mutants", str(tmp_path / "none"), "--out", str(tmp_path / "r.json")])
    assert exc.value.code == 2 and "no *.py.meta files" in capsys.readouterr().err
    assert not (tmp_path / "r.json").exists()
    write_meta(tmp_path / "mutants", "evals/s.py", {"evals.s.x_f__mutmut_1": 0})
    out = tmp_path / "r.json"
    assert main(["--mutants", str(tmp_path / "mutants"), "--out", str(out), "--equivalent", "none"]) == 0
    assert json.loads(out.read_text())["modules"]["evals/s.py"]["survivors"] == ["evals.s.x_f__mutmut_1"]
    write_meta(tmp_path / "bad", "x.py", {})
    (tmp_path / "bad" / "x.py.meta").write_text("{}")
    with pytest.raises(SystemExit):
        main(["--mutants", str(tmp_path / "bad"), "--out", str(out)])
