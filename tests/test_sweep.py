"""Sweeps on Ray Tune (scripts/sweep.py): the space checked before Ray starts, ASHA stopping the worse
trials (their trainers killed), kill + resume without rerunning finished trials, a real tiny SFT
sweep, the promoted config through the trainer's own loader, best_params.json against its schema."""

from __future__ import annotations

import csv
import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import jsonschema
import pytest
import ray
import yaml

import tests.sweep_driver  # noqa: F401  (registers the stand-in trainer tests.sweep_trainer)
from common.config import load_config
from common.runs import read_metrics
from common.sft_config import SFTConfig
from scripts.sweep import RayConfig, main, start_ray
from tests.sft_data import arithmetic_records, write_records
from tests.sweep_trainer import FakeConfig

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = json.loads((ROOT / "submission" / "schemas" / "best_params.json").read_text())
FAKE_BASE = {"train": {"max_steps": 8, "step_seconds": 0.5}, "eval": {"every_steps": 2}}


def write_sweep(root: Path, base: dict[str, Any] | None = None, **fields: Any) -> Path:
    """A sweep YAML over the stand-in trainer (fields override), its base config beside it."""
    root.mkdir(parents=True, exist_ok=True)
    base_path = root / "base.yaml"
    base_path.write_text(yaml.safe_dump(FAKE_BASE if base is None else base))
    sweep = {
        "name": "s",
        "trainer": "tests.sweep_trainer",
        "base_config": str(base_path),
        "search_space": {"optim.lr": {"choice": [1.0e-3, 1.0e-1]}},
        "metric": "valid_loss",
        "mode": "min",
        "num_trials": 2,
        "concurrency": 2,
        "scheduler": {"name": "fifo"},
        "output_dir": str(root / "sweeps"),
        "promote_dir": str(root / "promoted"),
        **fields,
    }
    path = root / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep, sort_keys=False))
    return path


def sweep_from_root(path: Path) -> None:
    """Run the sweep in-process from the project root (the trials' working directory)."""
    cwd = Path.cwd()
    os.chdir(ROOT)
    try:
        assert main(["--config", str(path)]) == 0
    finally:
        os.chdir(cwd)


def read_rows(sweep_dir: Path) -> dict[str, dict[str, str]]:
    with (sweep_dir / "results.csv").open() as fh:
        return {row["trial_id"]: row for row in csv.DictReader(fh)}


def run_two_completed_trials(path: Path, tmp_path: Path) -> tuple[Path, dict[str, dict[str, str]]]:
    """Run the sweep at ``path``; both of its trials completed (else their logs' tails fail it)."""
    sweep_from_root(path)
    sweep_dir = tmp_path / "sweeps" / "s"
    rows = read_rows(sweep_dir)
    logs = "\n".join(p.read_text()[-2000:] for p in sorted((sweep_dir / "logs").glob("*.log")))
    assert [r["status"] for r in rows.values()] == ["completed", "completed"], logs
    return sweep_dir, rows


def invocations(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_dir / "invocations.jsonl").read_text().splitlines()]


def gone(pid: int, timeout: float = 20.0) -> bool:
    """True once ``pid`` has exited (a zombie counts as exited)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            return True
        if state in ("Z", "X"):
            return True
        time.sleep(0.2)
    return False


# --------------------------------------------------------------------------------------------
# The space is checked against the trainer's own config classes before Ray starts
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "needle"),
    [
        ({"search_space": {"optim.lrr": {"loguniform": [1e-4, 1e-2]}}}, "search_space.optim.lrr=0.0001: "),
        ({"search_space": {"train.max_steps": {"uniform": [2, 8]}}}, "expected int, got float 2.0"),
        ({"search_space": {"optim.lr": {"choice": [1e-3, "fast"]}}}, "search_space.optim.lr='fast'"),
        (
            {"search_space": {"optim.lr": {"loguniform": [0, 1]}}},
            "search_space.optim.lr: loguniform: low must be > 0",
        ),
        ({"search_space": {"optim.lr": {"uniform": [1, 2], "choice": [1]}}}, "give exactly one of"),
        ({"search_space": {"run_name": {"choice": ["a", "b"]}}}, "search_space.run_name: set by the sweep"),
        (
            {"search_space": {"train.threads": {"choice": [1, 2]}}},
            "search_space.train.threads: set by the sweep",
        ),
        ({"trial_overrides": {"train.max_step": 3}}, "unknown key 'train.max_step'"),
        ({"trainer": "trainers_torch.nope"}, "trainer: unknown trainer 'trainers_torch.nope'"),
        ({"metric": "eval_reward"}, "metric: tests.sweep_trainer logs no 'eval_reward'"),
        ({"scheduler": {"name": "asha", "max_t": 4, "grace_period": 8}}, "scheduler.max_t (4) must be >= "),
        ({"num_trails": 3}, "unknown key 'num_trails'"),
    ],
)
def test_bad_sweep_exits_2_naming_it_before_ray_starts(tmp_path, capsys, fields, needle):
    path = write_sweep(tmp_path, **fields)
    with pytest.raises(SystemExit) as exit_info:
        main(["--config", str(path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {path}: ") and needle in err, err
    assert err.count("\n") == 1
    assert not ray.is_initialized()
    assert not (tmp_path / "sweeps").exists()


def test_sft_space_is_checked_by_the_sft_config_classes(tmp_path, capsys):
    """Through the real trainer's classes: an int key with a float sampler, a cross-key check."""
    for space, needle in [
        ({"lora.rank": {"loguniform": [4, 32]}}, "search_space.lora.rank=4.0: "),
        ({"data.max_len": {"choice": [256, 2048]}}, "data.pack_tokens (1024) must be >= data.max_len (2048)"),
    ]:
        path = write_sweep(
            tmp_path,
            base={},
            trainer="trainers_torch.sft",
            base_config=str(ROOT / "configs" / "sft_gemma3_270m_cpu.yaml"),
            search_space=space,
        )
        with pytest.raises(SystemExit) as exit_info:
            main(["--config", str(path)])
        assert exit_info.value.code == 2
        assert needle in capsys.readouterr().err


def test_shipped_sweep_configs_pass_the_check():
    from scripts.sweep import SweepConfig, check_sweep

    paths = sorted((ROOT / "configs" / "sweeps").glob("*.yaml"))
    assert paths
    for path in paths:
        check_sweep(load_config(SweepConfig, path), path)


# --------------------------------------------------------------------------------------------
# Under Ray: ASHA, a real tiny SFT sweep, promotion, the schema
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ray_here():
    started = start_ray(RayConfig(num_cpus=2, object_store_mb=100), ROOT)
    yield
    if started:
        ray.shutdown()


@pytest.fixture(scope="module")
def asha_sweep(ray_here, tmp_path_factory):
    """Six trials, lr 1e-3 (loss 1 + 1/step) or 1e-1 (3 + 1/step); ASHA rungs at steps 2 and 4."""
    root = tmp_path_factory.mktemp("asha")
    path = write_sweep(
        root,
        search_space={"optim.lr": {"choice": [1.0e-3, 1.0e-1]}, "optim.warmup_steps": {"randint": [0, 4]}},
        num_trials=6,
        concurrency=4,
        resources={"cpu": 0.5},  # four at once on two CPUs, one thread each
        scheduler={"name": "asha", "max_t": 8, "grace_period": 2, "reduction_factor": 2},
    )
    sweep_from_root(path)
    return root / "sweeps" / "s", root


@pytest.mark.slow
def test_asha_stops_worse_trials_and_their_trainers(asha_sweep):
    sweep_dir, _ = asha_sweep
    rows = read_rows(sweep_dir)
    assert len(rows) == 6
    stopped = [r for r in rows.values() if r["status"] == "stopped_early"]
    assert stopped, rows
    for row in rows.values():
        run_dir = sweep_dir / "trials" / row["trial_id"]
        steps = [r["step"] for r in read_metrics(run_dir) if "valid_loss" in r]
        if row["status"] == "stopped_early":
            assert float(row["optim.lr"]) == 0.1  # only the worse lr is ever cut
            assert int(row["stopped_at_step"]) < 8 and int(row["iterations"]) < 4
            assert max(steps) < 8  # the trainer did not run on
            manifest = json.loads((run_dir / "run_manifest.json").read_text())
            assert manifest["status"] == "stopped_early"  # killed, not finished
            assert manifest["stopped_at_step"] == int(row["stopped_at_step"])
            assert gone(invocations(run_dir)[0]["pid"])
        else:
            assert row["status"] == "completed" and row["stopped_at_step"] == "8"
            assert steps == [2, 4, 6, 8] and row["iterations"] == "4"
        assert all(i["threads"] == 1 for i in invocations(run_dir))  # pinned to its CPU share
    for row in rows.values():  # every searched key has its column; the metric at every report
        assert {"optim.lr", "optim.warmup_steps", "valid_loss@2", "valid_loss@8"} <= set(row)
    lr = {rid: float(r["optim.lr"]) for rid, r in rows.items()}
    assert all(
        lr[rid] == 1e-3
        for rid, r in rows.items()
        if r["status"] == "completed" and r["valid_loss"] == "1.125"
    )
    stops = [json.loads(line) for line in (sweep_dir / "stops.jsonl").read_text().splitlines()]
    assert {s["trial_id"] for s in stops} == {r["trial_id"] for r in stopped}
    assert (sweep_dir / "metric.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| trial_id | status | iterations | valid_loss |" in (sweep_dir / "results.md").read_text()


@pytest.mark.slow
def test_best_params_matches_its_schema_and_the_best_completed_trial(asha_sweep):
    sweep_dir, _ = asha_sweep
    best = json.loads((sweep_dir / "best_params.json").read_text())
    jsonschema.validate(best, SCHEMA, format_checker=jsonschema.FormatChecker())
    assert best["params"]["optim.lr"] == 1e-3 and best["best_value"] == 1.125
    assert set(best["params"]) == set(best["search_space"])
    rows = read_rows(sweep_dir)
    assert rows[best["best_trial_id"]]["status"] == "completed"
    assert best["n_trials"] == 6
    assert best["n_stopped_early"] == sum(r["status"] == "stopped_early" for r in rows.values())
    assert best["scheduler"] == {"name": "asha", "max_t": 8, "grace_period": 2, "reduction_factor": 2.0}
    for broken in ({k: v for k, v in best.items() if k != "params"}, {**best, "best_value": "1.1"},
                   {**best, "search_space": {"optim.lr": {"normal": [0, 1]}}}):  # fmt: skip
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(broken, SCHEMA)


@pytest.mark.slow
def test_existing_sweep_is_refused_without_resume(asha_sweep, capsys):
    _, root = asha_sweep
    with pytest.raises(SystemExit) as exit_info:
        main(["--config", str(root / "sweep.yaml")])
    assert exit_info.value.code == 2
    assert "already holds a sweep; pass resume=true" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.usefixtures("one_torch_thread")
def test_real_tiny_collatz_trials_maximise_valid_pass(ray_here, tmp_path):
    """Two trials of trainers_torch.collatz on a tiny MLP: valid_pass reported at each held-out
    check, the best trial the one with the highest, its promoted config read by CollatzConfig."""
    from common.collatz_config import CollatzConfig

    base = {
        "task": {"lookahead": 4},
        "model": {"widths": [16, 16]},
        "loss": {"anchor_start": 5, "anchor_steps": 20},
        "curriculum": {"ramp_steps": 30},
        "train": {"steps": 40, "batch_size": 64, "log_every": 10, "valid_every": 20, "valid_size": 64},
        "checkpoint": {"every_steps": 20},
    }
    path = write_sweep(
        tmp_path,
        base=base,
        trainer="trainers_torch.collatz",
        search_space={"optim.lr": {"loguniform": [1e-3, 3e-2]}},
        metric="valid_pass",
        mode="max",
    )
    sweep_dir, rows = run_two_completed_trials(path, tmp_path)
    for row in rows.values():
        run_dir = sweep_dir / "trials" / row["trial_id"]
        logged = {r["step"]: r["valid_pass"] for r in read_metrics(run_dir) if "valid_pass" in r}
        assert list(logged) == [20, 40]
        assert load_config(CollatzConfig, run_dir / "config.yaml").optim.lr == float(row["optim.lr"])
    best = json.loads((sweep_dir / "best_params.json").read_text())
    jsonschema.validate(best, SCHEMA, format_checker=jsonschema.FormatChecker())
    assert best["best_value"] == max(float(r["valid_pass"]) for r in rows.values())
    promoted = load_config(CollatzConfig, best["promoted_config"])
    assert promoted.optim.lr == best["params"]["optim.lr"] and promoted.model.widths == [16, 16]


def test_real_tiny_sft_trials_and_promoted_config_round_trip(ray_here, tiny_gemma3, tmp_path):
    """Two trials of trainers_torch.sft on a tiny Gemma 3: normal run dirs, every held-out loss
    reported, and the promoted YAML read by the trainer's loader as base + the best values."""
    train = write_records(tmp_path / "train.jsonl", arithmetic_records(16, seed=0))
    valid = write_records(tmp_path / "valid.jsonl", arithmetic_records(4, seed=1, prefix="v"))
    base = {
        "model": {"path": str(tiny_gemma3)},
        "data": {"train": str(train), "valid": str(valid), "max_len": 400, "pack_tokens": 700},
        "lora": {"rank": 4, "alpha": 8},
        "train": {"max_steps": 4},
        "optim": {"lr": 1.0e-3, "warmup_steps": 1},
        "eval": {"every_steps": 2, "generate_n": 0},
        "checkpoint": {"every_steps": 2},
        "export": False,
    }
    path = write_sweep(
        tmp_path,
        base=base,
        trainer="trainers_torch.sft",
        search_space={"optim.lr": {"loguniform": [1e-4, 1e-2]}, "lora.rank": {"choice": [2, 4]}},
        trial_overrides={"seed": 3},
    )
    sweep_dir, rows = run_two_completed_trials(path, tmp_path)
    for row in rows.values():
        run_dir = sweep_dir / "trials" / row["trial_id"]
        cfg = load_config(SFTConfig, run_dir / "config.yaml")
        assert cfg.optim.lr == float(row["optim.lr"]) and cfg.lora.rank == int(row["lora.rank"])
        assert cfg.train.threads == 1 and cfg.seed == 3
        assert json.loads((run_dir / "run_manifest.json").read_text())["trainer"] == "trainers_torch.sft"
        logged = {r["step"]: r["valid_loss"] for r in read_metrics(run_dir) if "valid_loss" in r}
        assert list(logged) == [2, 4]
        assert [float(row[f"valid_loss@{s}"]) for s in logged] == list(logged.values())

    best = json.loads((sweep_dir / "best_params.json").read_text())
    jsonschema.validate(best, SCHEMA, format_checker=jsonschema.FormatChecker())
    assert best["best_value"] == min(float(r["valid_loss"]) for r in rows.values())
    promoted = Path(best["promoted_config"])
    assert promoted == tmp_path / "promoted" / "s.yaml"
    got = load_config(SFTConfig, promoted)
    want = load_config(
        SFTConfig,
        tmp_path / "base.yaml",
        [f"{k}={json.dumps(v)}" for k, v in best["params"].items()] + ["run_name=s-promoted"],
    )
    assert got == want
    assert got.optim.lr == best["params"]["optim.lr"] and got.lora.rank == best["params"]["lora.rank"]
    assert got.train.max_steps == 4 and got.seed == 0  # the base config's values, not the trials' overrides


def test_trainer_command_quotes_what_yaml_would_misread():
    """A trial id of digits and underscores is a YAML 1.1 integer unless quoted."""
    from common.config import parse_overrides
    from scripts.sweep import TrialSpec, trainer_command

    spec = TrialSpec("tests.sweep_trainer", "b.yaml", ("train.max_steps=4",), "valid_loss", 1, "train.threads",
                     "/tmp/trials", "/tmp/logs", str(ROOT))  # fmt: skip
    cmd = trainer_command(spec, "79680_00000", {"optim.lr": 1e-05, "optim.warmup_steps": 3}, again=False)
    parsed = parse_overrides([a for a in cmd if "=" in a and not a.startswith("-")])
    assert parsed["run_name"] == "79680_00000" and parsed["output_dir"] == "/tmp/trials"
    assert parsed["train"] == {"max_steps": 4, "threads": 1}
    assert load_config(FakeConfig, None, [a for a in cmd if "=" in a]).optim.lr == 1e-05
    assert "resume=true" in trainer_command(spec, "t", {}, again=True)


@pytest.mark.parametrize(("threads", "eigen"), [(1, "false"), (2, "true")])
def test_trial_env_sets_threads_and_only_real_xla_flags(monkeypatch, threads, eigen):
    """XLA aborts on an unknown ``--`` flag and silently drops a bare token: every token is a real flag."""
    from scripts.sweep import thread_env

    monkeypatch.setenv("XLA_FLAGS", "--xla_backend_optimization_level=0")
    env = thread_env(threads)
    assert env["XLA_FLAGS"].split() == [
        "--xla_backend_optimization_level=0",
        f"--xla_cpu_multi_thread_eigen={eigen}",
    ]
    assert env["OMP_NUM_THREADS"] == env["MKL_NUM_THREADS"] == str(threads)


def test_asha_rungs_survive_a_restore(tmp_path):
    """Tune saves no scheduler state: a restored sweep's ASHA (unpickled from before any result,
    as in tuner.pkl) reads its rungs back, so a late worse trial is still stopped at the rung."""
    from scripts.sweep import RecordingASHA

    def asha(sweep_dir: Path) -> RecordingASHA:
        return RecordingASHA(sweep_dir=str(sweep_dir), time_attr="step", metric="valid_loss", mode="min",
                             max_t=8, grace_period=2, reduction_factor=2, stop_last_trials=False)  # fmt: skip

    def report(scheduler: RecordingASHA, trial_id: str, loss: float) -> str:
        trial = SimpleNamespace(trial_id=trial_id)
        scheduler.on_trial_add(None, trial)
        return scheduler.on_trial_result(None, trial, {"step": 2, "valid_loss": loss})

    first = asha(tmp_path)
    saved = pickle.dumps(first)
    assert [report(first, f"t{i}", loss) for i, loss in enumerate([1.2, 1.1, 1.0])] == ["CONTINUE"] * 3
    assert report(pickle.loads(saved), "t3", 1.5) == "STOP"
    assert report(asha(tmp_path / "other"), "t3", 1.5) == "CONTINUE"  # what a forgetful restore did
    assert report(first, "t4", 8.0) == "STOP" and report(first, "t5", 0.5) == "CONTINUE"


# --------------------------------------------------------------------------------------------
# Kill the sweep's driver mid-way, then resume: finished trials are not rerun
# --------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_killed_sweep_resumes_without_rerunning_finished_trials(tmp_path):
    path = write_sweep(
        tmp_path,
        # 8 s per trial: the kill lands mid-run (the trainer dies a few seconds after its sweep)
        base={"train": {"max_steps": 8, "step_seconds": 1.0}, "eval": {"every_steps": 2}},
        search_space={"optim.lr": {"loguniform": [1e-4, 1e-2]}},
        num_trials=2,
        concurrency=1,
    )
    sweep_dir = tmp_path / "sweeps" / "s"
    cmd = [sys.executable, "-m", "tests.sweep_driver", "--config", str(path)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with (tmp_path / "first.log").open("w") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        done: list[Path] = []
        running: Path | None = None
        deadline = time.time() + 300  # generous: two test workers share the cores
        while time.time() < deadline and proc.poll() is None:
            runs = sorted((sweep_dir / "trials").glob("*/run_manifest.json")) if sweep_dir.exists() else []
            done = [m.parent for m in runs if json.loads(m.read_text())["status"] == "completed"]
            mid = [
                m.parent
                for m in runs
                if m.parent not in done and (m.parent / "checkpoints" / "state.json").exists()
            ]
            if done and mid:  # one trial finished, the next one mid-run
                running = mid[0]
                break
            time.sleep(0.2)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    assert running is not None, (tmp_path / "first.log").read_text()
    assert gone(invocations(running)[0]["pid"]), "the trial's trainer outlived the killed sweep"
    assert not (sweep_dir / "best_params.json").exists()

    second = subprocess.run(
        [*cmd, "resume=true"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert second.returncode == 0, second.stdout + second.stderr
    assert second.stdout.rstrip().endswith(f"best params: {sweep_dir / 'best_params.json'}")
    rows = read_rows(sweep_dir)
    assert len(rows) == 2 and {r["status"] for r in rows.values()} == {"completed"}
    for run_dir in done:
        assert len(invocations(run_dir)) == 1  # finished before the kill: never run again
    calls = invocations(running)
    assert len(calls) == 2 and calls[1]["start_step"] > 0  # resumed from its own checkpoint
    for row in rows.values():  # each held-out loss reported once, in order, whatever was interrupted
        assert int(row["iterations"]) == 4 and row["stopped_at_step"] == "8"
        steps = [r["step"] for r in read_metrics(sweep_dir / "trials" / row["trial_id"]) if "valid_loss" in r]
        assert steps == [2, 4, 6, 8]
    manifest = json.loads((sweep_dir / "sweep_manifest.json").read_text())
    assert len(manifest["attempts"]) == 2
