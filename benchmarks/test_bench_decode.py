"""Greedy eval decoding on the real model: our KV-cache loop (finished rows leave the batch)
vs transformers' ``generate`` (every row runs to the batch's longest), same batch, same process.

    make bench PYTEST_ARGS="-k decode -s"

The batch is the first ``BATCH`` prompts `make eval` decodes (the GSM8K sample of
``configs/eval/gsm8k_cpu.yaml``, longest prompts first) for the SFT default run
(``runs/sft-gemma3-270m-cpu``, from `make train`; skipped without it: the base model never
stops early, so it has nothing to gain). Both must give the same tokens; the figure is
items/s of each and the ratio, in the benchmark's ``extra_info``.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from common.config import load_config
from evals import generate as gen
from evals import load
from tests.reference_decode import transformers_generate

ROOT = Path(__file__).resolve().parents[1]
RUN = ROOT / "runs" / "sft-gemma3-270m-cpu"
BATCH = 32


@pytest.mark.real_model
def test_eval_decode_vs_transformers_generate(benchmark, real_model: Path) -> None:
    if not (RUN / "merged" / "config.json").exists():
        pytest.skip(f"needs {RUN}/merged (make train)")
    cfg = load_config(gen.GenerateConfig, ROOT / "configs" / "eval" / "gsm8k_cpu.yaml", [])
    ref = load.resolve_model(str(RUN), None, "merged")
    model, tok = load.load_for_eval(ref, "torch", "float32", "cpu")
    items = gen.sample_items(gen.load_items(ROOT / cfg.data.path), cfg.data.n, cfg.seed)
    prompts = [gen.build_prompt(tok, it["question"], cfg.data.prompt) for it in items]
    lengths = [len(tok(p).input_ids) for p in prompts]
    batch = [prompts[i] for i in sorted(range(len(prompts)), key=lambda i: -lengths[i])[:BATCH]]
    seconds: dict[str, float] = {}

    def timed(name: str, fn) -> list[dict]:
        t0 = time.perf_counter()
        out = fn()
        seconds[name] = time.perf_counter() - t0
        return out

    def both() -> tuple[list[dict], list[dict]]:
        ours = timed(
            "ours", lambda: gen.generate_completions(model, tok, batch, cfg.decode, BATCH, progress=False)
        )
        theirs = timed("transformers", lambda: transformers_generate(model, tok, batch, cfg.decode))
        return ours, theirs

    ours, theirs = benchmark.pedantic(both, rounds=1, iterations=1)
    assert ours == theirs  # greedy: the same tokens, however the batch shrinks
    tokens = [r["completion_tokens"] for r in ours]
    info = {
        "items_per_s_ours": round(BATCH / seconds["ours"], 4),
        "items_per_s_transformers": round(BATCH / seconds["transformers"], 4),
        "speedup": round(seconds["transformers"] / seconds["ours"], 3),
        "completion_tokens_mean": sum(tokens) / len(tokens),
        "completion_tokens_max": max(tokens),
    }
    benchmark.extra_info.update(info)
    print(f"\neval decode, batch of {BATCH} on {RUN.name}: {info}")
