"""The scorer on real Gemma 3 270M completions (tests/data/gemma3_270m_completions.jsonl).

The fixture comes from tests/data/collect_completions.py: 24 GSM8K test questions, greedy,
sampled and primed. The base model rarely follows the format (it often echoes the
instruction, tags and all), which is exactly what the rules must handle. Expectations for
a selection were checked by reading the completions; invariants cover all of them.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from common.answers import TAGS, answer_text, score_completion
from common.rewards import build_rewards
from evals.score import score_predictions

FIXTURE = Path(__file__).parent / "data" / "gemma3_270m_completions.jsonl"
RECORDS = [json.loads(line) for line in FIXTURE.read_text(encoding="utf-8").splitlines()]
BY_ID = {r["id"]: r for r in RECORDS}

# id -> (format_ok, strict, flexible, partial, failure, extracted, flexible_extracted), read by hand.
EXPECTED = {
    # Echoes the instruction, whose "between <answer> and </answer>" is a closed pair: the answer is "and".
    "gsm8k-test-0000-greedy": (False, False, False, False, "not_a_number", "and", None),
    # "<reasoning>" then 32 unclosed "<answer>" lines: nothing closed, no number anywhere.
    "gsm8k-test-0110-primed_reasoning_open": (False, False, False, False, "no_answer", None, None),
    # Five <answer> lines, only one closed ("...printer is 102 euros</answer>"): that one counts.
    "gsm8k-test-0165-primed_gold_reasoning": (
        False,
        False,
        False,
        False,
        "not_a_number",
        "The total cost of the printer is 102 euros",
        "102",
    ),
    # Says $42 mid-way, then is cut off at "</": no closed pair; the last number is "6" (hours).
    "gsm8k-test-0605-primed_gold_reasoning": (False, False, False, False, "no_answer", None, "6"),
    # "<answer>153 cards</answer>" twelve times: right number, not one number, format broken.
    "gsm8k-test-0825-primed_gold_reasoning": (False, False, True, False, "not_a_number", "153 cards", "153"),
    # The last closed pair ends "X = 420.": flexible finds 420.
    "gsm8k-test-1045-primed_gold_reasoning": (
        False,
        False,
        True,
        False,
        "not_a_number",
        "The total amount X + (X+80) + (X+80)*2 = 1920.\nX*4 + 240 = 1920.\nX*4 = 1680.\nX = 420.",
        "420",
    ),
    # Stopped at </answer>: the exact format, but a sentence, not a number.
    "gsm8k-test-0825-primed_gold_reasoning_stop": (
        True,
        False,
        True,
        False,
        "not_a_number",
        "153 cards",
        "153",
    ),
    "gsm8k-test-1155-primed_gold_reasoning_stop": (
        True,
        False,
        True,
        False,
        "not_a_number",
        "The answer is 13 minutes",
        "13",
    ),
    # Ran out of tokens inside the answer: no closed pair, flexible reads the whole completion.
    "gsm8k-test-0330-primed_gold_reasoning_stop": (False, False, True, False, "no_answer", None, "$31"),
    # Sampled at T=1.0, ends in <eos>; no tags at all; the last number is "4".
    "gsm8k-test-0275-sample_t1.0": (False, False, False, False, "no_answer", None, "4"),
    # Thousands commas in the wild: "...rent of $</tex>600,000 the copier".
    "gsm8k-test-0715-sample_t1.0": (False, False, False, False, "no_answer", None, "600,000"),
}


def test_fixture_shape() -> None:
    assert len(RECORDS) == 56 and len(BY_ID) == 56
    for r in RECORDS:
        assert set(r) >= {"id", "gsm8k_index", "setting", "question", "gold", "completion"}
        assert r["gold"].lstrip("-").isdigit()
        assert r["completion"].startswith(r["setting"].get("prime", ""))


@pytest.mark.parametrize("rid", list(EXPECTED))
def test_hand_checked_verdicts(rid: str) -> None:
    r = BY_ID[rid]
    v = score_completion(r["completion"], r["gold"])
    got = (
        v["format_ok"],
        v["strict"],
        v["flexible"],
        v["partial"],
        v["failure"],
        v["extracted"],
        v["flexible_extracted"],
    )
    assert got == EXPECTED[rid]


def test_hand_checked_rewards() -> None:
    def rewards(rid: str) -> list[float]:
        r = BY_ID[rid]
        return [fn(["p"], [r["completion"]], answer=[r["gold"]])[0] for fn in build_rewards()]

    # format_exact, format_approx, answer_tiers, number_match
    assert rewards("gsm8k-test-0825-primed_gold_reasoning_stop") == [3.0, 2.0, -0.5, 1.5]
    # Echoing the instruction contains each tag once: the approximate format reward is full.
    assert rewards("gsm8k-test-0000-greedy") == [0.0, 2.0, -0.5, 0.0]
    assert rewards("gsm8k-test-0110-primed_reasoning_open") == [0.0, -1.0, 0.0, 0.0]
    assert rewards("gsm8k-test-0275-sample_t1.0") == [0.0, -2.0, 0.0, 0.0]


def test_invariants_on_every_real_completion() -> None:
    fns = build_rewards()
    for r in RECORDS:
        v = score_completion(r["completion"], r["gold"])
        assert (v["failure"] is None) == (v["strict"] and v["format_ok"]), r["id"]
        assert not v["strict"] or (v["flexible"] and v["partial"]), r["id"]
        ans = answer_text(r["completion"])
        assert (ans is None) == (v["extracted"] is None), r["id"]
        scores = [fn(["p"], [r["completion"]], answer=[r["gold"]])[0] for fn in fns]
        assert scores[0] == (3.0 if v["format_ok"] else 0.0), r["id"]
        assert scores[1] == sum(0.5 if r["completion"].count(t) == 1 else -0.5 for t in TAGS), r["id"]
        assert (scores[2] >= 1.5) == v["strict"], r["id"]


def test_summary_over_the_fixture() -> None:
    predictions = [{"id": r["id"], "completion": r["completion"]} for r in RECORDS]
    dataset = [
        {"id": r["id"], "answer": r["gold"], "meta": {"category": r["setting"]["name"]}} for r in RECORDS
    ]
    s = score_predictions(predictions, dataset)
    assert s["n"] == 56
    assert round(s["format_accuracy"] * 56) == 3  # 0495, 0825 and 1155 stopped at </answer>
    assert s["strict_accuracy"] == 0.0 and s["partial_accuracy"] == 0.0
    assert round(s["flexible_accuracy"] * 56) == 10
    assert s["failures"]["no_answer"] + s["failures"]["not_a_number"] == 56
    assert s["categories"]["greedy"]["failures"]["not_a_number"] == 24  # every greedy run echoes the tags
    assert s["categories"]["primed_gold_reasoning_stop"]["n"] == 8
