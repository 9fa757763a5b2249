"""Shared fixtures: tiny random models, the real default model's location."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
REAL_MODEL = Path(os.environ.get("SHOWWORK_MODEL", ROOT / "models" / "gemma-3-270m"))
REAL_SMOLLM2 = ROOT / "models" / "smollm2-135m"

# The suite's JAX time on tiny models is mostly XLA compiling, not running: compile at LLVM -O0
# (`make test` on 2 cores: 771 s -> 696 s). Set before any JAX backend starts, so the in-process
# tests and every trainer subprocess (which inherits the environment) get it; a level already in
# XLA_FLAGS wins. Compiled-code speed is what `make bench` measures, never the tests.
if "--xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_backend_optimization_level=0".strip()

# The same programs are compiled again and again: by each test that builds a trainer, by every
# trainer subprocess a resume, sweep or notebook test starts, by both xdist workers. JAX's
# persistent compilation cache (keyed by the program, the flags and the JAX version) keeps each
# executable once: test_jax_sft + test_jax_grpo, one core, an empty cache, 380 -> 337 s. No size
# cap (a whole suite writes about 25 MB): a cap turns on eviction, which locks the directory and
# sizes every file in it at each write; a fresh clone's `make test` took 1,537 s with a 1 GiB cap
# against 1,164 without. Unlocked, an entry read while the other worker writes it fails to load
# and JAX compiles again (its cache reads are guarded). Kept under .pytest_cache, so a re-run
# starts warm; settings already in the environment win.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(ROOT / ".pytest_cache" / "jax-compilation"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")


# `make test` hands whole files to its two xdist workers (`--dist loadfile`) in collection order
# (it passes `--no-loadscope-reorder`: xdist's own order, most tests first, sends long files of
# few tests late, the bench harness 30th of 57 files, the real-model and JAX GRPO files after
# it, where one worker can still be in one of them when the other runs out of files). The
# longest files go first and the many short ones fill in behind them. Their seconds in
# `make test PYTEST_ARGS=--durations=0` at c50fe7c (coverage on, the AVX2-only instance, before the
# shared JAX cache): test_jax_sft 386, test_bench_harness 313, test_sweep 213, test_kaggle_notebook
# 186, test_collatz_train 166, test_real_model_eval 139 (54 since its sampling test takes 7 s),
# test_package 101, test_jax_llama 81, test_jax_grpo 77, test_jax_gemma2 72, test_real_model 67,
# test_sft_resume 52; every other file under 40.
LONGEST_FIRST = ("test_jax_sft.py", "test_bench_harness.py", "test_sweep.py", "test_kaggle_notebook.py",
                 "test_collatz_train.py", "test_package.py", "test_jax_llama.py", "test_jax_grpo.py",
                 "test_jax_gemma2.py", "test_real_model.py", "test_real_model_eval.py", "test_sft_resume.py")  # fmt: skip


@pytest.hookimpl(trylast=True)  # after pytest's own reordering by fixture scope
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The files of ``LONGEST_FIRST`` first, in that order; the rest keep theirs (a stable sort)."""
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(LONGEST_FIRST)))


@pytest.fixture(scope="session")
def tiny_gemma3(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.tiny import build_gemma3

    return build_gemma3(tmp_path_factory.mktemp("tiny-gemma3"))


@pytest.fixture(scope="session")
def tiny_gemma2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Random Gemma 2: sliding-window layer then global, window 16, both soft-caps active."""
    from tests.tiny import build_gemma2

    return build_gemma2(tmp_path_factory.mktemp("tiny-gemma2"))


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Random Llama shaped like SmolLM2 (GQA, RoPE theta 100000, tied embedding), ChatML tokenizer."""
    from tests.tiny import build_llama

    return build_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def real_model() -> Path:
    if not (REAL_MODEL / ".complete").exists():
        pytest.fail(f"{REAL_MODEL} is not materialised; run `make model` (make test does it first)")
    return REAL_MODEL


@pytest.fixture(scope="session")
def real_smollm2() -> Path:
    if not (REAL_SMOLLM2 / ".complete").exists():
        pytest.fail(
            f"{REAL_SMOLLM2} is not materialised; run `make model MODEL=smollm2-135m` (make test does it first)"
        )
    return REAL_SMOLLM2


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """Tiny models run faster on one torch thread, especially on a shared CPU (restored after)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
