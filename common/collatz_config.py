"""The Collatz recipe's config, shared by ``trainers_torch.collatz`` and ``trainers_jax.collatz``.

Both trainers read the same YAML (``configs/collatz_*.yaml``) into these dataclasses, so every
key means the same thing on either side. Steps are optimizer steps; one step is one fresh
batch (the notebook's "epoch").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from common.collatz import NOTEBOOK_TRAIN_SEEDS, RESIDUE_MODULI, Protocol, View, climber_seeds


@dataclass
class TaskConfig:
    lookahead: int = 10  # L: the features see the next L valuations k_1..k_L
    max_bits: int = 128  # random training states have bit length uniform in [3, max_bits - 3]
    seeds: list[int] = field(default_factory=lambda: list(NOTEBOOK_TRAIN_SEEDS))  # curriculum order
    # generated hard seeds after ``seeds``: the longest climbers among seeded odd starts of
    # ``climber_bits`` bit lengths (``common.collatz.climber_seeds``)
    climbers: int = 0
    climber_bits: list[int] = field(default_factory=lambda: [28, 64])

    def __post_init__(self) -> None:
        if self.lookahead < 1:
            raise ValueError(f"task.lookahead must be >= 1, got {self.lookahead}")
        if self.max_bits < 8:
            raise ValueError(f"task.max_bits must be >= 8, got {self.max_bits}")
        bad = [s for s in self.seeds if s <= 0]
        if bad:
            raise ValueError(f"task.seeds: {bad[0]} is not a positive integer")
        if self.climbers < 0:
            raise ValueError(f"task.climbers must be >= 0, got {self.climbers}")
        if len(self.climber_bits) != 2 or not 3 <= self.climber_bits[0] <= self.climber_bits[1]:
            raise ValueError(
                f"task.climber_bits must be [low, high] with 3 <= low <= high, got {self.climber_bits}"
            )

    def training_seeds(self) -> list[int]:
        """``seeds``, then ``climbers`` generated climbers not already among them."""
        extra = (
            climber_seeds(self.climbers, (self.climber_bits[0], self.climber_bits[1]))
            if self.climbers
            else ()
        )
        return self.seeds + [s for s in extra if s not in self.seeds]


@dataclass
class ModelConfig:
    widths: list[int] = field(default_factory=lambda: [256, 256, 128])  # hidden layers, LeakyReLU(0.1)
    # none: V = softplus(MLP(x)) + 1e-6. closed_form: V = softplus(V_L(n) + MLP(x)) + 1e-6, the MLP
    # a correction to the window's closed form V_L(n) = max_{j ≤ L} [ln T^j n + base_eps·j]; its
    # output layer starts at zero, so training starts from V_L's ranking
    base: Literal["none", "closed_form"] = "none"
    base_eps: float = 0.01
    # the MLP's ln n input is zero: the correction depends on the window's valuations and n's
    # residues only, the same at every scale (closed_form only: V_L carries the scale)
    scale_free: bool = False
    # the largest modulus of the residues n mod 3, 9, 27, 81 the MLP sees (1: none; the others
    # are zero inputs)
    residues: int = 81

    def __post_init__(self) -> None:
        if not self.widths or any(w < 1 for w in self.widths):
            raise ValueError(f"model.widths must be a non-empty list of positive ints, got {self.widths}")
        if self.base_eps <= 0:
            raise ValueError(
                f"model.base_eps must be > 0 (at 0 V_L ties along every window), got {self.base_eps}"
            )
        if self.scale_free and self.base != "closed_form":
            raise ValueError(
                "model.scale_free needs model.base: closed_form (without ln n nothing else grows with n)"
            )
        if self.residues not in (1, *RESIDUE_MODULI):
            raise ValueError(
                f"model.residues must be 1 (none) or one of {RESIDUE_MODULI}, got {self.residues}"
            )

    def window_eps(self) -> float | None:
        """ε of the closed form the model adds to its output; None when it adds none."""
        return self.base_eps if self.base == "closed_form" else None


@dataclass
class LossConfig:
    margin: float = 0.05  # hinge relu(margin − (V(n) − V(T n)))
    # one-step hinge weights: hard (seed orbits, mined, replayed) vs random states, growth vs decay
    hard_growth: float = 20.0
    hard_decay: float = 2.0
    random_growth: float = 10.0
    random_decay: float = 1.0
    t4: float = 0.0  # weight of the unweighted hinge against T^4 n (0: off; the notebook's --use-t4: 0.5)
    t8: float = 0.0  # the same against T^8 n (the notebook's --use-t8: 0.2)
    # anchor: MSE(V(n), target) × a weight that is 1 until anchor_start, then decays. Targets:
    # fixed: ln n + β·drift; adaptive: the same with β trained; closed_form: V_L(n) =
    # max_{j ≤ L} [ln T^j n + target_eps·j], the reference the eval scores beside the model
    target: Literal["fixed", "adaptive", "closed_form"] = "fixed"
    drift_coef: float = 0.35  # β (its initial value when adaptive)
    target_eps: float = 0.01
    anchor_start: int = 1000
    anchor_steps: int = 5000  # decay to anchor_floor + (1 − floor)·0.001 over this many steps
    anchor_floor: float = 0.0

    def __post_init__(self) -> None:
        if self.margin < 0:
            raise ValueError(f"loss.margin must be >= 0, got {self.margin}")
        for name in (*self.weights(), "t4", "t8", "anchor_floor"):
            if getattr(self, name) < 0:
                raise ValueError(f"loss.{name} must be >= 0, got {getattr(self, name)}")

    def weights(self) -> dict[str, float]:
        return {k: getattr(self, k) for k in ("hard_growth", "hard_decay", "random_growth", "random_decay")}

    def offsets(self) -> tuple[int, ...]:
        """The T^j n each sample needs features for: n and T n, plus T^4 n / T^8 n when weighted."""
        return (0, 1) + ((4,) if self.t4 > 0 else ()) + ((8,) if self.t8 > 0 else ())


@dataclass
class CurriculumConfig:
    hard_share: float = 0.25  # share of each batch drawn from seed orbits / the mined pool
    enabled: bool = True  # off: every seed active from step 0
    start: int = 0  # seeds active at step 0
    ramp_steps: int = 50000  # all seeds active from here

    def __post_init__(self) -> None:
        if not 0.0 <= self.hard_share <= 1.0:
            raise ValueError(f"curriculum.hard_share must be in [0, 1], got {self.hard_share}")
        if self.start < 0 or self.ramp_steps < 0:
            raise ValueError("curriculum.start and curriculum.ramp_steps must be >= 0")


@dataclass
class MiningConfig:
    enabled: bool = True
    interval: int = 10000  # steps between mining rounds
    candidates: int = 5000  # states scored per round, half hard, half random
    count: int = 50  # the lowest-margin candidates join the pool
    pool_cap: int = 1000  # the oldest mined states leave beyond this
    # share of hard draws taken from the pool (null: the notebook's rule, seeds and pool alike)
    share: float | None = None
    # a pool draw is the mined state itself with this probability, else a state of its orbit
    direct: float = 0.3
    replay: float = 0.0  # share of every batch replayed straight from the pool

    def __post_init__(self) -> None:
        if self.interval < 1 or self.candidates < 1 or self.count < 0 or self.pool_cap < 0:
            raise ValueError("mining.interval and mining.candidates must be >= 1; count and pool_cap >= 0")
        for name in ("share", "direct", "replay"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value <= 1.0:
                raise ValueError(f"mining.{name} must be in [0, 1], got {value}")


@dataclass
class OptimConfig:
    lr: float = 1e-3  # AdamW
    weight_decay: float = 0.01  # torch's AdamW default, the notebook's
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    plateau_factor: float = 0.5  # lr × factor after plateau_patience steps without a new best batch loss
    plateau_patience: int = 2000
    # the last decay_steps steps scale the rate linearly down to 0 (0: off, as the notebook)
    decay_steps: int = 0

    def __post_init__(self) -> None:
        if self.lr <= 0:
            raise ValueError(f"optim.lr must be > 0, got {self.lr}")
        if self.decay_steps < 0:
            raise ValueError(f"optim.decay_steps must be >= 0, got {self.decay_steps}")
        if len(self.betas) != 2:
            raise ValueError(f"optim.betas must be two floats, got {self.betas}")


@dataclass
class TrainConfig:
    steps: int = 20000
    batch_size: int = 1024
    threads: int | None = None  # framework CPU threads (torch.set_num_threads; XLA flags on JAX)
    log_every: int = 100  # metrics.jsonl record every N steps
    valid_every: int = 1000  # pass % on a fixed random validation set (never the test orbits)
    valid_size: int = 4096
    # > 0: at every validation also count V's violations along this many orbit segments that never
    # touch a test orbit (common.collatz.validation_segments) and keep the export with the fewest in best/
    valid_orbits: int = 0

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError(
                f"train.steps and train.batch_size must be >= 1, got {self.steps}, {self.batch_size}"
            )
        if self.log_every < 1:
            raise ValueError(f"train.log_every must be >= 1, got {self.log_every}")
        if self.valid_orbits < 0:
            raise ValueError(f"train.valid_orbits must be >= 0, got {self.valid_orbits}")


@dataclass
class CheckpointConfig:
    every_steps: int = 1000
    keep_last: int = 2


@dataclass
class CollatzConfig:
    run_name: str = "collatz-cpu"
    output_dir: str = "runs"
    seed: int = 0
    resume: bool = False  # continue from the newest complete checkpoint in runs/<run_name>/
    overwrite: bool = False  # start over in a run dir that already holds a run
    # faithful: the notebook's seeds (their orbits run into the test orbits); clean: no training
    # state on a test orbit (see common.collatz.protocol_pools)
    protocol: Protocol = "clean"
    task: TaskConfig = field(default_factory=TaskConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    curriculum: CurriculumConfig = field(default_factory=CurriculumConfig)
    mining: MiningConfig = field(default_factory=MiningConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)

    def view(self) -> View:
        """What the model's V is computed from: the task's window, the model's base and inputs."""
        model = self.model
        return View(self.task.lookahead, model.window_eps(), model.scale_free, model.residues)
