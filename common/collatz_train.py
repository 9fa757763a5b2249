"""The training plan both Collatz recipes follow step for step (framework-free).

``trainers_torch.collatz`` and ``trainers_jax.collatz`` differ only in the model, the loss and
checkpoint files; what is drawn, when the curriculum grows, when mining runs, what the anchor
weighs, how the learning rate is cut on a plateau, what goes into metrics.jsonl, summary.json
and the export's model.json are decided here, so the two backends take the same decisions.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from common.collatz import (
    TEST_SEEDS,
    PairBatch,
    Plateau,
    Sampler,
    anchor_weight,
    curriculum_count,
    leaked_transitions,
    model_values,
    pair_batch,
    save_export,
    seed_states,
    validation_segments,
    violations,
)
from common.collatz_config import CollatzConfig
from common.config import to_dict
from common.errors import InputError
from common.jsonl import write_json
from common.runs import (
    MetricsLogger,
    RunDir,
    check_resume,
    plot_metrics,
    read_metrics,
    refuse_existing_run,
    resume_hash,
    say,
)

VALID_SEED_OFFSET = 7919  # the validation draw's RNG seed is seed + this (never the eval set's draw)
VALID_ORBIT_SEED = 104729  # fixed, so runs with different seeds are chosen on the same segments


def prepare_run_dir(cfg: CollatzConfig, has_checkpoint: bool) -> Path:
    """The run's path; refuses to clobber a run unless ``resume`` or ``overwrite``."""
    run_path = Path(cfg.output_dir) / cfg.run_name
    has_run = has_checkpoint or (run_path / "final").exists() or (run_path / "best").exists()
    refuse_existing_run(run_path, has_run, cfg.resume, cfg.overwrite, "checkpoints, final/ or best/")
    return run_path


def build_sampler(cfg: CollatzConfig) -> Sampler:
    return Sampler(
        protocol=cfg.protocol,
        seeds=cfg.task.training_seeds(),
        view=cfg.view(),
        offsets=cfg.loss.offsets(),
        max_bits=cfg.task.max_bits,
        hard_share=cfg.curriculum.hard_share,
        weights=cfg.loss.weights(),
        mine_share=cfg.mining.share,
        mine_direct=cfg.mining.direct,
        pool_cap=cfg.mining.pool_cap,
        replay_share=cfg.mining.replay if cfg.mining.enabled else 0.0,
        seed=cfg.seed,
        closed_form_eps=cfg.loss.target_eps if cfg.loss.target == "closed_form" else None,
    )


def one_step_pairs(cfg: CollatzConfig, states: list[int], source: list[int]) -> PairBatch:
    """(n, T n) pairs of ``states`` with the model's inputs as configured (``cfg.view()``)."""
    return pair_batch(states, source, cfg.view(), (0, 1), cfg.loss.weights())


def validation_batch(cfg: CollatzConfig) -> PairBatch:
    """A fixed set of random pairs (protocol-filtered, a seed of its own) for the training curves."""
    sampler = dataclasses.replace(cfg, seed=cfg.seed + VALID_SEED_OFFSET)
    states, source = build_sampler(sampler).draw(cfg.train.valid_size, hard_share=0.0)
    return one_step_pairs(cfg, states, source)


def protocol_report(cfg: CollatzConfig, sampler: Sampler) -> dict[str, Any]:
    """Which training seeds the protocol kept and dropped (for the manifest and summary)."""
    seeds = cfg.task.training_seeds()
    dropped = [s for s in seeds if s not in sampler.pools]
    return {
        "protocol": cfg.protocol,
        "test_seeds": list(TEST_SEEDS),
        "seeds_kept": len(sampler.seeds),
        "seeds_dropped": dropped,
        "pool_states": sum(len(p) for p in sampler.pools.values()),
        "pool_states_before_filter": sum(len(seed_states(s)) for s in seeds),
    }


def before_step(cfg: CollatzConfig, sampler: Sampler, step: int) -> float:
    """Grow the curriculum for ``step``; return the anchor weight."""
    if cfg.curriculum.enabled:
        sampler.set_active(
            curriculum_count(step, len(sampler.seeds), cfg.curriculum.start, cfg.curriculum.ramp_steps)
        )
    else:
        sampler.set_active(len(sampler.seeds))
    return anchor_weight(step, cfg.loss.anchor_start, cfg.loss.anchor_steps, cfg.loss.anchor_floor)


def mining_due(cfg: CollatzConfig, step: int) -> bool:
    return cfg.mining.enabled and cfg.mining.count > 0 and step > 0 and step % cfg.mining.interval == 0


def mining_candidates(cfg: CollatzConfig, sampler: Sampler) -> PairBatch:
    """The states a mining round scores: half hard, half random (protocol-filtered)."""
    states, source = sampler.draw(cfg.mining.candidates, hard_share=0.5)
    return one_step_pairs(cfg, states, source)


def add_mined(cfg: CollatzConfig, sampler: Sampler, cands: PairBatch, margin: np.ndarray) -> dict[str, Any]:
    """Put the ``count`` lowest-margin candidates into the pool; the round's figures for the log."""
    worst = np.argsort(margin, kind="stable")[: cfg.mining.count]
    pool = sampler.add_mined(cands.states[i] for i in worst)
    return {
        "mine_violations": int((margin <= 0).sum()),
        "mine_worst_margin": float(margin.min()),
        "mine_pool": pool,
    }


def mine(
    cfg: CollatzConfig,
    sampler: Sampler,
    step: int,
    margins_of: Callable[[PairBatch], np.ndarray],
    progress: Progress,
) -> None:
    """A mining round when one is due: score candidates with the model (``margins_of``), pool the worst."""
    if mining_due(cfg, step):
        cands = mining_candidates(cfg, sampler)
        progress.log(step, **add_mined(cfg, sampler, cands, margins_of(cands)))


def make_plateau(cfg: CollatzConfig) -> Plateau:
    return Plateau(cfg.optim.plateau_factor, cfg.optim.plateau_patience)


def learning_rate(cfg: CollatzConfig, plateau: Plateau, step: int) -> float:
    """The step's rate: ``optim.lr`` × the plateau factor × the final linear decay (if any)."""
    left = cfg.train.steps - step
    decay = min(1.0, left / cfg.optim.decay_steps) if cfg.optim.decay_steps > 0 else 1.0
    return cfg.optim.lr * plateau.scale * decay


def valid_figures(margin: np.ndarray, batch: PairBatch) -> dict[str, float]:
    """Pass % and growth pass % of the validation pairs."""
    ok = margin > 0
    return {
        "valid_pass": round(100.0 * float(ok.mean()), 3),
        "valid_growth_pass": round(100.0 * float(ok[batch.growth].mean()), 3),
    }


class StepClock:
    """Seconds spent drawing data and computing, summed over steps (checkpoints and validation excluded)."""

    def __init__(self, data_s: float = 0.0, compute_s: float = 0.0):
        self.data_s, self.compute_s = data_s, compute_s
        self._t = 0.0

    def start(self) -> None:
        self._t = time.perf_counter()

    def data_done(self) -> None:
        now = time.perf_counter()
        self.data_s += now - self._t
        self._t = now

    def step_done(self) -> None:
        self.compute_s += time.perf_counter() - self._t

    @property
    def total(self) -> float:
        return self.data_s + self.compute_s


def checkpoint_state(
    cfg: CollatzConfig, step: int, sampler: Sampler, plateau: Plateau, clock: StepClock
) -> dict[str, Any]:
    """Everything besides the weights and optimizer a resumed run needs (JSON)."""
    return {
        "step": step,
        "config_hash": resume_hash(cfg),  # checked by common.runs.check_resume
        "sampler": sampler.state_dict(),
        "plateau": plateau.state_dict(),
        "data_s": clock.data_s,
        "compute_s": clock.compute_s,
    }


def restore_state(
    cfg: CollatzConfig, where: Path, state: dict[str, Any], sampler: Sampler, plateau: Plateau
) -> tuple[int, StepClock]:
    """Restore a checkpoint's state; a checkpoint of another config is an ``InputError``."""
    check_resume(state, cfg, where)
    try:
        sampler.load_state_dict(state["sampler"])
        plateau.load_state_dict(state["plateau"])
        return int(state["step"]), StepClock(float(state["data_s"]), float(state["compute_s"]))
    except (KeyError, TypeError, ValueError) as err:
        raise InputError(f"{where}: checkpoint state is incomplete or damaged ({err!r})") from None


def start_run(
    cfg: CollatzConfig,
    run_path: Path,
    backend: str,
    sampler: Sampler,
    parameters: int,
    resumed_from: Path | None,
    start_step: int,
) -> RunDir:
    """Create or reopen the run dir (config.yaml, run_manifest.json) and say what the run is.

    ``overwrite`` clears a fresh start's old outputs; a resumed run drops the metrics its killed
    attempt logged after the checkpoint it resumes from.
    """
    if resumed_from is None and cfg.overwrite:
        RunDir(run_path).clear()
    run = RunDir.start(
        run_path,
        cfg,
        device="cpu",
        extra={
            "trainer": f"trainers_{backend}.collatz",
            "backend": backend,
            "parameters": parameters,
            **protocol_report(cfg, sampler),
        },
    )
    if resumed_from is not None:
        run.truncate_metrics(start_step)
        say(f"resumed from {resumed_from} (step {start_step})")
    elif cfg.resume:
        say(f"resume=true but {run.checkpoints} holds no complete checkpoint: starting from step 0")
    say(
        f"{cfg.protocol} protocol: {len(sampler.seeds)} of {len(cfg.task.training_seeds())} training seeds kept; "
        f"MLP {cfg.model.widths}, {parameters:,} parameters; {cfg.train.steps} steps of {cfg.train.batch_size}"
    )
    return run


class Progress:
    """metrics.jsonl, the progress bar and the loss window between records, for one attempt."""

    def __init__(self, cfg: CollatzConfig, run: RunDir, start_step: int):
        self.cfg = cfg
        self.logger = MetricsLogger(run.path, tensorboard=False)
        self.bar = tqdm(
            total=cfg.train.steps, initial=start_step, unit="step", dynamic_ncols=True, desc=cfg.run_name,
            mininterval=5,
        )  # fmt: skip
        self.losses: list[float] = []

    def due(self, step: int, every: int) -> bool:
        """Whether something done every ``every`` steps is due after ``step`` (always at the last)."""
        return step % every == 0 or step == self.cfg.train.steps

    def log(self, step: int, **values: Any) -> None:
        self.logger.log(step, **values)

    def record(
        self,
        step: int,
        sampler: Sampler,
        clock: StepClock,
        parts: dict[str, float],
        violations: int,
        lr: float,
        anchor: float,
        drift_coef: float,
    ) -> None:
        """One training record: the mean loss since the last one, this step's loss parts and state."""
        loss = sum(self.losses) / len(self.losses)
        self.logger.log(
            step,
            loss=loss,
            **parts,
            batch_violations=violations,
            lr=lr,
            anchor_weight=anchor,
            drift_coef=drift_coef,
            active_seeds=sampler.active,
            mine_pool=len(sampler.mined),
            samples_per_s=round(step * self.cfg.train.batch_size / clock.total, 1),  # all attempts
        )
        self.bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.1e}")
        self.losses.clear()

    def close(self) -> None:
        self.bar.close()
        self.logger.close()


class Selection:
    """``best/``: the export with the fewest violations along ``train.valid_orbits`` validation
    segments (orbits that never touch a test orbit), checked at every validation. Its
    ``model.json`` holds the count and the step, so a resumed run keeps beating the same best.
    """

    def __init__(self, cfg: CollatzConfig, run: RunDir, backend: str, resumed: bool):
        self.cfg, self.backend = cfg, backend
        count = cfg.train.valid_orbits
        self.segments = validation_segments(count, VALID_ORBIT_SEED) if count else []
        self.dir = run.path / "best"
        self.best: int | None = None
        meta = self.dir / "model.json"
        if resumed and self.segments and meta.is_file():
            try:
                self.best = int(json.loads(meta.read_text())["valid_orbit_violations"])
            except (OSError, ValueError, KeyError, TypeError) as err:
                raise InputError(f"{meta}: unreadable ({err!r}); remove best/ to choose afresh") from None
        elif not resumed:
            shutil.rmtree(self.dir, ignore_errors=True)  # a fresh start never keeps an older run's best

    def update(self, step: int, params: dict[str, np.ndarray], drift_coef: float) -> dict[str, int]:
        """The figure for metrics.jsonl (none when off); writes ``best/`` when it improves."""
        if not self.segments:
            return {}
        view = self.cfg.view()
        count = violations(model_values(params, seg, view) for seg in self.segments)
        if self.best is None or count < self.best:
            self.best = count
            meta = export_meta(self.cfg, self.backend, drift_coef, step)
            save_export(self.dir, params, meta | {"valid_orbit_violations": count})
        return {"valid_orbit_violations": count}

    def summary(self) -> dict[str, Any]:
        if not self.segments or not (self.dir / "model.json").is_file():
            return {}
        meta = json.loads((self.dir / "model.json").read_text())
        return {
            "valid_orbit_steps": sum(len(s) - 1 for s in self.segments),
            "best_export": {"path": str(self.dir), "step": meta["steps"],
                            "valid_orbit_violations": meta["valid_orbit_violations"]},
        }  # fmt: skip


def export_meta(cfg: CollatzConfig, backend: str, drift_coef: float, steps: int) -> dict[str, Any]:
    """``final/model.json``: what ``common.collatz.load_export`` and the eval need to rebuild V."""
    return {
        "kind": "collatz-ranking-mlp",
        "backend": backend,
        **cfg.view().meta(),
        "widths": list(cfg.model.widths),
        "activation": "leaky_relu(0.1)",
        "output": "softplus + 1e-6" if cfg.model.base == "none" else "softplus(V_L(n) + MLP) + 1e-6",
        "base": cfg.model.base,
        "drift_coef": drift_coef,
        "target": cfg.loss.target,
        "protocol": cfg.protocol,
        "steps": steps,
        "config": to_dict(cfg),
    }


def finish(
    cfg: CollatzConfig,
    run: RunDir,
    backend: str,
    sampler: Sampler,
    clock: StepClock,
    weights: dict[str, np.ndarray],
    drift_coef: float,
    extra: dict[str, Any],
) -> dict[str, Any]:
    """The export (``final/``), plots, summary.json and the manifest's end; returns the summary."""
    save_export(run.path / "final", weights, export_meta(cfg, backend, drift_coef, cfg.train.steps))
    plot_metrics(
        run,
        {
            "loss": ["loss", "rank", "anchor"],
            "valid_pass": ["valid_pass", "valid_growth_pass"],
            "valid_orbit_violations": ["valid_orbit_violations"],
            "lr": ["lr"],
            "curriculum": ["active_seeds", "mine_pool"],
        },
        markers={"valid_pass", "valid_growth_pass", "valid_orbit_violations", "mine_pool"},
    )
    records = read_metrics(run.path)
    losses = [r for r in records if "loss" in r]
    valid = [r for r in records if "valid_pass" in r]
    summary = {
        "run_dir": str(run.path),
        "backend": backend,
        "protocol": cfg.protocol,
        "lookahead": cfg.task.lookahead,
        "steps": cfg.train.steps,
        "batch_size": cfg.train.batch_size,
        "final_loss": losses[-1]["loss"] if losses else None,
        "valid_pass": valid[-1]["valid_pass"] if valid else None,
        "valid_growth_pass": valid[-1]["valid_growth_pass"] if valid else None,
        "valid_orbit_violations": valid[-1].get("valid_orbit_violations") if valid else None,
        "train_seconds": round(clock.total, 2),  # data + optimizer steps, all attempts
        "data_seconds": round(clock.data_s, 2),
        "samples_per_s": round(cfg.train.steps * cfg.train.batch_size / clock.total, 1)
        if clock.total
        else None,
        "test_states_drawn": len(sampler.test_hits),  # distinct test-orbit states in training draws
        # test steps (of 429) whose start state the run drew: what it trained on of the test orbits
        "test_transitions_trained": sum(leaked_transitions(sampler.test_hits).values()),
        **protocol_report(cfg, sampler),
        **extra,
    }
    write_json(run.path / "summary.json", summary)
    run.finish(summary=summary)
    say(f"done: {run.path} (loss {summary['final_loss']:.4f}, valid pass {summary['valid_pass']}%)")
    return summary
