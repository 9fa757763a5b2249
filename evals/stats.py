"""Small statistics for eval reports: Wilson intervals, the exact sign (McNemar) test and a
paired test of mean reward change."""

from __future__ import annotations

import math
import random
from fractions import Fraction

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


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value for ``b`` and ``c`` discordant pairs.

    Under the null each discordant pair goes either way with probability 1/2, so the
    p-value is ``min(1, 2 * P(X <= min(b, c)))`` for ``X ~ Binomial(b + c, 1/2)``,
    computed with integers (no rounding until the end). No discordant pairs gives 1.
    """
    if b < 0 or c < 0:
        raise ValueError(f"discordant counts must be >= 0, got {b}, {c}")
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(b, c) + 1))
    return float(min(Fraction(1), Fraction(2 * tail, 2**n)))


def paired_change(
    before: dict[str, float], after: dict[str, float], *, draws: int = 20000, seed: int = 0
) -> dict[str, object]:
    """How a per-item score moved between two evaluations of the same items (keyed by id).

    Returns the items paired, the mean change ``after - before`` with its standard error and a
    normal 95% interval, how many items went up / down / stayed, the exact two-sided sign test
    on the ups and downs, and a two-sided paired permutation test of the mean change (the signs
    of the non-zero changes flipped at random; exact when there are at most 16 of them, else
    ``draws`` seeded draws, p = (hits + 1) / (draws + 1)). Ids in one side only are counted,
    not paired.
    """
    ids = sorted(before.keys() & after.keys())
    diffs = [after[i] - before[i] for i in ids]
    n = len(diffs)
    out: dict[str, object] = {
        "n": n,
        "only_before": len(before.keys() - after.keys()),
        "only_after": len(after.keys() - before.keys()),
    }
    if n == 0:
        return {**out, "mean_before": None, "mean_after": None, "mean_change": None}
    mean = sum(diffs) / n
    var = sum((d - mean) ** 2 for d in diffs) / (n - 1) if n > 1 else 0.0
    se = math.sqrt(var / n)
    up = sum(d > 0 for d in diffs)
    down = sum(d < 0 for d in diffs)
    nonzero = [abs(d) for d in diffs if d != 0]
    observed = abs(sum(diffs)) - 1e-9 * (1 + abs(sum(diffs)))  # ties with the observed count as hits
    if len(nonzero) <= 16:
        hits = sum(
            abs(sum(v if mask >> k & 1 else -v for k, v in enumerate(nonzero))) >= observed
            for mask in range(2 ** len(nonzero))
        )
        perm_p = hits / 2 ** len(nonzero)
    else:
        rng = random.Random(seed)
        hits = sum(
            abs(sum(v if rng.random() < 0.5 else -v for v in nonzero)) >= observed for _ in range(draws)
        )
        perm_p = (hits + 1) / (draws + 1)
    return {
        **out,
        "mean_before": sum(before[i] for i in ids) / n,
        "mean_after": sum(after[i] for i in ids) / n,
        "mean_change": mean,
        "se": se,
        "ci95": [mean - Z95 * se, mean + Z95 * se],
        "up": up,
        "down": down,
        "same": n - up - down,
        "sign_test_p": mcnemar_exact(up, down),
        "permutation_p": min(1.0, perm_p),
    }
