"""The Collatz task: map, features, references, metrics, protocols and the eval set, against hand values."""

from __future__ import annotations

import itertools
import math
import random

import numpy as np
import pytest

from common.collatz import (
    HARD_SEEDS,
    LOG2_3,
    NOTEBOOK_TRAIN_SEEDS,
    TEST_SEEDS,
    Plateau,
    Sampler,
    View,
    anchor_weight,
    check_start,
    climber_seeds,
    closed_form_values,
    curriculum_count,
    features,
    held_out_states,
    iterate,
    leaked_transitions,
    log_values,
    odd_start,
    orbit,
    pair_batch,
    pair_metrics,
    protocol_pools,
    seed_states,
    state_features,
    syracuse,
    touches,
    trajectory_metrics,
    validation_segments,
    violations,
    walk,
)
from common.collatz_config import TaskConfig
from common.errors import InputError
from evals.collatz import draw_eval_rows, standard_map_stats, violating_steps

WEIGHTS = {"hard_growth": 20.0, "hard_decay": 2.0, "random_growth": 10.0, "random_decay": 1.0}

# ---------------------------------------------------------------------------------------------- the map


def test_syracuse_steps_by_hand() -> None:
    assert syracuse(27) == (41, 1)  # 82 / 2
    assert syracuse(41) == (31, 2)  # 124 / 4
    assert syracuse(53) == (5, 5)  # 160 / 32
    assert syracuse(5) == (1, 4)  # 16 / 16
    assert syracuse(1) == (1, 2)  # 1 stays at 1 with k = 2
    assert syracuse(1365) == (1, 12)  # 4096 = 2^12


def test_orbit_of_27_and_the_429_test_steps() -> None:
    o = orbit(27)
    assert o[:9] == [27, 41, 31, 47, 71, 107, 161, 121, 91]
    assert o[-3:] == [53, 5, 1]
    assert max(o) == 3077 and len(o) - 1 == 41
    steps = {s: len(orbit(s)) - 1 for s in TEST_SEEDS}
    assert steps == {111: 24, 27: 41, 703: 62, 26623: 113, 626331: 189}
    assert sum(steps.values()) == 429


def test_big_integers_stay_exact() -> None:
    n = 2**127 - 1  # 127 ones: the orbit climbs for 126 growth steps, past 2^128
    top = iterate(n, 126)
    assert top == 3**126 * 2 - 1 and top.bit_length() > 128
    assert all(syracuse(s)[1] == 1 for s in [iterate(n, j) for j in range(126)])
    ks, kept = walk([n], 3, keep=(3,))
    assert ks.tolist() == [[1, 1, 1]] and kept[3].ints() == [3**3 * 2**124 - 1]


def test_standard_map_stats_of_27() -> None:
    assert standard_map_stats(27) == (111, 9232)  # 111 steps of n/2, 3n + 1, peak 9232


@pytest.mark.parametrize("bad", [0, -3, 4, 54, True, "7", 7.0])
def test_check_start_refuses_non_positive_or_even(bad: object) -> None:
    with pytest.raises(InputError, match="--orbits"):
        check_start(bad, "--orbits")
    assert check_start(27, "x") == 27


# ---------------------------------------------------------------------------------------------- features


def test_features_of_27_with_three_steps() -> None:
    f = features([27], View(3))[0]  # k = 1, 2, 1 (27 → 41 → 31 → 47)
    expected = [math.log10(27) / 40, 0, 0, 0, 27 / 80, (3 * LOG2_3 - 4) / 10, 0.1, 0.2, 0.1]
    assert f.dtype == np.float32 and f.shape == (9,)
    np.testing.assert_allclose(f, expected, rtol=1e-6)


def test_features_residues_and_clipping() -> None:
    f7 = features([7], View(2))[0]  # 7 → 11 → 17: k = 1, 1
    np.testing.assert_allclose(f7[1:5], [1 / 2, 7 / 8, 7 / 26, 7 / 80], rtol=1e-6)
    np.testing.assert_allclose(f7[5], (2 * LOG2_3 - 2) / 10, rtol=1e-6)
    f = features([1365], View(2))[0]  # k = 12 (clipped at 10), then 1 → 1 with k = 2
    np.testing.assert_allclose(f[6:], [1.0, 0.2])
    assert features([27], View(10)).shape == (1, 16)


def test_scale_free_features_leave_out_only_ln_n() -> None:
    """27 and 27 + 2^20·81 share residues mod 81 and their first valuations: scale-free, one row."""
    far = 27 + 2**20 * 81
    view = View(3, 0.01, scale_free=True)
    plain = features([27, far], View(3))
    free = features([27, far], view)
    np.testing.assert_array_equal(plain[:, 1:], free[:, 1:])
    assert plain[0, 0] != plain[1, 0] and (free[:, 0] == 0).all()
    np.testing.assert_array_equal(free[0], free[1])
    b = pair_batch([27, far], [0, 0], view, (0, 1), WEIGHTS)
    np.testing.assert_array_equal(b.x[0], free)
    np.testing.assert_array_equal(b.x[1], features([41, syracuse(far)[0]], view))


def test_residue_inputs_above_the_views_modulus_are_zero() -> None:
    all_in = features([7, 25], View(2))
    for residues, kept in ((1, 0), (3, 1), (9, 2), (27, 3), (81, 4)):
        f = features([7, 25], View(2, residues=residues))
        np.testing.assert_array_equal(f[:, 1 : 1 + kept], all_in[:, 1 : 1 + kept])
        assert (f[:, 1 + kept : 5] == 0).all()
        np.testing.assert_array_equal(f[:, [0, 5, 6, 7]], all_in[:, [0, 5, 6, 7]])  # ln n, drift, window


def test_view_checks_and_round_trips() -> None:
    view = View(10, 0.05, scale_free=True)
    assert View.from_meta(view.meta()) == view
    assert View.from_meta({"lookahead": 10}) == View(10)  # an export from before the base
    # an eval result of such an export holds the later keys as None
    nones = {"lookahead": 10, "base_eps": None, "scale_free": None, "residues": None}
    assert View.from_meta(nones) == View(10)
    assert View(10, 0.05, True, 9).left_out() == ["ln n (scale-free)", "residues above mod 9"]
    assert View.from_meta(View(10, residues=1).meta()).residues == 1
    assert View(10).inputs() == ["ln n", "n mod 3", "n mod 9", "n mod 27", "n mod 81", "drift", "k_1..k_10"]
    assert View(4, 0.05, scale_free=True, residues=1).inputs() == ["drift", "k_1..k_4"]
    with pytest.raises(ValueError, match="scale_free needs a closed-form base"):
        View(10, None, scale_free=True)
    with pytest.raises(ValueError, match="residues must be 1"):
        View(10, residues=7)
    ks, kept = walk([27], 3, keep=(0,))
    with pytest.raises(ValueError, match="3 valuations for a window of 4"):
        state_features(kept[0], ks, View(4))


# ---------------------------------------------------------------------------------------------- references


def test_references_by_hand() -> None:
    np.testing.assert_allclose(log_values([27, 41]), [math.log(27), math.log(41)])
    # V_1(27) = max(ln 27, ln 41 + ε); V_2(27) = max(ln 27, ln 41 + ε, ln 31 + 2ε)
    np.testing.assert_allclose(closed_form_values([27], 1, 0.01), [math.log(41) + 0.01])
    np.testing.assert_allclose(closed_form_values([27], 2, 0.5), [math.log(31) + 1.0])


def test_closed_form_fails_only_on_a_record_beyond_its_window() -> None:
    lookahead, eps = 4, 0.01
    for seed in (27, 703):
        o = orbit(seed)
        v = closed_form_values(o, lookahead, eps)
        for i in range(len(o) - 1):
            window = [math.log(iterate(o[i], j)) + eps * j for j in range(lookahead + 1)]
            beyond = math.log(iterate(o[i], lookahead + 1)) + eps * lookahead
            record_beyond = beyond >= max(window)  # the rest of V_L(T n) is at most V_L(n) − ε
            assert (v[i + 1] >= v[i]) == record_beyond, (seed, i)


# ---------------------------------------------------------------------------------------------- metrics


def test_pair_metrics_by_hand() -> None:
    m = pair_metrics(
        np.array([0.5, -0.1, 0.2, 0.0]), np.array([True, True, False, False]), np.array([1.0, 3.0, 1.0, 1.0])
    )
    assert m["pass"] == 50.0  # 0.0 is not a pass
    assert m["weighted"] == pytest.approx(100 * 2 / 6)
    assert m["growth"] == 50.0
    assert m["growth_weighted"] == pytest.approx(25.0)
    assert m["growth_margin_min"] == pytest.approx(-0.1)


def test_trajectory_metrics_by_hand() -> None:
    # orbit(7) = 7, 11, 17, 13, 5, 1: growth, growth, decay, decay, decay
    t = trajectory_metrics({7: np.array([6.0, 5.0, 5.5, 3.0, 3.0, 1.0]), 5: np.array([2.0, 1.0])})
    assert t["by_seed"]["7"] == {
        "steps": 5, "violations": 2, "growth_violations": 1, "worst_margin": -0.5, "min_margin": -0.5,
    }  # fmt: skip
    assert t["by_seed"]["5"]["violations"] == 0  # 5 → 1
    assert (t["violations"], t["growth_violations"], t["steps"]) == (2, 1, 6)


def test_violations_by_hand() -> None:
    # 6 → 5 ok, 5 → 5.5 up, 5.5 → 3 ok, 3 → 3 flat (a violation: V must fall); 2 → 1 ok
    assert violations([np.array([6.0, 5.0, 5.5, 3.0, 3.0]), np.array([2.0, 1.0])]) == 2


def test_validation_segments_are_seeded_climbs_off_the_test_orbits() -> None:
    segments = validation_segments(6, seed=3, pool=5)
    assert segments == validation_segments(6, seed=3, pool=5) != validation_segments(6, seed=4, pool=5)
    banned = held_out_states()
    climbs = []
    for seg in segments:
        assert len(seg) > 16 and not banned & set(seg)
        assert all(syracuse(a)[0] == b for a, b in itertools.pairwise(seg))  # consecutive steps
        assert (
            seg[-1] == 1 or syracuse(seg[-1])[0] in banned or len(seg) > 300
        )  # cut just before a test state
        climbs.append(max(math.log(x) for x in seg) - math.log(seg[0]))
    assert climbs == sorted(climbs, reverse=True) and climbs[0] > 0


def test_climber_seeds_are_the_seeded_longest_climbs() -> None:
    seeds = climber_seeds(5, (20, 30), seed=3, pool=4)
    assert seeds == climber_seeds(5, (20, 30), seed=3, pool=4) != climber_seeds(5, (20, 30), seed=4, pool=4)
    assert all(s % 2 == 1 and 20 <= s.bit_length() <= 30 for s in seeds)
    climbs = [math.log(max(seed_states(s))) - math.log(s) for s in seeds]
    assert climbs == sorted(climbs, reverse=True)
    # the 5 kept climb at least as far as every other start of the same draw of 20
    rng = random.Random(3)
    drawn = [odd_start(rng, (20, 30)) for _ in range(20)]
    others = [math.log(max(seed_states(n))) - math.log(n) for n in drawn if n not in seeds]
    assert len(others) == 15 and max(others) <= climbs[-1]
    # the config's climbers follow its seeds, once each
    top = climber_seeds(3, (28, 64))
    assert TaskConfig(seeds=[27, top[1]], climbers=3).training_seeds() == [27, top[1], top[0], top[2]]
    assert TaskConfig(seeds=[27]).training_seeds() == [27]


# ---------------------------------------------------------------------------------------------- protocols


def test_seed_lists() -> None:
    assert len(HARD_SEEDS) == 54 and len(NOTEBOOK_TRAIN_SEEDS) == 49
    assert not set(TEST_SEEDS) & set(NOTEBOOK_TRAIN_SEEDS)
    assert seed_states(54)[:3] == [27, 41, 31]  # the even seed's orbit is 27's


def test_clean_protocol_keeps_every_pair_off_the_test_orbits() -> None:
    banned = held_out_states()
    assert {1, 5, 27, 41, 9232 // 4 + 1} & banned == {1, 5, 27, 41}
    pools = protocol_pools("clean", NOTEBOOK_TRAIN_SEEDS, 1, banned)
    # 31 … 479 lie on 27's orbit, 54 is 2·27; 237 → 89 and 607 → 911 join a test orbit in one step
    dropped = sorted(set(NOTEBOOK_TRAIN_SEEDS) - set(pools))
    assert dropped == [31, 41, 47, 54, 71, 91, 103, 155, 237, 319, 479, 607]
    for states in pools.values():
        assert not any(touches(s, 1, banned) for s in states)
    # reach 8 (T^8 terms) cuts each orbit 8 steps before it joins a test orbit
    assert len(protocol_pools("clean", NOTEBOOK_TRAIN_SEEDS, 8, banned)) < len(pools)


def test_faithful_pools_hold_whole_test_orbits() -> None:
    pools = protocol_pools("faithful", NOTEBOOK_TRAIN_SEEDS, 1, frozenset())
    leaked = leaked_transitions({s for p in pools.values() for s in p})
    # 54 → 27 (all 41 steps); 2463 joins 703 and 52527 joins 26623 within their first 300 states
    assert leaked[27] == 41 and leaked[703] == 62 and leaked[26623] == 113
    assert 0 < leaked[111] < 24


def test_clean_sampler_never_draws_near_a_test_orbit() -> None:
    s = Sampler(
        protocol="clean", seeds=NOTEBOOK_TRAIN_SEEDS, view=View(4), offsets=(1, 4), max_bits=16,
        hard_share=0.5, weights=WEIGHTS, mine_share=0.5, mine_direct=0.5, pool_cap=5, replay_share=0.1, seed=3,
    )  # fmt: skip
    s.set_active(len(s.seeds))
    # 27 and 41 lie on a test orbit, 11 → 17 → 13 → 5 reaches one within 4 steps; 2^61 + 3 stays huge
    assert s.add_mined([27, 41, 11, 2**61 + 3]) == 1
    banned = held_out_states()
    states, _ = s.draw(3000, hard_share=0.5, replay_share=0.1)
    assert not any(touches(n, 4, banned) for n in states)  # small bit lengths: many hits to refuse
    assert s.test_hits == set()
    faithful = Sampler(
        protocol="faithful", seeds=(54,), view=View(4), offsets=(1,), max_bits=16, hard_share=1.0,
        weights=WEIGHTS, mine_share=None, mine_direct=0.3, pool_cap=5, replay_share=0.0, seed=3,
    )  # fmt: skip
    faithful.draw(200, hard_share=1.0)
    assert faithful.test_hits and faithful.test_hits <= set(orbit(27))


def test_sampler_state_round_trip_gives_the_same_batches() -> None:
    kw = dict(
        protocol="clean", seeds=NOTEBOOK_TRAIN_SEEDS, view=View(3), offsets=(1,), max_bits=64, hard_share=0.25,
        weights=WEIGHTS, mine_share=None, mine_direct=0.3, pool_cap=10, replay_share=0.0, seed=0,
    )  # fmt: skip
    a = Sampler(**kw)
    a.set_active(5)
    a.add_mined([2**61 + 3, 2**40 + 1])
    a.batch(32)
    b = Sampler(**kw)
    b.load_state_dict(a.state_dict())
    assert a.batch(64).states == b.batch(64).states


def test_pair_batch_carries_the_closed_form_target() -> None:
    states = [27, 703, 2**90 + 1, 2**127 - 1]
    b = pair_batch(states, [0, 1, 0, 0], View(5), (0, 1), WEIGHTS, closed_form_eps=0.01)
    np.testing.assert_allclose(b.closed_form, closed_form_values(states, 5, 0.01), rtol=1e-6)
    assert pair_batch(states, [0] * 4, View(5), (0, 1), WEIGHTS).closed_form is None


def test_pair_batch_weights_and_offsets() -> None:
    s = Sampler(
        protocol="faithful", seeds=NOTEBOOK_TRAIN_SEEDS, view=View(3), offsets=(1, 4, 8), max_bits=40,
        hard_share=0.5, weights=WEIGHTS, mine_share=None, mine_direct=0.3, pool_cap=10, replay_share=0.0, seed=1,
    )  # fmt: skip
    b = s.batch(16)
    assert sorted(b.x) == [0, 1, 4, 8]
    for i, n in enumerate(b.states):
        np.testing.assert_array_equal(b.x[4][i], features([iterate(n, 4)], View(3))[0])
        hard = b.source[i] > 0
        growth = n % 4 == 3
        assert b.growth[i] == growth
        assert b.weight[i] == {(1, 1): 20, (1, 0): 2, (0, 1): 10, (0, 0): 1}[(int(hard), int(growth))]


# ---------------------------------------------------------------------------------------------- schedules


def test_schedules() -> None:
    assert [curriculum_count(s, 49, 0, 50000) for s in (0, 1020, 25000, 50000, 90000)] == [0, 0, 24, 49, 49]
    assert anchor_weight(999, 1000, 5000, 0.0) == 1.0
    assert anchor_weight(3500, 1000, 5000, 0.0) == pytest.approx(0.001**0.5)
    assert anchor_weight(9000, 1000, 5000, 0.0) == pytest.approx(0.001)
    p = Plateau(factor=0.5, patience=2)
    assert [p.step(x) for x in (1.0, 1.0, 1.0, 1.0, 0.5, 0.6, 0.6, 0.6)] == [
        1,
        1,
        1,
        0.5,
        0.5,
        0.5,
        0.5,
        0.25,
    ]


def _residue_only_params(a: float, lookahead: int = 10) -> dict[str, np.ndarray]:
    """A one-layer "MLP" whose output is a·(n mod 3)/2: the residue column (index 1) alone."""
    w = np.zeros((1, 6 + lookahead), dtype=np.float32)
    w[0, 1] = a
    return {"layers.0.weight": w, "layers.0.bias": np.zeros(1, dtype=np.float32)}


def test_violating_steps_split_the_change_into_base_and_correction() -> None:
    view = View(10, 0.05, scale_free=True, residues=3)
    # a zero correction: exactly the closed form's (ε = 0.05) violations, with no correction change
    flat = violating_steps(_residue_only_params(0.0), view)
    expected = {s: violations([closed_form_values(orbit(s), 10, 0.05)]) for s in TEST_SEEDS}
    assert {s: sum(v["seed"] == s for v in flat["steps"]) for s in TEST_SEEDS} == expected
    assert sum(expected.values()) == 75 and all(v["correction_change"] == 0.0 for v in flat["steps"])
    # correction −(n mod 3): a decay 377 → 283 (k = 2, 377 ≡ 2, 283 ≡ 1) loses 1 to the correction
    # (−2 against −1) while the base falls by ε, so it fails: softplus(V_L(377) − 2) − softplus(V_L(283) − 1)
    low = violating_steps(_residue_only_params(-2.0), view)
    step = next(v for v in low["steps"] if v["seed"] == 111 and v["n"] == 377)
    v_l = closed_form_values([377, 283], 10, 0.05).astype(np.float32).astype(np.float64)  # as added
    by_hand = np.logaddexp(0.0, v_l[0] - 2.0) - np.logaddexp(0.0, v_l[1] - 1.0)
    assert (step["next"], step["k"], step["n_mod_3"], step["step"]) == (283, 2, 2, 3)
    assert step["correction_change"] == pytest.approx(-1.0)
    assert step["base_change"] == pytest.approx(0.05, abs=1e-9)
    assert step["margin"] == pytest.approx(by_hand, abs=1e-9) and step["margin"] < 0
    assert sum(low["by_kind"].values()) == len(low["steps"])
    assert low["by_kind"]["decay, n ≡ 2 (mod 3)"] > flat["by_kind"].get("decay, n ≡ 2 (mod 3)", 0)
    # no base: the change is the correction's alone
    plain = violating_steps(_residue_only_params(-2.0), View(10, residues=3))
    assert plain["steps"] and all(v["base_change"] is None for v in plain["steps"])
    assert all(v["margin"] <= 0 for v in plain["steps"])


# ---------------------------------------------------------------------------------------------- eval set


def test_eval_set_is_drawn_as_the_notebooks() -> None:
    rows = draw_eval_rows(4)
    # the first rows of the notebook's eval/collatz_eval_50k.csv
    assert [
        (r["n"], r["t1"], r["is_growth"], r["sigma_n"], r["max_n"], round(r["w_expansion"], 4)) for r in rows
    ] == [
        (6994456467885842758128215, 10491684701828764137192323, 1, 530, 47212581158229438617365456, 1.8293),
        (315881, 236911, 0, 78, 2698576, 1.9316),
        (
            285320985015814582857473923,
            427981477523721874286210885,
            1,
            437,
            1283944432571165622858632656,
            1.6532,
        ),
        (33, 25, 0, 26, 100, 1.4815),
    ]


def test_vectorised_walk_matches_python_ints() -> None:
    rng = random.Random(1)
    ns = [rng.getrandbits(rng.randint(1, 200)) | 1 for _ in range(500)]
    ns += [1, 3, 5, 2**127 - 1, (4**60 - 1) // 3, (4**16 - 1) // 3]  # k = 120 and k = 32: whole limbs drop
    ks, kept = walk(ns, 12, keep=(0, 5, 12))
    for i, n in enumerate(ns):
        expected = []
        m = n
        for _ in range(12):
            m, k = syracuse(m)
            expected.append(k)
        assert ks[i].tolist() == expected
        assert (kept[0].ints()[i], kept[5].ints()[i], kept[12].ints()[i]) == (n, iterate(n, 5), m)
    np.testing.assert_allclose(kept[0].log(), [math.log(n) for n in ns], rtol=1e-14)
    assert kept[0].mod(81).tolist() == [n % 81 for n in ns]
