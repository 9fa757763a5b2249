"""The evidence schemas (submission/schemas/*.json): what the writers produce passes, broken files
fail naming the field, and a writer never writes a file its schema refuses. The primary score is
one definition with the same value wherever it is computed."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from common import evidence
from common.errors import InputError
from common.runs import RunDir
from common.sft_config import SFTConfig
from evals.compare import compare_files
from evals.score import describe_primary_score, primary_score, score_predictions
from evals.stats import wilson_interval
from tests.evidence_runs import BEST_PARAMS, NOTEBOOK_LOG, build_run


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    return build_run(tmp_path_factory.mktemp("evidence"))


def examples(run: Path) -> dict[str, dict]:
    """A valid document of each schema, as the project's writers produce it."""
    read = lambda p: json.loads((run / p).read_text())  # noqa: E731
    return {
        "run_manifest": read("run_manifest.json"),
        "eval_summary": read("eval/eval_summary.json"),
        "compare": read("eval/compare.json"),
        "best_params": {**copy.deepcopy(BEST_PARAMS), "primary_score": primary_score(4, 8, 8)},
        "notebook_log": copy.deepcopy(NOTEBOOK_LOG),
        "primary_score": primary_score(3, 7, 8),
        "package_manifest": {
            "format": "showwork-package/1",
            "package": {
                "name": "showwork_r_2026-01-01_abcdef0.zip",
                "run": "r",
                "runs": ["r"],
                "date": "2026-01-01",
                "source_date_epoch": 1767225600,
                "source": {"git_commit": None, "source_sha256": "0" * 64},
                "notebook_config": "configs/kaggle/notebook.yaml",
                "sweep": None,
                "with_model": False,
            },
            "rewritten_home_paths": [],
            "members": {"README_SUBMISSION.md": {"sha256": "1" * 64, "bytes": 10}},
        },
    }


def test_every_schema_has_a_valid_example(run):
    docs = examples(run)
    assert set(docs) == set(evidence.schema_names())
    for name, doc in docs.items():
        assert evidence.problems(name, doc) == [], name


def _drop(*keys: str):
    def edit(doc: dict) -> None:
        target = doc
        for k in keys[:-1]:
            target = target[k]
        del target[keys[-1]]

    return edit


def _set(value, *keys: str):
    def edit(doc: dict) -> None:
        target = doc
        for k in keys[:-1]:
            target = target[k]
        target[keys[-1]] = value

    return edit


INVALID = [
    ("run_manifest", _drop("git_commit"), "$: 'git_commit' is a required property"),
    ("run_manifest", _set("done", "status"), "$.status: 'done' is not one of"),
    ("run_manifest", _set(None, "end_time"), "$.end_time"),  # a completed run has an end time
    ("run_manifest", _set("abc", "config_hash"), "$.config_hash: 'abc' does not match"),
    ("run_manifest", _set("yesterday", "start_time"), "$.start_time: 'yesterday' does not match"),
    ("eval_summary", _drop("trained", "primary_score"), "$.trained: 'primary_score' is a required property"),
    ("eval_summary", _set(1.5, "trained", "strict_accuracy"), "$.trained.strict_accuracy: 1.5 is greater"),
    ("eval_summary", _set("0.4", "base", "primary_score", "value"), "$.base.primary_score"),
    ("eval_summary", _set(0, "dataset", "n_sampled"), "$.dataset.n_sampled: 0 is less than the minimum"),
    ("compare", _drop("primary_score"), "$: 'primary_score' is a required property"),
    ("compare", _set(-0.1, "metrics", "strict", "mcnemar_p"), "$.metrics.strict.mcnemar_p: -0.1 is less"),
    (
        "compare",
        _set({"both": 1}, "metrics", "strict", "table"),
        "$.metrics.strict.table: 'a_only' is a required",
    ),
    ("best_params", _set("minimize", "mode"), "$.mode: 'minimize' is not one of"),
    ("best_params", _set({}, "params"), "$.params: {} should be non-empty"),
    ("best_params", _set({"lr ": 0.1}, "params"), "$.params: 'lr ' does not match"),
    ("best_params", _set({"normal": [0, 1]}, "search_space", "optim.lr"), "$.search_space['optim.lr']"),
    (
        "best_params",
        _set({"loguniform": [1e-5]}, "search_space", "optim.lr"),
        "$.search_space['optim.lr'].loguniform",
    ),
    ("best_params", _drop("best_value"), "$: 'best_value' is a required property"),
    ("best_params", _set({"name": "asha"}, "scheduler"), "$.scheduler: 'max_t' is a required property"),
    ("best_params", _set(0, "n_trials"), "$.n_trials: 0 is less than the minimum"),
    ("best_params", _set({"value": 0.5}, "primary_score"), "$.primary_score"),
    ("notebook_log", _set([], "stages"), "$.stages: [] should be non-empty"),
    ("notebook_log", _set("train", "stages", 0, "stage"), "$.stages[0].stage: 'train' is not one of"),
    ("notebook_log", _set(-1, "stages", 1, "seconds"), "$.stages[1].seconds: -1 is less than the minimum"),
    ("primary_score", _set(None, "ci95"), "$.ci95: None is not of type 'array'"),
    ("primary_score", _set("showwork-primary/0", "id"), "$.id: 'showwork-primary/1' was expected"),
    ("package_manifest", _set("showwork-package/2", "format"), "$.format: 'showwork-package/1' was expected"),
    (
        "package_manifest",
        _set({"sha256": "x", "bytes": 1}, "members", "a"),
        "$.members.a.sha256: 'x' does not match",
    ),
]


@pytest.mark.parametrize(
    ("schema", "edit", "message"), INVALID, ids=[f"{s}-{i}" for i, (s, _, _) in enumerate(INVALID)]
)
def test_a_broken_document_fails_naming_the_field(run, schema, edit, message):
    doc = examples(run)[schema]
    edit(doc)
    found = evidence.problems(schema, doc)
    assert found and any(p.startswith(message) or message in p for p in found), found


def test_writers_refuse_an_invalid_file_before_writing(run, tmp_path):
    out = tmp_path / "compare.json"
    doc = examples(run)["compare"]
    del doc["primary_score"]
    with pytest.raises(
        InputError, match=r"compare.json: not a valid compare .*'primary_score' is a required"
    ):
        evidence.write_evidence(out, "compare", doc)
    assert not out.exists() and not list(tmp_path.iterdir())  # no temp file either

    rd = RunDir.start(tmp_path / "runs" / "r", SFTConfig(run_name="r"), device="cpu")
    before = rd.manifest_path.read_text()
    with pytest.raises(InputError, match=r"run_manifest.json: not a valid run_manifest .*\$.status"):
        rd.finish(status="done")
    assert rd.manifest_path.read_text() == before


def test_primary_score_counts_a_missing_prediction_as_zero():
    dataset = [{"id": i, "answer": "7"} for i in range(4)]
    predictions = [
        {"id": 0, "completion": "<reasoning>r</reasoning><answer>7</answer>"},
        {"id": 1, "completion": "<reasoning>r</reasoning><answer>8</answer>"},
        {"id": 2, "completion": "<answer>7</answer>"},  # right, badly formatted
    ]  # id 3: no prediction
    score = score_predictions(predictions, dataset)["primary_score"]
    assert score == {
        "id": "showwork-primary/1", "n": 4, "correct": 2, "value": 0.5, "ci95": list(wilson_interval(2, 4)),
        "format_ok": 2, "format_rate": 0.5, "format_rate_ci95": list(wilson_interval(2, 4)),
    }  # fmt: skip
    assert describe_primary_score(score) == "50.0% [15.0, 85.0] (2/4), format 50.0% [15.0, 85.0]"
    assert describe_primary_score(None) == "n/a"


def test_compare_counts_the_primary_score_over_the_eval_items(run, tmp_path):
    """A sample of the dataset file: compare.json counts over the sample, as eval_summary.json does."""
    summary = json.loads((run / "eval" / "eval_summary.json").read_text())
    data = Path(summary["dataset"]["path"])
    items = [json.loads(line) for line in data.read_text().splitlines()]
    ev = run / "eval"
    whole = compare_files(ev / "predictions_base.jsonl", ev / "predictions_trained.jsonl", data)
    assert whole["primary_score"]["b"] == summary["trained"]["primary_score"]
    bigger = tmp_path / "bigger.jsonl"  # the file holds more items than were predicted
    bigger.write_text(data.read_text() + json.dumps({"id": "extra", "question": "1?", "answer": "1"}) + "\n")
    counted = compare_files(
        ev / "predictions_base.jsonl", ev / "predictions_trained.jsonl", bigger, items=items
    )
    assert counted["primary_score"]["b"] == summary["trained"]["primary_score"]
    every = compare_files(ev / "predictions_base.jsonl", ev / "predictions_trained.jsonl", bigger)
    assert every["primary_score"]["b"]["n"] == len(items) + 1  # the unpredicted item counts 0
    assert every["primary_score"]["b"]["correct"] == summary["trained"]["primary_score"]["correct"]
