"""Strict YAML configs validated into dataclasses, with ``key=value`` dotted overrides.

Every runnable recipe declares its config as a dataclass. ``load_config`` reads a YAML
file, applies command-line overrides such as ``train.lr=1e-4 lora.rank=16``, and checks
every key and type: an unknown key or a wrong type raises ``InputError`` naming the key,
the file and the allowed keys. Supported field types: bool, int, float, str, Literal,
Optional, list[...], dict[str, ...] and nested dataclasses.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import hashlib
import re
import sys
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from common.errors import InputError

T = TypeVar("T")


def _type_name(tp: Any) -> str:
    if dataclasses.is_dataclass(tp):
        return "mapping"
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _convert(value: Any, tp: Any, where: str) -> Any:
    """Check (and lightly coerce) ``value`` against the annotation ``tp``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, where)
            except InputError as err:
                errors.append(str(err))
        raise InputError(errors[0] if len(errors) == 1 else f"{where}: {value!r} matches none of {tp}")
    if origin is typing.Literal:
        if value not in args:
            raise InputError(f"{where}: {value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise InputError(f"{where}: expected a mapping, got {type(value).__name__} {value!r}")
        return _build(tp, value, where)
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            raise InputError(f"{where}: expected a list, got {type(value).__name__} {value!r}")
        item = args[0] if args else Any
        return [_convert(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise InputError(f"{where}: expected a mapping, got {type(value).__name__} {value!r}")
        vt = args[1] if len(args) == 2 else Any
        return {str(k): _convert(v, vt, f"{where}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise InputError(f"{where}: expected true/false, got {type(value).__name__} {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise InputError(f"{where}: expected int, got {type(value).__name__} {value!r}")
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads 1e-4 as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise InputError(f"{where}: expected float, got {type(value).__name__} {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise InputError(f"{where}: expected str, got {type(value).__name__} {value!r}")
    raise InputError(f"{where}: unsupported field type {_type_name(tp)}")


def _build(cls: type[T], data: dict[str, Any], where: str) -> T:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        prefix = f"{where}." if where else ""
        raise InputError(
            f"unknown key '{prefix}{unknown[0]}'; allowed keys"
            f"{' under ' + where if where else ''}: {', '.join(sorted(fields))}"
        )
    kwargs = {}
    for name, value in data.items():
        key = f"{where}.{name}" if where else name
        kwargs[name] = _convert(value, hints[name], key)
    missing = [
        n
        for n, f in fields.items()
        if n not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise InputError(f"missing required key '{where + '.' if where else ''}{missing[0]}'")
    try:
        obj = cls(**kwargs)
    except (ValueError, TypeError) as err:  # __post_init__ checks
        raise InputError(f"{where or 'config'}: {err}") from None
    return obj


_INDEXED = re.compile(r"^([^\[\]]+)\[(\d+)\]$")


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``a.b.c`` (or ``a.items[0].c``, an element of an existing list) in ``data``."""
    node: Any = data
    parts = dotted.split(".")
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        indexed = _INDEXED.match(part)
        if indexed:
            name, index = indexed.group(1), int(indexed.group(2))
            seq = node.get(name)
            if not isinstance(seq, list):
                raise InputError(f"override '{dotted}': '{name}' is not a list")
            if index >= len(seq):
                raise InputError(f"override '{dotted}': '{name}' has {len(seq)} item(s), no index {index}")
            if last:
                seq[index] = value
                return
            child = seq[index]
        elif last:
            old = node.get(part)
            node[part] = _merge(old, value) if isinstance(old, dict) and isinstance(value, dict) else value
            return
        else:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
        if not isinstance(child, dict):
            raise InputError(f"override '{dotted}': '{part}' is not a mapping")
        node = child


def _split_overrides(overrides: list[str]) -> list[tuple[str, Any]]:
    out = []
    for item in overrides:
        if "=" not in item:
            raise InputError(f"override '{item}' is not key=value")
        key, raw = item.split("=", 1)
        if not key:
            raise InputError(f"override '{item}' has an empty key")
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        out.append((key.strip(), value))
    return out


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """Turn ``["a.b=1", "c=x"]`` into a nested dict, values parsed as YAML scalars."""
    out: dict[str, Any] = {}
    for key, value in _split_overrides(overrides):
        _set_dotted(out, key, value)
    return out


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """A copy of ``data`` with the dotted ``key=value`` overrides set, in order (how every
    recipe's command line and a sweep's promoted config read them)."""
    out = copy.deepcopy(data)
    for key, value in _split_overrides(overrides):
        _set_dotted(out, key, value)
    return out


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping; errors name the file (and line for syntax errors)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"{p}: config file not found") from None
    except UnicodeDecodeError as err:
        raise InputError(f"{p}: not UTF-8 ({err.reason} at byte {err.start})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise InputError(f"{p}{line}: invalid YAML: {getattr(err, 'problem', err)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise InputError(f"{p}: top level must be a mapping, got {type(data).__name__}")
    return data


def merge_mappings(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """``extra`` over ``base``: mappings merge key by key, any other value replaces."""
    return _merge(base, extra)


def config_from_mapping(cls: type[T], data: dict[str, Any], source: str | Path) -> T:
    """Build ``cls`` from already-read YAML data, strictly; errors name ``source``."""
    try:
        return _build(cls, data, "")
    except InputError as err:
        raise InputError(f"{source}: {err}") from None


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None) -> T:
    """Build ``cls`` from a YAML file plus dotted overrides, strictly."""
    data = read_yaml(path) if path is not None else {}
    data = apply_overrides(data, overrides or [])
    try:
        return _build(cls, data, "")
    except InputError as err:
        raise InputError(f"{path}: {err}" if path is not None else str(err)) from None


def to_dict(cfg: Any) -> dict[str, Any]:
    """A dataclass config as plain data, ready for YAML."""
    return dataclasses.asdict(cfg)


def dump_yaml(cfg: Any) -> str:
    """The resolved config as YAML text (stable key order)."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def config_hash(cfg: Any) -> str:
    """sha256 of the resolved config's canonical YAML."""
    return hashlib.sha256(yaml.safe_dump(to_dict(cfg), sort_keys=True).encode()).hexdigest()


def split_cli(argv: list[str]) -> tuple[list[str], list[str]]:
    """Separate ``key=value`` overrides from ordinary argparse arguments."""
    flags: list[str] = []
    overrides: list[str] = []
    for arg in argv:
        (overrides if "=" in arg and not arg.startswith("-") else flags).append(arg)
    return flags, overrides


def config_from_cli(
    cls: type[T], argv: list[str] | None, prog: str, doc: str | None, config_required: bool = False
) -> T:
    """A recipe's command line, ``--config FILE key=value …``, validated into ``cls``."""
    flags, overrides = split_cli(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(prog=prog, description=(doc or "").split("\n\n")[0])
    ap.add_argument(
        "--config", required=config_required, help="YAML config; key=value pairs override its keys"
    )
    args = ap.parse_args(flags)
    return load_config(cls, args.config, overrides)
