"""YAML traces: parsing, step checks, exact execution, the reward tiers and the eval suite."""

from __future__ import annotations

import json
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest

from common import traces as T
from common.rewards import RewardConfig, build_rewards
from common.traces import MAX_YAML_CHARS, TraceResult, format_value, parse_trace

RATE = """
- {op: init, var: rate, value: 49}
- {op: init, var: time, value: 5}
- {op: compute, compute_op: mul, args: [rate, time], var: quantity}
- {op: query, var: quantity}
"""
SHORT = RATE.replace("{op: query, var: quantity}", "{op: query, var: rate}")  # the notebook's short-circuit

# Lab notebook 002's house-flipping composition, with percent_increase giving the new value.
COMPOSED = """
- expert: percentage
  trace:
    - {op: init, var: price, value: 80000}
    - {op: init, var: rate, value: 150}
    - {op: percent_increase, base: price, rate: rate, var: result}
    - {op: query, var: result}
- expert: arithmetic
  trace:
    - {op: init, var: increased, from: prev.result}
    - {op: init, var: cost, value: 130000}
    - {op: compute, compute_op: sub, args: [increased, cost], var: result}
    - {op: query, var: result}
"""


def wrap(trace: str, answer: str = "0") -> str:
    return f"<reasoning>{trace}</reasoning><answer>{answer}</answer>"


def run(trace: str) -> TraceResult:
    return parse_trace(wrap(trace))


def steps(*lines: str) -> str:
    return "\n".join(f"- {line}" for line in lines)


@pytest.mark.parametrize(
    ("trace", "value"),
    [
        (RATE, 245),
        (steps("{op: init, var: a, value: 7}", "{op: init, var: b, value: 2}",
               "{op: compute, compute_op: sub, args: [a, b], var: r}", "{op: query, var: r}"), 5),
        (steps("{op: init, var: a, value: 7}", "{op: init, var: b, value: 2}",
               "{op: compute, compute_op: div, args: [a, b], var: r}", "{op: query, var: r}"), Fraction(7, 2)),
        (steps("{op: init, var: a, value: 1}", "{op: compute, compute_op: add, args: [a, 2, 3.5], var: r}",
               "{op: query, var: r}"), Fraction(13, 2)),
        (steps("{op: init, var: a, value: 17}", "{op: compute, compute_op: floordiv, args: [a, 5], var: q}",
               "{op: compute, compute_op: mod, args: [a, 5], var: m}",
               "{op: compute, compute_op: mul, args: [q, 10], var: r}",
               "{op: compute, compute_op: add, args: [r, m], var: s}", "{op: query, var: s}"), 32),
        (steps("{op: init, var: price, value: 200}", "{op: init, var: rate, value: 40}",
               "{op: percent_of, base: price, rate: rate, var: r}", "{op: query, var: r}"), 80),
        (steps("{op: init, var: price, value: 200}", "{op: percent_off, base: price, rate: 25, var: r}",
               "{op: query, var: r}"), 150),
        (steps("{op: init, var: price, value: 200}", "{op: percent_increase, base: price, rate: 10, var: r}",
               "{op: query, var: r}"), 220),
        # Janet's ducks in entity form: consume twice, then the eggs are a changed init var.
        (steps("{op: init, var: janet.eggs, value: 16}", "{op: consume, var: janet.eggs, amount: 3}",
               "{op: consume, var: janet.eggs, amount: 4}", "{op: query, var: janet.eggs}"), 9),
        (steps("{op: init, var: alice.cards, value: 10}", "{op: init, var: bob.cards, value: 4}",
               "{op: transfer, from: alice.cards, to: bob.cards, amount: 3}", "{op: query, var: bob.cards}"), 7),
        ("{expert: rate_equation, trace: [{op: init, var: r, value: 3}, {op: init, var: t, value: 4},"
         " {op: compute, compute_op: mul, args: [r, t], var: q}, {op: query, var: q}]}", 12),
        (COMPOSED, 70000),
        ("```yaml\n" + RATE + "```", 245),
    ],
)  # fmt: skip
def test_each_op_executes_to_its_value(trace: str, value: Fraction) -> None:
    res = run(trace)
    assert (res.parsed, res.valid, res.error) == (True, True, None)
    assert res.value == value
    assert res.outcome(Fraction(value)) == "correct"
    assert res.outcome(Fraction(value) + 1) == "wrong_answer"


def test_steps_are_returned_flattened() -> None:
    res = run(COMPOSED)
    assert len(res.steps) == 8
    assert res.steps[2] == {"op": "percent_increase", "base": "price", "rate": "rate", "var": "result"}


def test_fractions_are_exact() -> None:
    res = run(steps("{op: init, var: a, value: 0.1}", "{op: init, var: b, value: 0.2}",
                    "{op: compute, compute_op: add, args: [a, b], var: c}", "{op: query, var: c}"))  # fmt: skip
    assert res.value == Fraction(3, 10)  # not 0.30000000000000004
    res = run(steps("{op: init, var: a, value: 1}", "{op: compute, compute_op: div, args: [a, 3], var: b}",
                    "{op: compute, compute_op: mul, args: [b, 3], var: c}", "{op: query, var: c}"))  # fmt: skip
    assert res.value == 1
    assert [format_value(Fraction(x)) for x in ("18", "5/2", "-1/20", "1/3")] == ["18", "2.5", "-0.05", "1/3"]


@pytest.mark.parametrize(
    ("completion", "kind"),
    [
        ("just text, no tags", "no_reasoning"),
        ("<reasoning>- {op: init", "no_reasoning"),  # never closed
        (wrap("Janet has 16 eggs and eats 3."), "not_a_trace"),
        (wrap(" and "), "not_a_trace"),  # the base model's echo of the instruction
        (wrap("Step 1: add them"), "not_a_trace"),
        (wrap("- {op: init, var: a, value: [1"), "yaml_error"),
        (wrap("x" * (MAX_YAML_CHARS + 1)), "too_large"),
        (wrap("[" * 40), "too_large"),
    ],
)
def test_parse_failures(completion: str, kind: str) -> None:
    res = parse_trace(completion)
    assert (res.parsed, res.valid, res.error_kind) == (False, False, kind)
    assert res.error and res.outcome(Fraction(1)) == "parse_failure"


Q = "{op: query, var: r}"
INIT = "{op: init, var: a, value: 2}"


@pytest.mark.parametrize(
    ("trace", "kind", "reason"),
    [
        (steps(INIT, "{op: add, args: [a, a], var: r}", Q), "unknown_op", "op: 'add' unknown"),
        (steps(INIT, "{op: compute, compute_op: pow, args: [a, a], var: r}", Q), "unknown_op", "compute_op"),
        (steps(INIT, "{op: compute, compute_op: mul, args: [a, a]}", Q), "schema", "var: missing"),
        (steps(INIT, "{op: compute, compute_op: sub, args: [a, a, a], var: r}", Q), "schema", "exactly 2"),
        (steps(INIT, "{op: compute, compute_op: mul, args: [a, b], var: r}", Q), "undefined_var", "'b'"),
        (steps(INIT, "{op: compute, compute_op: div, args: [a, 0], var: r}", Q), "math_error", "by zero"),
        (steps("{op: init, var: a, value: step1}", Q), "bad_number", "expected a number, got 'step1'"),
        (steps("{op: init, var: a, value: 4 * 18}", Q), "bad_number", "4 * 18"),
        (steps("{op: init, var: a, value: yes}", Q), "bad_number", "True"),
        (steps(INIT, "{op: init, var: a, value: 3}", Q), "redefined_var", "redefines"),
        (steps(INIT, "{op: init, var: b, value: 3, note: hi}", Q), "schema", "note: unknown field"),
        (steps(INIT, "{op: percent_of, base: a, var: r}", Q), "schema", "rate: missing"),
        (steps(INIT, "{op: percent_off, rate: 5, var: r}", Q), "schema", "base: missing"),
        (steps(INIT, "{op: consume, var: a}", Q), "schema", "amount: missing"),
        (steps(INIT, "{op: init, var: b, value: 1}", "{op: transfer, from: a, to: b}", Q), "schema",
         "amount: missing"),
        (steps(INIT, "{op: compute, compute_op: mul, args: [a, a], var: r}"), "no_query", "no query"),
        (steps(INIT, Q, "{op: compute, compute_op: mul, args: [a, a], var: r}"), "schema", "last step"),
        ("[{op: init, var: a, value: 2}, 5]", "schema", "expected a mapping"),
        ("{expert: arithmetic, trace: [{op: init, var: d, value: 60},"
         " {op: percent_of, base: d, rate: 60, var: r}, {op: query, var: r}]}", "op_outside_expert", "percent_of"),
        ("{expert: physics, trace: [{op: init, var: a, value: 1}]}", "unknown_expert", "physics"),
        ("- expert: arithmetic\n  trace:\n    - {op: init, var: a, from: prev.result}\n    - {op: query, var: a}",
         "undefined_var", "prev.result"),
    ],
)  # fmt: skip
def test_invalid_traces_name_their_reason(trace: str, kind: str, reason: str) -> None:
    res = run(trace)
    assert (res.parsed, res.valid, res.value, res.error_kind) == (True, False, None, kind)
    assert reason in (res.error or "")
    typed = kind in ("schema", "unknown_op", "bad_number")  # typed validation: no usable trace
    assert res.outcome(Fraction(4)) == ("invalid_steps" if typed else "failed_execution")
    assert res.tier(Fraction(4)) == ("no_trace" if typed else "failed")


def test_short_circuit_is_rejected() -> None:
    # The notebook's rate regression: query the extracted rate instead of the product.
    res = run(SHORT)
    assert (res.parsed, res.valid, res.error_kind) == (True, False, "short_circuit")
    assert res.outcome(Fraction(49)) == "short_circuit"  # even when the init value is gold
    # An init fed from the previous sub-trace is init-only too.
    head, tail = COMPOSED.rsplit("{op: query, var: result}", 1)
    assert run(head + "{op: query, var: increased}" + tail).error_kind == "short_circuit"
    # A domain step that changes an init var makes it queryable (entity tracking).
    assert run(
        steps("{op: init, var: x, value: 5}", "{op: consume, var: x, amount: 1}", "{op: query, var: x}")
    ).valid


def test_hostile_input_is_bounded() -> None:
    bombs = [
        "<reasoning>" + "x" * 1_000_000 + "</reasoning>",
        "<reasoning>" * 100_000,
        "<reasoning>" + "[" * 15_000 + "</reasoning>",
        "<reasoning>" + "- " * 7_000 + "x</reasoning>",
        "<reasoning>a: " + "9" * 15_000 + "</reasoning>",
        '<reasoning>a: &a ["x","x"]\nb: &b [*a,*a]\nc: &c [*b,*b]\nd: [*c,*c,*c]</reasoning>',
        # squaring 200 times would need 2**200 digits: capped at 256 bits
        wrap("- {op: init, var: v0, value: 2}\n"
             + "".join(f"- {{op: compute, compute_op: mul, args: [v{i}, v{i}], var: v{i + 1}}}\n" for i in range(200))
             + "- {op: query, var: v200}"),
        wrap("".join(f"- {{op: init, var: a{i}, value: {i}}}\n" for i in range(300))),
    ]  # fmt: skip
    for bomb in bombs:
        seconds = []  # the best of three: a pause of the process (GC, a busy machine) is not the parser's
        for _ in range(3):
            t0 = time.perf_counter()
            res = parse_trace(bomb)
            seconds.append(time.perf_counter() - t0)
        assert min(seconds) < 1.0, seconds  # each takes milliseconds; a blow-up takes seconds every time
        assert not res.valid
    assert parse_trace(bombs[-2]).error_kind == "bad_number"
    assert parse_trace(bombs[-1]).error_kind == "schema"  # more than MAX_STEPS steps


def test_reward_tiers_are_ordered() -> None:
    (fn,) = build_rewards(["yaml_trace"])
    rate = (
        "{expert: rate_equation, trace: [" + ", ".join(RATE.strip().removeprefix("- ").split("\n- ")) + "]}"
    )
    completions = [
        wrap(rate, "245"),  # executed, correct: 1.0
        wrap(rate.replace("value: 5", "value: 6"), "245"),  # executed, wrong value (the tag is not read): 0.7
        wrap(rate.replace("{op: query, var: quantity}", "{op: query, var: rate}")),  # short-circuit: 0.5
        wrap(rate.replace("rate_equation", "percentage")),  # compute is not a percentage op: wrong expert 0.3
        wrap(rate.replace("var: quantity}", "var: quantity, unit: kg}", 1)),  # typed validation fails: 0.0
        wrap("Janet has 16 eggs."),  # YAML, but not a trace: 0.0
        "<answer>245</answer>",  # no reasoning at all: 0.0
    ]
    gold = {"experts": ["rate_equation"]}
    scores = fn(["p"] * 7, completions, answer=["245"] * 7, meta=[gold] * 7)
    assert scores == [1.0, 0.7, 0.5, 0.3, 0.0, 0.0, 0.0]
    # Without a known gold expert there is no wrong-expert tier: the op outside its expert fails execution.
    assert fn(["p"] * 4, completions[:4], answer=["245"] * 4) == [1.0, 0.7, 0.5, 0.5]
    # The right expert with a correct value but a wrong expert label still scores the expert tier.
    assert fn(["p"], completions[:1], answer=["245"], meta=[{"experts": ["arithmetic"]}]) == [0.3]
    # Composed: the expert sequence is compared in order.
    composed = {"experts": ["percentage", "arithmetic"]}
    assert fn(["p"], [wrap(COMPOSED, "70000")], answer=["70000"], meta=[composed]) == [1.0]
    assert fn(["p"], [wrap(COMPOSED, "70000")], answer=["70000"], meta=[{"experts": ["arithmetic"]}]) == [0.3]
    cfg = RewardConfig(trace_correct=2.0, trace_unparsed=-1.0)
    (fn,) = build_rewards(["yaml_trace"], cfg)
    assert fn(["p"] * 2, [completions[0], completions[-1]], answer=[245, 245]) == [2.0, -1.0]


# ----------------------------------------------------------------------------- the eval suite

ITEMS = [
    {"id": "c", "question": "q", "answer": "245", "meta": {"category": "rate"}},
    {"id": "w", "question": "q", "answer": "245", "meta": {"category": "rate"}},
    {"id": "s", "question": "q", "answer": "49", "meta": {"category": "rate"}},
    {"id": "i", "question": "q", "answer": "4", "meta": {"category": "other"}},
    {"id": "p", "question": "q", "answer": "18", "meta": {"category": "other"}},
    {"id": "m", "question": "q", "answer": "1", "meta": {"category": "other"}},
]
PREDICTIONS = [
    {"id": "c", "completion": wrap(RATE, "245")},  # correct, agrees
    {"id": "w", "completion": wrap(RATE.replace("value: 5", "value: 6"), "245")},  # 294: wrong, disagrees
    {"id": "s", "completion": wrap(SHORT, "49")},  # short-circuit
    {"id": "i", "completion": wrap(steps(INIT, "{op: add, args: [a, a], var: r}", Q), "4")},  # invalid
    {"id": "p", "completion": "<reasoning>9 * 2 = 18</reasoning><answer>18</answer>"},  # not a trace
]  # "m" has no prediction


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_score_cli_writes_the_trace_fields(tmp_path: Path) -> None:
    from evals import score

    preds, data = _write(tmp_path / "p.jsonl", PREDICTIONS), _write(tmp_path / "d.jsonl", ITEMS)
    out, per_item = tmp_path / "s.json", tmp_path / "i.jsonl"
    argv = ["--predictions", str(preds), "--dataset", str(data), "--out", str(out)]
    score.main([*argv, "--per-item", str(per_item), "--suite", "yaml_trace"])
    s = json.loads(out.read_text())
    assert s["suite"] == "yaml_trace" and s["primary_metric"] == "solver" and s["n"] == 6
    assert s["parse_rate"] == pytest.approx(4 / 6)
    assert s["valid_rate"] == pytest.approx(2 / 6)
    assert s["solver_accuracy"] == pytest.approx(1 / 6)
    assert s["strict_accuracy"] == pytest.approx(5 / 6)  # every tag but the missing one is gold
    assert (s["agreement_rate"], s["agreement_n"]) == (0.5, 2)  # only c and w executed
    assert s["trace_outcomes"] == {"parse_failure": 1, "invalid_steps": 1, "wrong_expert": 0, "short_circuit": 1,
                                   "failed_execution": 0, "wrong_answer": 1, "correct": 1,
                                   "missing_prediction": 1}  # fmt: skip
    assert s["trace_error_kinds"] == {"not_a_trace": 1, "unknown_op": 1, "short_circuit": 1}
    assert s["categories"]["rate"]["solver_accuracy"] == pytest.approx(1 / 3)
    assert s["categories"]["other"]["parse_rate"] == pytest.approx(1 / 3)
    assert len(s["solver_accuracy_ci95"]) == 2 and "solver_accuracy" in s["rules"]
    rows = {r["id"]: r for r in map(json.loads, per_item.read_text().splitlines())}
    assert rows["w"]["trace_value"] == "294" and rows["w"]["agree"] is False
    assert rows["c"]["trace_outcome"] == "correct" and rows["m"]["trace_outcome"] == "missing_prediction"

    score.main(argv)  # the answer suite is unchanged: no trace fields
    assert "parse_rate" not in json.loads(out.read_text())


def test_compare_and_report_show_the_trace_metrics(tmp_path: Path) -> None:
    from evals import report
    from evals.compare import compare_files
    from evals.suites import summarize

    data = _write(tmp_path / "d.jsonl", ITEMS)
    better = [dict(p, completion=wrap(RATE, "245")) if p["id"] == "w" else p for p in PREDICTIONS]
    a, b = _write(tmp_path / "a.jsonl", PREDICTIONS), _write(tmp_path / "b.jsonl", better)
    res = compare_files(a, b, data, suite="yaml_trace")
    assert res["suite"] == "yaml_trace" and res["primary_metric"] == "solver"
    assert res["metrics"]["solver"]["gained"] == ["w"]
    assert res["metrics"]["agree"]["n"] == 2  # items with an executed value on both sides
    assert "solver" not in compare_files(a, b, data)["metrics"]

    summary = {
        "suite": "yaml_trace",
        "metrics": ["solver", "parse", "valid", "agree", "strict"],
        "primary_metric": "solver",
        "base": summarize(PREDICTIONS, ITEMS, "yaml_trace"),
        "trained": summarize(better, ITEMS, "yaml_trace"),
    }
    head = report.headline_table(res, summary)
    assert "16.7%" in head and "33.3%" in head  # solver accuracy, base and trained
    traces = report.trace_table(summary)
    assert "short_circuit" in traces and "unknown_op" in traces
    assert report.trace_table({"base": {}, "trained": {}}) == ""
    cats = report.category_table(summary, "solver")
    assert "33.3%" in cats and "66.7%" in cats  # the rate category, base and trained


# ----- every failure with its exact kind and message (what the trace eval's taxonomy reads), limits from both sides

BIG = 2 ** (T.MAX_NUMBER_BITS - 1)  # the largest power of two within the bound


def init(var: str, value: Any) -> dict[str, Any]:
    return {"op": "init", "var": var, "value": value}


def query(var: str) -> dict[str, Any]:
    return {"op": "query", "var": var}


def compute(op: str, args: Any, var: str = "r") -> dict[str, Any]:
    return {"op": "compute", "compute_op": op, "args": args, "var": var}


FAILURES = [
    ([{"op": "init", "value": 3}, query("a")], "schema", "step 1 (init): var: missing"),
    ([init("2x", 1), query("a")], "schema", "step 1 (init): var: expected a variable name, got '2x'"),
    ([init(5, 1), query("a")], "schema", "step 1 (init): var: expected a variable name, got 5"),
    ([init("a" * 65, 1), query("a")], "schema", f"step 1 (init): var: expected a variable name, got {repr('a' * 65)[:57]}..."),
    ([init("a", 1), init("a", 2), query("a")], "redefined_var", "step 2 (init): init redefines variable 'a'"),
    ([{"op": "init", "var": "a", "value": 1, "from": "prev.result"}, query("a")], "schema",
     "step 1 (init): init needs exactly one of value, source, from"),
    ([{"op": "init", "var": "a"}, query("a")], "schema", "step 1 (init): init needs exactly one of value, source, from"),
    ([{"op": "init", "var": "a", "source": "prev.result"}, query("a")], "undefined_var",
     "step 1 (init): prev.result in the first sub-trace"),
    ([{"op": "init", "var": "a", "source": "last"}, query("a")], "schema",
     "step 1 (init): source: expected 'prev.result', got 'last'"),
    ([{"op": "init", "var": "a", "from": 7}, query("a")], "schema", "step 1 (init): from: expected 'prev.result', got 7"),
    ([init("a", "abc"), query("a")], "bad_number", "step 1 (init): value: expected a number, got 'abc'"),
    ([init("a", None), query("a")], "bad_number", "step 1 (init): value: expected a number, got None"),
    ([init("a", True), query("a")], "bad_number", "step 1 (init): value: expected a number, got True"),
    ([init("a", float("inf")), query("a")], "bad_number", "step 1 (init): value: expected a finite number, got inf"),
    ([init("a", 2 * BIG), query("a")], "bad_number",
     f"step 1 (init): value: number too large (over {T.MAX_NUMBER_BITS} bits)"),
    ([init("a", "1" * 80), query("a")], "bad_number",
     f"step 1 (init): value: number too large (over {T.MAX_NUMBER_BITS} bits)"),
    ([init("a", 1), compute("pow", ["a", 2]), query("r")], "unknown_op",
     f"step 2 (compute): compute_op: 'pow' unknown; known: {', '.join(T.COMPUTE_OPS)}"),
    ([init("a", 1), compute("add", 5), query("r")], "schema",
     f"step 2 (compute): args: expected a list of up to {T.MAX_ARGS} operands"),
    ([init("a", 1), compute("add", [1] * (T.MAX_ARGS + 1)), query("r")], "schema",
     f"step 2 (compute): args: expected a list of up to {T.MAX_ARGS} operands"),
    ([init("a", 1), compute("add", ["a", "y"]), query("r")], "undefined_var",
     "step 2 (compute): args[1]: variable 'y' is not defined"),
    ([init("a", 1), compute("add", ["a", [1]]), query("r")], "bad_number",
     "step 2 (compute): args[1]: expected a number, got [1]"),
    ([init("a", 1), {"op": "compute", "compute_op": "add", "args": ["a", 1]}, query("a")], "schema",
     "step 2 (compute): var: missing"),
    ([init("a", 1), compute("add", ["a"]), query("r")], "schema", "step 2 (compute): args: add needs 2 or more, got 1"),
    ([init("a", 1), compute("mul", []), query("r")], "schema", "step 2 (compute): args: mul needs 2 or more, got 0"),
    ([init("a", 1), compute("sub", ["a", 1, 1]), query("r")], "schema",
     "step 2 (compute): args: sub needs exactly 2, got 3"),
    ([init("a", 1), compute("div", ["a", 0]), query("r")], "math_error", "step 2 (compute): div by zero"),
    ([init("a", 1), compute("mod", ["a", 0]), query("r")], "math_error", "step 2 (compute): mod by zero"),
    ([init("a", BIG), compute("add", ["a", "a"]), query("r")], "bad_number",
     f"step 2 (compute): number too large (over {T.MAX_NUMBER_BITS} bits)"),
    ([init("a", BIG), compute("mul", ["a", 2]), query("r")], "bad_number",
     f"step 2 (compute): number too large (over {T.MAX_NUMBER_BITS} bits)"),
    ([init("a", BIG), compute("sub", ["a", -BIG]), query("r")], "bad_number",
     f"step 2 (compute): number too large (over {T.MAX_NUMBER_BITS} bits)"),  # bounded when set
    ([{"op": "percent_of", "rate": 5, "var": "p"}, query("p")], "schema", "step 1 (percent_of): base: missing"),
    ([{"op": "percent_off", "base": 5, "rate": "r", "var": "p"}, query("p")], "undefined_var",
     "step 1 (percent_off): rate: variable 'r' is not defined"),
    ([{"op": "percent_of", "base": 5, "rate": 5}, query("p")], "schema", "step 1 (percent_of): var: missing"),
    ([init("a", BIG), {"op": "percent_increase", "base": "a", "rate": 300, "var": "p"}, query("p")], "bad_number",
     f"step 2 (percent_increase): number too large (over {T.MAX_NUMBER_BITS} bits)"),
    ([{"op": "consume", "var": "a", "amount": 1}, query("a")], "undefined_var",
     "step 1 (consume): var: variable 'a' is not defined"),
    ([init("a", 1), {"op": "consume", "var": "a"}, query("a")], "schema", "step 2 (consume): amount: missing"),
    ([init("a", BIG), {"op": "consume", "var": "a", "amount": -BIG}, query("a")], "bad_number",
     f"step 2 (consume): number too large (over {T.MAX_NUMBER_BITS} bits)"),
    ([init("b", 1), {"op": "transfer", "from": "a", "to": "b", "amount": 1}, query("b")], "undefined_var",
     "step 2 (transfer): from: variable 'a' is not defined"),
    ([init("a", 1), {"op": "transfer", "from": "a", "to": "b", "amount": 1}, query("a")], "undefined_var",
     "step 2 (transfer): to: variable 'b' is not defined"),
    ([init("a", 1), init("b", 1), {"op": "transfer", "from": "a", "to": "b"}, query("a")], "schema",
     "step 3 (transfer): amount: missing"),
    ([init("a", -BIG), init("b", 0), {"op": "transfer", "from": "a", "to": "b", "amount": BIG}, query("a")],
     "bad_number", f"step 3 (transfer): number too large (over {T.MAX_NUMBER_BITS} bits)"),
    ([init("a", 0), init("b", BIG), {"op": "transfer", "from": "a", "to": "b", "amount": BIG}, query("a")],
     "bad_number", f"step 3 (transfer): number too large (over {T.MAX_NUMBER_BITS} bits)"),
    ([query("a"), init("a", 1)], "schema", "step 1 (query): query must be the last step of a trace"),
    ([init("a", 1), query("b")], "undefined_var", "step 2 (query): var: variable 'b' is not defined"),
    ([init("a", 1), query("a")], "short_circuit",
     "step 2 (query): query targets 'a', which only an init set (anti-short-circuit)"),
    ([init("a", 1), compute("add", ["a", 1])], "no_query", "no query step"),
    ([{"op": "square", "var": "a"}], "unknown_op", f"step 1: op: 'square' unknown; known: {', '.join(T.OPS)}"),
    ([init("a", 1), "query a"], "schema", "step 2: expected a mapping like {op: ..., ...}, got 'query a'"),
    ([init("a", 1), {"op": "query", "var": "a", "unit": "kg", "as": 1}], "schema",
     "step 2 (query): as: unknown field; allowed: var"),
    ([init("a", 1), {**compute("add", ["a", 1]), "unit": "kg"}, query("r")], "schema",
     "step 2 (compute): unit: unknown field; allowed: args, compute_op, var"),
    ({"expert": "geometry", "trace": [init("a", 1)]}, "unknown_expert",
     f"expert: 'geometry' unknown; known: {', '.join(T.EXPERT_OPS)}"),
    ({"expert": 3, "trace": [init("a", 1)]}, "unknown_expert", f"expert: 3 unknown; known: {', '.join(T.EXPERT_OPS)}"),
    ({"expert": "arithmetic", "trace": []}, "schema", "trace: expected a non-empty list of steps"),
    ({"expert": "arithmetic", "trace": {"op": "init"}}, "schema", "trace: expected a non-empty list of steps"),
    ({"expert": "arithmetic", "trace": [init("a", 1), {"op": "consume", "var": "a", "amount": 1}, query("a")]},
     "op_outside_expert",
     f"step 2: op consume is not one of expert arithmetic's ops ({', '.join(T.EXPERT_OPS['arithmetic'])})"),
    ([{"expert": "arithmetic", "trace": [init("a", 1), compute("add", ["a", 1]), query("r")]},
      {"expert": "arithmetic", "trace": [init("x", 1), query("y")]}], "undefined_var",
     "sub-trace 2: step 2 (query): var: variable 'y' is not defined"),
    ([{"expert": "arithmetic", "trace": [init("a", 1), compute("add", ["a", 1]), query("r")]},
      {"expert": "arithmetic", "trace": [compute("add", [1, 1])]}], "no_query", "sub-trace 2: no query step"),
    ([{"expert": "arithmetic", "trace": [init("a", 1)]}, {"expert": "arithmetic", "trace": ["x"]}], "schema",
     "sub-trace 2: step 1: expected a mapping like {op: ..., ...}, got 'x'"),
    ([init(f"v{i}", i) for i in range(T.MAX_STEPS)] + [query("v0")], "schema", f"more than {T.MAX_STEPS} steps"),
]  # fmt: skip


@pytest.mark.parametrize(("doc", "kind", "message"), FAILURES, ids=[m[:60] for _, _, m in FAILURES])
def test_each_failure_names_its_kind_step_and_field(doc: Any, kind: str, message: str) -> None:
    result = T.execute(doc)
    assert (result.parsed, result.valid, result.error_kind, result.error) == (True, False, kind, message)
    assert result.value is None


@pytest.mark.parametrize(
    ("doc", "message"),
    [(None, "YAML is empty, not a trace (a list of steps)"), (5, "YAML is int, not a trace (a list of steps)"),
     (["op", "x"], "YAML is list, not a trace (a list of steps)"), ([], "YAML is list, not a trace (a list of steps)"),
     ({"steps": []}, "YAML is dict, not a trace (a list of steps)")],
)  # fmt: skip
def test_values_that_are_not_traces(doc: Any, message: str) -> None:
    result = T.execute(doc)
    assert (result.parsed, result.valid, result.error_kind, result.error) == (
        False,
        False,
        "not_a_trace",
        message,
    )


def test_limits_hold_from_both_sides() -> None:
    exact = T.execute([init("a", BIG), compute("add", ["a", 0]), query("r")])  # 256 bits: allowed
    assert exact.valid and exact.value == BIG
    name = "a" * T.MAX_NAME_CHARS
    assert T.execute([init(name, 1), compute("add", [name, 1]), query("r")]).value == 2
    most = T.execute([init("a", 1), compute("add", [1] * T.MAX_ARGS), query("r")])
    assert most.valid and most.value == T.MAX_ARGS
    steps = [init(f"v{i}", i) for i in range(T.MAX_STEPS - 2)] + [compute("add", ["v1", "v2"]), query("r")]
    assert T.execute(steps).value == 3  # exactly MAX_STEPS steps


def test_transfer_consume_and_percent_values() -> None:
    moved = [init("a", 10), init("b", 1), {"op": "transfer", "from": "a", "to": "b", "amount": 3}]
    assert T.execute([*moved, query("a")]).value == 7
    assert T.execute([*moved, query("b")]).value == 4
    used = [init("a", 10), {"op": "consume", "var": "a", "amount": "2.5"}, query("a")]
    assert T.execute(used).value == Fraction(15, 2)
    for op, want in (("percent_of", 30), ("percent_off", 170), ("percent_increase", 230)):
        assert (
            T.execute([init("b", 200), {"op": op, "base": "b", "rate": 15, "var": "p"}, query("p")]).value
            == want
        )


def test_prev_result_and_experts_across_sub_traces() -> None:
    doc = [{"expert": "percentage", "trace": [init("b", 80), {"op": "percent_of", "base": "b", "rate": 25, "var": "p"},
                                              query("p")]},
           {"expert": 7, "trace": [{"op": "init", "var": "x", "source": "prev.result"}, compute("mul", ["x", 3]),
                                   query("r")]},
           {"trace": [{"op": "init", "var": "y", "from": "prev.result"}, compute("sub", ["y", 1]), query("r")]}]  # fmt: skip
    bad_expert = T.execute(doc)
    assert bad_expert.error_kind == "unknown_expert" and bad_expert.experts == ("percentage", None, None)
    assert bad_expert.steps == tuple(doc[0]["trace"])  # the steps read before the failing sub-trace
    doc[1]["expert"] = "arithmetic"
    result = T.execute(doc)
    assert result.valid and result.value == 59 and result.experts == ("percentage", "arithmetic", None)
    single = T.execute({"op": "query", "var": "x"})  # one step, written as a mapping
    assert result.steps[0] == doc[0]["trace"][0] and single.parsed
    assert single.error == "step 1 (query): var: variable 'x' is not defined"


@pytest.mark.parametrize(
    ("text", "depth"),
    [("", 0), ("[[{}]]", 3), ("[]]][", 1), ("[[][[", 3), ("[a[", 2), ("[X[", 2), ("XXXX", 0),
     ("a:\n  b:\n     c: 1", 2), ("a:\n      c: 1", 3), ("- - - a", 3), ("-\t-\ta", 2), ("- \f- a", 1),
     ("-  - a", 2), ("- X- a", 1), ("- \xa0- a", 1), ("\t\t- a", 0), ("XX  a", 0), ("- a", 1)],
)  # fmt: skip
def test_nesting_bound(text: str, depth: int) -> None:
    got = T._nesting(text)
    assert got == depth and isinstance(got, int)


def test_yaml_size_and_depth_limits_from_both_sides() -> None:
    at_limit = "a: " + "x" * (T.MAX_YAML_CHARS - 3)
    assert T.load_yaml(at_limit)[1] is None
    over = at_limit + "x"
    assert T.load_yaml(over) == (
        None,
        f"trace is {len(over)} characters (limit {T.MAX_YAML_CHARS})",
        "too_large",
    )
    deep = "[" * T.MAX_NESTING + "]" * T.MAX_NESTING
    assert T.load_yaml(deep)[1] is None
    assert T.load_yaml("[" + deep + "]") == (
        None,
        f"trace nests deeper than {T.MAX_NESTING} levels",
        "too_large",
    )
    value, error, kind = T.load_yaml("a: [1, 2\nb: 3")
    assert value is None and kind == "yaml_error"
    assert error is not None and error.startswith("YAML: while parsing a flow sequence") and "\n" not in error


def test_fence_and_reasoning_block_edges() -> None:
    assert T._strip_fence("```yaml\nx: 1\n```") == "x: 1\n"
    assert T._strip_fence("  ```\nx: 1```  ") == "x: 1"
    assert T._strip_fence("```\nabc") == "```\nabc"  # opened, never closed: left alone
    assert T._strip_fence("x: 1\n```") == "x: 1\n```"
    assert T.reasoning_block("</reasoning><reasoning>x</reasoning>") == "x"
    assert T.reasoning_block("<reasoning>a</reasoning> b </reasoning>") == "a"
    assert T.reasoning_block("<reasoning></reasoning>") == ""
    assert T.reasoning_block("<reasoning>a<reasoning>b</reasoning>") == "a<reasoning>b"
    assert T.parse_trace("no tags").error == "no closed <reasoning> block"


@pytest.mark.parametrize(
    ("value", "text"),
    [(Fraction(1, 2), "0.5"), (Fraction(5, 2), "2.5"), (Fraction(1, 25), "0.04"), (Fraction(-3, 40), "-0.075"),
     (Fraction(7, 125), "0.056"), (Fraction(-1, 3), "-1/3"), (Fraction(0), "0"), (None, None)],
)  # fmt: skip
def test_format_value(value: Fraction | None, text: str | None) -> None:
    assert T.format_value(value) == text


def test_format_value_of_huge_denominators() -> None:
    for value, places in (
        (Fraction(1, 2**1100), 1100),
        (Fraction(3, 2**1100), 1100),
        (Fraction(1, 5**500), 500),
    ):
        text = T.format_value(value)
        assert (
            text is not None and text.startswith("0.") and len(text) == 2 + places and Fraction(text) == value
        )


def test_short_cuts_long_values_at_60() -> None:
    assert T._short("a" * 58) == repr("a" * 58)  # 60 characters with its quotes
    assert T._short("a" * 59) == repr("a" * 59)[:57] + "..."
    assert len(T._short(list(range(100)))) == 60
