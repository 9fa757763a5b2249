"""common/sft_data.py at its edges: packing boundaries, collation, the epoch plan, tokenizing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from common.errors import InputError
from common.prompts import load_tokenizer
from common.sft_config import DataConfig, MixPart
from common.sft_data import (
    IGNORE,
    DataPlan,
    Example,
    collate,
    overflow_line,
    pack_rows,
    tokenize_records,
    tokenize_train,
)
from tests.sft_data import arithmetic_records, write_records


def test_an_example_that_exactly_fills_the_row_stays_in_it() -> None:
    assert pack_rows([3, 5, 1], [0, 1, 2], 8) == [[0, 1], [2]]  # 3 + 5 == 8 fits
    assert pack_rows([3, 6, 1], [0, 1, 2], 8) == [[0], [1, 2]]  # 3 + 6 > 8 does not
    assert pack_rows([9, 2], [0, 1], 8) == [[0], [1]]  # a longer one alone in its row
    assert pack_rows([2, 2, 2], [2, 0], 8) == [[2, 0]]  # only the order's examples, in its order
    assert pack_rows([], [], 8) == []


def test_collate_targets_positions_segments_and_padding() -> None:
    a = Example("a", 1, [10, 11, 12, 13], n_prompt=2)  # prompt 10 11, completion 12 13
    b = Example("b", 2, [20, 21, 22], n_prompt=1)
    c = Example("c", 3, [30, 31], n_prompt=1)
    batch = collate([a, b, c], [[0, 1], [2]], pad_id=0)
    assert batch.input_ids.tolist() == [[10, 11, 12, 13, 20, 21, 22], [30, 31, 0, 0, 0, 0, 0]]
    assert batch.position_ids.tolist() == [[0, 1, 2, 3, 0, 1, 2], [0, 1, 0, 1, 2, 3, 4]]
    assert batch.segment_ids.tolist() == [[1, 1, 1, 1, 2, 2, 2], [1, 1, 0, 0, 0, 0, 0]]
    # position t is trained to predict token t + 1 when that token is in the completion
    assert batch.targets.tolist() == [
        [IGNORE, 12, 13, IGNORE, 21, 22, IGNORE],
        [31, IGNORE, IGNORE, IGNORE, IGNORE, IGNORE, IGNORE],
    ]
    assert (batch.n_tokens, batch.n_targets, batch.n_examples) == (9, 5, 3)
    arrays = (batch.input_ids, batch.position_ids, batch.targets, batch.segment_ids)
    assert [a.dtype for a in arrays] == [np.int32] * 4
    assert collate([a], [[0]], pad_id=7).input_ids.tolist() == [[10, 11, 12, 13]]  # no padding needed


def examples(lengths: list[int]) -> list[Example]:
    return [Example(str(i), i + 1, [1] * n, 1) for i, n in enumerate(lengths)]


def test_plan_steps_cover_epochs_and_continue_into_the_next() -> None:
    plan = DataPlan(examples([4] * 6), pack_tokens=4, rows_per_step=4, seed=0)  # one example per row
    assert len(plan.epoch_rows(0)) == 6
    assert plan.total_steps(epochs=1.0, max_steps=None) == 2  # ceil(6 / 4)
    assert plan.total_steps(epochs=2.0, max_steps=None) == 3  # ceil(12 / 4)
    assert plan.total_steps(epochs=1.5, max_steps=None) == 3  # 6 + ceil(0.5 * 6) = 9 rows
    assert plan.total_steps(epochs=0.1, max_steps=None) == 1  # one row at least one step
    assert plan.total_steps(epochs=1.0, max_steps=5) == 5
    assert plan.position(0) == (0, 0) and plan.position(5) == (0, 5)
    assert plan.position(6) == (1, 0) and plan.position(13) == (2, 1)
    assert plan.step_rows(0) == plan.epoch_rows(0)[:4]
    assert plan.step_rows(1) == plan.epoch_rows(0)[4:] + plan.epoch_rows(1)[:2]  # wraps into epoch 1
    assert plan.step_rows(2) == plan.epoch_rows(1)[2:6]
    assert plan.epoch_float(0) == 0.0 and plan.epoch_float(3) == 0.5 and plan.epoch_float(9) == 1.5


def test_plan_with_steps_longer_than_an_epoch() -> None:
    plan = DataPlan(examples([4, 4]), pack_tokens=4, rows_per_step=5, seed=3)
    rows = plan.step_rows(0)
    assert len(rows) == 5 and rows[:2] == plan.epoch_rows(0) and rows[2:4] == plan.epoch_rows(1)
    assert plan.step_rows(1)[0] == plan.epoch_rows(2)[1]


def test_overflow_line_names_what_was_dropped_and_skipped() -> None:
    report = {
        "file": "t.jsonl",
        "records": 12,
        "used": 9,
        "max_len": 64,
        "overflow_count": 2,
        "overflow_share": 0.2,
        "overflow_longest": {"id": "t-7", "tokens": 90},
        "skipped_no_reasoning": 1,
    }
    assert overflow_line(report) == (
        "t.jsonl: 12 records, 9 used; over max_len=64: 2 (20.0%), longest t-7 with 90 tokens (dropped)"
        "; 1 without reasoning skipped"
    )
    report.update(overflow_count=0, overflow_share=0.0, overflow_longest=None, skipped_no_reasoning=0)
    assert overflow_line(report) == "t.jsonl: 12 records, 9 used; over max_len=64: 0 (0.0%)"


@pytest.fixture(scope="module")
def tok(tiny_gemma3: Path) -> object:
    return load_tokenizer(tiny_gemma3)


def test_tokenize_keeps_an_example_of_exactly_max_len(tok: object, tmp_path: Path) -> None:
    path = write_records(tmp_path / "t.jsonl", arithmetic_records(4))
    lengths = [len(e) for e in tokenize_records(path, tok, DataConfig(max_len=4000, pack_tokens=4000))[0]]
    longest = max(lengths)
    ex, _, report = tokenize_records(path, tok, DataConfig(max_len=longest, pack_tokens=4000))
    assert len(ex) == 4 and report["overflow_count"] == 0 and report["overflow_longest"] is None
    ex, _, report = tokenize_records(
        path, tok, DataConfig(max_len=longest - 1, pack_tokens=4000, on_overflow="drop")
    )
    assert report["overflow_count"] == lengths.count(longest) and len(ex) == 4 - lengths.count(longest)
    assert report["tokens"] == sum(len(e) for e in ex)
    assert report["target_tokens"] == sum(len(e) - e.n_prompt for e in ex) > 0
    assert report["used"] == len(ex) and report["records"] == 4 and report["policy"] == "drop"


def test_tokenize_skips_records_without_reasoning_and_samples_a_limit(tok: object, tmp_path: Path) -> None:
    recs = arithmetic_records(8)
    recs[2]["meta"]["has_reasoning"] = False
    path = write_records(tmp_path / "t.jsonl", recs)
    cfg = DataConfig(max_len=4000, pack_tokens=4000)
    ex, kept, report = tokenize_records(path, tok, cfg)
    assert [e.id for e in ex] == [r["id"] for r in kept] == [r["id"] for i, r in enumerate(recs) if i != 2]
    assert [e.line for e in ex] == [1, 2, 4, 5, 6, 7, 8]
    assert report["records"] == 8 and report["skipped_no_reasoning"] == 1 and report["used"] == 7
    first = tokenize_records(path, tok, cfg, limit=3)[0]
    assert [e.id for e in first] == [e.id for e in ex[:3]]  # no seed: the first ones
    sampled = [e.id for e in tokenize_records(path, tok, cfg, limit=3, seed=1)[0]]
    assert sampled == [e.id for e in tokenize_records(path, tok, cfg, limit=3, seed=1)[0]]
    assert sampled != [e.id for e in ex[:3]] and sampled == sorted(sampled)  # file order kept
    assert len(tokenize_records(path, tok, cfg, limit=7)[0]) == 7


def test_tokenize_refuses_a_file_with_nothing_to_train_on(tok: object, tmp_path: Path) -> None:
    path = write_records(tmp_path / "t.jsonl", arithmetic_records(2))
    with pytest.raises(InputError, match=r"t.jsonl: no usable examples \(all 2 over data.max_len=8\?\)"):
        tokenize_records(path, tok, DataConfig(max_len=8, pack_tokens=8, on_overflow="drop"))


def test_overflow_report_rounds_the_share_and_lists_twenty_ids(tok: object, tmp_path: Path) -> None:
    recs = arithmetic_records(22)
    for r in recs[1:]:
        r["question"] += " Think it through." * 6
    path = write_records(tmp_path / "t.jsonl", recs)
    short = len(tokenize_records(path, tok, DataConfig(max_len=4000, pack_tokens=4000))[0][0])
    cfg = DataConfig(max_len=short, pack_tokens=4000, on_overflow="drop")
    ex, _, report = tokenize_records(path, tok, cfg)
    assert [e.id for e in ex] == ["t-0000"] and report["overflow_count"] == 21
    assert report["overflow_ids"] == [r["id"] for r in recs[1:21]]  # the first twenty only
    assert report["overflow_share"] == 0.954545  # 21 / 22 to six places
    three = write_records(tmp_path / "three.jsonl", recs[:3])
    assert tokenize_records(three, tok, cfg)[2]["overflow_share"] == 0.666667


def test_tokenize_reads_the_configured_trace_format(tok: object, tmp_path: Path) -> None:
    path = write_records(tmp_path / "t.jsonl", arithmetic_records(1))
    text = tokenize_records(path, tok, DataConfig(max_len=4000, pack_tokens=4000))[0][0]
    yaml = tokenize_records(path, tok, DataConfig(max_len=4000, pack_tokens=4000, trace_format="yaml"))[0][0]
    assert yaml.n_prompt != text.n_prompt and yaml.ids[yaml.n_prompt :] == text.ids[text.n_prompt :]


def test_a_file_without_any_reasoning_has_nothing_to_train_on(tok: object, tmp_path: Path) -> None:
    recs = arithmetic_records(2)
    for r in recs:
        r["meta"]["has_reasoning"] = False
    path = write_records(tmp_path / "t.jsonl", recs)
    with pytest.raises(InputError, match=r"no usable examples \(all 0 over"):
        tokenize_records(path, tok, DataConfig(max_len=4000, pack_tokens=4000))


def test_mix_report_sums_the_parts_and_keeps_the_longest_overflow(tok: object, tmp_path: Path) -> None:
    first, second = arithmetic_records(6, seed=1, prefix="a"), arithmetic_records(5, seed=2, prefix="b")
    first[1]["question"] += " Please be careful." * 20  # over the limit in the first part
    second[2]["question"] += " Think again." * 40  # longer, in the second part
    second[4]["meta"]["has_reasoning"] = False
    a, b = write_records(tmp_path / "a.jsonl", first), write_records(tmp_path / "b.jsonl", second)
    lengths = {
        e.id: len(e)
        for path in (a, b)
        for e in tokenize_records(path, tok, DataConfig(max_len=4000, pack_tokens=4000))[0]
    }
    max_len = max(v for k, v in lengths.items() if k not in ("a-0001", "b-0002"))
    assert lengths["b-0002"] > lengths["a-0001"] > max_len
    cfg = DataConfig(
        train=str(a), mix=[MixPart(str(b), n=10)], max_len=max_len, pack_tokens=max_len, on_overflow="drop"
    )
    ex, report = tokenize_train(cfg, tok, seed=0)
    assert [e.id for e in ex] == [
        "a-0000",
        "a-0002",
        "a-0003",
        "a-0004",
        "a-0005",
        "b-0000",
        "b-0001",
        "b-0003",
    ]
    want = {"records": 11, "skipped_no_reasoning": 1, "overflow_count": 2, "used": 8, "max_len": max_len}
    assert {k: report[k] for k in want} == want
    assert report["tokens"] == sum(len(e) for e in ex) == sum(p["tokens"] for p in report["parts"])
    assert report["target_tokens"] == sum(len(e) - e.n_prompt for e in ex)
    assert report["overflow_share"] == round(2 / 10, 6)  # of the 10 records with reasoning
    assert report["overflow_longest"] == {"id": "b-0002", "tokens": lengths["b-0002"]}
    assert report["overflow_ids"] == ["a-0001", "b-0002"] and report["policy"] == "drop"
    line = overflow_line(report)
    assert line.startswith(f"{a} + {b}: 11 records, 8 used; over max_len={max_len}: 2 (20.0%)")
    assert f"longest b-0002 with {lengths['b-0002']} tokens" in line and "1 without reasoning" in line
    clean, clean_report = tokenize_train(
        DataConfig(train=str(b), mix=[MixPart(str(b), n=2)], max_len=4000, pack_tokens=4000), tok, seed=3
    )
    assert clean_report["overflow_longest"] is None and clean_report["overflow_share"] == 0.0
    assert len(clean) == 4 + 2 and "longest" not in overflow_line(clean_report)


def test_mix_samples_are_seeded_per_part_and_ids_capped_at_twenty(tok: object, tmp_path: Path) -> None:
    a = write_records(tmp_path / "a.jsonl", arithmetic_records(8, seed=1, prefix="a"))
    b = write_records(tmp_path / "b.jsonl", arithmetic_records(8, seed=2, prefix="b"))
    cfg = DataConfig(train=str(a), train_limit=3, mix=[MixPart(str(b), n=2)], max_len=4000, pack_tokens=4000)
    picks = {}
    for seed in range(4):
        ex, _ = tokenize_train(cfg, tok, seed)
        assert [e.id for e in ex[:3]] == [e.id for e in tokenize_records(a, tok, cfg, 3, seed)[0]]
        assert [e.id for e in ex[3:]] == [e.id for e in tokenize_records(b, tok, cfg, 2, seed)[0]]
        picks[seed] = (tuple(e.id for e in ex[:3]), tuple(e.id for e in ex[3:]))
    assert len({p[0] for p in picks.values()}) > 1 and len({p[1] for p in picks.values()}) > 1
    long = [
        dict(r, question=r["question"] + " again" * 200) for r in arithmetic_records(11, seed=3, prefix="x")
    ]
    c = write_records(tmp_path / "c.jsonl", long + arithmetic_records(1, seed=4, prefix="ok"))
    d = write_records(tmp_path / "d.jsonl", [dict(r, id=f"y{r['id']}") for r in long] + arithmetic_records(6))
    cfg = DataConfig(
        train=str(c), mix=[MixPart(str(d), n=6)], max_len=400, pack_tokens=400, on_overflow="drop"
    )
    _, report = tokenize_train(cfg, tok, 0)
    assert report["overflow_count"] == 22 and len(report["overflow_ids"]) == 20
    assert report["overflow_share"] == round(22 / 29, 6) != round(22 / 29, 7)


def test_a_limit_keeps_records_and_examples_aligned(tok: object, tmp_path: Path) -> None:
    path = write_records(tmp_path / "t.jsonl", arithmetic_records(9))
    ex, kept, _ = tokenize_records(path, tok, DataConfig(max_len=4000, pack_tokens=4000), 4, seed=5)
    assert len(ex) == 4 and [r["id"] for r in kept] == [e.id for e in ex]


def test_a_new_row_starts_empty() -> None:
    assert pack_rows([3, 2, 2], [0, 1, 2], 4) == [[0], [1, 2]]


def _with_category(records: list[dict], category: str) -> list[dict]:
    return [dict(r, meta=dict(r["meta"], category=category)) for r in records]


def test_train_shares_draw_each_category_its_seeded_share(tok: object, tmp_path: Path) -> None:
    recs = (
        _with_category(arithmetic_records(10, seed=1, prefix="a"), "alpha")
        + _with_category(arithmetic_records(6, seed=2, prefix="b"), "beta")
        + _with_category(arithmetic_records(4, seed=3, prefix="c"), "gamma")
    )
    path = write_records(tmp_path / "t.jsonl", recs)
    # 9 split 2:1:0 -> 6 alpha, 3 beta; gamma is left out
    cfg = DataConfig(
        train=str(path), train_limit=9, train_shares={"alpha": 2, "beta": 1, "gamma": 0},
        max_len=4000, pack_tokens=4000,
    )  # fmt: skip
    picks = set()
    for seed in range(3):
        ex, report = tokenize_train(cfg, tok, seed)
        ids = [e.id for e in ex]
        assert sum(i.startswith("a-") for i in ids) == 6 and sum(i.startswith("b-") for i in ids) == 3
        assert report["by_category"] == {"alpha": 6, "beta": 3} and report["used"] == 9
        assert ids == sorted(ids)  # file order kept
        assert ids == [e.id for e in tokenize_train(cfg, tok, seed)[0]]  # seeded
        picks.add(tuple(ids))
    assert len(picks) > 1
    assert "data.train by category: alpha 6, beta 3" in overflow_line(report)
    cfg.mix = [MixPart(str(path), n=2)]
    assert tokenize_train(cfg, tok, 0)[1]["by_category"] == {"alpha": 6, "beta": 3}


def test_train_shares_errors_name_the_file_and_the_category(tok: object, tmp_path: Path) -> None:
    recs = _with_category(arithmetic_records(4, prefix="a"), "alpha") + _with_category(
        arithmetic_records(2, prefix="b"), "beta"
    )
    path = write_records(tmp_path / "t.jsonl", recs)
    base = {"train": str(path), "max_len": 4000, "pack_tokens": 4000}
    with pytest.raises(
        InputError, match=r"t\.jsonl: data\.train_shares\.delta: no record has meta\.category 'delta'"
    ):
        tokenize_train(DataConfig(**base, train_limit=2, train_shares={"alpha": 1, "delta": 1}), tok, 0)
    with pytest.raises(
        InputError, match=r"data\.train_shares\.beta: 3 of data\.train_limit=6 wanted.* has 2"
    ):
        tokenize_train(DataConfig(**base, train_limit=6, train_shares={"alpha": 1, "beta": 1}), tok, 0)
    with pytest.raises(ValueError, match="data.train_shares needs data.train_limit"):
        DataConfig(**base, train_shares={"alpha": 1})
    with pytest.raises(ValueError, match="positive sum"):
        DataConfig(**base, train_limit=2, train_shares={"alpha": 0})
    with pytest.raises(ValueError, match="shares must be >= 0"):
        DataConfig(**base, train_limit=2, train_shares={"alpha": -1, "beta": 2})
