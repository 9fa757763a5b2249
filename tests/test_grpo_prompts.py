"""common.grpo_prompts.load_prompts: which prompts a GRPO run trains on, and what it reports."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.errors import InputError
from common.grpo_config import PromptDataConfig
from common.grpo_prompts import load_prompts
from common.prompts import format_prompt, load_tokenizer
from tests.sft_data import record, write_records


def _records(path: Path, questions: list[str]) -> Path:
    return write_records(path, [record(f"q{i}", q, "1", ["1=1"]) for i, q in enumerate(questions)])


@pytest.fixture(scope="module")
def tok(tiny_gemma3: Path):
    return load_tokenizer(tiny_gemma3)


def test_a_limit_keeps_the_first_prompts_or_a_seeded_sample_in_file_order(tok, tmp_path: Path) -> None:
    path = _records(tmp_path / "r.jsonl", [f"What is {i} + 1?" for i in range(12)])
    cfg = PromptDataConfig(train=str(path))
    first, report = load_prompts(path, tok, cfg, limit=4)
    assert [p.record["id"] for p in first] == ["q0", "q1", "q2", "q3"]
    assert [p.line for p in first] == [1, 2, 3, 4]
    assert report["records"] == 12 and report["used"] == 4 and report["overflow_count"] == 0
    sample = [p.record["id"] for p in load_prompts(path, tok, cfg, limit=4, seed=3)[0]]
    assert sample == [p.record["id"] for p in load_prompts(path, tok, cfg, limit=4, seed=3)[0]]  # seeded
    assert len(sample) == 4 and sample == sorted(sample, key=lambda i: int(i[1:]))  # kept in file order
    assert sample != ["q0", "q1", "q2", "q3"]  # a sample, not the head of the file
    everything, _ = load_prompts(path, tok, cfg, limit=50)
    assert len(everything) == 12


def test_prompts_over_the_limit_are_dropped_and_reported_or_refused(tok, tmp_path: Path) -> None:
    questions = ["Short?", "A much longer question " * 20, "Also short?"]
    path = _records(tmp_path / "r.jsonl", questions)
    sizes = [len(tok(format_prompt(tok, q, "text")).input_ids) for q in questions]
    limit = max(sizes[0], sizes[2])  # the two short prompts fit exactly, the long one not
    assert sizes[1] > limit
    kept, report = load_prompts(path, tok, PromptDataConfig(train=str(path), max_prompt_tokens=limit))
    assert [p.record["id"] for p in kept] == ["q0", "q2"]
    assert report["overflow_count"] == 1 and report["overflow_ids"] == ["q1"]
    assert report["prompt_tokens_max"] == max(len(p.ids) for p in kept) <= limit
    with pytest.raises(
        InputError, match=rf"r\.jsonl:2: id 'q1': prompt is \d+ tokens, over data\.max_prompt_tokens={limit}"
    ):
        load_prompts(
            path, tok, PromptDataConfig(train=str(path), max_prompt_tokens=limit, on_overflow="fail")
        )
