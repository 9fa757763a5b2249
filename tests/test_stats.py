"""Wilson score intervals against hand-computed values."""

from __future__ import annotations

import math

import pytest

from evals.stats import proportion, wilson_interval

# Hand computation with z = 1.959964 (z^2 = 3.841459):
#   0/10:  hi = z^2 / (n + z^2) = 3.841459 / 13.841459 = 0.277533
#   10/10: lo = n / (n + z^2) = 10 / 13.841459 = 0.722467
#   5/10:  centre 0.5, half = z * sqrt(0.025 + z^2/400) / (1 + z^2/10)
#        = 1.959964 * sqrt(0.034604) / 1.384146 = 0.263407  ->  (0.236593, 0.763407)
#   1/3:   centre = (1/3 + z^2/6) / (1 + z^2/3) = 0.973577 / 2.280486 = 0.426916,
#          half = z * sqrt(2/27 + z^2/36) / 2.280486 = 0.365424  ->  (0.061492, 0.792340)


@pytest.mark.parametrize(
    ("k", "n", "lo", "hi"),
    [
        (0, 10, 0.0, 0.277533),
        (5, 10, 0.236593, 0.763407),
        (10, 10, 0.722467, 1.0),
        (1, 3, 0.061492, 0.792340),
    ],
)
def test_wilson_known_values(k: int, n: int, lo: float, hi: float) -> None:
    got = wilson_interval(k, n)
    assert got[0] == pytest.approx(lo, abs=1e-6)
    assert got[1] == pytest.approx(hi, abs=1e-6)


def test_wilson_edges_and_errors() -> None:
    assert wilson_interval(0, 0) == (0.0, 1.0)
    assert wilson_interval(0, 1319)[0] == 0.0
    assert wilson_interval(1319, 1319)[1] == 1.0
    lo, hi = wilson_interval(700, 1319)
    assert lo < 700 / 1319 < hi and hi - lo == pytest.approx(
        2 * 1.96 * math.sqrt(0.5307 * 0.4693 / 1319), rel=0.01
    )
    with pytest.raises(ValueError):
        wilson_interval(11, 10)
    with pytest.raises(ValueError):
        wilson_interval(-1, 10)


def test_proportion() -> None:
    assert proportion(5, 10, "strict_accuracy") == {
        "strict_accuracy": 0.5,
        "strict_accuracy_ci95": list(wilson_interval(5, 10)),
    }
    assert proportion(0, 0, "x") == {"x": None, "x_ci95": [0.0, 1.0]}
