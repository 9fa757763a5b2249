"""Wilson score intervals against hand-computed values."""

from __future__ import annotations

import math

import pytest

from evals.stats import Z95, paired_change, proportion, wilson_interval

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


def test_paired_change_exact_by_hand() -> None:
    # changes +3, +1, -1 and one tie: the eight sign flips of (3, 1, 1) sum to
    # 5, 3, 3, 1, -1, -3, -3, -5, so |sum| >= 3 in 6 of 8 -> p = 0.75.
    before = {"a": 0.0, "b": 1.0, "c": 2.0, "d": 5.0, "only-before": 9.0}
    after = {"a": 3.0, "b": 2.0, "c": 1.0, "d": 5.0, "only-after": 0.0}
    r = paired_change(before, after)
    assert (r["n"], r["only_before"], r["only_after"]) == (4, 1, 1)
    assert (r["up"], r["down"], r["same"]) == (2, 1, 1)
    assert r["mean_change"] == pytest.approx(0.75)
    assert r["mean_before"] == pytest.approx(2.0) and r["mean_after"] == pytest.approx(2.75)
    # sample sd of (3, 1, -1, 0): mean 0.75, squares 5.0625 + 0.0625 + 3.0625 + 0.5625 = 8.75
    assert r["se"] == pytest.approx(math.sqrt(8.75 / 3 / 4))
    assert r["ci95"][0] == pytest.approx(0.75 - 1.959964 * r["se"], abs=1e-6)
    assert r["permutation_p"] == pytest.approx(0.75)
    assert r["sign_test_p"] == pytest.approx(1.0)  # 2 up, 1 down


def test_paired_change_all_one_way_and_no_change() -> None:
    r = paired_change({str(i): 0.0 for i in range(6)}, {str(i): 1.0 for i in range(6)})
    assert r["permutation_p"] == pytest.approx(2 / 64) and r["sign_test_p"] == pytest.approx(2 / 64)
    same = paired_change({"a": 1.0, "b": 2.0}, {"a": 1.0, "b": 2.0})
    assert same["mean_change"] == 0.0 and same["permutation_p"] == 1.0 and same["sign_test_p"] == 1.0
    assert paired_change({"a": 1.0}, {"b": 1.0})["mean_change"] is None


def test_paired_change_sampled_p_matches_exact_enumeration() -> None:
    import random

    rng = random.Random(3)
    diffs = [rng.choice([-1.0, 1.0]) * rng.uniform(0.1, 2.0) + 0.3 for _ in range(18)]
    observed = abs(sum(diffs))
    exact = (
        sum(
            abs(sum(d if m >> k & 1 else -d for k, d in enumerate(diffs))) >= observed - 1e-9
            for m in range(2**18)
        )
        / 2**18
    )
    r = paired_change({str(i): 0.0 for i in range(18)}, {str(i): d for i, d in enumerate(diffs)})
    assert 0.01 < exact < 0.9  # the draw is informative, not an edge case
    assert r["permutation_p"] == pytest.approx(exact, abs=0.015)  # 20000 draws: sd <= 0.0036


def test_mcnemar_exact_by_hand() -> None:
    from evals.stats import mcnemar_exact

    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(0, 5) == 2 / 32  # 2 * P(X <= 0), X ~ Bin(5, 1/2)
    assert mcnemar_exact(6, 1) == 2 * 8 / 128  # 2 * (1 + 7) / 2**7
    assert mcnemar_exact(3, 3) == 1.0  # 2 * 42 / 64 capped at 1
    assert mcnemar_exact(2, 3) == 1.0  # 2 * 16 / 32
    with pytest.raises(ValueError, match="got -1, 2"):
        mcnemar_exact(-1, 2)
    with pytest.raises(ValueError, match="got 2, -1"):
        mcnemar_exact(2, -1)


def test_paired_change_of_two_items_uses_the_sample_variance() -> None:
    r = paired_change({"a": 0.0, "b": 0.0}, {"a": 1.0, "b": 3.0})
    assert r["mean_change"] == 2.0 and r["se"] == pytest.approx(math.sqrt(2.0 / 2))  # var of (1, 3) is 2
    one = paired_change({"a": 0.0}, {"a": 1.0})
    assert one["se"] == 0.0 and one["ci95"] == [1.0, 1.0] and one["permutation_p"] == 1.0


def test_paired_change_exact_up_to_sixteen_changes_then_sampled() -> None:
    ups = {str(i): 1.0 for i in range(17)}
    zeros = {k: 0.0 for k in ups}
    sixteen = paired_change({k: zeros[k] for k in list(ups)[:16]}, {k: ups[k] for k in list(ups)[:16]})
    assert sixteen["permutation_p"] == 2 / 2**16  # exact: only all-up and all-down reach 16
    sampled = paired_change(zeros, ups, draws=99, seed=1)
    assert sampled["permutation_p"] == pytest.approx(1 / 100)  # no draw reaches 17: (0 + 1) / (99 + 1)
    assert paired_change(zeros, ups, draws=99, seed=2)["permutation_p"] == sampled["permutation_p"]
    mixed = {k: (1.0 if int(k) % 2 else -1.0) for k in ups}  # 8 up, 9 down: |sum| = 1, most draws reach it
    p = paired_change(zeros, mixed, draws=2000, seed=0)["permutation_p"]
    assert 0.8 < p <= 1.0
    assert p == paired_change(zeros, mixed, draws=2000, seed=0)["permutation_p"]  # seeded


def test_paired_change_with_nothing_paired() -> None:
    assert paired_change({"a": 1.0}, {"b": 2.0}) == {
        "n": 0, "only_before": 1, "only_after": 1, "mean_before": None, "mean_after": None, "mean_change": None,
    }  # fmt: skip


def test_paired_change_interval_and_sampled_permutation_p() -> None:
    before = {f"i{k}": 0.0 for k in range(17)}
    after = {f"i{k}": (1.0 if k < 12 else -1.0) for k in range(17)}  # 12 up, 5 down: 17 non-zero, sampled
    out = paired_change(before, after)
    mean, se = out["mean_change"], out["se"]
    assert mean == 7 / 17 and out["ci95"] == [mean - Z95 * se, mean + Z95 * se]
    # exact two-sided P(|S| >= 7) for 17 fair signs: 2 * 9402 / 2**17 = 0.1435
    assert abs(out["permutation_p"] - 2 * 9402 / 2**17) < 0.01
    assert out == paired_change(before, after, seed=0, draws=20000)  # the defaults: seed 0, 20,000 draws
    assert paired_change(before, after, seed=1) != out
    all_up = paired_change(before, {k: 1.0 for k in before})  # p = (hits + 1) / (20,000 + 1), hits ~ 0.3
    hits_plus_one = all_up["permutation_p"] * 20001
    assert abs(hits_plus_one - round(hits_plus_one)) < 1e-9 and 1 <= round(hits_plus_one) <= 3
    assert all_up["sign_test_p"] == 2 / 2**17


def test_wilson_bounds_and_refusal() -> None:
    assert wilson_interval(7, 7)[1] == 1.0 and wilson_interval(0, 7)[0] == 0.0
    with pytest.raises(ValueError) as err:
        wilson_interval(8, 7)
    assert str(err.value) == "need 0 <= successes <= n, got 8/7"
