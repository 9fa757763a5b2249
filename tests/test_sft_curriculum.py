"""Curriculum: stages in order, each from the previous stage's adapter; summary; resume skips finished stages."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import torch

from common.config import load_config
from scripts.run_curriculum import CurriculumConfig, run_curriculum
from tests.sft_data import arithmetic_records, write_records

ROOT = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_two_stages_chain_and_resume(tiny_gemma3, tmp_path):
    recs = arithmetic_records(16, seed=5)
    a = write_records(tmp_path / "stage_A.jsonl", recs[0::2])  # one step each
    b = write_records(tmp_path / "stage_B.jsonl", recs[1::2])  # two steps each
    sft = tmp_path / "sft.yaml"
    sft.write_text(
        textwrap.dedent(
            f"""\
            model: {{path: {tiny_gemma3}}}
            data: {{valid: {a}, valid_limit: 4, max_len: 400, pack_tokens: 700}}
            lora: {{rank: 4, alpha: 8}}
            train: {{threads: 1}}
            optim: {{lr: 1.0e-3, warmup_steps: 1}}
            eval: {{every_steps: 0, generate_n: 2, max_new_tokens: 3, batch_size: 2}}
            """
        )
    )
    cur = tmp_path / "cur.yaml"
    cur.write_text(
        textwrap.dedent(
            f"""\
            run_name: cur
            output_dir: {tmp_path / "runs"}
            sft_config: {sft}
            stages:
              - {{name: A, train: {a}, epochs: 1}}
              - {{name: B, train: {b}, epochs: 2, overrides: [optim.lr=5.0e-4]}}
            """
        )
    )
    out = run_curriculum(load_config(CurriculumConfig, cur))
    root = tmp_path / "runs" / "cur"
    summary = json.loads((root / "curriculum_summary.json").read_text())
    assert summary == json.loads(json.dumps(out)) and summary["complete"]
    assert [s["stage"] for s in summary["stages"]] == ["A", "B"]
    for row in summary["stages"]:
        assert row["steps"] > 0 and row["runtime_s"] > 0 and row["samples_per_s"] > 0
        assert row["final_loss"] > 0 and row["valid_loss"] > 0
        # each stage's final model went through the eval harness (evals.generate + evals.score)
        assert row["eval"]["gen_n"] == 2 and 0.0 <= row["eval"]["gen_format_accuracy"] <= 1.0
        preds = (root / f"stage_{row['stage']}" / "eval").glob("predictions-step-*.jsonl")
        lines = [json.loads(x) for p in preds for x in p.read_text().splitlines()]
        assert len(lines) == 2 and all(x["completion_tokens"] <= 3 for x in lines)
    assert summary["stages"][1]["steps"] > summary["stages"][0]["steps"]  # 2 epochs of B
    cfg_b = (root / "stage_B" / "config.yaml").read_text()
    assert f"init_adapter: {root / 'stage_A' / 'final'}" in cfg_b and "lr: 0.0005" in cfg_b
    # stage B's model starts from stage A's adapter weights, not a fresh adapter
    from safetensors.torch import load_file

    from common.sft_config import load_sft_config
    from trainers_torch.model import build_model

    cfg_b = load_sft_config(root / "stage_B" / "config.yaml", [])
    start_b = build_model(cfg_b.model, cfg_b.lora, cfg_b.train)
    saved_a = load_file(str(root / "stage_A" / "final" / "adapter_model.safetensors"))
    live = {n.replace(".default", ""): p for n, p in start_b.named_parameters() if "lora_" in n}
    assert saved_a and set(saved_a) == set(live)
    assert all(torch.equal(live[n], w) for n, w in saved_a.items())
    before = (root / "stage_B" / "summary.json").stat().st_mtime
    again = run_curriculum(load_config(CurriculumConfig, cur, ["resume=true"]))
    assert (root / "stage_B" / "summary.json").stat().st_mtime == before  # finished stages are skipped
    assert [r["final_loss"] for r in again["stages"]] == [r["final_loss"] for r in summary["stages"]]


def test_missing_stage_file_fails_before_training(tmp_path):
    from common.errors import InputError

    present = write_records(tmp_path / "a.jsonl", arithmetic_records(2))
    stages = [f"stages=[{{name: A, train: {present}}}, {{name: B, train: {tmp_path / 'nope.jsonl'}}}]"]
    cfg = load_config(CurriculumConfig, None, [f"output_dir={tmp_path / 'runs'}", *stages])
    with pytest.raises(InputError, match=r"stages\[1\]\.train: .*nope.jsonl not found"):
        run_curriculum(cfg)
    assert not (tmp_path / "runs").exists()


def test_cpu_curriculum_config_loads():
    cfg = load_config(CurriculumConfig, ROOT / "configs" / "curriculum" / "sft_gsm8k_steps_cpu.yaml")
    assert [s.name for s in cfg.stages] == ["A", "B", "C"] and [s.epochs for s in cfg.stages] == [2, 2, 3]
