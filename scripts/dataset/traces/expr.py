"""Exact arithmetic expressions of pattern files: derived values, constraints and answers.

An expression is Python-shaped arithmetic over the pattern's names: numbers, names,
``+ - * / // %``, unary minus, parentheses and ``min(...)`` / ``max(...)``. It is parsed once
with ``ast`` (never ``eval``) into a small tree and evaluated with ``fractions.Fraction``, so
``price * 3 / 4`` is exact and a pattern can ask for an integer result.
"""

from __future__ import annotations

import ast
from collections.abc import Mapping
from dataclasses import dataclass
from fractions import Fraction

_BINARY = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.FloorDiv: "//", ast.Mod: "%"}
_FUNCTIONS = ("min", "max")


class ExprError(ValueError):
    """An expression that does not parse, names something unknown, or divides by zero."""


@dataclass(frozen=True)
class Expr:
    """A parsed expression: its text, the names it reads, and its tree."""

    text: str
    names: frozenset[str]
    tree: ast.expr

    def __call__(self, env: Mapping[str, Fraction]) -> Fraction:
        return _eval(self.tree, env)


def parse_expr(text: object) -> Expr:
    """Parse ``text`` (a string or a number) into an ``Expr``; ``ExprError`` says why not."""
    if isinstance(text, bool) or not isinstance(text, str | int | float):
        raise ExprError(f"expected an expression (text or number), got {type(text).__name__}")
    source = str(text).strip()
    try:
        tree = ast.parse(source, mode="eval").body
    except SyntaxError as err:
        raise ExprError(f"{source!r} does not parse: {err.msg}") from None
    names: set[str] = set()
    _check(tree, source, names)
    return Expr(source, frozenset(names), tree)


def _check(node: ast.AST, source: str, names: set[str]) -> None:
    if isinstance(node, ast.Constant):
        if isinstance(node.value, bool) or not isinstance(node.value, int | float):
            raise ExprError(f"{source!r}: only numbers may appear as constants, got {node.value!r}")
    elif isinstance(node, ast.Name):
        if node.id in _FUNCTIONS:
            raise ExprError(f"{source!r}: {node.id} is a function, call it as {node.id}(a, b)")
        names.add(node.id)
    elif isinstance(node, ast.Attribute):
        names.add(_dotted(node, source))
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        _check(node.operand, source, names)
    elif isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        _check(node.left, source, names)
        _check(node.right, source, names)
    elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _FUNCTIONS:
        if node.keywords or len(node.args) < 2:
            raise ExprError(f"{source!r}: {node.func.id}() takes two or more arguments")
        for arg in node.args:
            _check(arg, source, names)
    else:
        raise ExprError(
            f"{source!r}: unsupported syntax ({type(node).__name__}); use numbers, names, + - * / // %, "
            "parentheses, min() and max()"
        )


def _dotted(node: ast.AST, source: str) -> str:
    """``choice.value`` style names: a dotted path of plain names."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value, source)}.{node.attr}"
    raise ExprError(f"{source!r}: unsupported syntax in a dotted name")


def _eval(node: ast.AST, env: Mapping[str, Fraction]) -> Fraction:
    if isinstance(node, ast.Constant):
        constant = node.value
        if isinstance(constant, float):
            return Fraction(repr(constant))
        if isinstance(constant, int):
            return Fraction(constant)
        raise ExprError(f"unsupported constant {constant!r}")
    if isinstance(node, ast.Name | ast.Attribute):
        name = _dotted(node, "")
        if name not in env:
            raise ExprError(f"unknown name {name!r}")
        return env[name]
    if isinstance(node, ast.UnaryOp):
        value = _eval(node.operand, env)
        return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.Call):
        values = [_eval(a, env) for a in node.args]
        return min(values) if node.func.id == "min" else max(values)  # type: ignore[attr-defined]
    assert isinstance(node, ast.BinOp)
    a, b = _eval(node.left, env), _eval(node.right, env)
    op = _BINARY[type(node.op)]
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    if b == 0:
        raise ExprError("division by zero")
    if op == "/":
        return a / b
    return Fraction(a // b) if op == "//" else a % b
