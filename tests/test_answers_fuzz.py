"""Property tests: the rules never raise, agree with each other, and stay linear on huge inputs."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from fractions import Fraction

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common.answers import (
    ANSWER_CLOSE,
    ANSWER_OPEN,
    FAILURE_KINDS,
    answer_text,
    flexible_extract,
    format_ok,
    parse_number,
    score_completion,
)
from common.prompts import format_target
from common.rewards import RewardConfig, answer_tier, build_rewards

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

PIECES = [
    "<reasoning>",
    "</reasoning>",
    "<answer>",
    "</answer>",
    "<answer",
    "</",
    "<end_of_turn>",
    "<eos>",
    " ",
    "\n",
    "\t",
    "\x00",
    "\x1b",
    "$",
    ",",
    ".",
    "-",
    "+",
    "/",
    "%",
    "0",
    "7",
    "18",
    "1,234",
    "3.50",
    "e5",
    "x",
    "é",
    "١٢",
    "🙂",
    "\u2212",
    "\ud7ff",
]
# Completions made of tag fragments, numerals and junk, plus arbitrary unicode text.
completions = st.one_of(st.lists(st.sampled_from(PIECES), max_size=30).map("".join), st.text(max_size=200))
golds = st.one_of(
    st.integers(-(10**7), 10**7).map(str),
    st.decimals(-(10**5), 10**5, places=2, allow_nan=False, allow_infinity=False).map(str),
    st.sampled_from(["1,234", "$5", "0", "-3", "True", "Paris", ""]),
    st.text(max_size=10),
)
clean = st.text(st.characters(blacklist_characters="<>"), min_size=1, max_size=50).filter(lambda s: s.strip())


@FAST
@given(completions, golds)
def test_score_completion_never_raises_and_is_consistent(completion: str, gold: str) -> None:
    v = score_completion(completion, gold)
    assert {type(v[k]) for k in ("format_ok", "strict", "flexible", "partial")} == {bool}
    assert v["failure"] is None or v["failure"] in FAILURE_KINDS
    assert (v["failure"] is None) == (v["strict"] and v["format_ok"])
    if v["strict"]:
        assert v["partial"] and v["flexible"]  # a strict hit is also a flexible and a partial one
    if v["format_ok"]:
        assert v["extracted"]  # a well-formed completion always has a non-empty answer


@FAST
@given(completions)
def test_answer_text_is_a_tag_free_substring(completion: str) -> None:
    ans = answer_text(completion)
    if ans is not None:
        assert ANSWER_OPEN + ans + ANSWER_CLOSE in completion
        assert ANSWER_OPEN not in ans and ANSWER_CLOSE not in ans


@FAST
@given(completions)
def test_format_ok_ignores_surrounding_whitespace_and_stop_markers(completion: str) -> None:
    ok = format_ok(completion)
    assert format_ok(f"\n {completion} \n") == ok
    assert format_ok(completion + "<end_of_turn>") == ok
    assert format_ok(completion + "\n<end_of_turn><eos>") == ok


@FAST
@given(clean, clean)
def test_format_target_round_trips(reasoning: str, answer: str) -> None:
    target = format_target(reasoning, answer)
    assert format_ok(target)
    assert answer_text(target) == answer.strip()


@FAST
@given(st.integers(-(10**12), 10**12), st.integers(0, 99), st.booleans(), st.booleans(), st.booleans())
def test_parse_number_normalisations(
    whole: int, cents: int, commas: bool, dollar: bool, period: bool
) -> None:
    value = Fraction(whole) + (Fraction(cents, 100) if whole >= 0 else -Fraction(cents, 100))
    digits = f"{abs(whole):,}" if commas else str(abs(whole))
    text = f"{'-' if whole < 0 else ''}{'$' if dollar else ''}{digits}.{cents:02d}{'.' if period else ''}"
    gold = f"{'-' if whole < 0 else ''}{abs(whole)}.{cents:02d}"
    assert parse_number(f" {text} ") == value == parse_number(gold)
    assert score_completion(f"<reasoning>r</reasoning><answer>{text}</answer>", gold)["strict"]
    assert flexible_extract(f"so the total is {text}") is not None


@FAST
@given(completions, golds)
def test_rewards_never_raise_and_agree_with_the_scorer(completion: str, gold: str) -> None:
    cfg = RewardConfig()
    fmt_exact, fmt_approx, tiers, numbers = (
        fn(["p"], [completion], answer=[gold], meta=[{}])[0] for fn in build_rewards()
    )
    v = score_completion(completion, gold)
    assert fmt_exact == (3.0 if v["format_ok"] else 0.0)
    assert -2.0 <= fmt_approx <= 2.0
    assert numbers in (0.0, 1.5)
    assert tiers in (3.0, 1.5, 0.5, 0.25, -1.0, -0.5, 0.0)
    if parse_number(gold) is not None:
        assert (tiers in (3.0, 1.5)) == v["strict"]
        if v["partial"]:
            assert tiers in (3.0, 1.5, 0.5)
    assert answer_tier(completion, gold, cfg) == tiers


@contextmanager
def hang_guard(seconds: int) -> Iterator[None]:
    """Fail instead of hanging if the block runs absurdly long (a quadratic blow-up on 1 MB)."""

    def fail(*_: object) -> None:
        raise AssertionError(f"did not finish within {seconds}s: not linear time")

    previous = signal.signal(signal.SIGALRM, fail)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


MB = 1 << 20
ADVERSARIAL = {
    "open tags": ANSWER_OPEN * (MB // 8),
    "close tags": ANSWER_CLOSE * (MB // 9),
    "opens then one close": ANSWER_OPEN * (MB // 8) + ANSWER_CLOSE,
    "reasoning opens": "<reasoning>" * (MB // 11) + "</answer>",
    "alternating pairs": "<answer>1</answer>" * (MB // 18),
    "one huge numeral": ANSWER_OPEN + "9" * MB + ANSWER_CLOSE,
    "digits after a letter": "a" + "1" * MB,
    "broken thousands": "1,1111" * (MB // 6),
    "long thousands": "1" + ",111" * (MB // 4) + "1",
    "commas": "1," * (MB // 2),
    "dots": "1." * (MB // 2),
    "minus signs": "-" * MB,
    "minus dollar": "-$" * (MB // 2),
    "dollar dots": "$." * (MB // 2),
    "stop markers": "<end_of_turn>" * (MB // 13),
    "spaced stop markers": " <eos>\n" * (MB // 7),
    "well formed, huge": "<reasoning>" + "x " * (MB // 2) + "</reasoning><answer>7</answer>",
    "control characters": "\x00\x01\x1b\u2028" * (MB // 4),
}


@pytest.mark.parametrize("name", list(ADVERSARIAL))
def test_one_megabyte_adversarial_inputs_finish(name: str) -> None:
    text = ADVERSARIAL[name]
    with hang_guard(60):  # linear work takes well under a second; quadratic would take hours
        score_completion(text, "7")
        score_completion("<answer>7</answer>", text)  # a huge gold too
        for fn in build_rewards():
            fn([""], [text], answer=["7"])
