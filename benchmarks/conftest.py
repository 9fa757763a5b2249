"""Fixtures of the benchmark suite: the real default model's location, the settings every side
runs with, and the float32 matmul peak measured at the start of the run on the same threads (the
denominator of every MFU).

Nothing here imports ``tests.conftest``: it sets XLA's test-only ``-O0`` at import, which every
JAX side would inherit (the suite measures compiled-code speed)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from benchmarks import harness


@pytest.fixture(scope="session")
def settings() -> harness.Settings:
    return harness.default_settings()


@pytest.fixture(scope="session")
def real_model(settings: harness.Settings) -> Path:
    """The model every side loads (``settings.model``), materialised by ``make model``."""
    path = harness.ROOT / settings.model
    if not (path / ".complete").exists():
        pytest.fail(f"{path} is not materialised; run `make model` (make bench does it first)")
    return path


@pytest.fixture(scope="session")
def rounds() -> int:
    """Each group's sides run this many times in turn (``BENCH_ROUNDS``, default 1)."""
    return int(os.environ.get("BENCH_ROUNDS", 1))


@pytest.fixture(scope="session")
def side_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("sides")


@pytest.fixture(scope="session")
def group_runs(real_model: Path, settings: harness.Settings, side_dir: Path, rounds: int):
    """``group_runs(name, sides)``: the sides of a group run in turn once per session (cached)."""
    done: dict[str, dict] = {}

    def run(name: str, sides: dict[str, str]) -> dict:
        if name not in done:
            done[name] = harness.run_interleaved(list(sides), settings, side_dir / name, rounds)
        return done[name]

    return run


@pytest.fixture(scope="session")
def peak(settings: harness.Settings, side_dir: Path) -> dict:
    result = harness.run_side("matmul", settings, side_dir)
    print(f"\nmatmul peak: {result['flops_per_s'] / 1e9:.1f} GFLOP/s ({result})")
    return result
