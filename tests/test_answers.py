"""The extraction and scoring rules of common/answers.py, one rule at a time."""

from __future__ import annotations

from fractions import Fraction

import pytest

from common.answers import (
    MAX_NUMBER_CHARS,
    answer_text,
    as_text,
    first_number,
    flexible_extract,
    format_ok,
    gold_text,
    last_number,
    numbers_in,
    parse_number,
    score_completion,
    strip_stop,
)

GOOD = "<reasoning>2 + 2 = 4</reasoning><answer>4</answer>"


@pytest.mark.parametrize(
    "completion",
    [
        GOOD,
        "<reasoning>a</reasoning>\n\n<answer>4</answer>",
        "  \n<reasoning>\nmulti\nline\n</reasoning> \t <answer> 4 </answer>\n",
        GOOD + "<end_of_turn>",
        GOOD + "\n<end_of_turn>\n",
        GOOD + "<end_of_turn><eos>",
        GOOD + "<eos>",
        "<reasoning>a</reasoning><answer>not a number</answer>",  # format only, not correctness
        "<reasoning>ünïcödé ✓</reasoning><answer>四</answer>",
    ],
)
def test_format_ok_accepts(completion: str) -> None:
    assert format_ok(completion)


@pytest.mark.parametrize(
    "completion",
    [
        "",
        "4",
        "<answer>4</answer>",
        "<reasoning>a</reasoning>",
        "<reasoning></reasoning><answer>4</answer>",  # empty reasoning
        "<reasoning>  \n </reasoning><answer>4</answer>",
        "<reasoning>a</reasoning><answer> </answer>",  # empty answer
        "<reasoning>a</reasoning>so<answer>4</answer>",  # text between the blocks
        "Sure! <reasoning>a</reasoning><answer>4</answer>",  # text before
        "<reasoning>a</reasoning><answer>4</answer> Done.",  # text after
        "<reasoning>a</reasoning><answer>4</answer><end_of_turn>more",
        "<reasoning>a<reasoning>b</reasoning><answer>4</answer>",  # nested
        "<reasoning>a</reasoning><answer>4</answer><answer>5</answer>",  # repeated
        "<reasoning>a <answer>3</answer></reasoning><answer>4</answer>",  # tags inside
        "<answer>4</answer><reasoning>a</reasoning>",  # wrong order
        "<reasoning>a</answer><answer>4</reasoning>",  # crossed
        "<reasoning>a<answer>b</reasoning>c</answer>",  # the answer opens inside the reasoning
        "<reasoning>a</reasoning><answer>4",  # unclosed
        "<Reasoning>a</Reasoning><Answer>4</Answer>",  # tags are case-sensitive
        "<reasoning>a</reasoning><answer>4</answer>\x00",
    ],
)
def test_format_ok_rejects(completion: str) -> None:
    assert not format_ok(completion)


def test_strip_stop() -> None:
    assert strip_stop(" x <end_of_turn>\n<eos> \n") == "x"
    assert strip_stop("<eos>") == ""
    assert strip_stop("a<eos>b") == "a<eos>b"
    assert strip_stop("x<end_of_turn>", stop_strings=()) == "x<end_of_turn>"


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        ("<answer>4</answer>", "4"),
        ("<answer> 4 </answer>", " 4 "),
        ("<answer></answer>", ""),
        ("<answer>1</answer> then <answer>2</answer>", "2"),  # the last pair
        ("<answer>1</answer> then <answer>2", "1"),  # the last *closed* pair
        ("<answer>1<answer>2</answer>", "2"),  # nested: innermost, last
        ("<answer>1</answer> x </answer>", "1"),  # a stray closer
        ("</answer><answer>1", None),
        ("4", None),
        ("<answer>4", None),
        ("4</answer>", None),
        ("<answer>a\nb</answer>", "a\nb"),
    ],
)
def test_answer_text(completion: str, expected: str | None) -> None:
    assert answer_text(completion) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("18", Fraction(18)),
        ("18.0", Fraction(18)),
        ("18.00", Fraction(18)),
        (" 18 ", Fraction(18)),
        ("18.", Fraction(18)),
        ("$18", Fraction(18)),
        ("$ 18", Fraction(18)),
        ("$1,234.00.", Fraction(1234)),
        ("1,234,567", Fraction(1234567)),
        ("-5", Fraction(-5)),
        ("+5", Fraction(5)),
        ("-$5", Fraction(-5)),
        ("0.1", Fraction(1, 10)),
        (".5", Fraction(1, 2)),
        ("007", Fraction(7)),
        ("3/4", None),  # a fraction is not one number
        ("1e3", None),
        ("12%", None),
        ("1,23", None),  # not a thousands grouping
        ("1234,567", None),
        ("18 apples", None),
        ("x = 18", None),
        ("18..", None),
        ("", None),
        ("   ", None),
        (".", None),
        ("-", None),
        ("NaN", None),
        ("Infinity", None),
        ("1_000", None),
        ("١٢", None),  # non-ASCII digits
        ("9" * 101, None),  # too long to parse
        (None, None),
    ],
)
def test_parse_number(text: str | None, expected: Fraction | None) -> None:
    assert parse_number(text) == expected


def test_numbers_in_text() -> None:
    assert numbers_in("10-5 = 5, and -3 is less; 1.5.3 and x2 and 1,234 and 1,23") == [
        "10",
        "5",
        "5",
        "-3",
        "1.5",
        "1,234",
        "1",
        "23",
    ]
    assert numbers_in("costs $4.50 or -$2 or .5") == ["$4.50", "-$2", ".5"]
    assert first_number("a 1 b 2 c 3") == "1"
    assert last_number("a 1 b 2 c 3.") == "3"
    assert last_number("no digits") is None
    assert first_number(None) is None


def test_flexible_extract_falls_back_to_whole_completion() -> None:
    assert flexible_extract("So she makes 9 * 2 = 18 dollars.") == "18"
    assert flexible_extract("<answer>The total is 18 dollars, not 20</answer> 99") == "20"
    assert flexible_extract("<answer>eighteen</answer> 18") is None  # a pair exists: no fallback
    assert flexible_extract("<answer>18 99") == "99"  # unclosed: whole completion


def test_as_text_accepts_chat_messages_and_junk() -> None:
    assert as_text([{"role": "assistant", "content": GOOD}]) == GOOD
    assert as_text(None) == ""
    assert as_text(42) == ""
    assert as_text([]) == ""
    assert as_text([{"role": "assistant", "content": None}]) == ""  # a message without text
    assert as_text([{"role": "assistant", "content": [GOOD]}]) == ""


def verdict(completion: str, gold: object) -> tuple[bool, bool, bool, bool, str | None]:
    v = score_completion(completion, gold)
    return v["format_ok"], v["strict"], v["flexible"], v["partial"], v["failure"]


def test_score_completion_right_answer() -> None:
    assert verdict(GOOD, "4") == (True, True, True, True, None)
    assert verdict("<reasoning>r</reasoning><answer>$1,234.00.</answer>", "1,234") == (
        True,
        True,
        True,
        True,
        None,
    )
    assert verdict("<reasoning>r</reasoning><answer>18.00</answer><end_of_turn>", 18) == (
        True,
        True,
        True,
        True,
        None,
    )
    assert verdict("<answer>-7</answer>", "-7") == (False, True, True, True, "bad_format")


def test_score_completion_failures() -> None:
    assert verdict("The answer is 18.", "18") == (False, False, True, False, "no_answer")
    assert verdict("<reasoning>r</reasoning><answer> </answer>", "18") == (
        False,
        False,
        False,
        False,
        "no_answer",
    )
    assert verdict("<reasoning>r</reasoning><answer>18 dollars</answer>", "18") == (
        True,
        False,
        True,
        False,
        "not_a_number",
    )
    assert verdict("<reasoning>r</reasoning><answer>3/4</answer>", "0.75") == (
        True,
        False,
        False,
        False,
        "not_a_number",
    )
    assert verdict("<reasoning>r</reasoning><answer>17</answer>", "18") == (
        True,
        False,
        False,
        True,
        "wrong_number",
    )
    assert verdict("<reasoning>r</reasoning><answer>-18</answer>", "18") == (
        True,
        False,
        False,
        False,
        "wrong_number",
    )


@pytest.mark.parametrize(
    ("answer", "gold", "partial"),
    [
        ("90", "100", True),
        ("110", "100", True),
        ("89.99", "100", False),
        ("110.01", "100", False),
        ("-95", "-100", True),
        ("95", "-100", False),
        ("0", "0", True),
        ("0.001", "0", False),
        ("100", "100", True),
    ],
)
def test_partial_is_ten_percent(answer: str, gold: str, partial: bool) -> None:
    assert score_completion(f"<answer>{answer}</answer>", gold)["partial"] is partial


def test_non_numeric_gold_is_exact_text() -> None:
    assert verdict("<reasoning>r</reasoning><answer> True </answer>", "True") == (
        True,
        True,
        True,
        True,
        None,
    )
    assert verdict("<reasoning>r</reasoning><answer>true</answer>", "True") == (
        True,
        False,
        False,
        False,
        "wrong_text",
    )


def test_extracted_fields() -> None:
    v = score_completion("<answer> 12 apples, then 13 </answer>", "13")
    assert v["extracted"] == "12 apples, then 13"
    assert v["flexible_extracted"] == "13"
    v = score_completion("no tags, 5 then 6", "6")
    assert v["extracted"] is None and v["flexible_extracted"] == "6" and v["flexible"]


def test_numbers_up_to_the_length_limit_parse_and_longer_ones_never_do() -> None:
    longest, too_long = "7" * MAX_NUMBER_CHARS, "7" * (MAX_NUMBER_CHARS + 1)
    assert parse_number(longest) == int(longest)
    assert parse_number(too_long) is None
    right = f"<reasoning>r</reasoning><answer>{longest}</answer>"
    assert verdict(right, longest) == (True, True, True, True, None)
    # flexible reads the same numeral; one digit longer it is never a value, even when equal
    assert score_completion(f"<answer>is {longest}</answer>", longest)["flexible"]
    assert not score_completion(f"<answer>is {too_long}</answer>", too_long)["flexible"]


def test_gold_text_of_json_values() -> None:
    assert gold_text("18") == "18" and gold_text(18) == "18" and gold_text(2.5) == "2.5"
    assert gold_text(None) == "" and gold_text(True) == "" and gold_text(False) == ""


def test_an_empty_answer_never_matches_an_empty_gold() -> None:
    for gold in ("", None, True):
        assert verdict("<reasoning>r</reasoning><answer> </answer>", gold) == (
            False,
            False,
            False,
            False,
            "no_answer",
        )
