"""What did the model answer, and was it right: the one set of extraction and scoring rules.

Shared by the GRPO rewards (torch and JAX), the evals and the reports; ``evals/SCORING.md``
states the rules with examples. Every function here is pure, accepts any string without
raising, and runs in time linear in its input: tags are found with ``str.find``/``count``,
and the number patterns are unambiguous (a repeated group must start with a comma), so
they cannot backtrack catastrophically.
"""

from __future__ import annotations

import re
from fractions import Fraction
from typing import Any

REASONING_OPEN, REASONING_CLOSE = "<reasoning>", "</reasoning>"
ANSWER_OPEN, ANSWER_CLOSE = "<answer>", "</answer>"
TAGS = (REASONING_OPEN, REASONING_CLOSE, ANSWER_OPEN, ANSWER_CLOSE)

# End-of-turn / end-of-sequence markers a decoder may leave at the end of a completion.
STOP_STRINGS = ("<end_of_turn>", "<eos>", "<|im_end|>", "<|eot_id|>", "<|endoftext|>", "</s>")

# Longer numerals are never parsed: no gold answer is that long, and it bounds the arithmetic.
MAX_NUMBER_CHARS = 100

# A numeral inside free text: an optional minus (not one joining two numbers, as in "10-5")
# and ``$``, ASCII digits with valid thousands commas or none, optional decimals; or ".5".
# It may not follow a letter, digit or point, so "x2", the "5" of "1.5" or "v1.3" are skipped.
_NUMBER_IN_TEXT = re.compile(
    r"(?<![\w.])-?\$?(?:[0-9]{1,3}(?:,[0-9]{3})+(?![0-9])|[0-9]+)(?:\.[0-9]+)?|(?<![\w.])-?\$?\.[0-9]+"
)
# The whole (normalised) answer as one number.
_ONE_NUMBER = re.compile(r"[+-]?(?:[0-9]{1,3}(?:,[0-9]{3})+|[0-9]+)(?:\.[0-9]+)?|[+-]?\.[0-9]+")

FAILURE_KINDS = (
    "missing_prediction",
    "no_answer",
    "not_a_number",
    "wrong_number",
    "wrong_text",
    "bad_format",
)


def as_text(completion: Any) -> str:
    """A completion as a string: strings as is, chat messages by their content, junk as ``""``."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list) and completion and isinstance(completion[-1], dict):
        content = completion[-1].get("content")  # TRL conversational form: [{"role", "content"}]
        return content if isinstance(content, str) else ""
    return ""


def strip_stop(text: str, stop_strings: tuple[str, ...] = STOP_STRINGS) -> str:
    """``text`` without surrounding whitespace and trailing stop markers (any number, any order)."""
    end = len(text)
    while True:
        while end and text[end - 1].isspace():
            end -= 1
        for stop in stop_strings:
            if text.endswith(stop, 0, end):
                end -= len(stop)
                break
        else:
            return text[:end].strip()


def format_ok(completion: str) -> bool:
    """True iff the completion is exactly ``<reasoning>X</reasoning> <answer>Y</answer>``.

    Surrounding whitespace and trailing stop markers are ignored; only whitespace may sit
    between the two blocks; X and Y must be non-empty after stripping; each of the four
    tags must appear exactly once (so no nested or repeated tags).
    """
    text = strip_stop(as_text(completion))
    if not (text.startswith(REASONING_OPEN) and text.endswith(ANSWER_CLOSE)):
        return False
    if any(text.count(tag) != 1 for tag in TAGS):
        return False
    r_close = text.find(REASONING_CLOSE)
    a_open = text.find(ANSWER_OPEN)
    a_close = len(text) - len(ANSWER_CLOSE)
    if not (len(REASONING_OPEN) <= r_close and r_close + len(REASONING_CLOSE) <= a_open):
        return False
    reasoning = text[len(REASONING_OPEN) : r_close]
    between = text[r_close + len(REASONING_CLOSE) : a_open]
    answer = text[a_open + len(ANSWER_OPEN) : a_close]
    return bool(reasoning.strip()) and not between.strip() and bool(answer.strip())


def answer_text(completion: str) -> str | None:
    """The content of the last closed ``<answer>…</answer>`` pair (unstripped), or None.

    That is the text after the last ``<answer>`` that some ``</answer>`` follows, up to the
    first ``</answer>`` after it: ``<answer>1</answer><answer>2</answer>`` gives ``"2"``,
    ``<answer>1<answer>2</answer>`` gives ``"2"``, ``<answer>1</answer>x</answer>`` gives
    ``"1"``, and ``<answer>1`` (never closed) gives None.
    """
    text = as_text(completion)
    last_close = text.rfind(ANSWER_CLOSE)
    if last_close < 0:
        return None
    start = text.rfind(ANSWER_OPEN, 0, last_close)
    if start < 0:
        return None
    start += len(ANSWER_OPEN)
    return text[start : text.find(ANSWER_CLOSE, start)]


def parse_number(text: str | None) -> Fraction | None:
    """``text`` as one exact number after the strict normalisation, else None.

    Normalisation: strip whitespace, drop one trailing period, remove every ``$``, strip
    again. What remains must be a plain decimal with optional sign and thousands commas in
    valid groups: ``$1,234.00.`` -> 1234, ``-3.50`` -> -7/2; ``3/4``, ``1e3``, ``12%``,
    ``1,23``, ``18 apples`` -> None.
    """
    if not isinstance(text, str):
        return None
    s = text.strip()
    if s.endswith("."):
        s = s[:-1]
    s = s.replace("$", "").strip()
    if len(s) > MAX_NUMBER_CHARS or _ONE_NUMBER.fullmatch(s) is None:
        return None
    return Fraction(s.replace(",", ""))


def numbers_in(text: str | None) -> list[str]:
    """The numerals in free text, in order (as written, commas included)."""
    if not isinstance(text, str):
        return []
    return _NUMBER_IN_TEXT.findall(text)


def _numeral_value(numeral: str | None) -> Fraction | None:
    if numeral is None or len(numeral) > MAX_NUMBER_CHARS:
        return None
    return Fraction(numeral.replace(",", "").replace("$", ""))


def last_number(text: str | None) -> str | None:
    """The last numeral in ``text``, or None (scans once from the end-most match)."""
    found = None
    if isinstance(text, str):
        for found in _NUMBER_IN_TEXT.finditer(text):  # noqa: B007 - keep the last match
            pass
    return found.group() if found else None


def first_number(text: str | None) -> str | None:
    """The first numeral in ``text``, or None."""
    found = _NUMBER_IN_TEXT.search(text) if isinstance(text, str) else None
    return found.group() if found else None


def flexible_extract(completion: str) -> str | None:
    """The last numeral in the answer text or, when there is no closed answer pair, in the whole completion."""
    text = as_text(completion)
    ans = answer_text(text)
    return last_number(ans if ans is not None else text)


def within(value: Fraction, gold: Fraction, tolerance: Fraction) -> bool:
    """``|value - gold| <= tolerance * |gold|`` (for gold 0 only 0 itself qualifies)."""
    return abs(value - gold) <= tolerance * abs(gold)


PARTIAL_TOLERANCE = Fraction(1, 10)


def gold_text(gold: Any) -> str:
    """A dataset's gold answer as a string (numbers from JSON included)."""
    if isinstance(gold, bool) or gold is None:
        return ""
    return gold if isinstance(gold, str) else str(gold)


def score_completion(completion: Any, gold: Any) -> dict[str, Any]:
    """Every verdict on one completion against its gold answer.

    Returns ``format_ok``, ``strict``, ``flexible``, ``partial`` (bools), ``extracted`` (the
    answer text, stripped, or None), ``flexible_extracted`` (the numeral flexible used, or
    None) and ``failure``: None when the answer is strictly right and the format ok,
    otherwise the first of ``no_answer``, ``not_a_number``, ``wrong_number`` (``wrong_text``
    for a non-numeric gold), ``bad_format`` that applies.
    """
    text = as_text(completion)
    gold_s = gold_text(gold)
    ok = format_ok(text)
    ans = answer_text(text)
    extracted = ans.strip() if ans is not None else None
    flex = flexible_extract(text)
    gold_value = parse_number(gold_s)

    if gold_value is None:  # a non-numeric gold: exact text after stripping whitespace
        strict = extracted is not None and extracted != "" and extracted == gold_s.strip()
        flexible = partial = strict
    else:
        value = parse_number(ans)
        strict = value is not None and value == gold_value
        partial = value is not None and within(value, gold_value, PARTIAL_TOLERANCE)
        flex_value = _numeral_value(flex)
        flexible = flex_value is not None and flex_value == gold_value

    if not extracted:
        failure: str | None = "no_answer"
    elif not strict:
        if gold_value is None:
            failure = "wrong_text"
        else:
            failure = "not_a_number" if parse_number(ans) is None else "wrong_number"
    elif not ok:
        failure = "bad_format"
    else:
        failure = None
    return {
        "format_ok": ok,
        "strict": strict,
        "flexible": flexible,
        "partial": partial,
        "extracted": extracted,
        "flexible_extracted": flex,
        "failure": failure,
    }
