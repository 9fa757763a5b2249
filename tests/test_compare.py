"""evals.compare: exact McNemar, paired intervals, flips, small-n warnings, unpaired ids; prompt-suite checks."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from evals import compare as cmp
from evals.suites.prompts import check_completion, parse_tool_calls


@pytest.mark.parametrize(
    ("b", "c", "p"),
    [
        (0, 0, 1.0),  # no discordant pairs
        (0, 3, 0.25),  # 2 * (1/8)
        (0, 5, 0.0625),  # 2 * (1/32)
        (0, 6, 0.03125),  # 2 * (1/64): the smallest n that can reach p < 0.05
        (1, 9, 0.021484375),  # 2 * (1 + 10) / 1024
        (2, 8, 0.109375),  # 2 * (1 + 10 + 45) / 1024
        (5, 5, 1.0),  # 2 * 638/1024 > 1, capped
        (9, 1, 0.021484375),  # symmetric
    ],
)
def test_mcnemar_exact_hand_computed(b, c, p):
    assert cmp.mcnemar_exact(b, c) == p


def test_mcnemar_large_counts_stay_exact():
    # 2 * P(X <= 40), X ~ Bin(100, 1/2): 0.0569 (normal approximation without correction: 0.0455)
    assert cmp.mcnemar_exact(40, 60) == pytest.approx(0.056887, abs=1e-6)
    assert 0 < cmp.mcnemar_exact(0, 2000) < 1e-300 or cmp.mcnemar_exact(0, 2000) == 0.0


def test_paired_interval_hand_computed():
    # both=0, a_only=0, b_only=3, neither=7: A 0/10, B 3/10, a margin is empty so phi = 0.
    # Wilson(0/10) = (0, 0.27753), Wilson(3/10) = (0.10778, 0.60322)
    # L = 0.3 - sqrt(0.19222^2 + 0.27753^2) = -0.03760, U = 0.3 + sqrt(0.30322^2) = 0.60322
    lo, hi = cmp.paired_delta_ci(0, 0, 3, 7)
    assert lo == pytest.approx(-0.03760, abs=2e-5) and hi == pytest.approx(0.60322, abs=2e-5)


def test_paired_interval_properties():
    rng = random.Random(0)
    for _ in range(200):
        t = [rng.randint(0, 30) for _ in range(4)]
        if sum(t) == 0:
            continue
        lo, hi = cmp.paired_delta_ci(*t)
        n = sum(t)
        delta = (t[2] - t[1]) / n
        assert -1 <= lo <= delta <= hi <= 1
        lo2, hi2 = cmp.paired_delta_ci(t[0], t[2], t[1], t[3])  # swap A and B
        assert (lo2, hi2) == pytest.approx((-hi, -lo))
    # With many items it approaches the Wald interval for paired data.
    both, a_only, b_only, neither = 3000, 400, 600, 6000
    n = both + a_only + b_only + neither
    d = (b_only - a_only) / n
    se = ((a_only + b_only) - (b_only - a_only) ** 2 / n) ** 0.5 / n
    lo, hi = cmp.paired_delta_ci(both, a_only, b_only, neither)
    assert lo == pytest.approx(d - 1.96 * se, abs=5e-4) and hi == pytest.approx(d + 1.96 * se, abs=5e-4)


def _verdicts(flags: dict[str, bool], cat: str = "c") -> dict[str, dict]:
    return {i: {"strict": v, "category": cat} for i, v in flags.items()}


def test_flips_and_unpaired_ids_are_listed():
    a = _verdicts({"1": True, "2": True, "3": False, "4": False, "5": True})
    b = _verdicts({"1": True, "2": False, "3": True, "4": False, "6": True})
    res = cmp.compare_verdicts(a, b, ["strict"], "strict")
    m = res["metrics"]["strict"]
    assert res["n_paired"] == 4 and res["only_in_a"] == ["5"] and res["only_in_b"] == ["6"]
    assert m["gained"] == ["3"] and m["lost"] == ["2"]
    assert m["table"] == {"both": 1, "a_only": 1, "b_only": 1, "neither": 1}
    assert m["a"] == m["b"] == 0.5 and m["delta"] == 0.0
    assert any("only in A" in w for w in res["warnings"])


def test_items_a_metric_does_not_apply_to_are_not_paired():
    a = {"1": {"tool": True}, "2": {"tool": None}, "3": {"tool": False}}
    b = {"1": {"tool": True}, "2": {"tool": None}, "3": {"tool": True}}
    m = cmp.compare_verdicts(a, b, ["tool"], "tool")["metrics"]["tool"]
    assert m["n"] == 2 and m["a"] == 0.5 and m["b"] == 1.0 and m["gained"] == ["3"]


def test_small_n_warning_the_ten_sample_trap():
    # 9/10 vs 6/10: looks like a 30-point gap, but n=10 cannot separate them.
    a = _verdicts({str(i): i < 6 for i in range(10)})
    b = _verdicts({str(i): i < 9 for i in range(10)})
    res = cmp.compare_verdicts(a, b, ["strict"], "strict")
    assert res["too_small_to_separate"]
    assert "only 3 discordant pairs" in " ".join(res["warnings"])

    # 5/10 vs 7/10 with flips both ways: the delta's interval spans 0 as well.
    a = _verdicts({str(i): i < 5 for i in range(10)})
    b = _verdicts({str(i): 2 <= i < 9 for i in range(10)})
    res = cmp.compare_verdicts(a, b, ["strict"], "strict")
    text = " ".join(res["warnings"])
    assert res["too_small_to_separate"] and "n=10 < 200" in text and "spans 0" in text

    tiny = cmp.compare_verdicts(
        _verdicts({"1": False, "2": False}), _verdicts({"1": True, "2": True}), ["strict"], "strict"
    )
    assert any("cannot separate the two at all" in w for w in tiny["warnings"])


def test_no_warning_when_the_items_separate_the_models():
    rng = random.Random(1)
    a = _verdicts({str(i): rng.random() < 0.3 for i in range(600)})
    b = _verdicts({i: v["strict"] or rng.random() < 0.4 for i, v in a.items()})
    res = cmp.compare_verdicts(a, b, ["strict"], "strict")
    m = res["metrics"]["strict"]
    assert m["mcnemar_p"] < 1e-6 and m["delta_ci95"][0] > 0
    assert res["warnings"] == [] and not res["too_small_to_separate"]


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_compare_cli_scores_pairs_and_warns(tmp_path, capsys):
    data = _write(
        tmp_path / "d.jsonl",
        [{"id": f"g{i}", "question": "q", "answer": str(i), "meta": {"category": "x"}} for i in range(8)],
    )

    def pred(i: int, right: bool) -> dict:
        ans = i if right else i + 1
        return {
            "id": f"g{i}",
            "prompt": "P",
            "completion": f"<reasoning>r</reasoning><answer>{ans}</answer>",
            "decoding": {"t": 0},
        }

    a = _write(tmp_path / "a.jsonl", [pred(i, i < 2) for i in range(7)])  # g7 missing
    b = _write(
        tmp_path / "b.jsonl", [pred(i, i < 5) for i in range(1, 8)] + [{"id": "zz", "completion": "x"}]
    )
    out = tmp_path / "c.json"
    res = cmp.main([str(a), str(b), "--dataset", str(data), "--out", str(out)])
    saved = json.loads(out.read_text())
    assert saved == json.loads(json.dumps(res))
    m = saved["metrics"]["strict"]
    assert saved["n_paired"] == 6 and saved["only_in_a"] == ["g0"] and saved["only_in_b"] == ["g7"]
    assert saved["not_in_dataset"] == {"a": [], "b": ["zz"]}
    assert m["gained"] == ["g2", "g3", "g4"] and m["lost"] == [] and m["mcnemar_p"] == 0.25
    assert saved["too_small_to_separate"]
    err = capsys.readouterr().err
    assert "WARNING" in err and "too few" in err and "in no dataset item" in err


def test_compare_flags_different_prompts(tmp_path):
    data = _write(tmp_path / "d.jsonl", [{"id": "g0", "question": "q", "answer": "1"}])
    same = {"fingerprint": "f" * 64}
    a = _write(tmp_path / "a.jsonl", [{"id": "g0", "prompt": "P1", "completion": "1", "model": same}])
    b = _write(tmp_path / "b.jsonl", [{"id": "g0", "prompt": "P2", "completion": "1", "model": same}])
    res = cmp.compare_files(a, b, data)
    assert any("different prompts" in w for w in res["warnings"])
    assert any("same weights" in w for w in res["warnings"])


# ----------------------------------------------------------------------------- prompt-suite checks


def test_tool_calls_parse_from_tags_and_json_blocks():
    text = (
        'I will look.\n<tool_call>{"name": "read_file", "arguments": {"path": "./config.yaml"}}</tool_call>\n'
        '```json\n[{"function": {"name": "list_dir", "arguments": "{\\"path\\": \\"docs/\\"}"}}]\n```\n'
        "<tool_call>{not json}</tool_call>"
    )
    calls = parse_tool_calls(text)
    assert calls == [
        {"name": "read_file", "arguments": {"path": "./config.yaml"}},
        {"name": "list_dir", "arguments": {"path": "docs/"}},
    ]
    assert check_completion(text, {"tool": {"name": "list_dir", "args": {"path": "docs"}}})["pass"]
    v = check_completion(text, {"tool": {"name": "read_file", "args": {"path": "other.yaml"}}})
    assert not v["pass"] and v["failure"] == "wrong_args"
    assert check_completion(text, {"tool": {"name": "get_weather"}})["failure"] == "wrong_tool"
    assert check_completion("no tools here", {"tool": {"name": "x"}})["failure"] == "no_tool_call"
    assert (
        check_completion(text, {"keywords": ["look"], "no_tool": True})["failure"] == "unexpected_tool_call"
    )


def test_keyword_checks_with_alternatives():
    code = "def reverse_words(s):\n    return ' '.join(reversed(s.split()))"
    checks = {"keywords": ["def reverse_words", ["split", "[::-1]"], "JOIN"]}
    v = check_completion(code, checks)
    assert v["pass"] and v["keyword_fraction"] == 1.0 and v["tool"] is None
    v = check_completion("def reverse_words(s): pass", checks)
    assert (
        not v["pass"] and v["failure"] == "missing_keywords" and v["keyword_fraction"] == pytest.approx(1 / 3)
    )


def test_multidomain_suite_is_valid_and_covers_three_domains():
    from evals.generate import load_items

    items = load_items("evals/suites/multidomain.jsonl")
    cats = [it["meta"]["category"] for it in items]
    assert len(items) >= 12 and {c: cats.count(c) for c in set(cats)} == {
        "code": 4,
        "reasoning": 4,
        "tool_calling": 4,
    }
    assert all("tool" in it["checks"] for it in items if it["meta"]["category"] == "tool_calling")


def test_prompt_suite_summary_and_comparison(tmp_path):
    from evals.generate import load_items
    from evals.suites import suite_metrics, summarize

    items = load_items("evals/suites/multidomain.jsonl")
    assert suite_metrics(items) == (["pass", "keywords", "tool"], "pass")
    good = {
        "code-factorial": "def factorial(n):\n    return 1 if n < 2 else n * factorial(n - 1)",
        "reason-multiply": "15 * 23 = 345",
        "tool-weather": '<tool_call>{"name": "get_weather", "arguments": {"city": "paris", "unit": "Celsius"}}</tool_call>',
    }
    preds = [
        {"id": it["id"], "completion": good.get(it["id"], "I don't know.")} for it in items[:-1]
    ]  # last one missing
    s = summarize(preds, items)
    assert s["n"] == 12 and s["pass_accuracy"] == pytest.approx(3 / 12) and s["tool_n"] == 4
    assert s["categories"]["tool_calling"]["tool_accuracy"] == pytest.approx(1 / 4)
    assert s["items_without_prediction"] == [items[-1]["id"]] and s["failures"]["missing_prediction"] == 1
    a = _write(tmp_path / "a.jsonl", preds)
    b = _write(
        tmp_path / "b.jsonl", [{"id": it["id"], "completion": good.get(it["id"], "no")} for it in items]
    )
    res = cmp.compare_files(a, b, "evals/suites/multidomain.jsonl")
    assert res["primary_metric"] == "pass" and res["n_paired"] == 11 and res["too_small_to_separate"]


def test_reasoning_gym_items_are_scored_by_their_task(tmp_path):
    import reasoning_gym

    from evals.suites import item_verdicts, suite_metrics, summarize

    entries = list(reasoning_gym.create_dataset("basic_arithmetic", size=3, seed=0))
    items = [
        {"id": f"rg{i}", "question": e["question"], "answer": e["answer"],
         "meta": {"source": "reasoning_gym", "category": "basic_arithmetic", "rg_task": "basic_arithmetic", "rg_entry": e}}
        for i, e in enumerate(entries)
    ]  # fmt: skip
    assert suite_metrics(items) == (["rg", "strict", "flexible", "partial", "format"], "rg")
    answers = [entries[0]["answer"], "12345", None]  # right, wrong, missing prediction
    preds = [
        {"id": f"rg{i}", "completion": f"<reasoning>work</reasoning><answer>{a}</answer>"}
        for i, a in enumerate(answers)
        if a is not None
    ]
    v = item_verdicts(preds, {it["id"]: it for it in items})
    assert v["rg0"]["rg"] and v["rg0"]["rg_score"] == 1.0 and not v["rg1"]["rg"]
    s = summarize(preds, items)
    assert s["primary_metric"] == "rg" and s["n"] == 3 and s["rg_accuracy"] == pytest.approx(1 / 3)
    assert s["strict_accuracy"] == pytest.approx(1 / 3) and s["items_without_prediction"] == ["rg2"]


def test_secondary_metrics_get_warnings_too():
    # format: 0/8 -> 5/8 looks decisive (its interval excludes 0) but 5 discordant pairs give p=0.0625.
    a = {str(i): {"strict": False, "format": False} for i in range(8)}
    b = {str(i): {"strict": False, "format": i < 5} for i in range(8)}
    res = cmp.compare_verdicts(a, b, ["strict", "format"], "strict")
    fmt = res["metrics"]["format"]
    assert fmt["delta_ci95"][0] > 0 and fmt["mcnemar_p"] == 0.0625
    assert any(w.startswith("format: only 5 discordant pairs") for w in res["warnings"])
    assert any(w.startswith("format: n=8 < 200") and "excludes 0" in w for w in res["warnings"])
