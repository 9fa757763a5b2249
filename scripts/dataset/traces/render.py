"""Rendering one sampled pattern: question text, the flow-style YAML trace, the record.

Every step is written as one flow-style line (``- {op: init, var: eggs, value: 16}``), the
format the notebook settled on after mixed block/flow styles confused its models; a
composed trace is a list of ``{expert, trace}`` blocks. The record's ``reasoning`` is the
trace text and its ``steps`` are the trace's lines.
"""

from __future__ import annotations

import re
from fractions import Fraction
from typing import Any

from common.records import make_record
from common.traces import format_value
from scripts.dataset.traces.patterns import PLACEHOLDER, Literal, Pattern, SubTrace
from scripts.dataset.traces.vocab import capitalize, pluralize, with_article

# Canonical field order per op (op first), so every trace of a shape reads the same.
FIELD_ORDER = {
    "init": ("var", "value", "source"),
    "compute": ("compute_op", "args", "var"),
    "percent_of": ("base", "rate", "var"),
    "percent_off": ("base", "rate", "var"),
    "percent_increase": ("base", "rate", "var"),
    "consume": ("var", "amount"),
    "transfer": ("from", "to", "amount"),
    "query": ("var",),
}
_YAML_WORDS = frozenset({"yes", "no", "on", "off", "true", "false", "null", "y", "n", "~"})
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*")


class RenderError(ValueError):
    """A sample that cannot be written (a pattern bug the rejection counts will show)."""


def number_text(value: Fraction, money: bool = False) -> str:
    """``12``, ``2.5``, ``12,500``; with ``money``: ``$12``, ``$2.50``, ``$1,200``."""
    text = format_value(value)
    if text is None or "/" in text:
        raise RenderError(f"{value} is not a finite decimal")
    whole, _, frac = text.lstrip("-").partition(".")
    sign = "-" if value < 0 else ""
    if money:
        whole = f"{int(whole):,}"
        return f"{sign}${whole}.{frac.ljust(2, '0')}" if frac else f"{sign}${whole}"
    if len(whole) > 4:
        whole = f"{int(whole):,}"
    return f"{sign}{whole}.{frac}" if frac else f"{sign}{whole}"


class Context:
    """The values of one sample: vocabulary entries by slot, numbers and choices by name."""

    def __init__(self, entries: dict[str, dict[str, Any]], numbers: dict[str, Fraction],
                 choices: dict[str, dict[str, Any]]) -> None:  # fmt: skip
        self.entries = entries
        self.numbers = numbers
        self.choices = choices

    def resolve(self, ref: str, filters: list[str]) -> str:
        base, _, attr = ref.partition(".")
        value: Any
        if base in self.entries:
            entry = self.entries[base]
            if "plural" in filters and not attr:
                attr, filters = "plural", [f for f in filters if f != "plural"]
            value = entry[attr or "name"]
        elif base in self.choices and attr:
            value = self.choices[base][attr]
        else:
            value = self.numbers[base]
        for f in filters:
            if f == "money":
                if not isinstance(value, Fraction):
                    raise RenderError(f"${{{ref}|money}}: not a number")
                value = number_text(value, money=True)
            else:
                text = number_text(value) if isinstance(value, Fraction) else str(value)
                value = {"cap": capitalize, "lower": str.lower, "plural": pluralize, "a": with_article}[f](
                    text
                )
        return number_text(value) if isinstance(value, Fraction) else str(value)

    def operand(self, arg: Any) -> Any:
        """A trace operand: a variable name (rendered), a number, or a pattern value as a number."""
        if isinstance(arg, Literal):
            return self.numbers[arg.name]
        return self.render(arg) if isinstance(arg, str) else arg

    def render(self, text: str) -> str:
        def one(m: re.Match[str]) -> str:
            ref, *filters = [p.strip() for p in m.group(1).split("|")]
            return self.resolve(ref, filters)

        return PLACEHOLDER.sub(one, text)


def _scalar(value: Any) -> str:
    if isinstance(value, Fraction):
        return number_text(value).replace(",", "")
    if isinstance(value, bool):
        raise RenderError(f"a boolean in a trace: {value!r}")
    if isinstance(value, int | float):
        return _scalar(Fraction(repr(value)) if isinstance(value, float) else Fraction(value))
    text = str(value)
    if text.lower() in _YAML_WORDS:
        return f"'{text}'"
    return text


def step_line(step: dict[str, Any]) -> str:
    """``{op: compute, compute_op: mul, args: [rate, time], var: result}``."""
    parts = [f"op: {step['op']}"]
    for key in FIELD_ORDER[step["op"]]:
        if key in step:
            value = step[key]
            text = f"[{', '.join(_scalar(v) for v in value)}]" if isinstance(value, list) else _scalar(value)
            parts.append(f"{key}: {text}")
    return "{" + ", ".join(parts) + "}"


def render_steps(sub: SubTrace, ctx: Context) -> list[dict[str, Any]]:
    """The sub-trace's steps with names rendered and pattern values replaced by numbers."""
    out = []
    for step in sub.steps:
        new: dict[str, Any] = {}
        for key, value in step.items():
            if key in ("var", "from", "to") and isinstance(value, str) and value != "prev.result":
                value = ctx.render(value)
                if not _NAME.fullmatch(value):
                    raise RenderError(f"variable name {value!r} is not a plain name")
            elif key in ("value", "amount") and isinstance(value, str):
                value = ctx.numbers[value]
            elif key == "args":
                value = [ctx.operand(v) for v in value]
            elif key in ("base", "rate"):
                value = ctx.operand(value)
            new[key] = value
        out.append(new)
    return out


def trace_text(pattern: Pattern, ctx: Context) -> str:
    """The YAML trace of one sample, every step on one flow-style line."""
    if not pattern.composed:
        sub = pattern.subtraces[0]
        lines = [f"expert: {sub.expert}", "trace:"]
        lines += [f"- {step_line(s)}" for s in render_steps(sub, ctx)]
        return "\n".join(lines)
    lines = []
    for sub in pattern.subtraces:
        lines += [f"- expert: {sub.expert}", "  trace:"]
        lines += [f"  - {step_line(s)}" for s in render_steps(sub, ctx)]
    return "\n".join(lines)


_OP = re.compile(r"\{op: ([a-z_]+)")


def line_type(line: str) -> str:
    """The step type of one trace line: its op, or ``expert`` / ``trace`` for the headers."""
    m = _OP.search(line)
    if m:
        return m.group(1)
    return "expert" if "expert:" in line else "trace"


def trace_record(rid: str, question: str, answer: str, trace: str, meta: dict[str, Any]) -> dict[str, Any]:
    """A record whose ``reasoning`` is the YAML trace, one step per line (difficulty from its op count)."""
    steps = [
        {"i": k + 1, "type": line_type(line), "content": line} for k, line in enumerate(trace.split("\n"))
    ]
    n_ops = sum(s["type"] not in ("expert", "trace") for s in steps)
    return make_record(
        rid, question, answer, steps, {**meta, "difficulty": difficulty(n_ops), "n_ops": n_ops}
    )


def difficulty(n_ops: int) -> str:
    """``easy`` up to 4 ops, ``medium`` up to 7, else ``hard``."""
    return "easy" if n_ops <= 4 else "medium" if n_ops <= 7 else "hard"
