"""SFT training speed, torch vs JAX, on the real model and the same CPU config.

    make bench PYTEST_ARGS="-k backends -s"

Both trainers run ``configs/sft_gemma3_270m_cpu.yaml`` (LoRA r=16 on Gemma 3 270M, 1,024-token
packed rows, the same rows in the same order) for ``STEPS`` optimizer steps in a subprocess,
one after the other, twice (torch, jax, torch, jax) so that a change in machine load mid-run
hits both. The figure is each backend's median ``tokens_per_s`` from its metrics.jsonl over
steps 2.. (step 1 pays for JAX's compilation and torch's first allocations); the ratio
JAX / torch goes into the benchmark's ``extra_info`` and is printed.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "sft_gemma3_270m_cpu.yaml"
STEPS = 6


def run_trainer(backend: str, out: Path, tag: str) -> list[float]:
    """``STEPS`` steps of the backend's SFT trainer; its per-step tokens/s after step 1."""
    cmd = [
        sys.executable,
        "-m",
        f"trainers_{backend}.sft",
        "--config",
        str(CONFIG),
        f"output_dir={out}",
        f"run_name={backend}-{tag}",
        f"train.max_steps={STEPS}",
        "eval.every_steps=0",
        "eval.generate_n=0",
        f"checkpoint.every_steps={STEPS}",
        "export=false",
    ]
    subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    rows = [
        json.loads(line) for line in (out / f"{backend}-{tag}" / "metrics.jsonl").read_text().splitlines()
    ]
    speeds = [
        r["tokens_per_s"] for r in rows if "tokens_per_s" in r and r.get("step", 0) >= 2 and "loss" in r
    ]
    assert len(speeds) == STEPS - 1, rows
    return speeds


@pytest.mark.real_model
def test_sft_tokens_per_s_torch_vs_jax(benchmark, real_model: Path, tmp_path: Path) -> None:
    speeds: dict[str, list[float]] = {"torch": [], "jax": []}

    def both() -> None:
        for tag in ("a", "b"):
            for backend in ("torch", "jax"):
                speeds[backend] += run_trainer(backend, tmp_path, tag)

    benchmark.pedantic(both, rounds=1, iterations=1)
    medians = {b: statistics.median(s) for b, s in speeds.items()}
    ratio = medians["jax"] / medians["torch"]
    benchmark.extra_info.update(
        {f"{b}_tokens_per_s_median": round(m, 1) for b, m in medians.items()}
        | {"jax_over_torch": round(ratio, 3)}
    )
    print(
        f"\nSFT tokens/s on {CONFIG.name}, steps 2..{STEPS} x 2 runs each: torch {medians['torch']:.1f}, "
        f"jax {medians['jax']:.1f}, jax/torch {ratio:.2f}"
    )
    assert all(m > 0 for m in medians.values())
