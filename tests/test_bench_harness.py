"""The benchmark suite's harness on a tiny random Gemma 3: every side runs in its subprocess,
reports steps, real tokens, FLOPs and peak memory, and the entries carry the extra_info schema.

No speed is asserted (that is what ``make bench`` measures on the real model); this checks that
each side does the work it claims, so ``make bench`` does not fail (or mislead) after an hour.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks import harness
from benchmarks.harness import Settings, Shape

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", autouse=True)
def _sides_unmeasured() -> Iterator[None]:
    """The sides' subprocesses run without coverage measurement: coverage's subprocess patch
    (``make test``) would trace every Python line there, torch's, TRL's, JAX's and Tunix's
    imports included, for the trainer lines that the trainers' own tests cover. This process
    is measured as before."""
    with pytest.MonkeyPatch.context() as mp:
        for name in ("COVERAGE_PROCESS_CONFIG", "COVERAGE_PROCESS_START"):  # what starts it there
            mp.delenv(name, raising=False)
        yield


def _records(path: Path, n: int) -> Path:
    rows = []
    for i in range(n):
        why = f"{i} + {i + 1} = {2 * i + 1}."
        rows.append({
            "id": f"r{i}", "question": f"What is {i} + {i + 1}?", "answer": str(2 * i + 1), "reasoning": why,
            "steps": [{"i": 1, "type": "compute", "content": why}],
            "meta": {"source": "tiny", "category": "additive", "difficulty": 1},
        })  # fmt: skip
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def settings(tiny_gemma3: Path, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    data = _records(tmp_path_factory.mktemp("bench") / "records.jsonl", 24)
    return Settings(
        model=str(tiny_gemma3),
        threads=1,
        warmup=1,
        steps=1,
        sft_overrides=[
            f"data.train={data}",
            "data.train_limit=null",
            "data.max_len=600",
            "data.pack_tokens=1200",
            "train.loss_chunk_tokens=64",
        ],
        grpo_prompt_file=str(data),
        grpo_max_new_tokens=6,
        decode_model=str(tiny_gemma3),
        decode_data=str(data),
        decode_items=6,
        decode_batch=4,
        decode_max_new_tokens=8,
        decode_check_items=6,
    )


@pytest.fixture(scope="module")
def peak(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> dict:
    return harness.run_side("matmul", settings, tmp_path_factory.mktemp("peak"))


def _check(result: dict, settings: Settings) -> None:
    assert len(result["step_s"]) == settings.steps and all(t > 0 for t in result["step_s"])
    assert all(n > 0 for n in result["tokens"]) and all(f > 0 for f in result["flops"])
    assert result["peak_rss_mb"] > 100


SFT = [("sft_lora_ours", "sft_lora_trl"), ("sft_lora_hf", "sft_lora_ours"), ("sft_full_ours", "sft_full_hf"),
       ("sft_lora_jax", "sft_lora_tunix")]  # fmt: skip


@pytest.fixture(scope="module")
def sft_results(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Every SFT side once (a side in two pairs runs once), in the suite's order."""
    sides = list(dict.fromkeys(side for pair in SFT for side in pair))
    return harness.run_interleaved(sides, settings, tmp_path_factory.mktemp("sft-sides"))


@pytest.mark.parametrize(("ours", "peer"), SFT, ids=[f"{a}-vs-{b}" for a, b in SFT])
def test_sft_sides_train_the_same_examples(
    ours: str, peer: str, settings: Settings, peak: dict, sft_results: dict
) -> None:
    for side in (ours, peer):
        _check(sft_results[side], settings)
    info = harness.entry_info(ours, sft_results, peer, peak)
    assert set(harness.INFO_KEYS) <= set(info) and info["ratio_to_peer"] > 0 and info["mfu"] > 0
    # the flags the side ran with: the caller's (the tests' -O0 here), then its Eigen threading
    assert info["xla_flags"] == harness.side_xla_flags(os.environ["XLA_FLAGS"], settings.threads)
    assert info["xla_flags"].endswith("--xla_cpu_multi_thread_eigen=false")


def test_side_xla_flags_keep_the_callers_and_replace_an_eigen_flag() -> None:
    caller = "--xla_cpu_multi_thread_eigen=false --xla_cpu_use_onednn=true"
    assert harness.side_xla_flags(caller, 2) == "--xla_cpu_use_onednn=true --xla_cpu_multi_thread_eigen=true"
    assert harness.side_xla_flags("", 1) == "--xla_cpu_multi_thread_eigen=false"


def test_the_suite_does_not_inherit_the_tests_xla_flags() -> None:
    """``make bench`` measures compiled code: loading the suite's conftest must not set the
    tests' ``-O0`` (an earlier version imported ``tests.conftest``, and every JAX side ran at -O0)."""
    import subprocess
    import sys

    code = "import os, benchmarks.conftest; print(os.environ.get('XLA_FLAGS', ''))"
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=harness.ROOT, env=env, capture_output=True, text=True, check=True
    )
    assert "optimization_level" not in out.stdout


def test_grpo_sides_generate_and_update(settings: Settings, peak: dict, tmp_path: Path) -> None:
    results = harness.run_interleaved(["grpo_ours", "grpo_trl", "grpo_jax"], settings, tmp_path)
    n = settings.grpo_prompts * settings.grpo_generations
    for side, res in results.items():
        _check(res, settings)
        assert res["samples"] == [n] * settings.steps, side
        assert 0 < res["gen_s"][0] < res["step_s"][0], side  # generation is part of the step
    jax_side = results["grpo_jax"]  # warmed up on every update width its kept steps use
    assert 1 <= len(jax_side["warmup_s"]) <= settings.steps
    assert len(jax_side["notes"]["update_widths"]) == settings.steps


def test_decode_sides_give_the_same_tokens(settings: Settings, peak: dict, tmp_path: Path) -> None:
    results = harness.run_interleaved(["decode_ours", "decode_transformers"], settings, tmp_path)
    ours, theirs = results["decode_ours"], results["decode_transformers"]
    assert ours["completion_ids"] == theirs["completion_ids"]
    info = harness.entry_info("decode_ours", results, "decode_transformers", peak)
    assert info["samples_per_s"] > 0 and info["ratio_to_peer"] > 0


def test_profile_splits_a_torch_side_by_op_kind(settings: Settings, tmp_path: Path) -> None:
    from benchmarks import profile

    given = dataclasses.asdict(settings)  # one kept step
    assert profile.main(["sft_lora_ours", "--settings", json.dumps(given), "--out", str(tmp_path)]) == 0
    summary = json.loads((tmp_path / "sft_lora_ours.json").read_text())
    shares = summary["share_by_kind"]
    assert abs(sum(shares.values()) - 1) < 1e-3 and shares["matmul"] > 0 and shares["attention"] > 0
    assert len(summary["step_s"]) == 1 and summary["top_ops"][0]["self_cpu_s"] > 0
    assert "Self CPU" in (tmp_path / "sft_lora_ours.txt").read_text()


def test_jax_trace_summary_keeps_executed_ops_and_compile_time(tmp_path: Path) -> None:
    import gzip

    from benchmarks.profiling import jax_trace_summary

    def op(name, ts, dur, tid=1):
        return {"ph": "X", "name": name, "ts": ts, "dur": dur, "pid": 1, "tid": tid}

    events = [{"ph": "X", "name": "backend_compile_and_load", "dur": 2_000_000, "pid": 1, "tid": 9},
              op("HLO passes through layout assignment", 0, 500_000, tid=9),
              op("$pjit.py:250 cache_miss", 0, 9_000_000, tid=2), op("PjitFunction(step)", 0, 9_000_000, tid=2),
              op("ThunkExecutor::Execute", 0, 3_000_000),  # the runtime's wrapper around everything below
              op("ynn_fusion.3", 0, 700_000), op("ynn_fusion", 800_000, 300_000),
              op("while.4", 1_200_000, 1_000_000), op("ynn_fusion.9", 1_300_000, 600_000),  # inside the loop
              op("copy_bitcast_fusion.2", 2_300_000, 500_000),
              op("loop_add_fusion", 0, 500_000, tid=3),  # another thread: counted on its own
              op("TaskDispatcher::dispatch", 3_000_000, 100_000, tid=3),
              op("np.asarray(jax.Array)", 0, 9_000_000, tid=2),  # the Python thread waiting: not an op
              {"ph": "M", "name": "thread_name", "pid": 1, "tid": 1, "args": {"name": "tf_XLAEigen/1"}},
              {"ph": "M", "name": "thread_name", "pid": 1, "tid": 3, "args": {"name": "tf_XLAEigen/2"}},
              {"ph": "M", "name": "thread_name", "pid": 1, "tid": 2, "args": {"name": "python"}}]  # fmt: skip
    where = tmp_path / "plugins" / "profile" / "2026_01_01"
    where.mkdir(parents=True)
    (where / "host.trace.json.gz").write_bytes(gzip.compress(json.dumps({"traceEvents": events}).encode()))
    summary = jax_trace_summary(tmp_path)
    assert summary["compile_s"] == 2.0 and summary["op_s"] == 3.0
    assert summary["top_events_s"] == {"ynn_fusion": 1.0, "while": 1.0, "copy_bitcast_fusion": 0.5,
                                       "loop_add_fusion": 0.5}  # fmt: skip
    assert summary["share_by_kind"] == {"matmul": 0.3333, "loops (lax.scan / while)": 0.3333,
                                        "copies / layout": 0.1667, "elementwise / other fusions": 0.1667}  # fmt: skip
    assert jax_trace_summary(tmp_path / "none") == {"trace_summary": "no trace written"}


def test_matmul_peak_is_the_best_kernel_on_cpu() -> None:
    """Both torch.mm and oneDNN's linear are timed on a float32 CPU; the peak is the faster one."""
    peak = harness.matmul_peak("cpu", "float32", sizes=(64, 96), seconds=0.05)
    assert set(peak["by_kernel"]) == {"torch.mm", "oneDNN"} and all(v > 0 for v in peak["by_kernel"].values())
    assert peak["flops_per_s"] == max(peak["by_kernel"].values())
    assert peak["by_kernel"][peak["kernel"]] == peak["flops_per_s"] and peak["size"] in (64, 96)
    assert set(harness.matmul_peak("cpu", "bfloat16", sizes=(32,), seconds=0.02)["by_kernel"]) == {"torch.mm"}


def test_flops_count_body_head_and_attention() -> None:
    shape = Shape(
        layers=2, hidden=8, intermediate=16, heads=2, kv_heads=1, head_dim=4, vocab=32, windows=[2, None]
    )
    assert shape.n_body == 2 * (2 * 8 * 8 + 2 * 8 * 4 + 3 * 8 * 16)
    # one example of 3 tokens: sliding layer pairs 1 + 2 + 2, global 1 + 2 + 3
    assert shape.attention_pairs([3]) == 5 + 6
    full = harness.train_flops(shape, [3], 2, "full")
    assert full == 6 * shape.n_body * 3 + 6 * shape.n_head * 2 + 3 * 4 * 2 * 4 * 11
    lora = harness.train_flops(shape, [3], 2, "lora", lora_rank=0)
    assert lora == 4 * shape.n_body * 3 + 4 * shape.n_head * 2 + 3 * 4 * 2 * 4 * 11


def test_report_table_chart_and_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from benchmarks import report

    def entry(side: str, rate: float, peer: str, ratio: float) -> dict:
        info = {"side": side, "tokens_per_s": rate, "samples_per_s": rate / 100, "peer": peer,
                "ratio_to_peer": ratio, "mfu": 0.4, "peak_rss_mb": 900.0, "step_time_s": 2.0,
                "threads": 1, "device": "cpu", "dtype": "float32", "matmul_peak_gflops": 50.0, "load": "test"}  # fmt: skip
        return {
            "group": "sft lora",
            "name": f"test_sft_lora[{side}]",
            "extra_info": info,
            "stats": {"median": 2.0},
        }

    data = {"machine_info": {}, "benchmarks": [entry("sft_lora_ours", 90.0, "sft_lora_trl", 3.0),
                                               entry("sft_lora_trl", 30.0, "sft_lora_ours", 0.333)]}  # fmt: skip
    (tmp_path / "latest.json").write_text(json.dumps(data))
    out = tmp_path / "report"
    assert (
        report.main(["--json", str(tmp_path / "latest.json"), "--storage", str(tmp_path), "--out", str(out)])
        == 0
    )
    md = out.with_suffix(".md").read_text()
    assert "| sft lora | sft_lora_ours | 90.0 |" in md and "3.00x" in md and "no earlier run" in md
    assert out.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(SystemExit) as exit_info:
        report.main(["--json", str(tmp_path / "bad.json"), "--out", str(tmp_path / "r2")])
    assert exit_info.value.code == 2 and "not a pytest-benchmark JSON" in capsys.readouterr().err


def test_saved_runs_are_ordered_by_their_time_not_their_counter(tmp_path: Path) -> None:
    from benchmarks.report import saved_runs

    machine = tmp_path / "Linux-CPython-3.11-64bit"
    machine.mkdir()
    names = ["0001_aaa_20261205_083744", "0002_ccc_20261205_140525", "0001_bbb_20261205_115623",
             "0003_ddd_20261204_235959_uncommitted-changes"]  # fmt: skip
    for name in names:
        (machine / f"{name}.json").write_text("{}")
    (machine / "notes.json").write_text("{}")  # not a saved run
    assert [p.stem for p in saved_runs(tmp_path)] == [names[3], names[0], names[2], names[1]]


def test_op_kinds_count_onednn_linear_as_matmul() -> None:
    from benchmarks.profiling import op_kind

    assert op_kind("mkldnn::_linear_pointwise") == op_kind("aten::mm") == "matmul"
    assert op_kind("aten::_scaled_dot_product_flash_attention_for_cpu") == "attention"
    assert op_kind("aten::gelu") == "other"
