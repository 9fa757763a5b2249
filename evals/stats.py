"""Small statistics for eval reports: proportions with Wilson score intervals."""

from __future__ import annotations

import math

Z95 = 1.959963984540054  # the standard normal's 97.5th percentile


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval for ``successes`` out of ``n`` (``(0, 1)`` when ``n`` is 0).

    Unlike the normal approximation it stays inside [0, 1] and is not degenerate at 0/n
    or n/n: 0/10 gives about (0, 0.278), 10/10 about (0.722, 1).
    """
    if not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n, got {successes}/{n}")
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    z2 = z * z
    denom = 1 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denom
    lo, hi = max(0.0, centre - half), min(1.0, centre + half)
    if successes == 0:
        lo = 0.0  # exact at the edges (rounding would leave ~1e-17)
    if successes == n:
        hi = 1.0
    return (lo, hi)


def proportion(successes: int, n: int, name: str) -> dict[str, object]:
    """``{name: k/n, name_ci95: [lo, hi]}``; the rate is None when ``n`` is 0."""
    lo, hi = wilson_interval(successes, n)
    return {name: successes / n if n else None, f"{name}_ci95": [lo, hi]}
