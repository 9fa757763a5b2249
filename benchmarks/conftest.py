"""The benchmarks share the test suite's fixtures (the real default model's location)."""

from tests.conftest import real_model  # noqa: F401
