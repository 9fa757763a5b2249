"""YAML traces: parse one from a completion, check its steps, execute it exactly.

The structured trace format (lab notebook 002): the model writes a YAML list of steps
inside ``<reasoning>…</reasoning>`` and a solver, not the model, does the arithmetic::

    - {op: init, var: rate, value: 49}
    - {op: init, var: time, value: 5}
    - {op: compute, compute_op: mul, args: [rate, time], var: quantity}
    - {op: query, var: quantity}

Accepted shapes: a list of steps; one mapping ``{expert: NAME, trace: [steps]}`` (or one
step mapping); a composed list of such sub-traces, run in order, where a sub-trace reads the
previous one's answer with ``{op: init, var: X, source: prev.result}`` (``from:`` also works).

Ops (an argument is a variable name or a number literal; ``var`` names the output):

- ``init``: ``var`` and ``value`` (a number) or ``source``/``from: prev.result``.
  Redefining an existing variable is invalid (the notebook's "variable overwriting").
- ``compute``: ``compute_op`` in ``COMPUTE_OPS``, ``args`` (add/mul: 2 or more, the others
  exactly 2), ``var``.
- ``percent_of`` / ``percent_off`` / ``percent_increase``: ``base``, ``rate`` (percent),
  ``var``; they give base·rate/100, base·(1 − rate/100), base·(1 + rate/100).
- ``consume``: ``var`` (existing), ``amount``: var −= amount.
- ``transfer``: ``from``, ``to`` (existing), ``amount``: moves amount from one to the other.
- ``query``: ``var``; exactly one, the last step of every (sub-)trace.

A sub-trace that names an ``expert`` may only use that expert's ops (``EXPERT_OPS``);
anything else is the notebook's cross-expert contamination and invalid (``op_outside_expert``).

Anti-short-circuit rule: a query may not target a variable that only an ``init`` set (one
that no compute or domain step produced or changed); such a trace is invalid with kind
``short_circuit``. Arithmetic is ``fractions.Fraction`` (a YAML ``0.1`` is exactly 1/10),
never ``eval``; YAML is read with ``safe_load`` after size and nesting checks, and numbers
are capped in size, so any completion is handled in bounded time.

Outcomes and reward tiers (the notebook's verifier; ``TraceResult.outcome`` / ``tier``), in
the order they are decided: no trace (``parse_failure``: nothing trace-shaped was read;
``invalid_steps``: steps that fail typed validation — unknown op, missing or unknown field,
a non-number value) → tier ``no_trace``; ``wrong_expert``: the sub-traces' experts differ from
the gold experts, only where those are known (synthetic data) → ``wrong_expert``;
``short_circuit`` and ``failed_execution`` (op outside its expert, undefined or redefined
variable, unknown expert, division by zero, no query, a failing sub-trace) → ``failed``;
``wrong_answer`` (executed, another value) and ``correct``. Only an executed trace is valid.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Sequence
from fractions import Fraction
from typing import Any

import yaml

from common.answers import REASONING_CLOSE, REASONING_OPEN, as_text, parse_number

MAX_YAML_CHARS = 16_000  # a reasoning block longer than this is not parsed (parse failure)
MAX_NESTING = 16  # flow brackets / block indentation levels
MAX_STEPS = 256  # steps over all sub-traces
MAX_ARGS = 32
MAX_NUMBER_BITS = 256  # numerator or denominator past this: invalid (bounds the arithmetic)
MAX_NAME_CHARS = 64

PREV_RESULT = "prev.result"
COMPUTE_OPS = ("add", "sub", "mul", "div", "floordiv", "mod")
PERCENT_OPS = ("percent_of", "percent_off", "percent_increase")
OPS = ("init", "compute", *PERCENT_OPS, "consume", "transfer", "query")
EXPERT_OPS: dict[str, tuple[str, ...]] = {
    "arithmetic": ("init", "compute", "query"),
    "comparison": ("init", "compute", "query"),
    "rate_equation": ("init", "compute", "query"),
    "percentage": ("init", *PERCENT_OPS, "query"),
    "entity_track": ("init", "consume", "transfer", "query"),
}
# Allowed keys per op (beyond ``op``); the required ones are checked in ``_run_step``.
FIELDS: dict[str, frozenset[str]] = {
    "init": frozenset({"var", "value", "source", "from"}),
    "compute": frozenset({"compute_op", "args", "var"}),
    "consume": frozenset({"var", "amount"}),
    "transfer": frozenset({"from", "to", "amount"}),
    "query": frozenset({"var"}),
    **{op: frozenset({"base", "rate", "var"}) for op in PERCENT_OPS},
}

# Error kinds. Parse failures: no trace could be read at all.
PARSE_KINDS = ("no_reasoning", "too_large", "yaml_error", "not_a_trace")
# Invalid traces: read, but not a well-formed executable trace.
INVALID_KINDS = (
    "schema",
    "unknown_op",
    "unknown_expert",
    "op_outside_expert",
    "undefined_var",
    "redefined_var",
    "bad_number",
    "math_error",
    "no_query",
    "short_circuit",
)
# Steps that fail typed validation: no usable trace (the notebook's 0.0 tier), like a parse failure.
TYPED_KINDS = ("schema", "unknown_op", "bad_number")
OUTCOMES = (
    "parse_failure",
    "invalid_steps",
    "wrong_expert",
    "short_circuit",
    "failed_execution",
    "wrong_answer",
    "correct",
)
# Reward tier of each outcome (``common.rewards.RewardConfig`` holds the tier values).
TIERS = {
    "parse_failure": "no_trace",
    "invalid_steps": "no_trace",
    "wrong_expert": "wrong_expert",
    "short_circuit": "failed",
    "failed_execution": "failed",
    "wrong_answer": "wrong_answer",
    "correct": "correct",
}

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*")


@dataclasses.dataclass(frozen=True)
class TraceResult:
    """What became of one completion's trace.

    ``parsed``: a trace-shaped YAML value was read; ``valid``: every step checked and the
    trace executed; ``value``: the queried value (only when valid); ``error`` / ``error_kind``:
    why not (a kind from ``PARSE_KINDS`` or ``INVALID_KINDS``); ``steps``: the steps read,
    flattened over sub-traces (empty on a parse failure); ``experts``: each sub-trace's
    ``expert`` as written (None where it names none or names a non-string).
    """

    parsed: bool
    valid: bool
    value: Fraction | None = None
    error: str | None = None
    error_kind: str | None = None
    steps: tuple[dict[str, Any], ...] = ()
    experts: tuple[str | None, ...] = ()

    def outcome(self, gold: Fraction | None, gold_experts: Sequence[str] | None = None) -> str:
        """One of ``OUTCOMES`` against a gold number (None: never correct) and, where known, the
        gold experts of the sub-traces in order (``["percentage", "arithmetic"]``)."""
        if not self.parsed:
            return "parse_failure"
        if self.error_kind in TYPED_KINDS:
            return "invalid_steps"
        if gold_experts and tuple(self.experts) != tuple(gold_experts):
            return "wrong_expert"
        if not self.valid:
            return "short_circuit" if self.error_kind == "short_circuit" else "failed_execution"
        return "correct" if gold is not None and self.value == gold else "wrong_answer"

    def tier(self, gold: Fraction | None, gold_experts: Sequence[str] | None = None) -> str:
        """The reward tier (``no_trace``, ``wrong_expert``, ``failed``, ``wrong_answer``, ``correct``)."""
        return TIERS[self.outcome(gold, gold_experts)]


class TraceError(Exception):
    """A trace that was read but cannot be executed; ``kind`` is one of ``INVALID_KINDS``."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def format_value(value: Fraction | None) -> str | None:
    """``18``, ``2.5``, ``-1/3``: an exact value as text (a decimal when it terminates)."""
    if value is None:
        return None
    if value.denominator == 1:
        return str(value.numerator)
    d = value.denominator
    twos = fives = 0
    while d % 2 == 0:
        d, twos = d // 2, twos + 1
    while d % 5 == 0:
        d, fives = d // 5, fives + 1
    if d != 1:
        return f"{value.numerator}/{value.denominator}"
    places = max(twos, fives)
    scaled = abs(value) * 10**places
    digits = str(scaled.numerator).rjust(places + 1, "0")
    sign = "-" if value < 0 else ""
    return f"{sign}{digits[:-places]}.{digits[-places:]}"


# ----------------------------------------------------------------------------- extraction


def reasoning_block(completion: Any) -> str | None:
    """The text between the first ``<reasoning>`` and the first ``</reasoning>`` after it, or None."""
    text = as_text(completion)
    start = text.find(REASONING_OPEN)
    if start < 0:
        return None
    start += len(REASONING_OPEN)
    end = text.find(REASONING_CLOSE, start)
    return None if end < 0 else text[start:end]


def _strip_fence(text: str) -> str:
    """The body of a ```yaml code fence wrapped around the whole block, else the text."""
    s = text.strip()
    if s.startswith("```") and s.endswith("```") and len(s) >= 6:
        first_newline = s.find("\n")
        if first_newline > 0:
            return s[first_newline + 1 : -3]
    return s


def _nesting(text: str) -> int:
    """A cheap upper bound on the YAML nesting depth: flow brackets and block indentation."""
    depth = deepest = 0
    for ch in text:
        if ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth = max(0, depth - 1)
    for line in text.splitlines():
        body = line.lstrip(" ")
        indent = len(line) - len(body)
        dashes = 0
        while body.startswith(("- ", "-\t")):
            body, dashes = body[2:].lstrip(" \t"), dashes + 1
        deepest = max(deepest, indent // 2 + dashes)
    return deepest


def load_yaml(text: str) -> tuple[Any, str | None, str | None]:
    """``(value, error, error_kind)``: ``text`` through ``yaml.safe_load`` within the size limits."""
    if len(text) > MAX_YAML_CHARS:
        return None, f"trace is {len(text)} characters (limit {MAX_YAML_CHARS})", "too_large"
    if _nesting(text) > MAX_NESTING:
        return None, f"trace nests deeper than {MAX_NESTING} levels", "too_large"
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        return yaml.load(text, Loader=loader), None, None  # safe_load, with libyaml when present
    except (yaml.YAMLError, RecursionError, ValueError, TypeError, OverflowError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        return None, f"YAML: {first[:200]}", "yaml_error"


def _sub_traces(doc: Any) -> list[tuple[str | None, Any]] | None:
    """``[(expert or None, steps value)]`` for a trace-shaped YAML value, else None."""
    if isinstance(doc, dict):
        if "trace" in doc:
            return [(doc.get("expert"), doc["trace"])]
        if "op" in doc:
            return [(None, [doc])]
        return None
    if isinstance(doc, list) and doc:
        if all(isinstance(s, dict) and "trace" in s for s in doc):
            return [(s.get("expert"), s["trace"]) for s in doc]
        if any(isinstance(s, dict) and "op" in s for s in doc):
            return [(None, doc)]
    return None


# ----------------------------------------------------------------------------- execution


def _number(value: Any, where: str) -> Fraction:
    """A YAML scalar as an exact number: ints, floats by their decimal text, numeric strings."""
    if isinstance(value, bool) or value is None:
        raise TraceError("bad_number", f"{where}: expected a number, got {value!r}")
    if isinstance(value, int):
        out = Fraction(value)
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise TraceError("bad_number", f"{where}: expected a finite number, got {value!r}")
        out = Fraction(repr(value))
    elif isinstance(value, str) and parse_number(value) is not None:
        out = parse_number(value)  # type: ignore[assignment]
    else:
        raise TraceError("bad_number", f"{where}: expected a number, got {_short(value)}")
    return _bounded(out, where)


def _bounded(value: Fraction, where: str) -> Fraction:
    if max(abs(value.numerator).bit_length(), value.denominator.bit_length()) > MAX_NUMBER_BITS:
        raise TraceError("bad_number", f"{where}: number too large (over {MAX_NUMBER_BITS} bits)")
    return value


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _name(step: dict[str, Any], key: str, where: str) -> str:
    if key not in step:
        raise TraceError("schema", f"{where}: {key}: missing")
    name = step[key]
    if not isinstance(name, str) or len(name) > MAX_NAME_CHARS or not _NAME.fullmatch(name):
        raise TraceError("schema", f"{where}: {key}: expected a variable name, got {_short(name)}")
    return name


class _Machine:
    """Variables of one sub-trace and the names only an ``init`` ever set."""

    def __init__(self, prev: Fraction | None) -> None:
        self.env: dict[str, Fraction] = {}
        self.init_only: set[str] = set()
        self.prev = prev

    def operand(self, step: dict[str, Any], key: str, where: str) -> Fraction:
        if key not in step:
            raise TraceError("schema", f"{where}: {key}: missing")
        return self.lookup(step[key], f"{where}: {key}")

    def lookup(self, arg: Any, where: str) -> Fraction:
        if isinstance(arg, str) and _NAME.fullmatch(arg) and parse_number(arg) is None:
            if arg not in self.env:
                raise TraceError("undefined_var", f"{where}: variable {arg!r} is not defined")
            return self.env[arg]
        return _number(arg, where)

    def existing(self, step: dict[str, Any], key: str, where: str) -> str:
        name = _name(step, key, where)
        if name not in self.env:
            raise TraceError("undefined_var", f"{where}: {key}: variable {name!r} is not defined")
        return name

    def set(self, name: str, value: Fraction, where: str) -> None:
        self.env[name] = _bounded(value, where)
        self.init_only.discard(name)


def _compute(op: str, args: list[Fraction], where: str) -> Fraction:
    if op in ("add", "mul"):
        if len(args) < 2:
            raise TraceError("schema", f"{where}: args: {op} needs 2 or more, got {len(args)}")
        out = args[0]
        for a in args[1:]:
            out = _bounded(out + a if op == "add" else out * a, where)
        return out
    if len(args) != 2:
        raise TraceError("schema", f"{where}: args: {op} needs exactly 2, got {len(args)}")
    a, b = args
    if op == "sub":
        return a - b
    if b == 0:
        raise TraceError("math_error", f"{where}: {op} by zero")
    if op == "div":
        return a / b
    return Fraction(a // b) if op == "floordiv" else a % b


def _run_step(m: _Machine, step: dict[str, Any], where: str) -> None:
    op = step["op"]
    if op == "init":
        name = _name(step, "var", where)
        if name in m.env:
            raise TraceError("redefined_var", f"{where}: init redefines variable {name!r}")
        sources = [k for k in ("value", "source", "from") if k in step]
        if len(sources) != 1:
            raise TraceError("schema", f"{where}: init needs exactly one of value, source, from")
        if sources[0] == "value":
            value = _number(step["value"], f"{where}: value")
        else:
            if step[sources[0]] != PREV_RESULT:
                raise TraceError(
                    "schema",
                    f"{where}: {sources[0]}: expected {PREV_RESULT!r}, got {_short(step[sources[0]])}",
                )
            if m.prev is None:
                raise TraceError("undefined_var", f"{where}: {PREV_RESULT} in the first sub-trace")
            value = m.prev
        m.env[name] = value
        m.init_only.add(name)
    elif op == "compute":
        kind = step.get("compute_op")
        if kind not in COMPUTE_OPS:
            raise TraceError(
                "unknown_op", f"{where}: compute_op: {_short(kind)} unknown; known: {', '.join(COMPUTE_OPS)}"
            )
        args = step.get("args")
        if not isinstance(args, list) or len(args) > MAX_ARGS:
            raise TraceError("schema", f"{where}: args: expected a list of up to {MAX_ARGS} operands")
        values = [m.lookup(a, f"{where}: args[{i}]") for i, a in enumerate(args)]
        name = _name(step, "var", where)
        m.set(name, _compute(kind, values, where), where)
    elif op in PERCENT_OPS:
        base = m.operand(step, "base", where)
        rate = m.operand(step, "rate", where) / 100
        factor = {"percent_of": rate, "percent_off": 1 - rate, "percent_increase": 1 + rate}[op]
        m.set(_name(step, "var", where), base * factor, where)
    elif op == "consume":
        name = m.existing(step, "var", where)
        m.set(name, m.env[name] - m.operand(step, "amount", where), where)
    elif op == "transfer":
        src, dst = m.existing(step, "from", where), m.existing(step, "to", where)
        amount = m.operand(step, "amount", where)
        m.set(src, m.env[src] - amount, where)
        m.set(dst, m.env[dst] + amount, where)


def _run_sub_trace(steps: list[dict[str, Any]], prev: Fraction | None, label: str) -> Fraction:
    m = _Machine(prev)
    for i, step in enumerate(steps):
        where = f"{label}step {i + 1} ({step['op']})"
        if step["op"] == "query":
            if i != len(steps) - 1:
                raise TraceError("schema", f"{where}: query must be the last step of a trace")
            name = m.existing(step, "var", where)
            if name in m.init_only:
                raise TraceError(
                    "short_circuit",
                    f"{where}: query targets {name!r}, which only an init set (anti-short-circuit)",
                )
            return m.env[name]
        _run_step(m, step, where)
    raise TraceError("no_query", f"{label}no query step")


def _check_steps(raw: Any, expert: Any, label: str) -> list[dict[str, Any]]:
    """The steps of one sub-trace, each a mapping with a known op and only its own fields."""
    if expert is not None and (not isinstance(expert, str) or expert not in EXPERT_OPS):
        raise TraceError(
            "unknown_expert", f"{label}expert: {_short(expert)} unknown; known: {', '.join(EXPERT_OPS)}"
        )
    if not isinstance(raw, list) or not raw:
        raise TraceError("schema", f"{label}trace: expected a non-empty list of steps")
    steps = []
    for i, step in enumerate(raw):
        where = f"{label}step {i + 1}"
        if not isinstance(step, dict):
            raise TraceError(
                "schema", f"{where}: expected a mapping like {{op: ..., ...}}, got {_short(step)}"
            )
        op = step.get("op")
        if op not in OPS:
            raise TraceError("unknown_op", f"{where}: op: {_short(op)} unknown; known: {', '.join(OPS)}")
        extra = sorted(str(k) for k in step if k != "op" and k not in FIELDS[op])
        if extra:
            raise TraceError(
                "schema",
                f"{where} ({op}): {extra[0]}: unknown field; allowed: {', '.join(sorted(FIELDS[op]))}",
            )
        if expert is not None and op not in EXPERT_OPS[expert]:
            raise TraceError(
                "op_outside_expert",
                f"{where}: op {op} is not one of expert {expert}'s ops ({', '.join(EXPERT_OPS[expert])})",
            )
        steps.append(step)
    return steps


def execute(doc: Any) -> TraceResult:
    """Check and run a trace-shaped YAML value (see the module docstring)."""
    subs = _sub_traces(doc)
    if subs is None:
        kind = type(doc).__name__ if doc is not None else "empty"
        return TraceResult(
            False, False, error=f"YAML is {kind}, not a trace (a list of steps)", error_kind="not_a_trace"
        )
    experts = tuple(e if isinstance(e, str) else None for e, _ in subs)
    flat: list[dict[str, Any]] = []
    prev: Fraction | None = None
    try:
        checked = []
        for k, (expert, raw) in enumerate(subs):
            label = f"sub-trace {k + 1}: " if len(subs) > 1 else ""
            steps = _check_steps(raw, expert, label)
            flat.extend(steps)
            if len(flat) > MAX_STEPS:
                raise TraceError("schema", f"more than {MAX_STEPS} steps")
            checked.append((steps, label))
        for steps, label in checked:
            prev = _run_sub_trace(steps, prev, label)
    except TraceError as err:
        return TraceResult(
            True, False, error=str(err), error_kind=err.kind, steps=tuple(flat), experts=experts
        )
    return TraceResult(True, True, value=prev, steps=tuple(flat), experts=experts)


def parse_trace(completion: Any) -> TraceResult:
    """Read the YAML trace in a completion's ``<reasoning>`` block, check it and execute it."""
    block = reasoning_block(completion)
    if block is None:
        return TraceResult(False, False, error="no closed <reasoning> block", error_kind="no_reasoning")
    doc, error, kind = load_yaml(_strip_fence(block))
    if error is not None:
        return TraceResult(False, False, error=error, error_kind=kind)
    return execute(doc)
