"""Vocabulary files of the trace generator: named lists of people, items, animals, units, ...

A vocabulary file is a YAML mapping from list names to lists; an entry is a word (``apple``)
or a mapping with a ``name`` and any other fields (``{name: hen, plural: hens, product: egg}``).
Every entry gets ``plural`` (English rules unless given), ``a`` (the name with its article,
unless given) and ``key`` (a trace-variable word: ``toy_cars`` for "toy car", ``maria`` for a
person); a list whose entries have ``pronoun: she | he`` also gets ``subject``,
``object``, ``possessive`` and ``reflexive``. Numeric fields (``legs: 4``) can be read by a
pattern's expressions as ``slot.legs``. A list name may appear in only one file.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from common.errors import InputError

PRONOUNS = {
    "she": {"subject": "she", "object": "her", "possessive": "her", "reflexive": "herself"},
    "he": {"subject": "he", "object": "him", "possessive": "his", "reflexive": "himself"},
}


def pluralize(word: str) -> str:
    """English plural of a regular noun (irregular ones are given in the vocabulary)."""
    head, _, last = word.rpartition(" ")
    lower = last.lower()
    if lower.endswith(("s", "x", "z", "ch", "sh")):
        out = last + "es"
    elif lower.endswith("y") and len(lower) > 1 and lower[-2] not in "aeiou":
        out = last[:-1] + "ies"
    else:
        out = last + "s"
    return f"{head} {out}" if head else out


def with_article(word: str) -> str:
    """``an apple``, ``a box``: the indefinite article by the first letter (exceptions are given)."""
    return f"{'an' if word[:1].lower() in 'aeiou' else 'a'} {word}"


def capitalize(text: str) -> str:
    return text[:1].upper() + text[1:]


@dataclass
class Vocab:
    """Entry lists by name, and the file each list came from (for error messages)."""

    lists: dict[str, list[dict[str, Any]]]
    files: dict[str, str]

    def fields(self, name: str) -> set[str]:
        """The fields every entry of list ``name`` has."""
        entries = self.lists[name]
        common = set(entries[0])
        for entry in entries[1:]:
            common &= set(entry)
        return common


def _entry(raw: Any, where: str) -> dict[str, Any]:
    if isinstance(raw, str):
        raw = {"name": raw}
    if not isinstance(raw, dict):
        raise InputError(f"{where}: expected a word or a mapping with 'name', got {type(raw).__name__}")
    entry: dict[str, Any] = {}
    for key, value in raw.items():
        if not isinstance(key, str) or not key.isidentifier():
            raise InputError(f"{where}: field {key!r} is not a plain name")
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise InputError(f"{where}.{key}: expected text or a number, got {type(value).__name__}")
        entry[key] = value
    name = entry.get("name")
    if not isinstance(name, str) or not name.strip():
        raise InputError(f"{where}.name: missing or empty")
    entry.setdefault("plural", pluralize(name))
    entry.setdefault("a", with_article(name))
    if "pronoun" not in entry:
        entry.setdefault("key", re.sub(r"[^a-z0-9]+", "_", str(entry["plural"]).lower()).strip("_"))
    else:
        entry.setdefault("key", re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_"))
        if entry["pronoun"] not in PRONOUNS:
            raise InputError(f"{where}.pronoun: {entry['pronoun']!r} is not one of {', '.join(PRONOUNS)}")
        for key, value in PRONOUNS[entry["pronoun"]].items():
            entry.setdefault(key, value)
    return entry


def load_vocab(folder: str | Path) -> Vocab:
    """Every ``*.yaml`` file in ``folder``; a malformed file or entry is an ``InputError`` naming it."""
    root = Path(folder)
    paths = sorted(root.glob("*.yaml"))
    if not paths:
        raise InputError(f"{root}: no vocabulary files (*.yaml)")
    lists: dict[str, list[dict[str, Any]]] = {}
    files: dict[str, str] = {}
    for path in paths:
        try:
            doc = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as err:
            raise InputError(f"{path}: not valid YAML: {str(err).splitlines()[0]}") from None
        if not isinstance(doc, dict) or not doc:
            raise InputError(f"{path}: expected a mapping of list names to lists")
        for name, entries in doc.items():
            where = f"{path}: {name}"
            if not isinstance(name, str) or not name.isidentifier():
                raise InputError(f"{path}: list name {name!r} is not a plain name")
            if name in files:
                raise InputError(f"{where}: list already defined in {files[name]}")
            if not isinstance(entries, list) or not entries:
                raise InputError(f"{where}: expected a non-empty list")
            lists[name] = [_entry(raw, f"{where}[{i}]") for i, raw in enumerate(entries)]
            names = [e["name"] for e in lists[name]]
            if len(set(names)) != len(names):
                dup = next(n for n in names if names.count(n) > 1)
                raise InputError(f"{where}: entry {dup!r} appears twice")
            files[name] = str(path)
    return Vocab(lists, files)
