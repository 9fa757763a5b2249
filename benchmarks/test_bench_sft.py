"""The SFT step on the real Gemma 3 270M beside its peers, the same run, the same rows.

    make bench PYTEST_ARGS="-k sft"

LoRA (r16 on every linear layer of the decoder, the SFT default config's GSM8K rows packed
into 1,024-token rows): ours vs TRL ``SFTTrainer`` (bfd packing, completion-only loss) and a
plain transformers + PEFT loop; full fine-tuning: ours vs the plain loop; JAX: our step vs
Tunix's ``PeftTrainer``, and its ratio to our torch step. The sides of a group run in turn,
each in its own subprocess (``benchmarks/sides.py``); every entry's ``extra_info`` holds
tokens/s of real tokens, its peer and the ratio, MFU and peak resident memory.
"""

from __future__ import annotations

import pytest

from benchmarks import harness

pytestmark = pytest.mark.real_model
LORA = {"sft_lora_ours": "sft_lora_trl", "sft_lora_trl": "sft_lora_ours", "sft_lora_hf": "sft_lora_ours"}
FULL = {"sft_full_ours": "sft_full_hf", "sft_full_hf": "sft_full_ours"}
JAX = {"sft_lora_jax": "sft_lora_tunix", "sft_lora_tunix": "sft_lora_jax"}


@pytest.fixture(scope="module")
def lora_runs(group_runs) -> dict:
    return group_runs("sft_lora", LORA)


@pytest.mark.benchmark(group="sft lora")
@pytest.mark.parametrize("side", list(LORA))
def test_sft_lora(benchmark, side: str, lora_runs: dict, peak: dict) -> None:
    extra = {}
    if side == "sft_lora_ours":
        extra["ratio_to_hf"] = harness.entry_info(side, lora_runs, "sft_lora_hf", peak)["ratio_to_peer"]
    harness.enter(benchmark, lora_runs, side, LORA[side], peak, **extra)


@pytest.mark.benchmark(group="sft full")
@pytest.mark.parametrize("side", list(FULL))
def test_sft_full(benchmark, side: str, group_runs, peak: dict) -> None:
    harness.enter(benchmark, group_runs("sft_full", FULL), side, FULL[side], peak)


@pytest.mark.benchmark(group="sft jax")
@pytest.mark.parametrize("side", list(JAX))
def test_sft_jax(benchmark, side: str, group_runs, lora_runs: dict, peak: dict) -> None:
    runs = group_runs("sft_jax", JAX)
    torch_rate = harness.figures(lora_runs["sft_lora_ours"], peak["flops_per_s"])["tokens_per_s"]
    mine = harness.figures(runs[side], peak["flops_per_s"])["tokens_per_s"]
    harness.enter(benchmark, runs, side, JAX[side], peak, ratio_to_torch=round(mine / torch_rate, 3))
