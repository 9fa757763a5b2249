"""Stable splits by id hash: a record's split depends only on its id and the seed.

By fraction, each record is placed by its own hash, so adding records never moves the
others; by size, the records with the smallest hashes are taken, so the same input and
seed always give the same split.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from common.errors import InputError
from common.jsonl import write_jsonl
from common.runs import sha256_file


def id_hash(rid: str, seed: int) -> float:
    """A uniform number in [0, 1) fixed by the id and the seed."""
    digest = hashlib.sha256(f"{seed}:{rid}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_by_size(
    records: list[dict[str, Any]], sizes: dict[str, int], seed: int, rest: str
) -> dict[str, list[dict[str, Any]]]:
    """``sizes[name]`` records per named split (smallest hashes first, in ``sizes`` order); the rest to ``rest``."""
    need = sum(sizes.values())
    if any(n < 0 for n in sizes.values()):
        raise InputError(f"split sizes must be >= 0, got {sizes}")
    if need > len(records):
        raise InputError(f"split sizes {sizes} need {need} records, only {len(records)} available")
    ranked = sorted(records, key=lambda r: (id_hash(r["id"], seed), r["id"]))
    out: dict[str, list[dict[str, Any]]] = {}
    start = 0
    for name, n in sizes.items():
        out[name] = _in_input_order(ranked[start : start + n], records)
        start += n
    out[rest] = _in_input_order(ranked[start:], records)
    return out


def split_by_fraction(
    records: list[dict[str, Any]], fractions: dict[str, float], seed: int, rest: str
) -> dict[str, list[dict[str, Any]]]:
    """Each record goes to the split whose hash interval holds it (``fractions`` in order); the rest to ``rest``."""
    if any(f < 0 for f in fractions.values()) or sum(fractions.values()) > 1 + 1e-9:
        raise InputError(f"split fractions must be >= 0 and sum to at most 1, got {fractions}")
    bounds, acc = [], 0.0
    for name, f in fractions.items():
        acc += f
        bounds.append((acc, name))
    out: dict[str, list[dict[str, Any]]] = {name: [] for name in fractions}
    out[rest] = []
    for record in records:
        h = id_hash(record["id"], seed)
        out[next((name for bound, name in bounds if h < bound), rest)].append(record)
    return out


def _in_input_order(chosen: list[dict[str, Any]], records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    keep = {id(r) for r in chosen}
    return [r for r in records if id(r) in keep]


def write_split(out_dir: Path, name: str, records: list[dict[str, Any]]) -> dict[str, Any]:
    """Write ``<out_dir>/<name>.jsonl``; its manifest entry (path, record count, sha256)."""
    path = out_dir / f"{name}.jsonl"
    write_jsonl(path, records)
    return {"path": path.name, "records": len(records), "sha256": sha256_file(path)}
