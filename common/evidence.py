"""Evidence files checked against their JSON Schemas (``submission/schemas/<name>.json``).

Writers call ``write_evidence`` (validate, then write atomically), so a file that breaks its
schema is never written; ``submission.package`` and ``submission.verify`` call ``validate``.
The schemas are data files read by path: ``common`` imports nothing from ``submission``.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

from common.errors import InputError
from common.jsonl import write_json

SCHEMA_DIR = Path(__file__).resolve().parents[1] / "submission" / "schemas"
SCHEMA_BASE = "https://schemas.showwork.invalid/"  # the schemas' $id prefix (.invalid: never fetched)


@functools.cache
def _validator(name: str) -> Any:
    from jsonschema import Draft202012Validator
    from referencing import Registry, Resource

    resources = []
    for path in sorted(SCHEMA_DIR.glob("*.json")):
        schema = json.loads(path.read_text(encoding="utf-8"))
        Draft202012Validator.check_schema(schema)
        resources.append((schema.get("$id", SCHEMA_BASE + path.name), Resource.from_contents(schema)))
    registry = Registry().with_resources(resources)
    schema = registry[SCHEMA_BASE + f"{name}.json"].contents
    return Draft202012Validator(schema, registry=registry, format_checker=Draft202012Validator.FORMAT_CHECKER)


def schema_names() -> list[str]:
    return sorted(p.stem for p in SCHEMA_DIR.glob("*.json"))


def problems(name: str, value: Any) -> list[str]:
    """Every way ``value`` breaks schema ``name``, as ``$.json.path: message``, in document order."""
    if name not in schema_names():
        raise ValueError(f"no evidence schema '{name}' in {SCHEMA_DIR}")
    errors = sorted(_validator(name).iter_errors(value), key=lambda e: [str(p) for p in e.absolute_path])
    return [f"{e.json_path}: {e.message}" for e in errors]


def validate(name: str, value: Any, where: str | Path) -> None:
    """Raise ``InputError`` naming ``where`` and the first problem when ``value`` breaks schema ``name``."""
    found = problems(name, value)
    if found:
        more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
        raise InputError(f"{where}: not a valid {name} (submission/schemas/{name}.json): {found[0]}{more}")


def write_evidence(path: str | Path, name: str, value: Any) -> None:
    """Validate ``value`` against schema ``name``, then write it atomically; nothing is written if invalid."""
    validate(name, value, path)
    write_json(path, value)
