"""Builders: the GSM8K parser on real lines, the GSM8K build, reasoning-gym tasks and user files."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from common.config import load_config
from common.errors import InputError
from common.records import load_records, validate_record
from common.runs import sha256_file
from scripts.dataset.build import BuildConfig, build
from scripts.dataset.solutions import (
    SolutionError,
    calc_is_right,
    eval_expr,
    expr_ops,
    op_category,
    parse_solution,
)

ROOT = Path(__file__).resolve().parent.parent
GSM8K_TRAIN = ROOT / "data" / "gsm8k" / "train.jsonl"


def gsm8k_line(n: int) -> dict:
    """Line ``n`` (1-based) of the vendored GSM8K train file."""
    with GSM8K_TRAIN.open(encoding="utf-8") as fh:
        for k, line in enumerate(fh, 1):
            if k == n:
                return json.loads(line)
    raise AssertionError(n)


def cfg_from(tmp_path: Path, data: dict) -> BuildConfig:
    path = tmp_path / "cfg.yaml"
    path.write_text(json.dumps({"out_dir": str(tmp_path / "built"), **data}))  # JSON is YAML
    return load_config(BuildConfig, path)


# --- the solution parser on real GSM8K lines ----------------------------------------------------


def test_parse_first_train_line() -> None:
    steps, final = parse_solution(gsm8k_line(1)["answer"])
    assert final == "72"
    assert steps == [
        {"i": 1, "type": "compute", "content": "Natalia sold 48/2 = 24 clips in May.", "calc": {"expr": "48/2", "result": "24"}},
        {"i": 2, "type": "compute", "content": "Natalia sold 48+24 = 72 clips altogether in April and May.",
         "calc": {"expr": "48+24", "result": "72"}},
    ]  # fmt: skip


def test_final_answer_commas_removed_and_annotations_gone() -> None:
    steps, final = parse_solution(gsm8k_line(346)["answer"])  # "#### 1,080"
    assert final == "1080"
    assert all("<<" not in s["content"] and ">>" not in s["content"] for s in steps)
    assert steps[2]["calc"] == {"expr": "36*30", "result": "1080"}
    assert steps[2]["content"] == "This means that in 30 days he earns $36 * 30 = $1080."
    steps, final = parse_solution(gsm8k_line(368)["answer"])  # "#### 850,000"
    assert final == "850000"


def test_parentheses_and_negative_numbers() -> None:
    steps, _ = parse_solution(gsm8k_line(56)["answer"])
    assert steps[2]["calc"]["expr"] == "(75/100)*100"
    assert expr_ops("(75/100)*100") == {"/": 1, "*": 1}
    assert expr_ops("-14 + (-8) + 1") == {"+": 2}  # unary minus is not a subtraction
    assert op_category(expr_ops("1+2-3")) == "additive"
    assert op_category(expr_ops("1*2/3")) == "multiplicative"
    assert op_category(expr_ops("1*2+3")) == "mixed"
    assert op_category(expr_ops("5")) == "no_calc"


def test_parser_rejects_malformed_solutions() -> None:
    with pytest.raises(SolutionError, match="no final"):
        parse_solution("a = 1")
    with pytest.raises(SolutionError, match="2 calculator annotations"):
        parse_solution("<<1+1=2>>2 and <<2+2=4>>4\n#### 4")
    with pytest.raises(SolutionError, match="expr=result"):
        parse_solution("x <<12>>\n#### 12")
    steps, final = parse_solution("no final here", require_final=False)
    assert final is None and steps[0]["type"] == "text"


def test_calc_checks() -> None:
    assert eval_expr("(75/100)*100") == 75
    assert eval_expr("__import__('os')") is None
    assert eval_expr("180//3") == 60 and eval_expr("2**3") == 8 and eval_expr("2**1000") is None
    assert calc_is_right({"expr": "48/2", "result": "24"})
    assert not calc_is_right({"expr": "48/2", "result": "25"})
    assert calc_is_right({"expr": "3/4", "result": "3/4"})
    assert calc_is_right({"expr": "1000+1", "result": "1,001"})
    assert not calc_is_right({"expr": "1+1", "result": "two"})


# --- GSM8K build ---------------------------------------------------------------------------------


def gsm8k_cfg(out: Path, *overrides: str) -> BuildConfig:
    """The repo's GSM8K config, writing under ``out``."""
    gsm8k = ROOT / "configs" / "data" / "gsm8k.yaml"
    return load_config(
        BuildConfig, gsm8k, [f"out_dir={out}", f"gsm8k.dir={ROOT / 'data' / 'gsm8k'}", *overrides]
    )


@pytest.fixture(scope="module")
def gsm8k_built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    tmp = tmp_path_factory.mktemp("gsm8k")
    return tmp / "gsm8k", build(gsm8k_cfg(tmp))


def test_gsm8k_build_counts_ids_and_manifest(gsm8k_built: tuple[Path, dict]) -> None:
    out, manifest = gsm8k_built
    assert {k: v["records"] for k, v in manifest["files"].items()} == {
        "train": 6973,
        "valid": 500,
        "test": 1319,
    }
    for split, info in manifest["files"].items():
        assert sha256_file(out / info["path"]) == info["sha256"]
        assert all(validate_record(r) == [] for r in load_records(out / info["path"])), split
    train, valid, test = (load_records(out / f"{s}.jsonl") for s in ("train", "valid", "test"))
    assert {r["id"] for r in train}.isdisjoint(r["id"] for r in valid)
    assert len({r["id"] for r in train + valid}) == 7473
    assert all(r["id"].startswith("gsm8k-train-") for r in valid)
    assert test[0]["id"] == "gsm8k-test-00000"
    first = next(r for r in train + valid if r["id"] == "gsm8k-train-00000")
    assert (
        first["answer"] == "72"
        and first["meta"]["category"] == "mixed"
        and first["meta"]["difficulty"] == "easy"
    )
    assert manifest["seed"] == 0 and manifest["config"]["valid_size"] == 500
    gsm8k_dir = ROOT / "data" / "gsm8k"
    assert manifest["source"][str(gsm8k_dir / "train.jsonl")] == sha256_file(gsm8k_dir / "train.jsonl")
    json.loads((out / "manifest.json").read_text())


def test_gsm8k_valid_split_is_stable(gsm8k_built: tuple[Path, dict], tmp_path: Path) -> None:
    manifest = gsm8k_built[1]
    again = build(gsm8k_cfg(tmp_path))
    assert {k: v["sha256"] for k, v in again["files"].items()} == {
        k: v["sha256"] for k, v in manifest["files"].items()
    }
    other = build(gsm8k_cfg(tmp_path, "seed=1"))
    assert other["files"]["valid"]["sha256"] != manifest["files"]["valid"]["sha256"]
    assert other["files"]["test"]["sha256"] == manifest["files"]["test"]["sha256"]


def test_gsm8k_bad_line_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "train.jsonl").write_text(json.dumps({"question": "q", "answer": "1 + 1 = 2"}) + "\n")
    cfg = cfg_from(
        tmp_path, {"name": "g", "kind": "gsm8k", "gsm8k": {"dir": str(tmp_path), "splits": ["train"]}}
    )
    with pytest.raises(InputError, match=r"train\.jsonl:1: answer: no final"):
        build(cfg)


def test_config_errors_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="needs a 'user:' section"):
        cfg_from(tmp_path, {"name": "u", "kind": "user"})
    with pytest.raises(InputError, match="section 'user' is given but kind is 'gsm8k'"):
        cfg_from(
            tmp_path,
            {
                "name": "u",
                "kind": "gsm8k",
                "user": {"path": "x", "name": "x", "mapping": {"question": "q", "answer": "a"}},
            },
        )
    with pytest.raises(InputError, match="unknown key 'valid_sise'"):
        cfg_from(tmp_path, {"name": "u", "kind": "gsm8k", "valid_sise": 3})


# --- reasoning-gym ---------------------------------------------------------------------------------


def test_reasoning_gym_build_verifies_and_keeps_entry(tmp_path: Path) -> None:
    import reasoning_gym

    cfg = cfg_from(tmp_path, {"name": "rg", "kind": "reasoning_gym", "valid_size": 5, "reasoning_gym": {"tasks": [
        {"name": "chain_sum", "size": 20},
        {"name": "propositional_logic", "size": 3},  # its entries carry no single answer: all dropped
        {"name": "gsm_symbolic", "size": 6, "split": "test"},
    ]}})  # fmt: skip
    manifest = build(cfg)
    out = tmp_path / "built" / "rg"
    assert manifest["files"]["train"]["records"] + manifest["files"]["valid"]["records"] == 20
    assert manifest["rejects"]["count"] == 3
    rejects = [json.loads(line) for line in (out / "rejects.jsonl").read_text().splitlines()]
    assert {r["task"] for r in rejects} == {"propositional_logic"} and "no reference answer" in rejects[0][
        "reason"
    ]
    train = load_records(out / "train.jsonl")
    r = train[0]
    assert r["meta"]["source"] == "reasoning_gym" and r["meta"]["rg_task"] == "chain_sum"
    assert (
        r["meta"]["has_reasoning"] is False and r["steps"] == [] and "No worked reasoning" in r["reasoning"]
    )
    scorer = reasoning_gym.get_score_answer_fn("chain_sum")
    assert scorer(r["answer"], r["meta"]["rg_entry"]) == 1.0  # a reward can score from the record alone
    test = load_records(out / "test.jsonl")
    assert all(t["meta"]["derived_from"] == "gsm8k-test" for t in test)
    assert all(
        t["meta"]["has_reasoning"] and t["steps"] for t in test
    )  # gsm_symbolic gives a worked solution
    assert all(t["meta"]["difficulty"] in ("easy", "medium", "hard") for t in test)


def test_gsm_symbolic_refused_in_training_split(tmp_path: Path) -> None:
    data = {
        "name": "rg",
        "kind": "reasoning_gym",
        "reasoning_gym": {"tasks": [{"name": "gsm_symbolic", "size": 3}]},
    }
    with pytest.raises(
        InputError, match=r"gsm_symbolic.*training split 'train'.*gsm8k-test.*allow_eval_derived_in_train"
    ):
        build(cfg_from(tmp_path, data))
    data["reasoning_gym"]["allow_eval_derived_in_train"] = True
    assert build(cfg_from(tmp_path, data))["files"]["train"]["records"] == 3


def test_reasoning_gym_unknown_task(tmp_path: Path) -> None:
    cfg = cfg_from(
        tmp_path,
        {"name": "rg", "kind": "reasoning_gym", "reasoning_gym": {"tasks": [{"name": "nope", "size": 3}]}},
    )
    with pytest.raises(InputError, match="reasoning_gym task 'nope'"):
        build(cfg)


# --- user files ------------------------------------------------------------------------------------


def test_user_jsonl_mapping_and_rejects(tmp_path: Path) -> None:
    rows = [
        {"prompt": "What is 2 + 3?", "target": 5, "rationale": "2 + 3 = <<2+3=5>>5\n#### 5", "level": 1},
        {"prompt": "Name a colour.", "target": "red"},
        {"prompt": "Missing target"},
        {"prompt": "Wrong final", "target": "4", "rationale": "2 + 3 = 5\n#### 5"},
    ]
    path = tmp_path / "mine.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n{broken\n")
    mapping = {"question": "prompt", "answer": "target", "reasoning": "rationale", "difficulty": "level"}
    cfg = cfg_from(
        tmp_path,
        {"name": "mine", "kind": "user", "user": {"path": str(path), "name": "mine", "mapping": mapping}},
    )
    manifest = build(cfg)
    records = load_records(tmp_path / "built" / "mine" / "train.jsonl")
    assert [r["id"] for r in records] == ["mine-00001", "mine-00002"]
    assert records[0]["answer"] == "5" and records[0]["steps"][0]["calc"] == {"expr": "2+3", "result": "5"}
    assert records[0]["meta"]["difficulty"] == 1 and records[0]["meta"]["source"] == "mine"
    assert records[1]["meta"]["has_reasoning"] is False
    assert manifest["rejects"]["count"] == 3
    reasons = (tmp_path / "built" / "mine" / "rejects.jsonl").read_text()
    assert "mine.jsonl:3" in reasons and "target: missing" in reasons
    assert "differs from the answer" in reasons and "mine.jsonl:5" in reasons and "invalid JSON" in reasons


def test_user_duplicate_ids_are_rejected(tmp_path: Path) -> None:
    path = tmp_path / "mine.jsonl"
    rows = [{"k": "1", "q": "Why?", "a": "Because."}, {"k": "1", "q": "How?", "a": "So."}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    user = {"path": str(path), "name": "m", "mapping": {"id": "k", "question": "q", "answer": "a"}}
    manifest = build(cfg_from(tmp_path, {"name": "m", "kind": "user", "user": user}))
    assert manifest["files"]["train"]["records"] == 1
    assert "user: id 'm-1' already used on line 1" in manifest["rejects"]["by_reason"]


def test_user_csv(tmp_path: Path) -> None:
    path = tmp_path / "mine.csv"
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["q", "a", "why"])
        w.writerow(["What is 6 * 7?", "42", "6 * 7 = 42\nSo 42."])
        w.writerow(["Empty answer?", "", ""])
    user = {
        "path": str(path),
        "name": "csvset",
        "mapping": {"question": "q", "answer": "a", "reasoning": "why"},
    }
    manifest = build(cfg_from(tmp_path, {"name": "c", "kind": "user", "user": user}))
    records = load_records(tmp_path / "built" / "c" / "train.jsonl")
    assert len(records) == 1 and len(records[0]["steps"]) == 2 and manifest["rejects"]["count"] == 1
    user["mapping"]["question"] = "question"
    with pytest.raises(InputError, match="no column 'question'"):
        build(cfg_from(tmp_path, {"name": "c", "kind": "user", "user": user}))
    path.write_bytes(b"q,a\nok,1\n\xff\xfe,2\n")
    user["mapping"] = {"question": "q", "answer": "a"}
    with pytest.raises(InputError, match=r"mine\.csv:3: not UTF-8"):
        build(cfg_from(tmp_path, {"name": "c", "kind": "user", "user": user}))
