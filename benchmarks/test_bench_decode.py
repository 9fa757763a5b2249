"""Greedy eval decoding on the real model: our KV-cache loop (continuous batching: freed rows
are refilled with waiting prompts) vs transformers' ``generate``, the same run.

    make bench PYTEST_ARGS="-k decode"

The items are ``decode_items`` prompts of ``configs/eval/gsm8k_cpu.yaml``'s GSM8K test sample
(longest first, batch 32, 256 new tokens) for the SFT default run (``runs/sft-gemma3-270m-cpu``,
from `make train`; skipped without it: the base model never stops early, so it has nothing to
gain). ``generate`` decodes the first ``decode_check_items`` of them (it runs each batch to its
longest row); both must give the same tokens there. The figure is generated tokens per second
end to end.
"""

from __future__ import annotations

import pytest

from benchmarks import harness

pytestmark = pytest.mark.real_model
DECODE = {"decode_ours": "decode_transformers", "decode_transformers": "decode_ours"}


@pytest.mark.benchmark(group="eval decode")
@pytest.mark.parametrize("side", list(DECODE))
def test_eval_decode(benchmark, side: str, group_runs, peak: dict, settings: harness.Settings) -> None:
    if not (harness.ROOT / settings.decode_model / "merged" / "config.json").exists():
        pytest.skip(f"needs {settings.decode_model}/merged (make train)")
    runs = group_runs("decode", DECODE)
    n = settings.decode_check_items
    assert runs["decode_ours"]["completion_ids"][:n] == runs["decode_transformers"]["completion_ids"][:n]
    harness.enter(benchmark, runs, side, DECODE[side], peak)
