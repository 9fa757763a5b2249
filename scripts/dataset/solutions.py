"""Worked solutions in GSM8K's shape turned into steps, and the shape features derived from them.

A GSM8K solution is one step per line, with calculator annotations such as
``48/2 = <<48/2=24>>24``, and a last line ``#### 72``. ``parse_solution`` removes each
annotation from the text and keeps it as ``calc: {"expr": "48/2", "result": "24"}``; the
``####`` line becomes the final answer with thousands separators removed.
"""

from __future__ import annotations

import ast
import operator
import re
from collections import Counter
from typing import Any

CALC = re.compile(r"<<([^<>]*)>>")
FINAL = "####"

OPS = {
    ast.Add: "+",
    ast.Sub: "-",
    ast.Mult: "*",
    ast.Div: "/",
    ast.FloorDiv: "//",
    ast.Mod: "%",
    ast.Pow: "**",
}
ADDITIVE, MULTIPLICATIVE = {"+", "-"}, {"*", "/", "//", "%", "**"}


class SolutionError(ValueError):
    """A solution text that does not have the expected shape."""


def clean_number(text: str) -> str:
    """``"1,000"`` -> ``"1000"``; surrounding space removed."""
    return text.strip().replace(",", "")


def parse_solution(text: str, require_final: bool = True) -> tuple[list[dict[str, Any]], str | None]:
    """Steps (``i``, ``type``, ``content``, optional ``calc``) and the ``####`` answer of a solution."""
    lines = [line.strip() for line in text.splitlines()]
    lines = [line for line in lines if line]
    final = None
    if lines and lines[-1].startswith(FINAL):
        final = clean_number(lines.pop()[len(FINAL) :])
        if not final:
            raise SolutionError("the '####' line has no answer")
    elif require_final:
        raise SolutionError("no final '#### <answer>' line")
    steps: list[dict[str, Any]] = []
    for line in lines:
        if line.startswith(FINAL):
            raise SolutionError(f"'####' before the last line: {line[:60]!r}")
        notes = CALC.findall(line)
        if len(notes) > 1:
            raise SolutionError(
                f"{len(notes)} calculator annotations on one line (one is supported): {line[:60]!r}"
            )
        step: dict[str, Any] = {"i": len(steps) + 1, "type": "text", "content": ""}
        if notes:
            expr, eq, result = notes[0].rpartition("=")
            if not eq or not expr.strip():
                raise SolutionError(f"calculator annotation without 'expr=result': <<{notes[0]}>>")
            step["type"] = "compute"
            step["calc"] = {"expr": expr.strip(), "result": result.strip()}
        content = re.sub(r"[ \t]{2,}", " ", CALC.sub("", line)).strip()
        if not content:  # a line that was only an annotation
            content = f"{step['calc']['expr']} = {step['calc']['result']}"
        step["content"] = content
        steps.append(step)
    return steps, final


def expr_ops(expr: str) -> Counter[str]:
    """Binary operators used in a calculator expression (unary minus is not an operation)."""
    try:
        tree = ast.parse(expr.replace("^", "**"), mode="eval")
    except SyntaxError:
        return Counter()
    return Counter(
        OPS[type(node.op)] for node in ast.walk(tree) if isinstance(node, ast.BinOp) and type(node.op) in OPS
    )


def solution_ops(steps: list[dict[str, Any]]) -> Counter[str]:
    total: Counter[str] = Counter()
    for step in steps:
        if "calc" in step:
            total += expr_ops(step["calc"]["expr"])
    return total


def op_category(ops: Counter[str]) -> str:
    """``additive`` (only + -), ``multiplicative`` (only * / ...), ``mixed`` (both) or ``no_calc``."""
    used = set(ops)
    if not used:
        return "no_calc"
    if used <= ADDITIVE:
        return "additive"
    if used <= MULTIPLICATIVE:
        return "multiplicative"
    return "mixed"


def step_difficulty(n_steps: int, easy_max: int, medium_max: int) -> str:
    """``easy`` up to ``easy_max`` steps, ``medium`` up to ``medium_max``, else ``hard``."""
    if n_steps <= easy_max:
        return "easy"
    return "medium" if n_steps <= medium_max else "hard"


_BINARY = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
}


def eval_expr(expr: str) -> float | None:
    """Value of an arithmetic expression (numbers, + - * / // % **, parentheses), or None if it is not one."""

    def walk(node: ast.AST) -> float:
        if isinstance(node, ast.Expression):
            return walk(node.body)
        if (
            isinstance(node, ast.Constant)
            and isinstance(node.value, int | float)
            and not isinstance(node.value, bool)
        ):
            return float(node.value)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
            value = walk(node.operand)
            return -value if isinstance(node.op, ast.USub) else value
        if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
            return _BINARY[type(node.op)](walk(node.left), walk(node.right))
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Pow):
            base, exponent = walk(node.left), walk(node.right)
            if abs(exponent) > 64:
                raise ValueError("exponent too large")
            return float(base**exponent)
        raise ValueError("unsupported")

    try:
        return walk(ast.parse(expr.replace(",", ""), mode="eval"))
    except (SyntaxError, ValueError, TypeError, ZeroDivisionError, OverflowError, RecursionError):
        return None


def calc_is_right(calc: dict[str, str], rel_tol: float = 1e-6) -> bool:
    """Does the annotation's expression evaluate to its stated result?"""
    value, stated = eval_expr(calc["expr"]), eval_expr(clean_number(calc["result"]))  # results like "3/4"
    return value is not None and stated is not None and abs(value - stated) <= rel_tol * max(1.0, abs(value))
