"""Text normalisation shared by ``merge`` (dedupe) and ``contamination`` (n-gram overlap)."""

from __future__ import annotations

import re

_NON_WORD = re.compile(r"[^\w\s]|_")

# Very common English function words: a cheap language check, not a language identifier.
_ENGLISH = frozenset({
    "the", "a", "an", "of", "to", "and", "in", "is", "are", "was", "were", "it", "that", "for", "on",
    "with", "as", "at", "by", "from", "how", "many", "much", "what", "if", "each", "has", "have",
    "had", "he", "she", "they", "his", "her", "their", "this", "be", "will", "does", "do", "did",
    "per", "more", "than",
})  # fmt: skip


def words(text: str) -> list[str]:
    """Lowercase words with punctuation stripped: ``"It's $1,000!"`` -> ``["it", "s", "1", "000"]``."""
    return _NON_WORD.sub(" ", text.lower()).split()


def normalise(text: str) -> str:
    """The dedupe key of a question: its normalised words joined by single spaces."""
    return " ".join(words(text))


def looks_english(text: str, min_ascii_letters: float = 0.9) -> bool:
    """Heuristic: mostly ASCII letters and, past four words, at least one common English function word."""
    letters = [c for c in text if c.isalpha()]
    if letters and sum(c.isascii() for c in letters) / len(letters) < min_ascii_letters:
        return False
    tokens = words(text)
    return len(tokens) <= 4 or any(t in _ENGLISH for t in tokens)
