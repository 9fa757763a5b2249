"""Keyword and tool-call checks for the multi-domain prompt suite (code, reasoning, tools).

An item's ``checks``:
``{"keywords": ["def", ["return", "yield"]], "tool": {"name": "read_file", "args": {"path": "a.txt"}},
"no_tool": false}``. A keyword is a string or a list of alternatives, matched
case-insensitively as a substring. A tool check passes when some tool call parsed from the
text has that name and every listed argument (extra arguments are allowed; strings compare
case-insensitively, and ``./docs/`` equals ``docs``). ``no_tool`` fails any completion that
calls a tool.

Tool calls are parsed from the model's text, the only thing a local model gives back:
JSON inside ``<tool_call>...</tool_call>`` tags or inside fenced ```json code blocks, as
``{"name", "arguments"}`` (also ``args``/``parameters``, or ``{"function": {...}}``),
one object or a list of them.
"""

from __future__ import annotations

import json
import re
from typing import Any

_TAGGED = re.compile(r"<tool_call>(.*?)(?:</tool_call>|$)", re.DOTALL)
_FENCED = re.compile(r"```(?:json|JSON)?[ \t]*\n(.*?)```", re.DOTALL)
FAILURES = (
    "missing_prediction",
    "no_tool_call",
    "wrong_tool",
    "wrong_args",
    "unexpected_tool_call",
    "missing_keywords",
)


def _as_call(obj: Any) -> dict[str, Any] | None:
    if not isinstance(obj, dict):
        return None
    if isinstance(obj.get("function"), dict):  # OpenAI style
        obj = obj["function"]
    name = obj.get("name", obj.get("tool"))
    if not isinstance(name, str) or not name.strip():
        return None
    args: Any = next((obj[k] for k in ("arguments", "args", "parameters", "input") if k in obj), {})
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except ValueError:
            args = {"_raw": args}
    return {"name": name.strip(), "arguments": args if isinstance(args, dict) else {"_value": args}}


def parse_tool_calls(text: str) -> list[dict[str, Any]]:
    """Tool calls in ``text``: ``[{"name", "arguments"}]`` from ``<tool_call>`` tags and ```json blocks."""
    calls = []
    for pattern in (_TAGGED, _FENCED):
        for chunk in pattern.findall(text):
            try:
                value = json.loads(chunk.strip())
            except ValueError:
                continue
            for obj in value if isinstance(value, list) else [value]:
                call = _as_call(obj)
                if call is not None:
                    calls.append(call)
    return calls


def _norm(text: str) -> str:
    """Case-folded, stripped, and path-like spellings unified (``./docs/`` == ``docs``)."""
    text = text.strip().lower()
    text = text.removeprefix("./")
    return text.rstrip("/") or text


def _same(got: Any, want: Any) -> bool:
    if isinstance(want, str) and isinstance(got, str):
        return _norm(got) == _norm(want)
    if isinstance(want, int | float) and not isinstance(want, bool):
        try:
            return float(got) == float(want)
        except (TypeError, ValueError):
            return False
    return got == want


def _keyword_hits(text: str, keywords: list[Any]) -> list[bool]:
    low = text.lower()
    return [any(str(alt).lower() in low for alt in (kw if isinstance(kw, list) else [kw])) for kw in keywords]


def check_completion(completion: str, checks: dict[str, Any]) -> dict[str, Any]:
    """Verdicts on one completion: ``pass``, ``keywords``, ``tool`` (None when not checked), details."""
    keywords = checks.get("keywords") or []
    hits = _keyword_hits(completion, keywords)
    keywords_ok = all(hits)
    calls = parse_tool_calls(completion)
    want = checks.get("tool")
    tool_ok: bool | None = None
    failure = None
    if want is not None:
        named = [c for c in calls if c["name"] == want["name"]]
        args = want.get("args") or {}
        tool_ok = any(
            all(k in c["arguments"] and _same(c["arguments"][k], v) for k, v in args.items()) for c in named
        )
        if not tool_ok:
            failure = "no_tool_call" if not calls else "wrong_tool" if not named else "wrong_args"
    elif checks.get("no_tool") and calls:
        tool_ok, failure = False, "unexpected_tool_call"
    if failure is None and not keywords_ok:
        failure = "missing_keywords"
    return {
        "pass": keywords_ok and tool_ok is not False,
        "keywords": keywords_ok,
        "tool": tool_ok,
        "keyword_fraction": sum(hits) / len(hits) if hits else 1.0,
        "missing_keywords": [kw for kw, hit in zip(keywords, hits, strict=True) if not hit],
        "tool_calls": calls,
        "failure": failure,
    }


def check_suite_record(rec: Any, where: str) -> None:
    """Validate one prompt-suite record; ``InputError`` names ``where`` and the field."""
    from common.errors import InputError

    checks = rec.get("checks") if isinstance(rec, dict) else None
    if not isinstance(checks, dict):
        raise InputError(f"{where}: checks: expected an object")
    unknown = sorted(set(checks) - {"keywords", "tool", "no_tool"})
    if unknown:
        raise InputError(f"{where}: checks.{unknown[0]}: unknown; allowed: keywords, tool, no_tool")
    kws = checks.get("keywords", [])
    if not isinstance(kws, list) or not all(isinstance(k, str) or (isinstance(k, list) and k) for k in kws):
        raise InputError(f"{where}: checks.keywords: expected a list of strings or lists of alternatives")
    tool = checks.get("tool")
    if tool is not None and (not isinstance(tool, dict) or not isinstance(tool.get("name"), str)):
        raise InputError(f"{where}: checks.tool: expected {{name: str, args: {{...}}}}")
    if not kws and tool is None and not checks.get("no_tool"):
        raise InputError(f"{where}: checks: nothing to check (no keywords, tool or no_tool)")
