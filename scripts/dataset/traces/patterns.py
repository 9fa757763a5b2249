"""Pattern files of the trace generator: one YAML file per problem pattern, grouped by expert.

    patterns/<expert>/<name>.yaml
      name: consume_then_sell          # the file's stem
      expert: arithmetic               # the folder's name; `composition` for chained experts
      shape: interleaved               # a free label for the stats (sequential, interleaved, ...)
      vocab: {person: people, animal: farm_animals}     # slot -> vocabulary list (distinct draws)
      variables:
        laid: {type: int, min: 12, max: 40}
        price: {type: decimal, min: 1.5, max: 4, multiple_of: 0.25}
        share: {type: choice, options: [{value: 2, word: half}, {value: 4, word: a quarter}]}
      derived: {left: laid - used}     # expressions over the names above, in order
      constraints: [{expr: left, min: 3, integer: true}]   # resampled until every one holds
      templates: ["${person.name} ... ${laid} ... ${price|money} ...?", ...]   # 2 or more phrasings
      trace:                           # steps; `value` / `amount` name a variable or are numbers
        - {op: init, var: laid, value: laid}
        ...
      answer: (laid - used) * price

A composed pattern's ``trace`` is a list of ``{expert, trace}`` sub-traces; each one after
the first starts with ``{op: init, var: prev, source: prev.result}``. Placeholders are
``${name}``, ``${slot.field}`` and filters after ``|``: ``cap``, ``lower``, ``plural``, ``a``
(article), ``money``. Trace variable names may use placeholders too (``${person.name|lower}.cards``).

The notebook's lessons are checked here, so a pattern that breaks one does not load:
each op belongs to its sub-trace's expert; init variables carry meaningful names (no ``x``,
``a``, ``var1``: the abstract-naming runs lost accuracy) while computed values follow the fixed
scaffold ``step1, step2, ..., result``; every compute expert queries ``result`` and
entity_track queries the first entity it set (one query target per expert); the queried
variable is computed or changed, never only set by an init (anti-short-circuit); every number
an init or an amount takes is written in every phrasing of the question. Steps are written
flow-style by the generator whatever the file's style. Every error names the file and field.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import yaml

from common.errors import InputError
from common.traces import COMPUTE_OPS, EXPERT_OPS, FIELDS, OPS, PERCENT_OPS, PREV_RESULT
from scripts.dataset.traces.expr import Expr, ExprError, parse_expr
from scripts.dataset.traces.vocab import Vocab

COMPOSITION = "composition"
EXPERTS = (*EXPERT_OPS, COMPOSITION)
COMPUTE_EXPERTS = ("arithmetic", "comparison", "rate_equation", "percentage")
KEYS = ("name", "expert", "shape", "description", "vocab", "variables", "derived", "constraints",
        "templates", "trace", "answer")  # fmt: skip
REQUIRED = ("name", "expert", "variables", "templates", "trace", "answer")
VAR_TYPES = ("int", "decimal", "choice")
FILTERS = ("cap", "lower", "plural", "a", "money")
RESULT = "result"
PREV = "prev"
MIN_TEMPLATES = 2
MAX_SUBTRACES = 3

PLACEHOLDER = re.compile(r"\$\{([^}]*)\}")
_REF = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?")
_STEP = re.compile(r"step([1-9][0-9]*)")
# Names that carry no meaning (runs 5 and 12 of the notebook): single letters, x1, var2, tmp, ...
_ABSTRACT = re.compile(r"[a-z][0-9]*|(var|val|num|tmp|temp|value|item|thing)[0-9]*")


@dataclass
class VarSpec:
    """A sampled variable: ints or decimals on a grid ``multiple_of`` in [min, max], or a choice."""

    kind: str
    low: Fraction = Fraction(0)
    high: Fraction = Fraction(0)
    step: Fraction = Fraction(1)
    options: list[dict[str, Any]] = field(default_factory=list)  # choice: {value: Fraction, <text fields>}

    def grid(self) -> tuple[int, int]:
        """``(first, last)`` multiples of ``step`` inside [low, high]."""
        first = -((-self.low) // self.step)
        return int(first), int(self.high // self.step)


@dataclass
class Constraint:
    expr: Expr
    low: Fraction | None
    high: Fraction | None
    integer: bool
    where: str  # constraints[i]

    def holds(self, value: Fraction) -> bool:
        return (
            (self.low is None or value >= self.low)
            and (self.high is None or value <= self.high)
            and (not self.integer or value.denominator == 1)
        )


@dataclass
class SubTrace:
    expert: str
    steps: list[dict[str, Any]]


@dataclass
class Pattern:
    """One validated pattern file."""

    name: str
    expert: str
    path: str
    shape: str
    vocab: dict[str, str]
    variables: dict[str, VarSpec]
    derived: list[tuple[str, Expr]]
    constraints: list[Constraint]
    templates: list[str]
    subtraces: list[SubTrace]
    answer: Expr

    @property
    def experts(self) -> list[str]:
        return [s.expert for s in self.subtraces]

    @property
    def composed(self) -> bool:
        return self.expert == COMPOSITION


class PatternError(InputError):
    pass


def _fail(path: str | Path, where: str, message: str) -> PatternError:
    return PatternError(f"{path}: {where}: {message}")


def _number(value: Any, path: Path, where: str) -> Fraction:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _fail(path, where, f"expected a number, got {value!r}")
    return Fraction(repr(value)) if isinstance(value, float) else Fraction(value)


# ----------------------------------------------------------------------------- variables


def _var_spec(raw: Any, path: Path, where: str) -> VarSpec:
    if not isinstance(raw, dict):
        raise _fail(path, where, "expected a mapping like {type: int, min: 1, max: 9}")
    kind = raw.get("type")
    if kind not in VAR_TYPES:
        raise _fail(path, f"{where}.type", f"{kind!r} is not one of {', '.join(VAR_TYPES)}")
    allowed = {"int": {"min", "max", "multiple_of"}, "decimal": {"min", "max", "multiple_of", "precision"},
               "choice": {"options"}}[kind] | {"type"}  # fmt: skip
    extra = sorted(set(raw) - allowed)
    if extra:
        raise _fail(
            path,
            f"{where}.{extra[0]}",
            f"unknown field for type {kind}; allowed: {', '.join(sorted(allowed))}",
        )
    if kind == "choice":
        options = raw.get("options")
        if not isinstance(options, list) or not options:
            raise _fail(path, f"{where}.options", "expected a non-empty list")
        parsed = []
        for i, opt in enumerate(options):
            w = f"{where}.options[{i}]"
            if not isinstance(opt, dict):
                opt = {"value": opt}
            if "value" not in opt:
                raise _fail(path, w, "a mapping option needs 'value'")
            entry: dict[str, Any] = {"value": _number(opt["value"], path, f"{w}.value")}
            for key, text in opt.items():
                if key != "value":
                    if not isinstance(text, str):
                        raise _fail(path, f"{w}.{key}", f"expected text, got {text!r}")
                    entry[key] = text
            parsed.append(entry)
        return VarSpec("choice", options=parsed)
    for key in ("min", "max"):
        if key not in raw:
            raise _fail(path, f"{where}.{key}", "missing")
    low, high = _number(raw["min"], path, f"{where}.min"), _number(raw["max"], path, f"{where}.max")
    if kind == "int":
        step = _number(raw.get("multiple_of", 1), path, f"{where}.multiple_of")
        if step.denominator != 1 or low.denominator != 1 or high.denominator != 1:
            raise _fail(path, where, "an int variable needs integer min, max and multiple_of")
    elif "multiple_of" in raw:
        step = _number(raw["multiple_of"], path, f"{where}.multiple_of")
    else:
        places = raw.get("precision", 2)
        if not isinstance(places, int) or isinstance(places, bool) or not 0 <= places <= 6:
            raise _fail(path, f"{where}.precision", f"expected decimal places 0..6, got {places!r}")
        step = Fraction(1, 10**places)
    if step <= 0:
        raise _fail(path, f"{where}.multiple_of", "must be > 0")
    spec = VarSpec(kind, low, high, step)
    first, last = spec.grid()
    if first > last:
        raise _fail(path, where, f"no multiple of {step} between min {low} and max {high}")
    return spec


# ----------------------------------------------------------------------------- templates


@dataclass
class Names:
    """What a pattern's placeholders and expressions may refer to."""

    vocab: Vocab
    slots: dict[str, str]  # slot -> list
    variables: dict[str, VarSpec]
    derived: set[str]

    def numeric(self) -> set[str]:
        """Names an expression may read: variables, derived values, numeric vocabulary fields."""
        out = set(self.variables) | self.derived
        for slot, name in self.slots.items():
            entries = self.vocab.lists[name]
            for key in self.vocab.fields(name):
                if all(isinstance(e[key], int | float) for e in entries):
                    out.add(f"{slot}.{key}")
        return out

    def check_ref(self, ref: str, path: Path, where: str) -> None:
        base, _, attr = ref.partition(".")
        if base in self.slots:
            fields = self.vocab.fields(self.slots[base])
            if attr and attr not in fields:
                raise _fail(
                    path, where,
                    f"${{{ref}}}: not every entry of vocabulary list '{self.slots[base]}' "
                    f"({self.vocab.files[self.slots[base]]}) has '{attr}'; common fields: {', '.join(sorted(fields))}",
                )  # fmt: skip
        elif base in self.variables:
            spec = self.variables[base]
            if attr and (spec.kind != "choice" or any(attr not in o for o in spec.options)):
                raise _fail(
                    path, where, f"${{{ref}}}: variable '{base}' has no field '{attr}' on every option"
                )
        elif base in self.derived:
            if attr:
                raise _fail(path, where, f"${{{ref}}}: derived value '{base}' has no fields")
        else:
            raise _fail(
                path,
                where,
                f"${{{ref}}}: unknown name '{base}' (not a vocab slot, variable or derived value)",
            )


def placeholders(text: str, path: Path, where: str) -> list[tuple[str, list[str]]]:
    """``[(ref, filters)]`` of every ``${...}`` in ``text``."""
    out = []
    for m in PLACEHOLDER.finditer(text):
        ref, *filters = [p.strip() for p in m.group(1).split("|")]
        if not _REF.fullmatch(ref):
            raise _fail(
                path, where, f"${{{m.group(1)}}}: expected ${{name}}, ${{name.field}} or ${{name|filter}}"
            )
        for f in filters:
            if f not in FILTERS:
                raise _fail(
                    path, where, f"${{{m.group(1)}}}: unknown filter '{f}'; known: {', '.join(FILTERS)}"
                )
        out.append((ref, filters))
    rest = PLACEHOLDER.sub("", text)
    if "${" in rest:
        raise _fail(path, where, "an unclosed ${")
    return out


# ----------------------------------------------------------------------------- traces


def _template_free(name: str) -> str:
    return PLACEHOLDER.sub("word", name)


def _check_name(name: Any, path: Path, where: str) -> str:
    if not isinstance(name, str) or not name:
        raise _fail(path, where, f"expected a variable name, got {name!r}")
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.]*", _template_free(name)):
        raise _fail(path, where, f"{name!r} is not a variable name (letters, digits, _ and .)")
    return name


@dataclass(frozen=True)
class Literal:
    """An operand written as a number in the trace, taken from a pattern variable (``half`` -> 2)."""

    name: str


def _check_operand(arg: Any, defined: dict[str, str], numeric: set[str], path: Path, where: str) -> Any:
    """The operand as the renderer needs it: a defined trace variable (name), a number, or a
    ``Literal`` for a pattern variable whose value is written into the trace as a number."""
    if isinstance(arg, int | float) and not isinstance(arg, bool):
        return arg
    if isinstance(arg, str) and arg in defined:
        return arg
    if isinstance(arg, str) and arg in numeric:
        return Literal(arg)
    raise _fail(
        path,
        where,
        f"{arg!r} is not a number, a trace variable defined before this step, or a pattern variable",
    )


def _check_amount(value: Any, names: set[str], path: Path, where: str) -> str | None:
    """``value`` / ``amount``: a number, or the name of a pattern variable; returns the name if any."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return None
    if isinstance(value, str) and value in names:
        return value
    raise _fail(path, where, f"{value!r} is neither a number nor a variable or derived value of this pattern")


def _check_subtrace(
    raw: Any, expert: str, first: bool, numeric: set[str], path: Path, where: str
) -> tuple[list[dict[str, Any]], set[str]]:
    """The steps of one sub-trace, checked against the ops and the notebook's rules (operands that
    name pattern variables become ``Literal``); and the pattern names its inits, amounts and
    literal operands read (each must appear in every phrasing)."""
    if not isinstance(raw, list) or len(raw) < 2:
        raise _fail(path, where, "expected a list of two or more steps")
    defined: dict[str, str] = {}  # trace var -> "init" (set only by an init) or "changed"
    checked: list[dict[str, Any]] = []
    outputs: list[str] = []
    grounded: set[str] = set()
    first_init: str | None = None
    for i, step in enumerate(raw):
        w = f"{where}[{i}]"
        if not isinstance(step, dict):
            raise _fail(path, w, f"expected a step mapping like {{op: init, ...}}, got {step!r}")
        op = step.get("op")
        if op not in OPS:
            raise _fail(path, f"{w}.op", f"{op!r} unknown; known: {', '.join(OPS)}")
        if op not in EXPERT_OPS[expert]:
            raise _fail(
                path, f"{w}.op", f"{op} is not one of expert {expert}'s ops ({', '.join(EXPERT_OPS[expert])})"
            )
        extra = sorted(str(k) for k in step if k != "op" and k not in FIELDS[op])
        if extra:
            raise _fail(
                path, f"{w}.{extra[0]}", f"unknown field for {op}; allowed: {', '.join(sorted(FIELDS[op]))}"
            )
        if op == "query":
            if i != len(raw) - 1:
                raise _fail(path, w, "query must be the last step")
            checked.append(step)
            continue
        if i == len(raw) - 1:
            raise _fail(path, w, "the last step must be a query")
        if op == "init":
            name = _check_name(step.get("var"), path, f"{w}.var")
            if name in defined:
                raise _fail(path, f"{w}.var", f"{name!r} is already defined (no overwriting)")
            if "from" in step:
                raise _fail(path, f"{w}.from", f"write source: {PREV_RESULT}")
            if ("value" in step) == ("source" in step):
                raise _fail(path, w, "init needs exactly one of value and source")
            if "source" in step:
                if step["source"] != PREV_RESULT or first or i != 0 or name != PREV:
                    raise _fail(
                        path, f"{w}.source",
                        f"only the first step of a later sub-trace reads the previous answer, as "
                        f"{{op: init, var: {PREV}, source: {PREV_RESULT}}}",
                    )  # fmt: skip
            else:
                if name in (PREV, RESULT) or _STEP.fullmatch(name):
                    raise _fail(
                        path,
                        f"{w}.var",
                        f"{name!r} is scaffolding, not a name for a value read from the question",
                    )
                last = _template_free(name).rsplit(".", 1)[-1].lower()
                if _ABSTRACT.fullmatch(last) or len(last) < 3:
                    raise _fail(
                        path, f"{w}.var",
                        f"{name!r} is an abstract name; name a value after what it is (eggs, price, "
                        "hours): hybrid naming keeps the question's words in the trace",
                    )  # fmt: skip
                ref = _check_amount(step["value"], numeric, path, f"{w}.value")
                if ref:
                    grounded.add(ref)
            defined[name] = "init"
            first_init = first_init or name
        elif op == "compute" or op in PERCENT_OPS:
            if op == "compute":
                kind = step.get("compute_op")
                if kind not in COMPUTE_OPS:
                    raise _fail(path, f"{w}.compute_op", f"{kind!r} unknown; known: {', '.join(COMPUTE_OPS)}")
                args = step.get("args")
                arity_ok = isinstance(args, list) and (
                    len(args) >= 2 if kind in ("add", "mul") else len(args) == 2
                )
                if not arity_ok or not isinstance(args, list):
                    raise _fail(
                        path,
                        f"{w}.args",
                        f"{kind} takes {'2 or more' if kind in ('add', 'mul') else 'exactly 2'} operands",
                    )
                step = {
                    **step,
                    "args": [
                        _check_operand(a, defined, numeric, path, f"{w}.args[{k}]")
                        for k, a in enumerate(args)
                    ],
                }
            else:
                step = dict(step)
                for key in ("base", "rate"):
                    if key not in step:
                        raise _fail(path, f"{w}.{key}", "missing")
                    step[key] = _check_operand(step[key], defined, numeric, path, f"{w}.{key}")
            operands = step["args"] if op == "compute" else [step["base"], step["rate"]]
            grounded |= {a.name for a in operands if isinstance(a, Literal)}
            name = _check_name(step.get("var"), path, f"{w}.var")
            outputs.append(name)
            defined[name] = "changed"
        elif op == "consume":
            consumed = step.get("var")
            if not isinstance(consumed, str) or consumed not in defined:
                raise _fail(path, f"{w}.var", f"{consumed!r} is not defined before this step")
            ref = _check_amount(step.get("amount"), numeric, path, f"{w}.amount")
            grounded |= {ref} if ref else set()
            defined[consumed] = "changed"
        elif op == "transfer":
            src, dst = step.get("from"), step.get("to")
            for key, end in (("from", src), ("to", dst)):
                if not isinstance(end, str) or end not in defined:
                    raise _fail(path, f"{w}.{key}", f"{end!r} is not defined before this step")
            assert isinstance(src, str) and isinstance(dst, str)
            if src == dst:
                raise _fail(path, f"{w}.to", "transfer to the same variable")
            ref = _check_amount(step.get("amount"), numeric, path, f"{w}.amount")
            grounded |= {ref} if ref else set()
            defined[src] = defined[dst] = "changed"
        checked.append(step)
    target = raw[-1].get("var")
    w = f"{where}[{len(raw) - 1}].var"
    if raw[-1].get("op") != "query":
        raise _fail(path, f"{where}[{len(raw) - 1}]", "the last step must be a query")
    if expert in COMPUTE_EXPERTS:
        want = [f"step{k + 1}" for k in range(len(outputs) - 1)] + [RESULT]
        if outputs != want:
            raise _fail(
                path, where,
                f"computed values are named {outputs}; the scaffold is step1, step2, ..., result "
                "(the last computed value is the answer)",
            )  # fmt: skip
        if target != RESULT:
            raise _fail(
                path, w, f"expert {expert} queries '{RESULT}' (one query target per expert), got {target!r}"
            )
    elif target != first_init:
        raise _fail(
            path, w, f"entity_track queries the first entity it sets ({first_init!r}), got {target!r}"
        )
    if defined.get(target) != "changed":
        raise _fail(path, w, f"{target!r} is only set by an init: querying it short-circuits the trace")
    return checked, grounded


# ----------------------------------------------------------------------------- loading


def _mapping(doc: dict[str, Any], key: str, path: Path) -> dict[str, Any]:
    value = doc.get(key) or {}
    if not isinstance(value, dict):
        raise _fail(path, key, f"expected a mapping, got {type(value).__name__}")
    return value


def load_pattern(path: str | Path, vocab: Vocab) -> Pattern:
    """One pattern file, fully checked (see the module docstring)."""
    path = Path(path)
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise PatternError(f"{path}: not valid YAML: {str(err).splitlines()[0]}") from None
    if not isinstance(doc, dict):
        raise PatternError(f"{path}: expected a mapping with {', '.join(REQUIRED)}")
    for key in doc:
        if key not in KEYS:
            raise _fail(path, str(key), f"unknown field; allowed: {', '.join(KEYS)}")
    for key in REQUIRED:
        if key not in doc:
            raise _fail(path, key, "missing")
    name, expert = doc["name"], doc["expert"]
    if name != path.stem:
        raise _fail(path, "name", f"{name!r} differs from the file name {path.stem!r}")
    if expert not in EXPERTS:
        raise _fail(path, "expert", f"{expert!r} is not one of {', '.join(EXPERTS)}")
    if expert != path.parent.name:
        raise _fail(path, "expert", f"{expert!r} but the file is in folder {path.parent.name!r}")

    slots = {}
    for slot, list_name in _mapping(doc, "vocab", path).items():
        if list_name not in vocab.lists:
            raise _fail(
                path,
                f"vocab.{slot}",
                f"no vocabulary list {list_name!r}; known: {', '.join(sorted(vocab.lists))}",
            )
        slots[str(slot)] = list_name
    variables = {
        str(k): _var_spec(v, path, f"variables.{k}") for k, v in _mapping(doc, "variables", path).items()
    }
    clash = sorted(set(slots) & set(variables))
    if clash:
        raise _fail(path, f"variables.{clash[0]}", "also a vocab slot")
    names = Names(vocab, slots, variables, set())
    derived = []
    for key, text in _mapping(doc, "derived", path).items():
        if key in variables or key in slots or key in names.derived:
            raise _fail(path, f"derived.{key}", "name already used")
        expr = _expr(text, names.numeric(), path, f"derived.{key}")
        derived.append((str(key), expr))
        names.derived.add(str(key))
    numeric = names.numeric()

    raw_constraints = doc.get("constraints") or []
    if not isinstance(raw_constraints, list):
        raise _fail(path, "constraints", "expected a list of {expr, min, max, integer}")
    constraints = []
    for i, c in enumerate(raw_constraints):
        w = f"constraints[{i}]"
        if not isinstance(c, dict) or "expr" not in c:
            raise _fail(path, w, "expected a mapping with expr and min / max / integer")
        extra = sorted(set(c) - {"expr", "min", "max", "integer"})
        if extra:
            raise _fail(path, f"{w}.{extra[0]}", "unknown field; allowed: expr, min, max, integer")
        low = _number(c["min"], path, f"{w}.min") if "min" in c else None
        high = _number(c["max"], path, f"{w}.max") if "max" in c else None
        integer = c.get("integer", False)
        if not isinstance(integer, bool):
            raise _fail(path, f"{w}.integer", "expected true/false")
        constraints.append(Constraint(_expr(c["expr"], numeric, path, f"{w}.expr"), low, high, integer, w))

    templates = doc["templates"]
    if not isinstance(templates, list) or len(templates) < MIN_TEMPLATES:
        raise _fail(path, "templates", f"expected a list of {MIN_TEMPLATES} or more phrasings")
    for i, t in enumerate(templates):
        w = f"templates[{i}]"
        if not isinstance(t, str) or not t.strip():
            raise _fail(path, w, "expected a non-empty string")
        if not t.rstrip().endswith("?"):
            raise _fail(path, w, "a question ends with '?'")
        for ref, _ in placeholders(t, path, w):
            names.check_ref(ref, path, w)
        if templates.index(t) != i:
            raise _fail(path, w, f"the same phrasing as templates[{templates.index(t)}]")

    raw_trace = doc["trace"]
    if expert == COMPOSITION:
        if not isinstance(raw_trace, list) or not 2 <= len(raw_trace) <= MAX_SUBTRACES:
            raise _fail(
                path, "trace", f"a composition is a list of 2 to {MAX_SUBTRACES} {{expert, trace}} sub-traces"
            )
        subs = []
        for k, sub in enumerate(raw_trace):
            w = f"trace[{k}]"
            if not isinstance(sub, dict) or set(sub) != {"expert", "trace"}:
                raise _fail(path, w, "expected a mapping with exactly expert and trace")
            if sub["expert"] not in EXPERT_OPS:
                raise _fail(path, f"{w}.expert", f"{sub['expert']!r} is not one of {', '.join(EXPERT_OPS)}")
            subs.append((sub["expert"], sub["trace"], f"{w}.trace"))
    else:
        subs = [(expert, raw_trace, "trace")]
    subtraces, grounded = [], set()
    for k, (sub_expert, steps, w) in enumerate(subs):
        checked, refs = _check_subtrace(steps, sub_expert, k == 0, numeric, path, w)
        subtraces.append(SubTrace(sub_expert, checked))
        grounded |= refs
        if k > 0 and checked[0].get("source") != PREV_RESULT:
            raise _fail(
                path,
                f"{w}[0]",
                f"a later sub-trace starts with {{op: init, var: {PREV}, source: {PREV_RESULT}}}",
            )
    for i, t in enumerate(templates):
        mentioned = {ref.partition(".")[0] for ref, _ in placeholders(t, path, "")}
        missing = sorted(r for r in grounded if r.partition(".")[0] not in mentioned)
        if missing:
            raise _fail(path, f"templates[{i}]", f"does not mention ${{{missing[0]}}}, which the trace reads")
    for slot, list_name in slots.items():
        wanted = sum(n == list_name for n in slots.values())
        if len(vocab.lists[list_name]) < wanted:
            raise _fail(
                path,
                f"vocab.{slot}",
                f"list '{list_name}' has fewer than {wanted} entries for distinct draws",
            )
    return Pattern(
        name=name,
        expert=expert,
        path=str(path),
        shape=str(doc.get("shape") or ("composed" if expert == COMPOSITION else "single")),
        vocab=slots,
        variables=variables,
        derived=derived,
        constraints=constraints,
        templates=[t.strip() for t in templates],
        subtraces=subtraces,
        answer=_expr(doc["answer"], numeric, path, "answer"),
    )


def _expr(text: Any, known: set[str], path: Path, where: str) -> Expr:
    try:
        expr = parse_expr(text)
    except ExprError as err:
        raise _fail(path, where, str(err)) from None
    unknown = sorted(expr.names - known)
    if unknown:
        raise _fail(path, where, f"unknown name {unknown[0]!r} in {expr.text!r}")
    return expr


def load_patterns(folder: str | Path, vocab: Vocab) -> list[Pattern]:
    """Every ``<expert>/<name>.yaml`` under ``folder``, sorted by expert then name."""
    root = Path(folder)
    paths = sorted(root.glob("*/*.yaml"))
    if not paths:
        raise InputError(f"{root}: no pattern files (<expert>/<name>.yaml)")
    patterns = [load_pattern(p, vocab) for p in paths]
    seen: dict[str, str] = {}
    for p in patterns:
        if p.name in seen:
            raise InputError(f"{p.path}: name: {p.name!r} is also the name of {seen[p.name]}")
        seen[p.name] = p.path
    return patterns
