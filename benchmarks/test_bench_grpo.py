"""One GRPO step (generation + update) on the real Gemma 3 270M: ours on torch and on JAX
(Tunix's ``GRPOLearner``) beside TRL's ``GRPOTrainer``, the same run, the same work.

    make bench PYTEST_ARGS="-k grpo"

P GSM8K prompts x G samples of ``grpo_max_new_tokens`` tokens from the base model (it never
stops early, so every side generates the same tokens' worth), LoRA r16, the ``dapo`` loss with
clip-higher, beta 0, a reward that differs for any two completions so every completion trains.
The figure is generated tokens per second of whole step; ``extra_info`` also has the share of
the step spent generating.
"""

from __future__ import annotations

import statistics

import pytest

from benchmarks import harness

pytestmark = pytest.mark.real_model
GRPO = {"grpo_ours": "grpo_trl", "grpo_jax": "grpo_trl", "grpo_trl": "grpo_ours"}


@pytest.mark.benchmark(group="grpo step")
@pytest.mark.parametrize("side", list(GRPO))
def test_grpo_step(benchmark, side: str, group_runs, peak: dict, settings: harness.Settings) -> None:
    runs = group_runs("grpo", GRPO)
    res = runs[side]
    share = statistics.median(g / s for g, s in zip(res["gen_s"], res["step_s"], strict=True))
    work = f"{settings.grpo_prompts} prompts x {settings.grpo_generations} samples x {settings.grpo_max_new_tokens} tokens"
    harness.enter(benchmark, runs, side, GRPO[side], peak, generation_share=round(share, 3), work=work)
