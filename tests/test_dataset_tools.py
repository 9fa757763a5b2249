"""Dataset tools: validate, split, merge, filter, curriculum, contamination, stats, and CLI exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from common.config import load_config
from common.errors import InputError
from common.records import load_records
from scripts.dataset.cli import main
from scripts.dataset.contamination import ngrams
from scripts.dataset.curriculum import CurriculumConfig, assign_stage
from scripts.dataset.splits import split_by_fraction, split_by_size
from scripts.dataset.text import looks_english, normalise
from scripts.dataset.tools import FilterConfig, rule_failure
from tests.data_helpers import rec, write

ROOT = Path(__file__).resolve().parent.parent


def run(*argv: str) -> int:
    """The CLI in-process; returns the exit status."""
    try:
        return main(list(argv))
    except SystemExit as stop:
        return int(stop.code or 0)


# --- validate --------------------------------------------------------------------------------------


def test_validate_good_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path / "ok.jsonl", [rec("a"), rec("b")])
    assert run("validate", str(path)) == 0
    assert "2 records, 2 good, 0 bad" in capsys.readouterr().out


def test_validate_lists_every_bad_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad.jsonl"
    bad_type = rec("c", steps=["x", "y", "z"])
    bad_type["steps"][2]["content"] = 4
    lines = [json.dumps(rec("a")), "{nope", json.dumps(bad_type), json.dumps(rec("a"))]
    path.write_bytes("\n".join(lines).encode() + b"\n\xff\n")
    assert run("validate", str(path)) == 2
    out = capsys.readouterr().out
    assert f"{path}:2: invalid JSON" in out
    assert f"{path}:3: steps[2].content: expected str, got int" in out
    assert f"{path}:4: id: duplicate of line 1" in out
    assert f"{path}:5: not UTF-8" in out
    assert "5 records, 1 good, 4 bad" in out


def test_validate_empty_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "e.jsonl").write_text("")
    assert run("validate", str(tmp_path / "e.jsonl")) == 2
    assert "no records (empty file)" in capsys.readouterr().out


def test_validate_skip_bad_writes_good_and_rejects(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_text("\n".join([json.dumps(rec("a")), "[]", json.dumps(rec("b"))]) + "\n")
    out = tmp_path / "good.jsonl"
    assert run("validate", str(path), "--skip-bad", str(out)) == 0
    assert [r["id"] for r in load_records(out)] == ["a", "b"]
    rejects = [json.loads(line) for line in (tmp_path / "good.rejects.jsonl").read_text().splitlines()]
    assert rejects == [{"line": 2, "id": None, "reason": "record: expected object, got list"}]


def test_validate_missing_file_is_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run("validate", str(tmp_path / "nope.jsonl")) == 2
    assert "file not found" in capsys.readouterr().err


# --- split -----------------------------------------------------------------------------------------


def test_split_by_size_is_stable_and_disjoint() -> None:
    records = [rec(f"r{k}") for k in range(200)]
    a = split_by_size(records, {"valid": 30, "test": 20}, seed=0, rest="train")
    b = split_by_size(list(reversed(records)), {"valid": 30, "test": 20}, seed=0, rest="train")
    assert {k: len(v) for k, v in a.items()} == {"valid": 30, "test": 20, "train": 150}
    for name in a:
        assert {r["id"] for r in a[name]} == {r["id"] for r in b[name]}
    assert len({r["id"] for part in a.values() for r in part}) == 200
    c = split_by_size(records, {"valid": 30, "test": 20}, seed=1, rest="train")
    assert {r["id"] for r in c["valid"]} != {r["id"] for r in a["valid"]}
    with pytest.raises(InputError, match="need 300 records"):
        split_by_size(records, {"valid": 300}, seed=0, rest="train")


def test_split_by_fraction_does_not_move_old_records_when_new_ones_arrive() -> None:
    old = [rec(f"r{k}") for k in range(500)]
    new = old + [rec(f"n{k}") for k in range(500)]
    a = split_by_fraction(old, {"valid": 0.1}, seed=3, rest="train")
    b = split_by_fraction(new, {"valid": 0.1}, seed=3, rest="train")
    assert {r["id"] for r in a["valid"]} == {r["id"] for r in b["valid"] if r["id"].startswith("r")}
    assert 20 < len(a["valid"]) < 80


def test_split_cli(tmp_path: Path) -> None:
    path = write(tmp_path / "all.jsonl", [rec(f"r{k}") for k in range(50)])
    assert run("split", str(path), "--out", str(tmp_path / "s"), "sizes.valid=10", "seed=2") == 0
    manifest = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert {k: v["records"] for k, v in manifest["files"].items()} == {"valid": 10, "train": 40}
    assert run("split", str(path), "--out", str(tmp_path / "s")) == 2  # neither sizes nor fractions


# --- merge -----------------------------------------------------------------------------------------


def test_merge_dedupes_by_normalised_question(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = write(tmp_path / "a.jsonl", [rec("a1", question="What is 2+2?"), rec("a2", question="Name it.")])
    b = write(
        tmp_path / "b.jsonl",
        [rec("b1", question="  what is 2 + 2 ", answer="5"), rec("b2", question="New one")],
    )
    out = tmp_path / "m.jsonl"
    assert run("merge", str(a), str(b), "--out", str(out)) == 0
    assert [r["id"] for r in load_records(out)] == ["a1", "a2", "b2"]
    report = json.loads((tmp_path / "m.duplicates.json").read_text())
    assert report["duplicates"] == 1 and report["duplicates_with_different_answers"] == 1
    assert report["pairs"][0]["kept"]["id"] == "a1" and report["pairs"][0]["dropped"]["id"] == "b1"
    assert "1 duplicates" in capsys.readouterr().out


def test_merge_refuses_one_id_for_two_questions(tmp_path: Path) -> None:
    a = write(tmp_path / "a.jsonl", [rec("x", question="One?")])
    b = write(tmp_path / "b.jsonl", [rec("x", question="Two?")])
    assert run("merge", str(a), str(b), "--out", str(tmp_path / "m.jsonl")) == 2


def test_normalise() -> None:
    assert normalise("It's $1,000!  Right?") == "it s 1 000 right"


# --- filter ----------------------------------------------------------------------------------------


def test_filter_rules() -> None:
    r = rec("a", steps=["a", "b", "c"], category="mixed")
    assert rule_failure(r, FilterConfig()) is None
    assert rule_failure(r, FilterConfig(categories=["additive"]))[0] == "categories"
    assert rule_failure(r, FilterConfig(exclude_categories=["mixed"]))[0] == "exclude_categories"
    assert rule_failure(r, FilterConfig(max_steps=2))[0] == "max_steps"
    assert rule_failure(r, FilterConfig(min_steps=4))[0] == "min_steps"
    assert rule_failure(r, FilterConfig(max_chars=20))[0] == "max_chars"
    bad_calc = rec("b")
    bad_calc["steps"][0]["calc"] = {"expr": "3+4", "result": "8"}
    assert rule_failure(bad_calc, FilterConfig(verify_calc=True))[0] == "verify_calc"
    german = rec("c", question="Wie viele Äpfel hat die Frau, wenn sie drei kauft?")
    assert rule_failure(german, FilterConfig(language="en"))[0] == "language"
    assert looks_english("How many apples does she have?") and not looks_english("Сколько яблок у неё есть?")


def test_filter_cli_writes_rejects(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(
        tmp_path / "in.jsonl",
        [rec("a", steps=["x"]), rec("b", steps=["x", "y", "z"]), rec("c", steps=["x", "y"])],
    )
    rules = tmp_path / "rules.yaml"
    rules.write_text("max_steps: 2\n")
    out = tmp_path / "f.jsonl"
    assert run("filter", str(path), "--out", str(out), "--config", str(rules), "min_steps=2") == 0
    assert [r["id"] for r in load_records(out)] == ["c"]
    rejects = [json.loads(line) for line in (tmp_path / "f.rejects.jsonl").read_text().splitlines()]
    assert [(r["id"], r["rule"]) for r in rejects] == [("a", "min_steps"), ("b", "max_steps")]
    assert "1 x min_steps" in capsys.readouterr().out
    assert run("filter", str(path), "--out", str(out), "max_tokens=10") == 2  # needs a tokenizer


# --- curriculum ------------------------------------------------------------------------------------

LAB_NOTE = """
stages: [A, B, C]
rules:
  - {stage: A, categories: [synthetic, golden_style], max_steps: 2}
  - {stage: B, categories: [reasoning], min_steps: 3, max_steps: 3}
  - {stage: C, categories: [reasoning], min_steps: 4}
  - {stage: C, categories: [edge_case]}
"""


def lab_note(tmp_path: Path, *overrides: str) -> CurriculumConfig:
    path = tmp_path / "cur.yaml"
    path.write_text(LAB_NOTE)
    return load_config(CurriculumConfig, path, list(overrides))


@pytest.mark.parametrize(
    ("category", "n_steps", "stage"),
    [
        ("synthetic", 2, "A"),
        ("golden_style", 1, "A"),
        ("synthetic", 3, None),
        ("reasoning", 3, "B"),
        ("reasoning", 2, None),
        ("reasoning", 6, "C"),
        ("edge_case", 1, "C"),
        ("other", 3, None),
    ],
)
def test_curriculum_first_matching_rule(
    tmp_path: Path, category: str, n_steps: int, stage: str | None
) -> None:
    r = rec("a", steps=[f"s{k}" for k in range(n_steps)], category=category)
    assert assign_stage(r, lab_note(tmp_path)) == stage
    assert assign_stage(r, lab_note(tmp_path, "unmatched=C")) == (stage or "C")


def test_curriculum_first_match_wins_over_later_rules(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("stages: [X, Y]\nrules:\n  - {stage: Y, max_steps: 5}\n  - {stage: X, max_steps: 1}\n")
    assert assign_stage(rec("a"), load_config(CurriculumConfig, path)) == "Y"


def test_curriculum_config_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"rules\[0\]\.stage: 'Z'"):
        path = tmp_path / "c.yaml"
        path.write_text("stages: [A]\nrules: [{stage: Z}]\n")
        load_config(CurriculumConfig, path)
    with pytest.raises(InputError, match="unmatched: 'Q'"):
        lab_note(tmp_path, "unmatched=Q")


def test_curriculum_cli_on_gsm8k_config(tmp_path: Path) -> None:
    records = [
        rec(f"r{k}", steps=[f"s{j}" for j in range(1 + k % 5)], category="mixed" if k % 2 else "additive")
        for k in range(20)
    ]
    path = write(tmp_path / "train.jsonl", records)
    config = ROOT / "configs" / "curriculum" / "gsm8k_steps.yaml"
    assert run("curriculum", str(path), "--config", str(config), "--out", str(tmp_path / "cur")) == 0
    stats = json.loads((tmp_path / "cur" / "split_stats.json").read_text())
    assert [(s["name"], s["records"]) for s in stats["stages"]] == [("A", 8), ("B", 4), ("C", 8)]
    assert stats["stages"][2]["steps_histogram"] == {"4": 4, "5": 4}
    assert stats["per_category"]["mixed"] == {"A": 4, "B": 2, "C": 4}
    assert len(stats["source"]["sha256"]) == 64 and "4 |" in stats["stages"][2]["steps_histogram_text"]
    assert len(load_records(tmp_path / "cur" / "stage_B.jsonl")) == 4
    assert yaml.safe_load(config.read_text())["unmatched"] == "error"


def test_curriculum_unmatched_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path / "train.jsonl", [rec("r1", category="reasoning")])
    cfg = tmp_path / "cur.yaml"
    cfg.write_text(LAB_NOTE)
    assert run("curriculum", str(path), "--config", str(cfg), "--out", str(tmp_path / "cur")) == 2
    assert "train.jsonl:1: no curriculum rule matches id 'r1'" in capsys.readouterr().err
    assert (
        run("curriculum", str(path), "--config", str(cfg), "--out", str(tmp_path / "cur"), "unmatched=C") == 0
    )


# --- contamination ---------------------------------------------------------------------------------


def test_ngrams_normalise_and_short_texts() -> None:
    assert ngrams("A, b! C", 2) == {"a b", "b c"}
    assert ngrams("Too short.", 8) == {"too short"}


def test_contamination_finds_crafted_overlap(tmp_path: Path) -> None:
    evals = [
        rec(f"e{k}", question=f"Question number {k} is about {k * 7} unrelated bananas in a tall box.")
        for k in range(20)
    ]
    leaked = "Janet's ducks lay 16 eggs per day and she eats three for breakfast every morning."
    evals.append(rec("e-leak", question=leaked))
    train = [
        rec("t0", question="Completely different words make up this training question here today."),
        rec("t1", question="PREFIX: janet s DUCKS lay 16 eggs per day, and she eats three ... (rewritten)"),
    ]
    ev, tr = write(tmp_path / "eval.jsonl", evals), write(tmp_path / "train.jsonl", train)
    report_path = tmp_path / "report.json"
    args = [str(tr), str(ev), "--out", str(report_path)]
    assert run("contamination", *args, "--n", "8", "--threshold", "0.01") == 1
    report = json.loads(report_path.read_text())
    assert report["contaminated"] == 1 and report["items"][0]["eval_id"] == "e-leak"
    assert report["items"][0]["pairs"][0]["train_id"] == "t1"
    assert report["contaminated_share"] == pytest.approx(1 / 21, abs=1e-6)
    assert run("contamination", *args, "--threshold", "0.05") == 0
    assert run("contamination", *args, "--n", "13") == 0  # the shared run is 12 words long


def test_contamination_default_report_beside_train(tmp_path: Path) -> None:
    ev = write(tmp_path / "eval.jsonl", [rec("e", question="one two three four five six seven eight nine")])
    tr = write(tmp_path / "train.jsonl", [rec("t", question="zero one two three four five six seven eight")])
    assert run("contamination", str(tr), str(ev)) == 1
    assert (tmp_path / "train.contamination.eval.json").exists()


# --- stats -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A whitespace word-level tokenizer (every word one token, plus BOS) with a bare chat
    template (the turn's text and nothing else), saved as an HF folder."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 2)])
    out = tmp_path_factory.mktemp("tok")
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", unk_token="<unk>"
    )
    fast.chat_template = "{% for m in messages %}{{ m['content'] }}\n{% endfor %}"
    fast.save_pretrained(out)
    return out


def test_stats_counts_histogram_tokens_and_pngs(tmp_path: Path, tiny_tokenizer: Path) -> None:
    records = [
        rec(f"r{k}", steps=[f"w{j}" for j in range(1 + k % 3)], category="mixed" if k % 2 else "additive")
        for k in range(30)
    ]
    records.append(rec("long", question=" ".join(["word"] * 600)))
    path = write(tmp_path / "train.jsonl", records)
    out = tmp_path / "stats"
    assert (
        run("stats", str(path), "--tokenizer", str(tiny_tokenizer), "--max-len", "512", "--out", str(out))
        == 0
    )
    stats = json.loads((out / "stats.json").read_text())
    assert stats["records"] == 31 and stats["by_category"] == {"additive": 16, "mixed": 15}
    assert stats["steps"]["histogram"] == {"1": 11, "2": 10, "3": 10}
    assert "  1 | " in stats["steps"]["text"]
    tok = stats["tokens"]
    assert tok["truncated"] == 1 and tok["truncated_share"] == round(1 / 31, 4)
    assert tok["total"]["p50"] < tok["total"]["max"] and tok["total"]["max"] > 600
    assert (out / "steps_histogram.png").stat().st_size > 1000 and (out / "token_lengths.png").exists()
    assert "truncated at max_len 512: 1" in (out / "stats.txt").read_text()


def test_stats_without_tokenizer(tmp_path: Path) -> None:
    path = write(tmp_path / "t.jsonl", [rec("a")])
    assert run("stats", str(path), "--out", str(tmp_path / "s")) == 0
    assert json.loads((tmp_path / "s" / "stats.json").read_text())["tokens"] is None
    assert run("stats", str(path), "--out", str(tmp_path / "s"), "--tokenizer", str(tmp_path / "none")) == 2


@pytest.mark.real_model
def test_stats_with_gemma_tokenizer(tmp_path: Path) -> None:
    model = ROOT / "models" / "gemma-3-270m"
    if not (model / "tokenizer.json").exists():
        pytest.skip("models/gemma-3-270m not materialised (make model)")
    path = write(tmp_path / "t.jsonl", [rec("a"), rec("b", steps=["x " * 50])])
    assert run("stats", str(path), "--tokenizer", str(model), "--out", str(tmp_path / "s")) == 0
    tokens = json.loads((tmp_path / "s" / "stats.json").read_text())["tokens"]
    assert 50 < tokens["prompt"]["p50"] < 120 and tokens["truncated"] == 0


# --- the real command line -------------------------------------------------------------------------


def test_cli_exit_codes_as_a_process(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": 1}\n')
    cmd = [sys.executable, "-m", "scripts.dataset"]
    done = subprocess.run([*cmd, "validate", str(bad)], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and f"{bad}:1: question: missing;" in done.stdout
    assert "id: expected str, got int" in done.stdout
    done = subprocess.run(
        [*cmd, "build", "--config", str(tmp_path / "missing.yaml")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (
        done.returncode == 2
        and done.stderr.strip().count("\n") == 0
        and "config file not found" in done.stderr
    )
    done = subprocess.run(
        [*cmd, "merge", "--out", "x", str(bad), "seed=1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and "takes no key=value settings" in done.stderr


def test_filter_by_tokens_counts_prompt_plus_target(tmp_path: Path, tiny_tokenizer: Path) -> None:
    from scripts.dataset.stats import load_tokenizer, token_lengths

    records = [rec(f"r{k}", question=" ".join(["word"] * (5 + 10 * k))) for k in range(4)]
    path = write(tmp_path / "in.jsonl", records)
    prompt, target = token_lengths(load_tokenizer(str(tiny_tokenizer)), records)
    totals = [p + t for p, t in zip(prompt, target, strict=True)]
    assert min(target) > 0 and totals == sorted(totals) and len(set(totals)) == 4
    limit = totals[1]  # the first two fit exactly or under
    out = tmp_path / "f.jsonl"
    assert (
        run("filter", str(path), "--out", str(out), f"max_tokens={limit}", f"tokenizer={tiny_tokenizer}") == 0
    )
    assert [r["id"] for r in load_records(out)] == ["r0", "r1"]
    rejects = [json.loads(line) for line in (tmp_path / "f.rejects.jsonl").read_text().splitlines()]
    assert rejects == [
        {"line": k + 1, "id": f"r{k}", "rule": "max_tokens", "reason": f"{totals[k]} tokens > {limit}"}
        for k in (2, 3)
    ]


def test_split_cli_files_are_the_seeded_splits(tmp_path: Path) -> None:
    records = [rec(f"r{k}") for k in range(60)]
    path = write(tmp_path / "all.jsonl", records)
    assert run("split", str(path), "--out", str(tmp_path / "s"), "sizes.valid=10", "seed=2") == 0
    want = split_by_size(records, {"valid": 10}, seed=2, rest="train")
    assert [r["id"] for r in load_records(tmp_path / "s" / "valid.jsonl")] == [r["id"] for r in want["valid"]]
    assert run("split", str(path), "--out", str(tmp_path / "f"), "fractions.valid=0.3", "seed=5") == 0
    want = split_by_fraction(records, {"valid": 0.3}, seed=5, rest="train")
    assert [r["id"] for r in load_records(tmp_path / "f" / "valid.jsonl")] == [r["id"] for r in want["valid"]]
    manifest = json.loads((tmp_path / "f" / "manifest.json").read_text())
    assert sorted(manifest["files"]) == ["train", "valid"] and manifest["created"][:2] == "20"
