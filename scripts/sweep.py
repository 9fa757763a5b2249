"""Hyperparameter sweeps on Ray Tune: early stopping (ASHA), resume, and a promoted config.

    python -m scripts.sweep --config configs/sweeps/sft_gemma3_270m_cpu.yaml [key=value ...]

Read top to bottom: the sweep config (YAML validated into dataclasses) → the trainer registry
(each trainer's own config class) → the search space checked against that class before Ray
starts → one trial = the project's real trainer as a subprocess in its own run dir, whose
``metrics.jsonl`` is tailed and every record carrying the metric reported to Tune, so ASHA can
stop weak trials at its rungs → the Tuner (new, or restored with ``resume=true``) → outputs in
the sweep dir: ``results.csv`` / ``results.md``, ``metric.png``, ``best_params.json``, and
``configs/promoted/<name>.yaml`` (the base config plus the best values, loaded back through
the trainer's own loader before it is written).

The sweep dir ``<output_dir>/<name>/`` holds ``sweep.yaml`` (resolved), ``sweep_manifest.json``,
``tune/`` (Ray Tune's experiment state), ``trials/<trial_id>/`` (ordinary run dirs),
``logs/<trial_id>.log`` (each trainer's output) and ``stops.jsonl`` (the scheduler's stops).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import dataclasses
import fnmatch
import importlib
import itertools
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import ray
import yaml
from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search import BasicVariantGenerator

from common.config import (
    apply_overrides,
    config_hash,
    dump_yaml,
    load_config,
    read_yaml,
    split_cli,
    to_dict,
)
from common.errors import InputError, cli
from common.jsonl import atomic_open, write_json
from common.runs import RunDir, git_commit, now_iso, read_metrics

# --------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------

DIMENSIONS = ("choice", "uniform", "loguniform", "randint")


@dataclass
class Dimension:
    """One searched key: exactly one of the four kinds (Ray Tune's samplers of the same names)."""

    choice: list[Any] | None = None  # one of these values
    uniform: list[float] | None = None  # [low, high]
    loguniform: list[float] | None = None  # [low, high], low > 0
    randint: list[int] | None = None  # [low, high): high excluded, as in Ray Tune

    def __post_init__(self) -> None:
        given = [k for k in DIMENSIONS if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(
                f"give exactly one of {', '.join(DIMENSIONS)} (got {', '.join(given) or 'none'})"
            )
        kind, values = self.kind, self.values
        if kind == "choice":
            if not values:
                raise ValueError("choice: list at least one value")
            return
        if len(values) != 2 or not values[0] < values[1]:
            raise ValueError(f"{kind}: expected [low, high] with low < high, got {values}")
        if kind == "loguniform" and values[0] <= 0:
            raise ValueError(f"loguniform: low must be > 0, got {values[0]}")

    @property
    def kind(self) -> str:
        return next(k for k in DIMENSIONS if getattr(self, k) is not None)

    @property
    def values(self) -> list[Any]:
        return list(getattr(self, self.kind))

    def extremes(self) -> list[Any]:
        """The values whose types and bounds stand for every value the sampler can draw."""
        if self.kind == "choice":
            return self.values
        low, high = self.values
        return [low, high - 1] if self.kind == "randint" else [low, high]

    def to_tune(self) -> Any:
        if self.kind == "choice":
            return tune.choice(self.values)
        return getattr(tune, self.kind)(*self.values)


@dataclass
class SchedulerConfig:
    name: Literal["fifo", "asha"] = "asha"
    # ASHA's rungs are at grace_period * reduction_factor**k trainer steps (the metrics' "step"),
    # strictly below max_t; a trial whose metric at a rung is worse than the best
    # 1/reduction_factor of the trials recorded there so far is stopped. Trials that pass every
    # rung run to the trainer's own end (set max_t to its last step, e.g. train.max_steps).
    max_t: int = 100
    grace_period: int = 10
    reduction_factor: float = 2.0

    def __post_init__(self) -> None:
        if self.grace_period < 1:
            raise ValueError(f"scheduler.grace_period must be >= 1, got {self.grace_period}")
        if self.max_t < self.grace_period:
            raise ValueError(
                f"scheduler.max_t ({self.max_t}) must be >= scheduler.grace_period ({self.grace_period})"
            )
        if self.reduction_factor <= 1:
            raise ValueError(f"scheduler.reduction_factor must be > 1, got {self.reduction_factor}")


@dataclass
class ResourcesConfig:
    cpu: float = 1.0  # per trial; also the trainer's thread count (train.threads where it has one)
    gpu: float = 0.0  # per trial; Ray sets CUDA_VISIBLE_DEVICES for the trial's trainer

    def __post_init__(self) -> None:
        if self.cpu <= 0 or self.gpu < 0:
            raise ValueError(f"resources: cpu must be > 0 and gpu >= 0, got cpu={self.cpu} gpu={self.gpu}")

    @property
    def threads(self) -> int:
        return max(1, int(self.cpu))


@dataclass
class RayConfig:
    address: str = ""  # "": start Ray on this machine; else an existing cluster ("auto", "10.0.0.1:6379")
    num_cpus: int = 2  # local Ray only
    object_store_mb: int = 256  # local Ray only: trials pass no data through the object store

    def __post_init__(self) -> None:
        if self.num_cpus < 1 or self.object_store_mb < 80:
            raise ValueError("ray.num_cpus must be >= 1 and ray.object_store_mb >= 80 (Ray's minimum)")


@dataclass
class SweepConfig:
    name: str  # the sweep dir's and the promoted config's name
    trainer: str  # a module of TRAINERS, e.g. trainers_torch.sft
    base_config: str  # the trainer's YAML; every trial is this plus trial_overrides plus its sample
    search_space: dict[str, Dimension]  # dotted config key → dimension
    metric: str  # a metric the trainer logs at its held-out evals, e.g. valid_loss
    mode: Literal["min", "max"]
    # Dotted key → value for every trial (shorter runs, more frequent evals); not promoted.
    trial_overrides: dict[str, Any] = field(default_factory=dict)
    num_trials: int = 8
    seed: int = 0  # random search's seed: the same seed draws the same trials
    concurrency: int = 2  # trials at once
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    time_budget_s: float | None = None  # stop the sweep (running trials too) after this long
    ray: RayConfig = field(default_factory=RayConfig)
    output_dir: str = "runs/sweeps"
    promote_dir: str = "configs/promoted"
    resume: bool = False  # continue the sweep in <output_dir>/<name> (Tuner.restore)
    overwrite: bool = False  # delete <output_dir>/<name> and start over

    def __post_init__(self) -> None:
        if not self.search_space:
            raise ValueError("search_space: list at least one key")
        if self.num_trials < 1 or self.concurrency < 1:
            raise ValueError("num_trials and concurrency must be >= 1")
        if self.time_budget_s is not None and self.time_budget_s <= 0:
            raise ValueError("time_budget_s must be > 0 (or null)")
        if not self.name or "/" in self.name:
            raise ValueError(f"name must be a non-empty file name, got {self.name!r}")

    @property
    def sweep_dir(self) -> Path:
        return Path(self.output_dir) / self.name


# --------------------------------------------------------------------------------------------
# Trainers: the modules a sweep can run, each with its own config class (one line per trainer)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Trainer:
    config: str  # "module:Class": the dataclass the trainer's own loader validates its YAML into
    metrics: tuple[str, ...]  # what its held-out evals log (fnmatch patterns)
    threads_key: str | None = "train.threads"  # its CPU-thread key (None: threads only via env)

    def config_class(self) -> type:
        module, _, name = self.config.partition(":")
        return getattr(importlib.import_module(module), name)


TRAINERS: dict[str, Trainer] = {
    "trainers_torch.sft": Trainer("common.sft_config:SFTConfig", ("valid_loss", "gen_*")),
    "trainers_jax.sft": Trainer("trainers_jax.config:JaxSFTConfig", ("valid_loss", "gen_*"), None),
    "trainers_torch.grpo": Trainer("common.grpo_config:GRPOConfig", ("eval_*",)),
    "trainers_jax.grpo": Trainer("trainers_jax.config:JaxGRPOConfig", ("eval_*",), None),
    "trainers_torch.collatz": Trainer("common.collatz_config:CollatzConfig", ("valid_*",)),
    "trainers_jax.collatz": Trainer("common.collatz_config:CollatzConfig", ("valid_*",)),
}

# Keys the sweep sets on every trial itself.
RESERVED = ("run_name", "output_dir", "resume", "overwrite")


def plain(value: Any) -> Any:
    """A sampled value as a plain Python value (Ray's samplers give numpy scalars)."""
    return value.item() if hasattr(value, "item") and callable(value.item) else value


def override(key: str, value: Any) -> str:
    """``key=value`` as the trainers' command lines read it (JSON is a YAML subset)."""
    return f"{key}={json.dumps(plain(value))}"


def fixed_overrides(cfg: SweepConfig) -> list[str]:
    return [override(k, v) for k, v in cfg.trial_overrides.items()]


# --------------------------------------------------------------------------------------------
# Validation: the space against the trainer's own config class, before Ray starts
# --------------------------------------------------------------------------------------------


def check_sweep(cfg: SweepConfig, source: str | Path) -> type:
    """Every key and every value the space can produce, loaded through the trainer's config class.

    Returns that class. Raises ``InputError`` naming the sweep file and the key.
    """
    if cfg.trainer not in TRAINERS:
        raise InputError(f"{source}: trainer: unknown trainer '{cfg.trainer}'; known: {', '.join(TRAINERS)}")
    trainer = TRAINERS[cfg.trainer]
    if not any(fnmatch.fnmatchcase(cfg.metric, p) for p in trainer.metrics):
        raise InputError(
            f"{source}: metric: {cfg.trainer} logs no '{cfg.metric}' at its evals; it logs {', '.join(trainer.metrics)}"
        )
    reserved = {*RESERVED, *([trainer.threads_key] if trainer.threads_key else [])}
    for section, names in (("search_space", cfg.search_space), ("trial_overrides", cfg.trial_overrides)):
        for key in names:
            if key in reserved:
                raise InputError(f"{source}: {section}.{key}: set by the sweep itself for every trial")
    cls = trainer.config_class()
    fixed = fixed_overrides(cfg)
    try:
        load_config(cls, cfg.base_config, fixed)
    except InputError as err:
        raise InputError(f"{source}: trial_overrides on {cfg.base_config}: {err}") from None
    keys = list(cfg.search_space)
    for key in keys:  # each key alone first, so an error names the one key that causes it
        for value in cfg.search_space[key].extremes():
            _load_sample(cls, cfg, fixed, {key: value}, source, f"search_space.{key}={value!r}")
    combos = list(itertools.product(*(cfg.search_space[k].extremes() for k in keys)))
    for combo in combos[:4096]:  # then together: checks between keys (e.g. max_len vs pack_tokens)
        sample = dict(zip(keys, combo, strict=True))
        where = "search_space " + ", ".join(f"{k}={v!r}" for k, v in sample.items())
        _load_sample(cls, cfg, fixed, sample, source, where)
    return cls


def _load_sample(
    cls: type, cfg: SweepConfig, fixed: list[str], sample: dict[str, Any], source: str | Path, where: str
) -> Any:
    try:
        return load_config(cls, cfg.base_config, [*fixed, *(override(k, v) for k, v in sample.items())])
    except InputError as err:
        raise InputError(f"{source}: {where}: {err}") from None


# --------------------------------------------------------------------------------------------
# One trial: the real trainer as a subprocess, its metrics.jsonl reported to Tune
# --------------------------------------------------------------------------------------------

PR_SET_PDEATHSIG = 1
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None


def _die_with_parent(parent: int) -> Any:
    """preexec_fn: SIGKILL this child when the thread that started it ends (Ray stopped the
    trial, or its worker died); exit at once if that already happened."""

    def preexec() -> None:
        if _LIBC is not None:
            _LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:
            os._exit(1)

    return preexec


@dataclass(frozen=True)
class TrialSpec:
    """What every trial of a sweep shares (the sampled values come in Tune's config)."""

    trainer: str
    base_config: str
    fixed: tuple[str, ...]
    metric: str
    threads: int
    threads_key: str | None
    trials_dir: str  # absolute
    logs_dir: str  # absolute
    cwd: str  # the project root the trainer runs in
    python: str = sys.executable
    poll_s: float = 1.0


def trainer_command(spec: TrialSpec, run_name: str, params: dict[str, Any], again: bool) -> list[str]:
    """The trainer's command line; ``again``: the run dir exists (resume it, or start it over)."""
    cmd = [spec.python, "-m", spec.trainer, "--config", spec.base_config, *spec.fixed]
    cmd += [override(k, v) for k, v in params.items()]
    # quoted: a trial id such as 79680_00000 would read as a YAML integer
    cmd += [override("run_name", run_name), override("output_dir", spec.trials_dir)]
    if spec.threads_key:
        cmd.append(override(spec.threads_key, spec.threads))
    if again:  # resume from the newest complete checkpoint; none: start the run over
        cmd += ["resume=true", "overwrite=true"]
    return cmd


def thread_env(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    n = str(threads)
    env.update(OMP_NUM_THREADS=n, MKL_NUM_THREADS=n, OPENBLAS_NUM_THREADS=n, TOKENIZERS_PARALLELISM="false")
    # XLA has no thread-count flag (a bare "intra_op_parallelism_threads=N" is silently ignored)
    eigen = "true" if threads > 1 else "false"
    env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} --xla_cpu_multi_thread_eigen={eigen}".strip()
    return env


def stop_process_group(proc: subprocess.Popen, grace_s: float = 10.0) -> None:
    """SIGTERM the trainer's process group, then SIGKILL whatever is left after ``grace_s``."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=grace_s)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def log_tail(path: Path, lines: int = 5) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(line[-300:] for line in text[-lines:])


class Reporter:
    """Report each metrics.jsonl record that carries the metric, once, in step order."""

    def __init__(self, run_dir: Path, metric: str, last_step: int):
        self.run_dir, self.metric, self.last_step = run_dir, metric, last_step
        self.reports = 0

    def poll(self) -> None:
        for rec in read_metrics(self.run_dir):
            value, step = rec.get(self.metric), rec.get("step")
            if not isinstance(value, int | float) or not isinstance(step, int) or step <= self.last_step:
                continue
            numbers = {k: v for k, v in rec.items() if isinstance(v, int | float) and not isinstance(v, bool)}
            numbers.pop("time", None)
            self.last_step = step
            self.reports += 1
            with tempfile.TemporaryDirectory() as tmp:
                write_json(Path(tmp) / "trial_state.json", {"step": step})
                tune.report(numbers, checkpoint=tune.Checkpoint.from_directory(tmp))


def run_trial(params: dict[str, Any], spec: TrialSpec) -> None:
    """Tune's function trainable: run (or resume, or replay) the trainer for this trial."""
    trial_id = tune.get_context().get_trial_id()
    run_dir = Path(spec.trials_dir) / trial_id
    last_step = -1
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:  # Tune restored this trial: skip what was already reported
        with checkpoint.as_directory() as d:
            last_step = json.loads((Path(d) / "trial_state.json").read_text())["step"]
    reporter = Reporter(run_dir, spec.metric, last_step)
    manifest = run_dir / "run_manifest.json"
    if manifest.exists() and json.loads(manifest.read_text()).get("status") == "completed":
        reporter.poll()  # finished before the sweep was killed: report its records, never rerun it
        return

    log = Path(spec.logs_dir) / f"{trial_id}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    cmd = trainer_command(spec, trial_id, params, again=run_dir.exists())
    launched = time.time()
    with log.open("a", encoding="utf-8") as out:
        out.write(
            ("\n" if out.tell() else "") + f"$ {' '.join(cmd)}\n"
        )  # a killed run's last line may be open
        out.flush()
        proc = subprocess.Popen(
            cmd, cwd=spec.cwd, env=thread_env(spec.threads), stdout=out, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=_die_with_parent(os.getpid()),
        )  # fmt: skip
        try:
            fresh = False  # a resumed trainer cuts metrics.jsonl back to its checkpoint first
            while True:
                rc = proc.poll()
                fresh = fresh or rc == 0 or any(r.get("time", 0) >= launched for r in read_metrics(run_dir))
                if fresh:
                    reporter.poll()
                if rc is not None:
                    break
                time.sleep(spec.poll_s)
        finally:
            stop_process_group(proc)
    if rc != 0:
        raise RuntimeError(f"{spec.trainer} exited with status {rc} ({log}): {log_tail(log)}")
    if reporter.last_step < 0:
        raise RuntimeError(
            f"{spec.trainer} finished without logging '{spec.metric}' ({run_dir}/metrics.jsonl)"
        )


# --------------------------------------------------------------------------------------------
# Ray Tune: scheduler, progress lines, the Tuner
# --------------------------------------------------------------------------------------------


def say(msg: str) -> None:
    print(msg, flush=True)


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _stops_path(sweep_dir: str | Path) -> Path:
    return Path(sweep_dir) / "stops.jsonl"


def read_stops(sweep_dir: str | Path) -> dict[str, dict[str, Any]]:
    path = _stops_path(sweep_dir)
    if not path.exists():
        return {}
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {r["trial_id"]: r for r in rows}


def make_scheduler(cfg: SweepConfig, sweep_dir: Path) -> Any:
    """FIFO, or ASHA on the trainer's step that records and announces each stop it decides."""
    if cfg.scheduler.name == "fifo":
        return FIFOScheduler()
    return RecordingASHA(
        sweep_dir=str(sweep_dir.resolve()),
        time_attr="step",
        max_t=cfg.scheduler.max_t,
        grace_period=cfg.scheduler.grace_period,
        reduction_factor=cfg.scheduler.reduction_factor,
        stop_last_trials=False,  # the trainer ends a trial that passed every rung, not the scheduler
    )


class RecordingASHA(ASHAScheduler):
    """Ray's ASHA, plus one line and one ``stops.jsonl`` record per trial it stops.

    Tune does not save a scheduler's state with the experiment: a restored sweep's ASHA would
    start with empty rungs and judge the trials after the restart only against each other. The
    rungs' records are therefore kept in ``asha_rungs.json`` and read back on the first result
    after a restore (through the brackets of Ray 2.60's ``AsyncHyperBandScheduler``).
    """

    def __init__(self, sweep_dir: str, **kwargs: Any):
        super().__init__(**kwargs)
        self.sweep_dir = sweep_dir
        self._rungs_read = False

    @property
    def _rungs_path(self) -> Path:
        return Path(self.sweep_dir) / "asha_rungs.json"

    def _read_rungs(self) -> None:
        if self._rungs_read:
            return
        self._rungs_read = True
        if not self._rungs_path.exists():
            return
        saved = json.loads(self._rungs_path.read_text())
        for bracket, rungs in zip(self._brackets, saved, strict=False):
            for (milestone, recorded), (saved_milestone, values) in zip(bracket._rungs, rungs, strict=False):
                if milestone == saved_milestone:
                    recorded.update({k: v for k, v in values.items() if k not in recorded})

    def _write_rungs(self) -> None:
        write_json(self._rungs_path, [[[m, dict(rec)] for m, rec in b._rungs] for b in self._brackets])

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        if result.get(self._time_attr, 0) >= self._max_t:
            return self.CONTINUE  # rungs lie below max_t: a trial that gets there ends on its own
        self._read_rungs()
        action = super().on_trial_result(tune_controller, trial, result)
        self._write_rungs()
        if action == self.STOP:
            step, value = result.get(self._time_attr), result.get(self._metric)
            say(f"trial {trial.trial_id} stopped by ASHA at step {step}: {self._metric}={_fmt(value)}")
            with _stops_path(self.sweep_dir).open("a", encoding="utf-8") as fh:
                fh.write(json.dumps({"trial_id": trial.trial_id, "step": step, "value": value}) + "\n")
        return action

    def on_trial_complete(self, tune_controller: Any, trial: Any, result: dict) -> None:
        self._read_rungs()
        super().on_trial_complete(tune_controller, trial, result)
        self._write_rungs()


class ProgressLines(tune.Callback):
    """One line per trial start, report, end and error."""

    def __init__(self, metric: str, keys: list[str], trials_dir: str):
        self.metric, self.keys, self.trials_dir = metric, keys, trials_dir

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        params = ", ".join(f"{k}={_fmt(trial.config.get(k))}" for k in self.keys)
        say(f"trial {trial.trial_id} start: {params} → {self.trials_dir}/{trial.trial_id}")

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        say(
            f"trial {trial.trial_id} step {result.get('step')}: {self.metric}={_fmt(result.get(self.metric))}"
        )

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        last = trial.last_result or {}
        say(
            f"trial {trial.trial_id} ended at step {last.get('step')}: {self.metric}={_fmt(last.get(self.metric))}"
        )

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        say(f"trial {trial.trial_id} failed: see {trial.error_file or trial.path}")


def start_ray(cfg: RayConfig, root: Path) -> bool:
    """Connect to ``cfg.address`` or start Ray here; ``False`` when Ray was already up."""
    if ray.is_initialized():
        return False
    quiet: dict[str, Any] = dict(include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
    if cfg.address:  # the cluster's workers import this project from the same path
        ray.init(address=cfg.address, runtime_env={"env_vars": {"PYTHONPATH": str(root)}}, **quiet)
    else:  # local workers inherit this environment
        paths = [str(root), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
        os.environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
        ray.init(  # "local": a new instance, never a cluster found through RAY_ADDRESS or `ray start`
            address="local", num_cpus=cfg.num_cpus, object_store_memory=cfg.object_store_mb * 1024**2, **quiet
        )
    return True


def _trial_name(trial: Any) -> str:
    return trial.trial_id


def build_tuner(cfg: SweepConfig, spec: TrialSpec, sweep_dir: Path, restore: bool) -> Any:
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, spec=spec), {"cpu": cfg.resources.cpu, "gpu": cfg.resources.gpu}
    )
    experiment = sweep_dir.resolve() / "tune"
    if restore:
        return tune.Tuner.restore(str(experiment), trainable, resume_unfinished=True, resume_errored=True)
    return tune.Tuner(
        trainable,
        param_space={k: d.to_tune() for k, d in cfg.search_space.items()},
        tune_config=tune.TuneConfig(
            metric=cfg.metric,
            mode=cfg.mode,
            num_samples=cfg.num_trials,
            search_alg=BasicVariantGenerator(max_concurrent=cfg.concurrency, random_state=cfg.seed),
            scheduler=make_scheduler(cfg, sweep_dir),
            time_budget_s=cfg.time_budget_s,
            trial_name_creator=_trial_name,
            trial_dirname_creator=_trial_name,
        ),
        run_config=tune.RunConfig(
            name="tune",
            storage_path=str(sweep_dir.resolve()),
            callbacks=[ProgressLines(cfg.metric, list(cfg.search_space), spec.trials_dir)],
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            failure_config=tune.FailureConfig(max_failures=0),
            verbose=0,
        ),
    )


# --------------------------------------------------------------------------------------------
# Outputs: the results table and plot, best_params.json, the promoted config
# --------------------------------------------------------------------------------------------


@dataclass
class TrialRow:
    trial_id: str
    status: str  # completed | stopped_early | error | unfinished
    params: dict[str, Any]
    reports: list[tuple[int, float]]  # (step, metric) at every report
    run_dir: str

    @property
    def value(self) -> float | None:
        return self.reports[-1][1] if self.reports else None

    @property
    def stopped_at(self) -> int | None:
        return self.reports[-1][0] if self.reports else None


def collect(results: Any, cfg: SweepConfig, sweep_dir: Path) -> list[TrialRow]:
    """One row per trial from Tune's results, its run dir's manifest and the scheduler's stops."""
    stops = read_stops(sweep_dir)
    rows = []
    for result in results:
        trial_id = Path(result.path).name
        df = result.metrics_dataframe
        at: dict[int, float] = {}  # by step: a restored trial may have reported a step twice
        if df is not None and cfg.metric in df.columns:
            for s, v in zip(df["step"], df[cfg.metric], strict=True):
                if v == v:  # not NaN
                    at[int(s)] = float(v)
        reports = sorted(at.items())
        run_dir = sweep_dir / "trials" / trial_id
        manifest = run_dir / "run_manifest.json"
        finished = manifest.exists() and json.loads(manifest.read_text()).get("status") == "completed"
        if result.error is not None:
            status = "error"
        elif finished:
            status = "completed"
        elif trial_id in stops:
            status = "stopped_early"
        else:
            status = "unfinished"  # the time budget ended it, or the sweep was interrupted
        params = {k: plain(result.config.get(k)) for k in cfg.search_space}
        rows.append(TrialRow(trial_id, status, params, reports, str(run_dir)))
    return sorted(rows, key=lambda r: r.trial_id)


def best_row(rows: list[TrialRow], mode: str) -> TrialRow | None:
    """The completed trial with the best metric at its last report (the end of its training)."""
    done = [r for r in rows if r.status == "completed" and r.value is not None]
    if not done:
        return None
    return (min if mode == "min" else max)(done, key=lambda r: r.value)  # type: ignore[arg-type, return-value]


def write_table(rows: list[TrialRow], cfg: SweepConfig, sweep_dir: Path) -> tuple[Path, Path]:
    """``results.csv`` and ``results.md``: one row per trial, the metric at every reported step."""
    import csv

    steps = sorted({s for r in rows for s, _ in r.reports})
    head = ["trial_id", "status", "iterations", cfg.metric, "stopped_at_step", *cfg.search_space]
    head += [f"{cfg.metric}@{s}" for s in steps]
    table = []
    for r in rows:
        at = dict(r.reports)
        table.append(
            [r.trial_id, r.status, len(r.reports), r.value, r.stopped_at, *r.params.values()]
            + [at.get(s) for s in steps]
        )
    csv_path, md_path = sweep_dir / "results.csv", sweep_dir / "results.md"
    with atomic_open(csv_path) as fh:
        writer = csv.writer(fh)
        writer.writerow(head)
        writer.writerows([["" if v is None else v for v in row] for row in table])
    cell = lambda v: "" if v is None else _fmt(v)  # noqa: E731
    lines = [
        f"# Sweep `{cfg.name}`: {cfg.trainer} on `{cfg.base_config}`, {cfg.metric} ({cfg.mode})",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
        *("| " + " | ".join(cell(v) for v in row) + " |" for row in table),
        "",
    ]
    with atomic_open(md_path) as fh:
        fh.write("\n".join(lines))
    return csv_path, md_path


def write_plot(rows: list[TrialRow], cfg: SweepConfig, best: TrialRow | None, path: Path) -> Path:
    """The metric per trial over steps; stopped trials end early (×), the best one is thick."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for r in rows:
        if not r.reports:
            continue
        steps, values = zip(*r.reports, strict=True)
        is_best = best is not None and r.trial_id == best.trial_id
        (line,) = ax.plot(steps, values, marker="o", ms=3, lw=2.5 if is_best else 1.0,
                          label=f"{r.trial_id}{' (best)' if is_best else ''}")  # fmt: skip
        if r.status == "stopped_early":
            ax.plot(steps[-1], values[-1], marker="x", ms=9, color=line.get_color())
    ax.set_xlabel("step")
    ax.set_ylabel(cfg.metric)
    ax.set_title(f"{cfg.name}: {cfg.metric} per trial (x: stopped by ASHA)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    with atomic_open(path, "wb") as fh:
        fig.savefig(fh, format="png", dpi=100)
    plt.close(fig)
    return path


def promote(cfg: SweepConfig, cls: type, best: TrialRow, source: str | Path) -> Path:
    """``<promote_dir>/<name>.yaml``: the base YAML plus the best values (and its own run_name),
    written only after the trainer's own loader reads it back as base + those overrides."""
    extra = {k: best.params[k] for k in cfg.search_space}
    if "run_name" in {f.name for f in dataclasses.fields(cls)}:
        extra["run_name"] = f"{cfg.name}-promoted"
    data = apply_overrides(read_yaml(cfg.base_config), [override(k, v) for k, v in extra.items()])
    path = Path(cfg.promote_dir) / f"{cfg.name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    header = [
        f"# Promoted by the sweep {cfg.name} (`python -m scripts.sweep --config {source}`):",
        f"# {cfg.base_config} with the best trial's values ({best.trial_id}, {cfg.metric}={_fmt(best.value)}).",
        f"#   python -m {cfg.trainer} --config {path}",
        "# " + ", ".join(f"{k}={_fmt(v)}" for k, v in extra.items()),
    ]
    text = "\n".join(header) + "\n" + yaml.safe_dump(data, sort_keys=False)
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", dir=path.parent, delete=False) as tmp:
        tmp.write(text)
    try:
        promoted: Any = load_config(cls, tmp.name)
        expected: Any = load_config(cls, cfg.base_config, [override(k, v) for k, v in extra.items()])
        if to_dict(promoted) != to_dict(expected):
            raise RuntimeError(f"{path}: does not load back as {cfg.base_config} + {extra}")
        os.replace(tmp.name, path)
    finally:
        Path(tmp.name).unlink(missing_ok=True)
    return path


def best_params(
    cfg: SweepConfig, rows: list[TrialRow], best: TrialRow, promoted: Path, command: str
) -> dict[str, Any]:
    """The evidence record of the sweep (schema: ``submission/schemas/best_params.json``)."""
    return {
        "source": str(cfg.sweep_dir),
        "sweep": cfg.name,
        "trainer": cfg.trainer,
        "base_config": cfg.base_config,
        "promoted_config": str(promoted),
        "params": best.params,
        "search_space": {k: {d.kind: d.values} for k, d in cfg.search_space.items()},
        "metric": cfg.metric,
        "mode": cfg.mode,
        "best_value": best.value,
        "best_trial_id": best.trial_id,
        "best_run_dir": best.run_dir,
        "n_trials": len(rows),
        "n_completed": sum(r.status == "completed" for r in rows),
        "n_stopped_early": sum(r.status == "stopped_early" for r in rows),
        "n_errors": sum(r.status == "error" for r in rows),
        "scheduler": to_dict(cfg.scheduler) if cfg.scheduler.name == "asha" else {"name": "fifo"},
        "seed": cfg.seed,
        "created_by": command,
        "created_at": now_iso(),
        "ray_version": ray.__version__,
    }


# --------------------------------------------------------------------------------------------
# The sweep
# --------------------------------------------------------------------------------------------


def resume_key(cfg: SweepConfig) -> str:
    """The config hash a resumed sweep must share with the sweep it continues."""
    return config_hash(dataclasses.replace(cfg, resume=False, overwrite=False))


def prepare_sweep_dir(cfg: SweepConfig) -> bool:
    """Make the sweep dir ready; ``True`` when Tune's state is there to restore."""
    sweep_dir = cfg.sweep_dir
    has_state = tune.Tuner.can_restore(str((sweep_dir / "tune").resolve()))
    if cfg.overwrite and not cfg.resume and sweep_dir.exists():
        shutil.rmtree(sweep_dir)
        has_state = False
    elif has_state and not cfg.resume:
        raise InputError(
            f"{sweep_dir}: already holds a sweep; pass resume=true to continue it, overwrite=true to "
            "start over, or another name"
        )
    elif cfg.resume and has_state:
        manifest = sweep_dir / "sweep_manifest.json"
        saved = json.loads(manifest.read_text()) if manifest.exists() else {}
        if saved.get("resume_key") != resume_key(cfg):
            raise InputError(
                f"{sweep_dir}: made with another sweep config (resume needs the same one; it is "
                f"{sweep_dir / 'sweep.yaml'})"
            )
    return has_state


def run_sweep(cfg: SweepConfig, source: str | Path, command: str) -> Path:
    """Validate, run (or resume) the sweep, write its outputs; the path of best_params.json."""
    cls = check_sweep(cfg, source)
    trainer = TRAINERS[cfg.trainer]
    sweep_dir = cfg.sweep_dir
    restore = prepare_sweep_dir(cfg)
    if cfg.resume and not restore:
        say(f"resume=true but {sweep_dir / 'tune'} holds no sweep state: starting the sweep")
    for d in ("trials", "logs"):
        (sweep_dir / d).mkdir(parents=True, exist_ok=True)
    with atomic_open(sweep_dir / "sweep.yaml") as fh:
        fh.write(dump_yaml(cfg))
    manifest_path = sweep_dir / "sweep_manifest.json"
    previous = json.loads(manifest_path.read_text()) if restore and manifest_path.exists() else {}
    manifest: dict[str, Any] = {
        "command": command,
        "git_commit": git_commit(),
        "resume_key": resume_key(cfg),
        "ray_version": ray.__version__,
        "start_time": now_iso(),
        "end_time": None,
        "attempts": [*previous.get("attempts", []), {"start_time": now_iso(), "command": command}],
    }
    write_json(manifest_path, manifest)

    root = Path.cwd().resolve()
    spec = TrialSpec(
        trainer=cfg.trainer,
        base_config=str(Path(cfg.base_config).resolve()),
        fixed=tuple(fixed_overrides(cfg)),
        metric=cfg.metric,
        threads=cfg.resources.threads,
        threads_key=trainer.threads_key,
        trials_dir=str((sweep_dir / "trials").resolve()),
        logs_dir=str((sweep_dir / "logs").resolve()),
        cwd=str(root),
    )
    started = start_ray(cfg.ray, root)
    say(
        f"sweep {cfg.name}: {cfg.num_trials} trials of {cfg.trainer} on {cfg.base_config}, "
        f"{cfg.concurrency} at a time ({cfg.resources.cpu:g} CPU, {cfg.resources.gpu:g} GPU each), "
        f"{cfg.scheduler.name} on {cfg.metric} ({cfg.mode})" + (", resumed" if restore else "")
    )
    # One small Tune checkpoint per report forces a state snapshot (what resume reads); Tune
    # warns about snapshot frequency, which at one report per eval step is no bottleneck.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # with verbose=0: only this script's lines
    t0 = time.time()
    try:
        results = build_tuner(cfg, spec, sweep_dir, restore).fit()
    finally:
        if started:
            ray.shutdown()
    rows = collect(results, cfg, sweep_dir)
    for row in rows:  # the trainer was killed mid-run: its manifest says so
        run = RunDir(row.run_dir)
        if row.status == "stopped_early" and run.read_manifest().get("status") == "running":
            run.finish(status="stopped_early", stopped_at_step=row.stopped_at)
    best = best_row(rows, cfg.mode)
    csv_path, md_path = write_table(rows, cfg, sweep_dir)
    plot = write_plot(rows, cfg, best, sweep_dir / "metric.png")
    counts = {
        s: sum(r.status == s for r in rows) for s in ("completed", "stopped_early", "error", "unfinished")
    }
    say(
        f"sweep {cfg.name}: {len(rows)} trials in {time.time() - t0:.0f} s: "
        + ", ".join(f"{n} {s.replace('_', ' ')}" for s, n in counts.items() if n)
    )
    say(f"results: {csv_path}, {md_path}, {plot}")
    manifest.update(end_time=now_iso(), counts=counts)
    write_json(manifest_path, manifest)
    if best is None:
        raise SweepFailed(f"sweep {cfg.name}: no trial completed, nothing to promote (see {md_path})")
    promoted = promote(cfg, cls, best, source)
    out = sweep_dir / "best_params.json"
    write_json(out, best_params(cfg, rows, best, promoted, command))
    say(
        f"best: {best.trial_id} {cfg.metric}={_fmt(best.value)} ("
        + ", ".join(f"{k}={_fmt(v)}" for k, v in best.params.items())
        + f"); promoted config: {promoted}"
    )
    say(f"best params: {out}")
    return out


class SweepFailed(Exception):
    """The sweep ran but gave nothing to promote (exit status 1)."""


@cli
def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    flags, overrides = split_cli(args)
    ap = argparse.ArgumentParser(prog="python -m scripts.sweep", description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--config", required=True, help="sweep YAML (configs/sweeps/); key=value pairs override it"
    )
    source = ap.parse_args(flags).config
    cfg = load_config(SweepConfig, source, overrides)
    try:
        run_sweep(cfg, source, " ".join(["python -m scripts.sweep", *args]))
    except SweepFailed as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    # Run through the module's import name, so Ray's workers unpickle run_trial by reference.
    from scripts.sweep import main as _main

    raise SystemExit(_main())
