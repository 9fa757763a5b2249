"""GSM8K solutions -> YAML traces, with no model: calculator annotations become compute steps.

A GSM8K solution marks each calculation as ``<<48/2=24>>``. Each annotation's expression is
parsed (numbers, ``+ - * /``, parentheses) and every operator becomes a ``compute`` step
(runs of ``+`` or ``*`` become one step with several operands). Each number in it becomes:

- the variable of an earlier annotation whose result it is (the chain of the solution);
- else an ``init`` of a number written in the question (digits, ``$``, ``,``, ``%``),
  placed just before the first step that reads it and named after the word that follows the
  number there (``16 eggs`` -> ``eggs``): the notebook's hybrid naming;
- else a literal operand, when it is a common constant (7 days, 60 minutes, 100 percent, ...),
  a number word of the question (``twice`` 2, ``half`` 2 or 0.5, ``dozen`` 12, ``three`` 3)
  or a question percent as a fraction (``40%`` -> 0.4); any other number is ungrounded and the
  item is left out.

The answer is the last annotation result equal to the gold answer; steps it does not depend
on are dropped, computed values are named ``step1, step2, ..., result`` and the trace ends
with ``{op: query, var: result}``. The trace is then executed by ``common.traces`` exactly as
a model's completion would be, and kept only when it gives the gold answer. Every item left
out carries one reason from ``REASONS`` (the failure taxonomy in the build's manifest).
"""

from __future__ import annotations

import ast
import re
from collections import Counter
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

from tqdm import tqdm

from common.errors import InputError
from common.jsonl import iter_jsonl
from common.prompts import format_target
from common.traces import format_value, parse_trace
from scripts.dataset.solutions import CALC, FINAL, clean_number, op_category
from scripts.dataset.text import normalise
from scripts.dataset.traces.render import step_line, trace_record

SOURCE = "gsm8k_traces"
EXPERT = "arithmetic"
REASONS = {
    "no_annotation": "the solution has no calculator annotation",
    "bad_annotation": "an annotation is not 'expression=result'",
    "unsupported_expression": "an expression uses more than numbers, + - * / and parentheses",
    "annotation_inexact": "an annotation's stated result differs from its expression (rounded)",
    "ungrounded_number": "a number is neither in the question, an earlier result nor a common constant",
    "gold_not_computed": "no annotation computes the gold answer (it comes from the text)",
    "answer_is_question_number": "the gold answer is a number of the question, not a computed value",
    "too_long": "more compute steps than max_ops",
    "solver_mismatch": "the trace does not execute to the gold answer",
    "duplicate_question": "the same question (normalised) appeared earlier",
}
# Constants a solution may use without the question writing them (time, percent, counting).
CONSTANTS = frozenset(Fraction(v) for v in (*range(1, 13), 100, 1000, 60, 24, 7, 30, 31, 52, 365, 3600,
                                             "0.5", "0.25", "0.75", "0.1", "0.01"))  # fmt: skip
NUMBER_WORDS: dict[str, tuple[Fraction, ...]] = {
    **{w: (Fraction(i),) for i, w in enumerate(
        ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
         "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen", "twenty"))},
    "thirty": (Fraction(30),), "forty": (Fraction(40),), "fifty": (Fraction(50),),
    "hundred": (Fraction(100),), "thousand": (Fraction(1000),), "twice": (Fraction(2),),
    "double": (Fraction(2),), "triple": (Fraction(3),), "dozen": (Fraction(12),),
    "half": (Fraction(2), Fraction(1, 2)), "third": (Fraction(3), Fraction(1, 3)),
    "quarter": (Fraction(4), Fraction(1, 4)), "fourth": (Fraction(4), Fraction(1, 4)),
    "fifth": (Fraction(5), Fraction(1, 5)), "tenth": (Fraction(10), Fraction(1, 10)),
}  # fmt: skip
_QUESTION_NUMBER = re.compile(r"(?<![\w.])(\$?)(\d{1,3}(?:,\d{3})+|\d+(?:\.\d+)?|\.\d+)(%?)")
_WORD = re.compile(r"[A-Za-z]+")
_SKIP = frozenset((
    "a", "an", "the", "of", "per", "each", "every", "and", "or", "more", "less", "than", "times", "for",
    "to", "in", "on", "at", "with", "by", "from", "is", "are", "was", "were", "his", "her", "their", "its",
    "that", "this", "these", "those", "as", "it", "he", "she", "they", "them", "who", "which", "what",
    "how", "many", "much",
))  # fmt: skip
_OPS = {ast.Add: "add", ast.Sub: "sub", ast.Mult: "mul", ast.Div: "div"}
_RESERVED = re.compile(r"result|prev|step[0-9]+")


class ConvertError(ValueError):
    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass
class GSM8KTracesSource:
    dir: str = "data/gsm8k"  # vendored copy; <dir>/<split>.jsonl
    split: str = "train"  # never test: it is what the evals measure
    max_ops: int = 16  # compute steps in one trace

    def __post_init__(self) -> None:
        if self.split == "test":
            raise ValueError("split: GSM8K test is the evaluation set; convert train only")


@dataclass
class QuestionNumbers:
    """The numbers written in a question (by value, first occurrence named) and its number words."""

    names: dict[Fraction, str] = field(default_factory=dict)
    percents: set[Fraction] = field(default_factory=set)
    words: set[Fraction] = field(default_factory=set)


def _name_for(text: str, match: re.Match[str], taken: set[str]) -> str:
    """A fresh variable name for the number ``match``: the word right after it (``16 eggs`` ->
    ``eggs``, ``3-page`` -> ``page``), else ``dollars`` for ``$``, ``percent`` for ``%``, else ``amount``."""
    rest = text[match.end() :]
    if not match.group(1):  # "48 of her friends" -> friends
        rest = re.sub(r"^(\s+(of|the|her|his|their|its|a|an)\b){1,2}", "", rest)
    after = re.match(r"-?([A-Za-z]+)", rest.lstrip(" "))
    word = after.group(1).lower() if after else ""
    if len(word) >= 3 and word not in _SKIP and word not in NUMBER_WORDS and not _RESERVED.fullmatch(word):
        name = word[:20]
    else:
        name = "dollars" if match.group(1) else "percent" if match.group(3) else "amount"
    out, k = name, 2
    while out in taken:
        out, k = f"{name}{k}", k + 1
    taken.add(out)
    return out


def question_numbers(question: str) -> QuestionNumbers:
    found = QuestionNumbers()
    taken: set[str] = set()
    for m in _QUESTION_NUMBER.finditer(question):
        value = Fraction(clean_number(m.group(2)))
        if m.group(3):
            found.percents.add(value / 100)
        if value not in found.names:
            found.names[value] = _name_for(question, m, taken)
    for m in _WORD.finditer(question):
        for value in NUMBER_WORDS.get(m.group(0).lower(), ()):
            found.words.add(value)
    return found


@dataclass
class Step:
    op: str  # init or a compute op
    var: str
    args: list[Any] = field(default_factory=list)  # var names or Fraction literals
    value: Fraction | None = None


class Builder:
    """Steps of one solution, with each computed value's variable."""

    def __init__(self, numbers: QuestionNumbers, max_ops: int) -> None:
        self.numbers = numbers
        self.max_ops = max_ops
        self.steps: list[Step] = []
        self.inits: dict[Fraction, str] = {}
        self.results: list[tuple[Fraction, str]] = []  # annotation results in order, newest last
        self.values: dict[str, Fraction] = {}
        self.n_computed = 0

    def operand(self, value: Fraction) -> Any:
        for result, var in reversed(self.results):
            if result == value:
                return var
        if value in self.numbers.names:
            if value not in self.inits:
                var = self.numbers.names[value]
                self.inits[value] = var
                self.steps.append(Step("init", var, value=value))
                self.values[var] = value
            return self.inits[value]
        if value in CONSTANTS or value in self.numbers.words or value in self.numbers.percents:
            return value
        raise ConvertError("ungrounded_number", format_value(value) or "")

    def expression(self, node: ast.AST) -> tuple[Any, Fraction]:
        """The operand holding ``node``'s value (adding compute steps), and that value."""
        if (
            isinstance(node, ast.Constant)
            and isinstance(node.value, int | float)
            and not isinstance(node.value, bool)
        ):
            value = Fraction(repr(node.value)) if isinstance(node.value, float) else Fraction(node.value)
            return self.operand(value), value
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            op = _OPS[type(node.op)]
            terms = _flatten(node, type(node.op)) if op in ("add", "mul") else [node.left, node.right]
            pairs = [self.expression(t) for t in terms]
            value = _apply(op, [v for _, v in pairs])
            self.n_computed += 1
            if self.n_computed > self.max_ops:
                raise ConvertError("too_long", f"over {self.max_ops} compute steps")
            var = f"_c{self.n_computed}"
            self.steps.append(Step(op, var, [a for a, _ in pairs]))
            self.values[var] = value
            return var, value
        raise ConvertError("unsupported_expression", type(node).__name__)


def _apply(op: str, values: list[Fraction]) -> Fraction:
    out = values[0]
    for v in values[1:]:
        if op == "add":
            out += v
        elif op == "mul":
            out *= v
        elif op == "sub":
            out -= v
        elif v == 0:
            raise ConvertError("unsupported_expression", "division by zero")
        else:
            out /= v
    return out


def _flatten(node: ast.AST, op: type) -> list[ast.AST]:
    if isinstance(node, ast.BinOp) and isinstance(node.op, op):
        return _flatten(node.left, op) + _flatten(node.right, op)
    return [node]


def _parse(expr: str) -> ast.AST:
    text = expr.replace("$", "").replace(",", "").replace("x", "*").replace("×", "*").strip()
    try:
        return ast.parse(text, mode="eval").body
    except SyntaxError:
        raise ConvertError("unsupported_expression", expr[:40]) from None


def convert(question: str, solution: str, max_ops: int = 16) -> tuple[str, str, int]:
    """``(trace text, gold answer text, compute steps)`` for one GSM8K item; ``ConvertError`` says why not."""
    lines = [ln.strip() for ln in solution.strip().splitlines() if ln.strip()]
    if not lines or not lines[-1].startswith(FINAL):
        raise ConvertError("bad_annotation", "no final '####' line")
    gold_text = clean_number(lines[-1][len(FINAL) :])
    try:
        gold = Fraction(gold_text)
    except ValueError:
        raise ConvertError("bad_annotation", f"gold {gold_text!r} is not a number") from None
    notes = CALC.findall(solution)
    if not notes:
        raise ConvertError("no_annotation")
    b = Builder(question_numbers(question), max_ops)
    for note in notes:
        expr, eq, stated = note.rpartition("=")
        if not eq or not expr.strip():
            raise ConvertError("bad_annotation", note[:40])
        try:
            stated_value = Fraction(clean_number(stated).replace("$", "").rstrip("."))
        except (ValueError, ZeroDivisionError):
            raise ConvertError("bad_annotation", f"result {stated!r}") from None
        tree = _parse(expr)
        if isinstance(tree, ast.UnaryOp):
            raise ConvertError("unsupported_expression", "unary minus")
        var, value = b.expression(tree)
        if value != stated_value:
            raise ConvertError("annotation_inexact", f"{expr.strip()} = {value}, stated {stated.strip()}")
        if isinstance(var, str):
            b.results.append((value, var))
    answer = next((var for value, var in reversed(b.results) if value == gold), None)
    if answer is None:
        if gold in b.numbers.names:
            raise ConvertError("answer_is_question_number", gold_text)
        raise ConvertError("gold_not_computed", gold_text)
    if not answer.startswith("_c"):
        raise ConvertError("answer_is_question_number", gold_text)
    steps = _needed(b.steps, answer)
    n_compute = sum(s.op != "init" for s in steps)
    names = {}
    k = 0
    for s in steps:
        if s.op != "init":
            k += 1
            names[s.var] = "result" if s.var == answer else f"step{k}"
    lines_out = [f"expert: {EXPERT}", "trace:"]
    for s in steps:
        if s.op == "init":
            lines_out.append(f"- {step_line({'op': 'init', 'var': s.var, 'value': s.value})}")
        else:
            args = [names.get(a, a) if isinstance(a, str) else a for a in s.args]
            lines_out.append(
                f"- {step_line({'op': 'compute', 'compute_op': s.op, 'args': args, 'var': names[s.var]})}"
            )
    lines_out.append("- {op: query, var: result}")
    trace = "\n".join(lines_out)
    result = parse_trace(format_target(trace, gold_text))
    if not result.valid or result.value != gold:
        raise ConvertError("solver_mismatch", result.error or f"executes to {result.value}")
    return trace, gold_text, n_compute


def _needed(steps: list[Step], answer: str) -> list[Step]:
    """The steps ``answer`` depends on, in order, ending at the step that computes it."""
    end = next(i for i, s in enumerate(steps) if s.var == answer)
    need = {answer}
    keep = []
    for s in reversed(steps[: end + 1]):
        if s.var in need:
            keep.append(s)
            need |= {a for a in s.args if isinstance(a, str)}
    return keep[::-1]


def read_gsm8k_traces(
    src: GSM8KTracesSource,
) -> tuple[dict[str, list[dict[str, Any]]], list[dict[str, Any]], dict[str, Any]]:
    """Converted records (split ``train``), rejects with their reason, and the yield report."""
    path = Path(src.dir) / f"{src.split}.jsonl"
    records: list[dict[str, Any]] = []
    rejects: list[dict[str, Any]] = []
    seen: set[str] = set()
    total = 0
    for lineno, row in tqdm(
        iter_jsonl(path), desc=f"gsm8k {src.split} -> traces", unit=" items", leave=False
    ):
        where = f"{path}:{lineno}"
        if not isinstance(row, dict) or not all(isinstance(row.get(k), str) for k in ("question", "answer")):
            raise InputError(f"{where}: expected an object with string 'question' and 'answer'")
        total += 1
        gid = f"gsm8k-{src.split}-{lineno - 1:05d}"
        try:
            key = normalise(row["question"])
            if key in seen:
                raise ConvertError("duplicate_question")
            seen.add(key)
            trace, gold, n_compute = convert(row["question"], row["answer"], src.max_ops)
        except ConvertError as err:
            rejects.append(
                {
                    "where": where,
                    "task": "gsm8k",
                    "reason": err.reason,
                    "detail": err.detail[:200],
                    "gsm8k_id": gid,
                }
            )
            continue
        ops = trace_ops(trace)
        meta = {"source": SOURCE, "category": op_category(ops), "trace_expert": EXPERT, "gsm8k_id": gid,
                "compute_steps": n_compute}  # fmt: skip
        records.append(
            trace_record(f"gt-{src.split}-{lineno - 1:05d}", row["question"].strip(), gold, trace, meta)
        )
    by_reason = Counter(r["reason"] for r in rejects)
    report = {
        "items": total,
        "kept": len(records),
        "yield": round(len(records) / total, 4) if total else 0.0,
        "rejected": len(rejects),
        "taxonomy": {
            k: {
                "count": by_reason[k],
                "share": round(by_reason[k] / total, 4) if total else 0.0,
                "meaning": v,
            }
            for k, v in REASONS.items()
        },
    }
    return {"train": records}, rejects, report


def trace_ops(trace: str) -> Counter[str]:
    """Operator counts of a converted trace, in the symbols ``op_category`` reads."""
    symbol = {"add": "+", "sub": "-", "mul": "*", "div": "/"}
    return Counter(symbol[m] for m in re.findall(r"compute_op: ([a-z]+)", trace))
