"""The YAML-trace generator: pattern-file checks, determinism, solver-checked items, splits,
the rejection and contamination gates of the build, and the GSM8K conversion."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections import Counter
from fractions import Fraction
from pathlib import Path

import pytest

from common.config import load_config
from common.errors import InputError
from common.prompts import format_target
from common.records import load_records
from common.traces import parse_trace
from scripts.dataset.build import BuildConfig, build
from scripts.dataset.traces.generate import TraceGenConfig, generate
from scripts.dataset.traces.gsm8k import ConvertError, convert
from scripts.dataset.traces.patterns import load_pattern, load_patterns
from scripts.dataset.traces.vocab import load_vocab, pluralize, with_article

ROOT = Path(__file__).resolve().parent.parent
TRACES = ROOT / "scripts" / "dataset" / "traces"
EXPERTS = ("arithmetic", "entity_track", "rate_equation", "comparison", "percentage", "composition")

GOOD = """\
name: {name}
expert: arithmetic
vocab: {{p: people, food: foods}}
variables:
  trays: {{type: int, min: 2, max: 6}}
  per_tray: {{type: int, min: 3, max: 12}}
  given: {{type: int, min: 1, max: 5}}
constraints:
  - {{expr: trays * per_tray - given, min: 1}}
templates:
  - "${{p.name}} bakes ${{trays}} trays of ${{per_tray}} ${{food.plural}} and gives ${{given}} of them to the neighbors next door. How many are left?"
  - "There are ${{trays}} trays with ${{per_tray}} ${{food.plural}} each; ${{p.name}} eats ${{given}}. How many remain?"
trace:
  - {{op: init, var: trays, value: trays}}
  - {{op: init, var: per_tray, value: per_tray}}
  - {{op: compute, compute_op: mul, args: [trays, per_tray], var: step1}}
  - {{op: init, var: given, value: given}}
  - {{op: compute, compute_op: sub, args: [step1, given], var: result}}
  - {{op: query, var: result}}
answer: {answer}
"""


def pattern_dir(tmp_path: Path, text: str, name: str = "trays", expert: str = "arithmetic") -> Path:
    folder = tmp_path / "patterns" / expert
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.yaml").write_text(text)
    return tmp_path / "patterns"


def good(name: str = "trays", answer: str = "trays * per_tray - given") -> str:
    return GOOD.format(name=name, answer=answer)


VOCAB = load_vocab(TRACES / "vocab")


# --- pattern files -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("old", "new", "field", "reason"),
    [
        ("answer: trays", "colour: red\nanswer: trays", "colour", "unknown field"),
        ("expert: arithmetic", "expert: physics", "expert", "not one of"),
        ("trays: {type: int, min: 2, max: 6}", "trays: {type: int, min: 7, max: 6}", "variables.trays", "no multiple"),
        ("trays: {type: int, min: 2, max: 6}", "trays: {type: float, min: 2, max: 6}", "variables.trays.type", "'float'"),
        ("{op: compute, compute_op: mul, args: [trays, per_tray], var: step1}",
         "{op: percent_of, base: trays, rate: per_tray, var: step1}", "trace[2].op", "not one of expert arithmetic"),
        ("{op: init, var: given, value: given}", "{op: init, var: x, value: given}", "trace[3].var", "abstract name"),
        ("args: [step1, given], var: result}", "args: [step1, given], var: total}", "trace", "scaffold is step1"),
        ("{op: query, var: result}", "{op: query, var: step1}", "trace[5].var", "queries 'result'"),
        ("args: [step1, given]", "args: [step1, missing]", "trace[4].args[1]", "'missing'"),
        ("gives ${given} of them", "gives some of them", "templates[0]", "does not mention ${given}"),
        ("${p.name} bakes", "${p.nickname} bakes", "templates[0]", "nickname"),
        ("${p.name} bakes", "${q.name} bakes", "templates[0]", "unknown name 'q'"),
        ("${food.plural} and", "${food|shout} and", "templates[0]", "unknown filter"),
        ("How many are left?", "How many are left.", "templates[0]", "ends with '?'"),
        ("food: foods", "food: dishes", "vocab.food", "no vocabulary list 'dishes'"),
        ("expr: trays * per_tray - given", "expr: trays * (per_tray", "constraints[0].expr", "does not parse"),
        ("answer: trays", "answer: __import__('os').system('x') + trays", "answer", "unsupported syntax"),
    ],
)  # fmt: skip
def test_pattern_errors_name_file_and_field(
    tmp_path: Path, old: str, new: str, field: str, reason: str
) -> None:
    text = good()
    assert old in text, old
    path = pattern_dir(tmp_path, text.replace(old, new, 1)) / "arithmetic" / "trays.yaml"
    with pytest.raises(InputError) as err:
        load_pattern(path, VOCAB)
    message = str(err.value)
    assert message.startswith(f"{path}: {field}"), message
    assert reason in message


def test_short_circuit_and_entity_rules_are_enforced(tmp_path: Path) -> None:
    entity = (TRACES / "patterns" / "entity_track" / "eat_and_lose.yaml").read_text()
    # querying an entity that no step changes is a short-circuit
    text = entity.replace('  - {op: consume, var: "${p.key}.${food.key}", amount: eaten}\n', "").replace(
        '  - {op: consume, var: "${p.key}.${food.key}", amount: lost}\n', ""
    )
    path = pattern_dir(tmp_path, text, "eat_and_lose", "entity_track") / "entity_track" / "eat_and_lose.yaml"
    with pytest.raises(InputError, match=r"trace\[1\]\.var: .* only set by an init"):
        load_pattern(path, VOCAB)
    # a later sub-trace must start from the previous answer
    comp = (TRACES / "patterns" / "composition" / "rate_then_subtract.yaml").read_text()
    path = pattern_dir(tmp_path, comp.replace("source: prev.result", "value: used"), "rate_then_subtract",
                       "composition") / "composition" / "rate_then_subtract.yaml"  # fmt: skip
    with pytest.raises(InputError, match=r"trace\[1\]\.trace\[0\]"):
        load_pattern(path, VOCAB)


def test_unsatisfiable_constraint_names_file_and_constraint(tmp_path: Path) -> None:
    text = good().replace("- {expr: trays * per_tray - given, min: 1}", "- {expr: trays, min: 100}")
    root = pattern_dir(tmp_path, text)
    cfg = TraceGenConfig(patterns=str(root), vocab=str(TRACES / "vocab"), sizes={"train": 2}, max_draws=50)
    with pytest.raises(InputError, match=r"trays\.yaml: constraints\[0\] \(trays\): unsatisfiable"):
        generate(cfg, 0)


def test_vocab_helpers() -> None:
    assert [pluralize(w) for w in ("box", "berry", "day", "toy car", "bus")] == [
        "boxes",
        "berries",
        "days",
        "toy cars",
        "buses",
    ]
    assert (with_article("apple"), with_article("pear")) == ("an apple", "a pear")
    maria = next(p for p in VOCAB.lists["people"] if p["name"] == "Maria")
    assert (maria["subject"], maria["possessive"], maria["key"]) == ("she", "her", "maria")


# --- generation ---------------------------------------------------------------------------------


def test_shipped_patterns_cover_the_notebook_inventory() -> None:
    patterns = load_patterns(TRACES / "patterns", VOCAB)
    counts = Counter(p.expert for p in patterns)
    assert len(patterns) >= 50
    assert set(counts) == set(EXPERTS)
    assert counts["arithmetic"] >= 22 and counts["composition"] >= 10
    assert {p.shape for p in patterns if p.expert == "arithmetic"} >= {
        "sequential",
        "interleaved",
        "long",
        "gap",
    }
    sizes = Counter(len(p.experts) for p in patterns if p.expert == "composition")
    assert sizes[2] >= 8 and sizes[3] >= 2
    assert all(len(p.templates) >= 3 for p in patterns)


def test_every_pattern_yields_solver_valid_items() -> None:
    cfg = TraceGenConfig(sizes={"train": 8 * 52, "heldout_template": 2 * 52}, max_reject_share=0.0)
    splits, rejects, report = generate(cfg, 3)
    assert rejects == []
    kept = {name: st["kept"] for name, st in report["patterns"].items()}
    assert all(k["train"] >= 1 and k["heldout_template"] >= 1 for k in kept.values()), kept
    for rec in splits["train"] + splits["heldout_template"]:
        result = parse_trace(format_target(rec["reasoning"], rec["answer"]))
        assert result.valid and result.value == Fraction(rec["answer"]), rec
        assert "${" not in rec["question"]
        assert list(result.experts) == rec["meta"]["experts"]
        for line in rec["reasoning"].splitlines():  # flow style: one step per line
            assert line.lstrip(" -").startswith(("{op: ", "expert: ", "trace:")), line


def test_generation_is_deterministic_and_splits_are_disjoint() -> None:
    cfg = TraceGenConfig(sizes={"train": 120, "heldout_seed": 60, "heldout_template": 60})
    a, _, _ = generate(cfg, 0)
    b, _, _ = generate(cfg, 0)
    c, _, _ = generate(cfg, 1)
    assert a == b
    assert a["train"] != c["train"]
    questions = [r["question"] for split in a.values() for r in split]
    assert len(questions) == len(set(questions))
    heldout = {r["meta"]["template"] for r in a["heldout_template"]}
    trained = {r["meta"]["template"] for r in a["train"] + a["heldout_seed"]}
    assert heldout and not heldout & trained
    assert all(r["meta"]["template_heldout"] for r in a["heldout_template"])
    shares = Counter(r["meta"]["expert"] for r in a["train"])
    assert shares == {"arithmetic": 36, "entity_track": 24, "comparison": 18, "composition": 18,
                      "rate_equation": 12, "percentage": 12}  # fmt: skip


def test_a_pattern_that_rejects_fails_the_build_naming_it(tmp_path: Path) -> None:
    root = pattern_dir(tmp_path, good(answer="trays * per_tray"))  # the trace subtracts, the answer does not
    cfg = TraceGenConfig(patterns=str(root), vocab=str(TRACES / "vocab"), sizes={"train": 5})
    with pytest.raises(
        InputError, match=r"trays\.yaml: pattern 'trays' rejected 100\.0% .* solver_disagrees"
    ):
        generate(cfg, 0)


def _build_cfg(tmp_path: Path, root: Path, against: Path) -> Path:
    cfg = {
        "name": "yt",
        "kind": "yaml_traces",
        "out_dir": str(tmp_path / "built"),
        "yaml_traces": {"patterns": str(root), "vocab": str(TRACES / "vocab"),
                        "sizes": {"train": 20, "heldout_template": 5}},
        "contamination": {"against": str(against), "n": 8, "threshold": 0.01},
    }  # fmt: skip
    path = tmp_path / "yt.yaml"
    path.write_text(json.dumps(cfg))
    return path


def _eval_file(path: Path, question: str) -> Path:
    rec = {"id": "ev-1", "question": question, "answer": "1", "reasoning": "r",
           "steps": [{"i": 1, "type": "text", "content": "r"}],
           "meta": {"source": "t", "category": "c", "difficulty": "easy"}}  # fmt: skip
    path.write_text(json.dumps(rec) + "\n")
    return path


def test_build_writes_manifest_and_contamination_gate_fails_it(tmp_path: Path) -> None:
    root = pattern_dir(tmp_path, good())
    clean = _eval_file(tmp_path / "clean.jsonl", "What is the capital of a country far away from here today?")
    cfg = load_config(BuildConfig, _build_cfg(tmp_path, root, clean))
    manifest = build(cfg, "yt.yaml")
    out = tmp_path / "built" / "yt"
    assert manifest["generator"]["patterns"]["trays"]["kept"] == {"train": 20, "heldout_template": 5}
    assert manifest["contamination"]["train"]["contaminated"] == 0
    assert len(load_records(out / "train.jsonl")) == 20
    before = (out / "train.jsonl").read_bytes()

    # An eval item that copies a phrasing: the CLI exits 2 and leaves the old build in place.
    copied = _eval_file(
        tmp_path / "copied.jsonl", "Sam gave 5 of them to the neighbors next door. How many are left now?"
    )
    path = _build_cfg(tmp_path, root, copied)
    proc = subprocess.run([sys.executable, "-m", "scripts.dataset", "build", "--config", str(path)],
                          capture_output=True, text=True, cwd=ROOT)  # fmt: skip
    assert proc.returncode == 2
    assert "error: contamination: split 'train' shares a 8-gram with 1 of 1 items" in proc.stderr
    assert (out / "train.jsonl").read_bytes() == before
    assert not [p for p in (tmp_path / "built").iterdir() if p.name.startswith(".")]


def test_shipped_config_validates() -> None:
    cfg = load_config(BuildConfig, ROOT / "configs" / "data" / "yaml_traces.yaml")
    assert cfg.kind == "yaml_traces" and cfg.contamination is not None
    assert cfg.yaml_traces is not None and cfg.yaml_traces.sizes["heldout_seed"] >= 500
    assert cfg.yaml_traces.sizes["heldout_template"] >= 500
    cfg = load_config(BuildConfig, ROOT / "configs" / "data" / "gsm8k_traces.yaml")
    assert cfg.kind == "gsm8k_traces" and cfg.gsm8k_traces is not None


# --- GSM8K train -> traces ---------------------------------------------------------------------


def test_conversion_of_annotated_solutions() -> None:
    q = "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. How many clips did Natalia sell altogether in April and May?"
    a = "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.\n#### 72"
    trace, gold, n = convert(q, a)
    assert (gold, n) == ("72", 2)
    assert trace.splitlines() == [
        "expert: arithmetic",
        "trace:",
        "- {op: init, var: friends, value: 48}",
        "- {op: compute, compute_op: div, args: [friends, 2], var: step1}",  # "half": a literal 2
        "- {op: compute, compute_op: add, args: [friends, step1], var: result}",
        "- {op: query, var: result}",
    ]
    # interleaved inits, money, a run of + flattened, and a step the answer does not need dropped
    q = "A shop sells pens for $3 and pads for $5. Ana buys 4 pens and 2 pads and 1 eraser. She pays with a $50 bill. How much change does she get?"
    a = ("Pens cost 3*4=<<3*4=12>>12.\nPads cost 5*2=<<5*2=10>>10.\nShe buys 4+2+1=<<4+2+1=7>>7 items.\n"
         "Together 12+10=<<12+10=22>>22.\nChange is 50-22=<<50-22=28>>28.\n#### 28")  # fmt: skip
    trace, gold, n = convert(q, a)
    assert gold == "28" and n == 4
    assert "add, args: [pens, pads, eraser]" not in trace  # the item count is not on the answer's path
    assert parse_trace(format_target(trace, gold)).value == 28
    assert "- {op: init, var: bill, value: 50}" in trace.splitlines() or "var: dollars" in trace


@pytest.mark.parametrize(
    ("question", "solution", "reason"),
    [
        ("Tom has 5 apples.", "He has 5 apples.\n#### 5", "no_annotation"),
        ("Tom has 50 apples and buys 30.", "He has 50+30=<<50+30=80>>80.\nHe gives 45 away: 80-45=<<80-45=35>>35.\n#### 35",
         "ungrounded_number"),  # 45 is nowhere in the question (and not a common constant)
        ("Tom has 5 apples and buys 3.", "He has <<5+3=8>>8 apples.\n#### 9", "gold_not_computed"),
        ("Tom has 10 apples and 3 pears.", "<<10/3=3.33>>3.33 each.\n#### 3.33", "annotation_inexact"),
        ("Tom has 5 apples and 3 pears.", "<<5**3=125>>125.\n#### 125", "unsupported_expression"),
        ("Tom has 17 apples and 3 pears.", "He keeps <<17=17>>17.\n#### 17", "answer_is_question_number"),
        ("Tom has 5 apples and 3 pears.", "<<5+3>> apples\n#### 8", "bad_annotation"),
    ],
)  # fmt: skip
def test_conversion_rejects_with_a_reason(question: str, solution: str, reason: str) -> None:
    with pytest.raises(ConvertError) as err:
        convert(question, solution)
    assert err.value.reason == reason


def test_conversion_on_real_gsm8k_lines_keeps_only_gold_traces() -> None:
    lines = (ROOT / "data" / "gsm8k" / "train.jsonl").read_text().splitlines()[:200]
    kept = reasons = 0
    for line in lines:
        row = json.loads(line)
        try:
            trace, gold, _ = convert(row["question"], row["answer"])
        except ConvertError as err:
            reasons += err.reason in ("no_annotation", "ungrounded_number", "gold_not_computed",
                                      "answer_is_question_number", "unsupported_expression",
                                      "annotation_inexact", "bad_annotation", "too_long")  # fmt: skip
            continue
        kept += 1
        result = parse_trace(format_target(trace, gold))
        assert result.valid and result.value == Fraction(gold)
        assert row["answer"].rstrip().endswith(gold) or gold in row["answer"].replace(",", "")
    assert kept + reasons == len(lines)
    assert kept > 100


def test_vocab_errors_name_file_and_list(tmp_path: Path) -> None:
    shutil.copytree(TRACES / "vocab", tmp_path / "vocab")
    (tmp_path / "vocab" / "bad.yaml").write_text("people: [{name: Ann, pronoun: it}]\n")
    with pytest.raises(InputError, match=r"bad\.yaml: people"):
        load_vocab(tmp_path / "vocab")
