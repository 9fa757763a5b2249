"""The Collatz ranking-function task, shared by both trainers and the eval (framework-free).

A ranking function V(n) > 0 should decrease at every step of the odd-to-odd Syracuse map
T(n) = (3n + 1) / 2^k, k = v2(3n + 1). A step is *growth* when T(n) > n, i.e. k = 1. The five
test orbits (111, 27, 703, 26623, 626331) have 24 + 41 + 62 + 113 + 189 = 429 steps to 1.

Numbers are Python ints everywhere (exact at any size: orbits of 128-bit starts climb past
2^128); only the features are floats. The features of a state n with window L are 6 + L
float32 values: log10(n)/40; n mod 3, 9, 27, 81, each over (modulus - 1); drift/10 with
drift = L·log2(3) − Σ k_i; the next L valuations k_1..k_L, clipped at 10, over 10. So V sees
L steps ahead. A ``View`` says which of them a model's MLP sees (the others are zero columns). Two references need no training: V = ln n, and the closed-form truncated
ranking function V_L(n) = max_{j ≤ L} [ln T^j(n) + ε·j], which fails only where the orbit's
next record lies beyond the window.

Sections: the map → features → seeds and protocols (faithful / clean) → the training sampler
(curriculum, mining, replay) → schedules → the exported MLP in numpy → references → metrics.
"""

from __future__ import annotations

import functools
import itertools
import json
import math
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from common.errors import InputError
from common.runs import write_dir

LOG2_3 = math.log2(3)
K_CLIP = 10
BASE_FEATURES = 6  # log10 n, four residues, drift
RESIDUE_MODULI = (3, 9, 27, 81)  # the residue features n mod 3^j

# ---------------------------------------------------------------------------------------------
# The Syracuse map
# ---------------------------------------------------------------------------------------------


def check_start(n: object, where: str) -> int:
    """``n`` as a positive odd int; anything else is an ``InputError`` naming ``where``."""
    if isinstance(n, bool) or not isinstance(n, int):
        raise InputError(f"{where}: {n!r} is not an integer")
    if n <= 0 or n % 2 == 0:
        raise InputError(f"{where}: {n} is not a positive odd integer (the map is odd-to-odd)")
    return n


def syracuse(n: int) -> tuple[int, int]:
    """``(T(n), k)`` for odd ``n`` ≥ 1; T(1) = 1 with k = 2."""
    x = 3 * n + 1
    k = (x & -x).bit_length() - 1
    return x >> k, k


def odd_part(n: int) -> int:
    """``n`` with its factors of 2 removed (an even seed's orbit starts there)."""
    return n >> ((n & -n).bit_length() - 1)


def orbit(n: int) -> list[int]:
    """``[n, T n, …, 1]`` for odd ``n`` ≥ 1: ``len − 1`` steps."""
    out = [n]
    while n != 1:
        n, _ = syracuse(n)
        out.append(n)
    return out


def iterate(n: int, steps: int) -> int:
    """T^steps(n)."""
    for _ in range(steps):
        n, _ = syracuse(n)
    return n


LIMB_BITS = 32
LIMB_MASK = np.uint64((1 << LIMB_BITS) - 1)


class Limbs:
    """Many odd numbers at once, as rows of 32-bit limbs (little-endian) held in uint64.

    The Syracuse step then runs on the whole batch in numpy: 3n + 1 with carries, k from the
    lowest non-zero limb, a shift right by k. Exact at any size; ``width`` limbs must hold the
    largest value the walk reaches (``for_walk`` sizes it).
    """

    def __init__(self, rows: np.ndarray):
        self.rows = rows

    @classmethod
    def for_walk(cls, ns: Sequence[int], steps: int) -> Limbs:
        """``ns`` with room for ``steps`` steps (each at most ×3/2 plus the 3n + 1 carry)."""
        bits = max((n.bit_length() for n in ns), default=1) + (steps * 6) // 10 + 4
        width = -(-bits // LIMB_BITS)
        raw = b"".join(n.to_bytes(4 * width, "little") for n in ns)
        return cls(np.frombuffer(raw, dtype="<u4").reshape(len(ns), width).astype(np.uint64))

    def ints(self) -> list[int]:
        return [int.from_bytes(r.tobytes(), "little") for r in self.rows.astype("<u4")]

    def log(self) -> np.ndarray:
        """ln n (float64; relative error ~1e-16 at any size)."""
        scale = 2.0 ** (LIMB_BITS * np.arange(self.rows.shape[1]))
        return np.log(self.rows.astype(np.float64) @ scale)

    def mod(self, m: int) -> np.ndarray:
        """n mod m (m < 2^20)."""
        weights = np.array([pow(2, LIMB_BITS * i, m) for i in range(self.rows.shape[1])], dtype=np.uint64)
        return ((self.rows % np.uint64(m)) * weights).sum(axis=1) % np.uint64(m)

    def step(self) -> tuple[Limbs, np.ndarray]:
        """``(T(n), k)`` for every row."""
        x = self.rows * np.uint64(3)
        x[:, 0] += np.uint64(1)
        for i in range(x.shape[1] - 1):
            x[:, i + 1] += x[:, i] >> np.uint64(LIMB_BITS)
            x[:, i] &= LIMB_MASK
        if (x[:, -1] >> np.uint64(LIMB_BITS)).any():
            raise OverflowError("Limbs: the walk outgrew its width")
        z = (x != 0).argmax(axis=1)  # the lowest non-zero limb (3n + 1 > 0); almost always 0
        far = np.nonzero(z)[0]
        for row in far:  # k ≥ 32: drop the zero limbs first (rare)
            x[row] = np.concatenate([x[row, z[row] :], np.zeros(z[row], dtype=np.uint64)])
        low = x[:, 0]
        r = np.log2((low & (np.uint64(0) - low)).astype(np.float64)).astype(np.int64)  # its trailing zeros
        ru = r.astype(np.uint64)[:, None]
        hi = np.concatenate([x[:, 1:], np.zeros((len(x), 1), dtype=np.uint64)], axis=1)
        out = ((x >> ru) | (hi << (np.uint64(LIMB_BITS) - ru))) & LIMB_MASK
        return Limbs(out), LIMB_BITS * z + r


def walk(ns: Sequence[int], steps: int, keep: Iterable[int] = ()) -> tuple[np.ndarray, dict[int, Limbs]]:
    """Follow each start ``steps`` steps: the valuations ``(len(ns), steps)`` and the states at ``keep``."""
    keep = set(keep)
    x = Limbs.for_walk(ns, steps)
    kept = {0: x} if 0 in keep else {}
    ks = np.empty((len(ns), steps), dtype=np.int64)
    for j in range(steps):
        x, ks[:, j] = x.step()
        if j + 1 in keep:
            kept[j + 1] = x
    return ks, kept


def is_growth(n: int) -> bool:
    """T(n) > n, i.e. n ≡ 3 (mod 4) for odd n."""
    return n % 4 == 3


# ---------------------------------------------------------------------------------------------
# Features
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class View:
    """What a model's V is computed from, one value for the sampler, the trainers' validation and
    the eval (written to an export's model.json and read back from it).

    ``lookahead``: the window of L valuations the features hold; ``base_eps``: the ε of the closed
    form V_L(n) the model adds to its MLP's output (None: no base); ``scale_free``: the MLP's ln n
    input is zero, so its correction is the same for every n with the same window and residues;
    ``residues``: the largest modulus 3^j whose residue n mod 3^j the MLP sees (1: none). Left-out
    inputs are zero columns, so every export has one shape.
    """

    lookahead: int
    base_eps: float | None = None
    scale_free: bool = False
    residues: int = RESIDUE_MODULI[-1]

    def __post_init__(self) -> None:
        if self.lookahead < 1:
            raise ValueError(f"lookahead must be >= 1, got {self.lookahead}")
        if self.scale_free and self.base_eps is None:
            raise ValueError("scale_free needs a closed-form base (without ln n nothing else grows with n)")
        if self.residues not in (1, *RESIDUE_MODULI):
            raise ValueError(f"residues must be 1 (none) or one of {RESIDUE_MODULI}, got {self.residues}")

    def meta(self) -> dict[str, Any]:
        """The export's model.json keys that rebuild this view (``from_meta``)."""
        keys = ("lookahead", "base_eps", "scale_free", "residues")
        return {k: getattr(self, k) for k in keys}

    def inputs(self) -> list[str]:
        """The inputs the MLP sees, by name."""
        names = [] if self.scale_free else ["ln n"]
        names += [f"n mod {m}" for m in RESIDUE_MODULI if m <= self.residues]
        return [*names, "drift", f"k_1..k_{self.lookahead}"]

    def left_out(self) -> list[str]:
        """The inputs the MLP does not see, in words (empty when it sees them all)."""
        out = ["ln n (scale-free)"] if self.scale_free else []
        if self.residues < RESIDUE_MODULI[-1]:
            out.append("residues" if self.residues == 1 else f"residues above mod {self.residues}")
        return out

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any]) -> View:
        """The view of an export; exports from before an option have none of its key (its default)."""
        eps, residues = meta.get("base_eps"), meta.get("residues")
        return cls(
            int(meta["lookahead"]),
            None if eps is None else float(eps),
            meta.get("scale_free") is True,
            RESIDUE_MODULI[-1] if residues is None else int(residues),
        )


def state_features(states: Limbs, ks: np.ndarray, view: View) -> np.ndarray:
    """Features of ``states`` given each one's next valuations ``ks`` ``(len, L)``: float32 ``(len, 6 + L)``.

    The view's left-out inputs are zero: ln n when scale-free, the residues above its modulus.
    """
    if ks.shape[1] != view.lookahead:
        raise ValueError(f"{ks.shape[1]} valuations for a window of {view.lookahead}")
    out = np.empty((len(ks), BASE_FEATURES + view.lookahead), dtype=np.float32)
    res = states.mod(81)
    out[:, 0] = 0.0 if view.scale_free else states.log() / math.log(10) / 40.0
    for col, mod in enumerate(RESIDUE_MODULI, start=1):
        out[:, col] = (res % np.uint64(mod)) / (mod - 1) if mod <= view.residues else 0.0
    out[:, 5] = drift(ks) / 10.0
    out[:, BASE_FEATURES:] = np.minimum(ks, K_CLIP) / K_CLIP
    return out


def features(ns: Sequence[int], view: View) -> np.ndarray:
    """The ``(len(ns), 6 + L)`` float32 features of the states ``ns``."""
    ks, kept = walk(ns, view.lookahead, keep=(0,))
    return state_features(kept[0], ks, view)


def drift(ks: np.ndarray) -> np.ndarray:
    """L·log2(3) − Σ k_i per row: positive when the window climbs (in bits)."""
    return ks.shape[1] * LOG2_3 - ks.sum(axis=1)


# ---------------------------------------------------------------------------------------------
# Seeds and protocols
# ---------------------------------------------------------------------------------------------

TEST_SEEDS = (111, 27, 703, 26623, 626331)
# The notebook's "hard" seeds (long orbits or large excursions); 54 is even (its orbit is 27's).
HARD_SEEDS = (
    27, 31, 41, 47, 54, 55, 71, 73, 91, 97, 103, 111, 127, 155, 159, 171, 231, 237, 267, 303,
    319, 351, 359, 391, 447, 479, 607, 703, 871, 1161, 2223, 2463, 2919, 3711, 6171, 10971,
    13255, 17647, 23529, 26623, 34239, 35655, 52527, 77031, 106239, 142587, 156159, 216367,
    230631, 410011, 511935, 626331, 837799, 1117065,
)  # fmt: skip
NOTEBOOK_TRAIN_SEEDS = tuple(s for s in HARD_SEEDS if s not in TEST_SEEDS)  # 49 seeds
ORBIT_PREFIX = 300  # a hard sample is a random state among the first 300 of its seed's orbit
CLIMBER_SEED = 7  # the climbers' draw (fixed: runs with different seeds train on the same ones)
FALLBACK_SEED = 27  # the notebook's seed when the hard pool is empty (a test seed: faithful only)

Protocol = Literal["faithful", "clean"]


def held_out_orbits(seeds: Sequence[int] = TEST_SEEDS) -> dict[int, list[int]]:
    """Each test seed's orbit to 1."""
    return {s: orbit(s) for s in seeds}


def held_out_states(seeds: Sequence[int] = TEST_SEEDS) -> frozenset[int]:
    """Every state on a test orbit, 1 included (the orbits share their tails)."""
    return frozenset(s for o in held_out_orbits(seeds).values() for s in o)


def seed_states(seed: int, limit: int = ORBIT_PREFIX) -> list[int]:
    """The odd states a hard sample draws from: the first ``limit`` of the seed's orbit, 1 excluded."""
    n = odd_part(seed)
    out: list[int] = []
    while n != 1 and len(out) < limit:
        out.append(n)
        n, _ = syracuse(n)
    return out


def validation_segments(
    count: int, seed: int, bits: tuple[int, int] = (8, 24), min_steps: int = 16, pool: int = 20
) -> list[list[int]]:
    """Orbit segments for choosing among checkpoints, never the test orbits: ``count`` of them,
    the longest climbers (largest ln max − ln start) among ``count × pool`` seeded odd starts of
    ``bits`` bit lengths, each orbit cut just before its first test-orbit state and kept when it
    still has ``min_steps`` steps (orbits merge, so segments may share states, as the test orbits do).
    """
    banned = held_out_states()
    rng = random.Random(seed)
    found: list[list[int]] = []
    while len(found) < count * pool:
        n = odd_start(rng, bits)
        if n in banned:
            continue
        states = [n]
        while states[-1] != 1 and len(states) <= ORBIT_PREFIX:
            nxt, _ = syracuse(states[-1])
            if nxt in banned:
                break
            states.append(nxt)
        if len(states) > min_steps:
            found.append(states)
    found.sort(key=climb, reverse=True)
    return found[:count]


def climb(states: Sequence[int]) -> float:
    """How far an orbit segment climbs above its start: ln max − ln start."""
    return max(math.log(x) for x in states) - math.log(states[0])


def odd_start(rng: random.Random, bits: tuple[int, int]) -> int:
    """A seeded odd number whose bit length is uniform in ``bits``."""
    b = rng.randint(*bits)
    return (1 << (b - 1)) | rng.getrandbits(b - 1) | 1


@functools.cache
def climber_seeds(
    count: int, bits: tuple[int, int], seed: int = CLIMBER_SEED, pool: int = 20
) -> tuple[int, ...]:
    """Hard training seeds at scales the notebook's list lacks: the ``count`` longest climbers
    (largest ln max − ln start over ``seed_states``) among ``count × pool`` seeded odd starts of
    ``bits`` bit lengths, longest first. Most of the notebook's seeds are small numbers whose
    orbits run into the test orbits, so the clean protocol keeps 1,981 of their states; climbers
    give the hard draws long climbs again, away from the test orbits (the protocol still filters
    their pools). Starts above 24 bits stay off the validation segments' starts."""
    rng = random.Random(seed)
    starts = [odd_start(rng, bits) for _ in range(count * pool)]
    ranked = sorted(((climb(seed_states(n)), n) for n in starts), reverse=True)
    return tuple(n for _, n in ranked[:count])


def touches(n: int, reach: int, banned: frozenset[int]) -> bool:
    """Whether any of n, T n, …, T^reach n is in ``banned`` (a sample whose V's would see a test state)."""
    if n in banned:
        return True
    for _ in range(reach):
        n, _ = syracuse(n)
        if n in banned:
            return True
    return False


def protocol_pools(
    protocol: Protocol, seeds: Sequence[int], reach: int, banned: frozenset[int]
) -> dict[int, list[int]]:
    """Each training seed's sampling pool under ``protocol``; seeds left with none are dropped.

    faithful: the first 300 states of every seed's orbit, as the notebook sampled them.
    clean: only states whose training pair (n, T n, and T^4 n / T^8 n when used, i.e. up to
    ``reach`` steps) stays off the test orbits. Test orbits are closed under T, so this cuts
    each orbit ``reach`` steps before it joins one; seeds that start on a test orbit go.
    """
    pools = {}
    for seed in seeds:
        states = seed_states(seed)
        if protocol == "clean":
            states = [s for s in states if not touches(s, reach, banned)]
        if states:
            pools[seed] = states
    return pools


def leaked_transitions(pool_states: Iterable[int], seeds: Sequence[int] = TEST_SEEDS) -> dict[int, int]:
    """Per test seed: how many of its orbit's steps start from a state in ``pool_states``."""
    pool = set(pool_states)
    return {s: sum(1 for n in o[:-1] if n in pool) for s, o in held_out_orbits(seeds).items()}


# ---------------------------------------------------------------------------------------------
# The training sampler: random odd states, the seed curriculum, mined states, replay
# ---------------------------------------------------------------------------------------------


@dataclass
class PairBatch:
    """A training batch: features of n and of T^j n for each offset j, plus per-sample data."""

    states: list[int]
    x: dict[int, np.ndarray]  # offset j -> float32 (B, 6 + L) features of T^j n (j = 0, 1, 4, 8)
    log_n: np.ndarray  # float32 (B,) ln n (the anchor's target)
    drift: np.ndarray  # float32 (B,) drift of n's window (bits)
    weight: np.ndarray  # float32 (B,) the one-step hinge weight (growth/decay, hard/random)
    growth: np.ndarray  # bool (B,)
    source: np.ndarray  # int8 (B,): 0 random, 1 hard (seed orbit or mined), 2 replayed
    closed_form: np.ndarray | None = None  # float32 (B,) V_L(n), when the anchor targets it
    base: dict[int, np.ndarray] | None = None  # offset j -> float32 (B,) V_L(T^j n), when V adds it


def pair_batch(
    states: list[int],
    source: Sequence[int],
    view: View,
    offsets: Sequence[int],
    weights: dict[str, float],
    closed_form_eps: float | None = None,
) -> PairBatch:
    """The model's inputs (``view``) for ``states`` at every offset, from one walk of L + max(offsets) steps.

    With ``closed_form_eps`` the batch also carries V_L(n) = max_{j ≤ L} [ln T^j n + ε·j] (the
    anchor's target); with the view's base, V_L(T^j n) at every offset.
    """
    lookahead, base_eps = view.lookahead, view.base_eps
    reach = max(offsets)
    window = range(lookahead + 1) if closed_form_eps is not None else ()
    windows = range(reach + lookahead + 1) if base_eps is not None else ()
    ks, kept = walk(states, lookahead + reach, keep={*offsets, *window, *windows})
    x = {j: state_features(kept[j], ks[:, j : j + lookahead], view) for j in offsets}
    growth = ks[:, 0] == 1
    src = np.asarray(source, dtype=np.int8)
    hard = src > 0
    w = np.where(
        growth,
        np.where(hard, weights["hard_growth"], weights["random_growth"]),
        np.where(hard, weights["hard_decay"], weights["random_decay"]),
    ).astype(np.float32)
    return PairBatch(
        states=list(states),
        x=x,
        log_n=kept[0].log().astype(np.float32),
        drift=drift(ks[:, :lookahead]).astype(np.float32),
        weight=w,
        growth=growth,
        source=src,
        closed_form=None
        if closed_form_eps is None
        else window_max(kept, 0, lookahead, closed_form_eps).astype(np.float32),
        base=None
        if base_eps is None
        else {j: window_max(kept, j, lookahead, base_eps).astype(np.float32) for j in offsets},
    )


def window_max(kept: dict[int, Limbs], start: int, lookahead: int, eps: float) -> np.ndarray:
    """V_L(T^start n) = max_{0 ≤ j ≤ L} [ln T^(start+j) n + ε·j] (float64) from a walk's kept states."""
    return np.max([kept[start + j].log() + eps * j for j in range(lookahead + 1)], axis=0)


class Sampler:
    """Draws training states the notebook's way, with the protocol's leak filter applied.

    A batch is ``hard_share`` hard states and the rest random odd states with bit length
    uniform in [3, max_bits - 3]. A hard state comes from the mined pool with probability
    ``mine_share`` (``None``: the notebook's rule, a uniform pick among active seeds and mined
    states alike), used directly with probability ``mine_direct`` or else replaced by a state of
    its orbit; otherwise from an active curriculum seed's pool. ``replay_share`` of the batch is
    mined states replayed as they are. Under the clean protocol every drawn state whose pair
    touches a test orbit is redrawn, and an empty pool never falls back to a test seed.
    """

    def __init__(
        self,
        *,
        protocol: Protocol,
        seeds: Sequence[int],
        view: View,
        offsets: Sequence[int],
        max_bits: int,
        hard_share: float,
        weights: dict[str, float],
        mine_share: float | None,
        mine_direct: float,
        pool_cap: int,
        replay_share: float,
        seed: int,
        closed_form_eps: float | None = None,
    ):
        self.protocol = protocol
        self.view = view
        self.offsets = tuple(sorted(set(offsets)))
        self.reach = max(self.offsets)
        self.max_bits = max_bits
        self.hard_share = hard_share
        self.weights = weights
        self.mine_share = mine_share
        self.mine_direct = mine_direct
        self.pool_cap = pool_cap
        self.replay_share = replay_share
        self.closed_form_eps = closed_form_eps
        self.banned = held_out_states() if protocol == "clean" else frozenset()
        self._banned_array = np.array(sorted(self.banned), dtype=np.uint64)
        if self.banned and max(self.banned) >> LIMB_BITS:  # _touching compares the lowest limb only
            raise ValueError("test-orbit states must stay below 2^32")
        self.pools = protocol_pools(protocol, seeds, self.reach, self.banned)
        self.seeds = list(self.pools)
        self.active = len(self.seeds)
        self.mined: list[int] = []
        self._mined_orbits: dict[int, list[int]] = {}  # a mined state's orbit states, drawn once
        self.rng = random.Random(seed)
        self.test_hits: set[int] = set()  # test states drawn so far (faithful; clean keeps it empty)
        self._test = held_out_states()
        self._fallback = seed_states(FALLBACK_SEED)

    # -- what is drawn -------------------------------------------------------------------------

    def set_active(self, count: int) -> None:
        self.active = max(0, min(count, len(self.seeds)))

    def random_odd(self) -> int:
        """Bit length uniform in [3, max_bits − 3], then uniform among the odd numbers of that length."""
        bits = 3 + int(self.rng.random() * (self.max_bits - 5))
        return (1 << (bits - 1)) | self.rng.getrandbits(bits - 1) | 1

    def _from_pool(self) -> int | None:
        """A state of a mined state's orbit (or the state itself); None when nothing fits."""
        m = self.rng.choice(self.mined)
        if self.rng.random() < self.mine_direct:
            return m
        if m not in self._mined_orbits:
            self._mined_orbits[m] = [s for s in seed_states(m) if self._allowed(s)]
        states = self._mined_orbits[m]
        return self.rng.choice(states) if states else None

    def hard_state(self) -> int | None:
        active = self.seeds[: self.active]
        if self.mined:
            if self.mine_share is None:
                use_pool = self.rng.randrange(len(active) + len(self.mined)) >= len(active)
            else:
                use_pool = not active or self.rng.random() < self.mine_share
            if use_pool:
                return self._from_pool()
        if active:
            return self.rng.choice(self.pools[self.rng.choice(active)])
        if self.protocol == "faithful":  # the notebook's fallback (a test seed: one of its leaks)
            return self.rng.choice(self._fallback)
        return None  # clean: the hard part is drawn at random instead

    def _allowed(self, n: int) -> bool:
        return not (self.banned and touches(n, self.reach, self.banned))

    def _touching(self, states: Sequence[int]) -> np.ndarray:
        """Which ``states`` reach a banned (test-orbit) state within ``reach`` steps, all at once."""
        hit = np.zeros(len(states), dtype=bool)
        if not self.banned or not states:
            return hit
        _, kept = walk(states, self.reach, keep=range(self.reach + 1))
        for x in kept.values():
            small = ~x.rows[:, 1:].any(axis=1)  # below 2^32, where every test state is
            hit |= small & np.isin(x.rows[:, 0], self._banned_array)
        return hit

    def draw(self, count: int, hard_share: float, replay_share: float = 0.0) -> tuple[list[int], list[int]]:
        """``count`` states and their sources (0 random, 1 hard, 2 replayed); pools are pre-filtered."""
        n_replay = int(count * replay_share) if self.mined else 0
        n_hard = int(count * hard_share)
        states = [self.rng.choice(self.mined) for _ in range(n_replay)]
        source = [2] * n_replay
        misses = 0
        while len(states) < n_replay + n_hard and misses < 100:
            s = self.hard_state()
            if s is None:
                misses += 1
                continue
            states.append(s)
            source.append(1)
        first_random = len(states)
        states += [self.random_odd() for _ in range(count - first_random)]
        source += [0] * (count - first_random)
        while (redraw := np.nonzero(self._touching(states[first_random:]))[0]).size:
            for i in redraw:
                states[first_random + i] = self.random_odd()
        self.test_hits.update(s for s in states if s in self._test)
        return states, source

    def batch(self, size: int) -> PairBatch:
        states, source = self.draw(size, self.hard_share, self.replay_share)
        return pair_batch(
            states,
            source,
            self.view,
            (0, 1, *self.offsets),
            self.weights,
            self.closed_form_eps,
        )

    def add_mined(self, states: Iterable[int]) -> int:
        """Add mined states (the oldest leave beyond ``pool_cap``); returns the pool size."""
        known = set(self.mined)
        for s in states:
            if s not in known and self._allowed(s):
                self.mined.append(s)
                known.add(s)
        gone = self.mined[: max(0, len(self.mined) - self.pool_cap)]
        del self.mined[: len(gone)]
        for m in gone:
            self._mined_orbits.pop(m, None)
        return len(self.mined)

    # -- checkpointing -------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        version, internal, gauss = self.rng.getstate()
        return {
            "rng": [version, list(internal), gauss],
            "mined": [str(m) for m in self.mined],  # JSON-safe at any size
            "active": self.active,
            "test_hits": sorted(self.test_hits),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        version, internal, gauss = state["rng"]
        self.rng.setstate((version, tuple(internal), gauss))
        self.mined = [int(m) for m in state["mined"]]
        self._mined_orbits = {}
        self.active = int(state["active"])
        self.test_hits = set(state["test_hits"])


# ---------------------------------------------------------------------------------------------
# Schedules (step-indexed; both backends follow them step for step)
# ---------------------------------------------------------------------------------------------


def curriculum_count(step: int, total_seeds: int, start: int, ramp_steps: int) -> int:
    """Active seeds: ``start`` growing linearly to all of them over ``ramp_steps``."""
    if ramp_steps <= 0:
        return total_seeds
    progress = min(1.0, step / ramp_steps)
    return int(start + (total_seeds - start) * progress)


def anchor_weight(step: int, start: int, length: int, floor: float) -> float:
    """1 until ``start``, then ``floor + (1 − floor)·0.001^progress`` over ``length`` steps."""
    if step < start:
        return 1.0
    progress = min(1.0, (step - start) / max(1, length))
    return floor + (1.0 - floor) * 0.001**progress


class Plateau:
    """Learning-rate factor halved (``factor``) after ``patience`` steps without a new best loss.

    torch's ReduceLROnPlateau rule (mode min, relative threshold 1e-4, no cooldown), kept here
    so both backends take the same decisions on the same losses; a JSON-able state.
    """

    def __init__(
        self, factor: float = 0.5, patience: int = 2000, threshold: float = 1e-4, min_scale: float = 0.0
    ):
        self.factor, self.patience, self.threshold, self.min_scale = factor, patience, threshold, min_scale
        self.best = math.inf
        self.bad = 0
        self.scale = 1.0

    def step(self, loss: float) -> float:
        if loss < self.best * (1.0 - self.threshold):
            self.best, self.bad = loss, 0
        else:
            self.bad += 1
        if self.bad > self.patience:
            self.scale = max(self.scale * self.factor, self.min_scale)
            self.bad = 0
        return self.scale

    def state_dict(self) -> dict[str, float]:
        return {"best": self.best, "bad": self.bad, "scale": self.scale}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.best, self.bad, self.scale = float(state["best"]), int(state["bad"]), float(state["scale"])


# ---------------------------------------------------------------------------------------------
# The exported MLP, evaluated in numpy (what the eval scores, whichever backend trained it)
# ---------------------------------------------------------------------------------------------

LEAKY_SLOPE = 0.1
V_FLOOR = 1e-6  # V = softplus(out) + 1e-6 > 0


def layer_sizes(lookahead: int, widths: Sequence[int]) -> list[tuple[int, int]]:
    """``(fan_in, fan_out)`` of each linear layer: features → widths → 1."""
    dims = [BASE_FEATURES + lookahead, *widths, 1]
    return list(itertools.pairwise(dims))


def softplus(x: np.ndarray) -> np.ndarray:
    return np.logaddexp(0.0, x)


def mlp_outputs(params: dict[str, np.ndarray], x: np.ndarray, batch: int = 8192) -> np.ndarray:
    """The MLP's output for float32 features ``x`` before the softplus (and before any base), in
    float64, from ``layers.{i}.weight`` (out, in) / ``.bias``."""
    n_layers = len([k for k in params if k.endswith(".weight")])
    out = np.empty(len(x), dtype=np.float64)
    for lo in range(0, len(x), batch):
        h = x[lo : lo + batch].astype(np.float64)
        for i in range(n_layers):
            h = h @ params[f"layers.{i}.weight"].astype(np.float64).T + params[f"layers.{i}.bias"]
            if i < n_layers - 1:
                h = np.where(h > 0, h, LEAKY_SLOPE * h)
        out[lo : lo + batch] = h[:, 0]
    return out


def mlp_values(
    params: dict[str, np.ndarray], x: np.ndarray, base: np.ndarray | None = None, batch: int = 8192
) -> np.ndarray:
    """V(x) for float32 features ``x``, in float64: softplus of ``mlp_outputs`` plus ``base`` (V_L of
    each row; rounded to float32, as trained) when the model has one."""
    h = mlp_outputs(params, x, batch)
    return softplus(h if base is None else h + base.astype(np.float32)) + V_FLOOR


def save_export(directory: Path, params: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
    """``model.safetensors`` + ``model.json`` written into a temp dir that then replaces ``directory``."""
    from safetensors.numpy import save_file

    def fill(tmp: Path) -> None:
        weights = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in params.items()}
        save_file(weights, str(tmp / "model.safetensors"))
        (tmp / "model.json").write_text(json.dumps(meta, indent=2) + "\n")

    write_dir(directory, fill)


def load_export(directory: Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The exported weights and their ``model.json``; a missing or broken export is an ``InputError``."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    try:
        meta = json.loads((directory / "model.json").read_text())
        params = load_file(str(directory / "model.safetensors"))
    except (OSError, ValueError, SafetensorError) as err:
        raise InputError(f"{directory}: unreadable model export ({err})") from None
    try:  # the view and the layer sizes, checked here so that callers can rebuild them
        sizes = layer_sizes(View.from_meta(meta).lookahead, meta["widths"])
    except (KeyError, TypeError, ValueError) as err:
        raise InputError(f"{directory}/model.json: not a ranking-model export ({err!r})") from None
    for i, (fan_in, fan_out) in enumerate(sizes):
        w = params.get(f"layers.{i}.weight")
        if w is None or w.shape != (fan_out, fan_in):
            raise InputError(
                f"{directory}/model.safetensors: layers.{i}.weight is "
                f"{None if w is None else w.shape}, model.json says {(fan_out, fan_in)}"
            )
    return params, meta


# ---------------------------------------------------------------------------------------------
# References
# ---------------------------------------------------------------------------------------------


def model_values(params: dict[str, np.ndarray], states: Sequence[int], view: View) -> np.ndarray:
    """An exported model's V on ``states``: its MLP on the view's features, plus the view's
    closed-form base V_L when it has one."""
    base = None if view.base_eps is None else closed_form_values(states, view.lookahead, view.base_eps)
    return mlp_values(params, features(states, view), base)


def violations(values: Iterable[np.ndarray]) -> int:
    """Steps where V does not decrease (V(next) ≥ V(current)), summed over orbits' value arrays."""
    return sum(int((v[:-1] - v[1:] <= 0).sum()) for v in values)


def log_values(states: Sequence[int]) -> np.ndarray:
    """V = ln n."""
    return np.fromiter((math.log(s) for s in states), dtype=np.float64, count=len(states))


def closed_form_values(states: Sequence[int], lookahead: int, eps: float = 0.01) -> np.ndarray:
    """V_L(n) = max_{0 ≤ j ≤ L} [ln T^j(n) + ε·j], from the same L-step window the features see."""
    _, kept = walk(states, lookahead, keep=range(lookahead + 1))
    return window_max(kept, 0, lookahead, eps)


# ---------------------------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------------------------


def pair_metrics(margin: np.ndarray, growth: np.ndarray, weight: np.ndarray) -> dict[str, float]:
    """Pass % (m > 0), Weighted % (Σw·pass/Σw), Growth %, Growth-weighted %, margin statistics."""
    ok = margin > 0
    g = growth.astype(bool)
    out = {
        "pass": 100.0 * float(ok.mean()),
        "weighted": 100.0 * float((weight * ok).sum() / weight.sum()),
        "n": len(margin),
        "n_growth": int(g.sum()),
        "margin_min": float(margin.min()),
        "margin_p5": float(np.percentile(margin, 5)),
        "margin_median": float(np.median(margin)),
    }
    if g.any():
        out |= {
            "growth": 100.0 * float(ok[g].mean()),
            "growth_weighted": 100.0 * float((weight[g] * ok[g]).sum() / weight[g].sum()),
            "growth_margin_min": float(margin[g].min()),
        }
    return out


def trajectory_metrics(values: dict[int, np.ndarray]) -> dict[str, Any]:
    """Violations (V(next) ≥ V(current)) along each seed's orbit, split into growth and decay steps.

    ``values[seed]`` is V along ``orbit(seed)``; each seed gets its violations, its worst
    (most negative) violating margin and its smallest margin.
    """
    per_seed = {}
    for seed, v in values.items():
        states = orbit(seed)
        growth = np.array([b > a for a, b in itertools.pairwise(states)], dtype=bool)
        margin = v[:-1] - v[1:]
        bad = margin <= 0
        per_seed[str(seed)] = {
            "steps": len(margin),
            "violations": int(bad.sum()),
            "growth_violations": int((bad & growth).sum()),
            "worst_margin": float(margin[bad].min()) if bad.any() else None,
            "min_margin": float(margin.min()),
        }
    return {
        "violations": sum(s["violations"] for s in per_seed.values()),
        "growth_violations": sum(s["growth_violations"] for s in per_seed.values()),
        "steps": sum(s["steps"] for s in per_seed.values()),
        "by_seed": per_seed,
    }
