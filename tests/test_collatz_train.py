"""The Collatz recipes end to end on tiny sizes: train → export → eval, kill -9 + resume, bad input."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from common.collatz import View, load_export, orbit
from common.collatz_config import CollatzConfig
from common.config import load_config
from common.runs import read_metrics
from evals import collatz as collatz_eval
from evals.collatz import build_eval_set, evaluate, headline
from trainers_jax import collatz as jax_recipe
from trainers_torch import collatz as torch_recipe

ROOT = Path(__file__).resolve().parents[1]
BACKENDS = ("torch", "jax")
TINY = [
    "task.lookahead=4", "model.widths=[16,16]", "train.steps=40", "train.batch_size=64", "train.threads=1",
    "train.log_every=10", "train.valid_every=20", "train.valid_size=64", "checkpoint.every_steps=10",
    "mining.interval=15", "mining.candidates=100", "mining.count=5", "curriculum.ramp_steps=30",
    "loss.anchor_start=5", "loss.anchor_steps=20", "loss.t4=0.5",
]  # fmt: skip


RECIPES = {"torch": torch_recipe, "jax": jax_recipe}

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def args(out: Path, name: str, *extra: str) -> list[str]:
    return [f"output_dir={out}", f"run_name={name}", *TINY, *extra]


def trainer(backend: str, out: Path, name: str, *extra: str) -> list[str]:
    """The command line of a subprocess run (for the kill test)."""
    return [sys.executable, "-m", f"trainers_{backend}.collatz", *args(out, name, *extra)]


def main_exit(
    main: Callable[[list[str]], int], argv: list[str], capsys: pytest.CaptureFixture[str]
) -> tuple[int, str]:
    """Run a CLI ``main`` in process: its exit status and the last stderr line."""
    try:
        code = main(argv)
    except SystemExit as exit_:
        code = exit_.code
    err = capsys.readouterr().err.strip().splitlines()
    return int(code or 0), err[-1] if err else ""


@pytest.fixture(scope="module")
def eval_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("collatz-set") / "eval.csv"
    build_eval_set(path, count=300)
    return path


@pytest.mark.parametrize("backend", BACKENDS)
def test_train_export_eval(backend: str, tmp_path: Path, eval_set: Path) -> None:
    done = subprocess.run(
        trainer(backend, tmp_path, "run"), cwd=ROOT, capture_output=True, text=True, timeout=240
    )
    assert done.returncode == 0, done.stderr[-2000:]
    run = tmp_path / "run"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["backend"] == backend and summary["protocol"] == "clean" and summary["steps"] == 40
    assert (
        summary["test_states_drawn"] == 0 == summary["test_transitions_trained"]
        and summary["train_seconds"] > 0
    )
    records = read_metrics(run)
    assert [r["step"] for r in records if "loss" in r] == [10, 20, 30, 40]
    assert any("mine_pool" in r and "mine_violations" in r for r in records)
    params, meta = load_export(run / "final")
    assert (
        meta["backend"] == backend and meta["lookahead"] == 4 and params["layers.0.weight"].shape == (16, 10)
    )
    assert load_config(CollatzConfig, run / "config.yaml").model.widths == [16, 16]

    out = evaluate(run, eval_set, extra_orbits=[97])
    names = [r["name"] for r in out["results"]]
    assert names == ["model", "V_4 closed form", "V = ln n"]
    assert all(r["trajectory"]["steps"] == 429 and r["n"] == 300 for r in out["results"])
    assert out["results"][2]["growth"] == 0.0  # ln n rises on every growth step
    assert out["faithful_leak"]["transitions"] > 0 and "extra_orbits" in out["results"][0]
    line = headline(out, summary)
    for key in ("backend", "protocol", "L", "inputs", "violations", "violations_by_seed", "pass", "weighted", "growth",
                "growth_weighted", "growth_margin_min", "closed_form_violations", "closed_form_pass",
                "faithful_leaked_transitions", "train_seconds"):  # fmt: skip
        assert key in line, key
    assert (run / "eval" / "report.html").read_text().count("<img") == 3


def test_a_run_with_the_closed_form_base(tmp_path: Path, eval_set: Path) -> None:
    """``model.base=closed_form``: the export says so and the eval adds the same V_L on both of its paths."""
    assert (
        torch_recipe.main(
            args(tmp_path, "b", "model.base=closed_form", "model.base_eps=0.02", "train.steps=20")
        )
        == 0
    )
    params, meta = load_export(tmp_path / "b" / "final")
    assert meta["base"] == "closed_form" and meta["base_eps"] == 0.02
    assert np.abs(params["layers.2.weight"]).max() > 0  # the zero output layer trained
    out = evaluate(tmp_path / "b", eval_set)
    assert out["model"]["base"] == "closed_form" and headline(out, {})["base"] == "closed_form"
    assert "on the closed form V_L (ε = 0.02)" in (tmp_path / "b" / "eval" / "report.html").read_text()
    (_, pairs, states), *_ = collatz_eval.ranking_functions(params, View(4, 0.02), 0.01)
    o = orbit(27)
    v0, v1 = pairs(o[:-1], o[1:])
    v = states(o)
    np.testing.assert_allclose(v0, v[:-1], rtol=1e-9)
    np.testing.assert_allclose(v1, v[1:], rtol=1e-9)
    no_base = collatz_eval.ranking_functions(params, View(4), 0.01)[0][2](o)
    assert not np.allclose(no_base, v)  # the base is really added


def test_a_scale_free_run(tmp_path: Path, eval_set: Path) -> None:
    """``model.scale_free``: the export says so, and the eval's V is the closed form plus a correction
    that is the same for two states with one window and residues at very different scales."""
    extra = ("model.base=closed_form", "model.base_eps=0.02", "model.scale_free=true", "train.steps=20")
    assert torch_recipe.main(args(tmp_path, "f", *extra)) == 0
    params, meta = load_export(tmp_path / "f" / "final")
    assert meta["scale_free"] is True
    out = evaluate(tmp_path / "f", eval_set)
    assert out["model"]["scale_free"] is True
    assert "without ln n (scale-free)" in (tmp_path / "f" / "eval" / "report.html").read_text()
    (_, pairs, states), (_, _, closed), _ = collatz_eval.ranking_functions(
        params, View(4, 0.02, scale_free=True), 0.02
    )
    near, far = 27, 27 + 2**30 * 81  # the same valuations for 5 steps and the same residues mod 81
    mlp = np.log(np.expm1(states([near, far]) - 1e-6)) - closed([near, far])  # V = softplus(V_L + MLP) + 1e-6
    np.testing.assert_allclose(mlp[0], mlp[1], atol=1e-5)
    assert abs(mlp[0]) > 1e-4  # the correction trained away from its zero start
    o = orbit(27)
    v0, v1 = pairs(o[:-1], o[1:])
    np.testing.assert_allclose(v0, states(o)[:-1], rtol=1e-9)
    np.testing.assert_allclose(v1, states(o)[1:], rtol=1e-9)
    plain = collatz_eval.ranking_functions(params, View(4, 0.02), 0.02)[0][2](o)
    assert not np.allclose(plain, states(o))  # ln n really is left out


def test_a_run_with_fewer_residues(tmp_path: Path, eval_set: Path) -> None:
    """``model.residues=9``: the export and the report say so, and the correction is the same for
    two states that share the window and n mod 9 but not n mod 27."""
    extra = ("model.base=closed_form", "model.base_eps=0.02", "model.scale_free=true", "model.residues=9")
    assert torch_recipe.main(args(tmp_path, "r", *extra, "train.steps=20")) == 0
    params, meta = load_export(tmp_path / "r" / "final")
    assert meta["residues"] == 9 and View.from_meta(meta) == View(4, 0.02, True, 9)
    out = evaluate(tmp_path / "r", eval_set)
    assert out["model"]["residues"] == 9
    assert headline(out, {})["inputs"] == ["n mod 3", "n mod 9", "drift", "k_1..k_4"]
    report = (tmp_path / "r" / "eval" / "report.html").read_text()
    assert "without ln n (scale-free) or residues above mod 9" in report
    near, far = 27, 27 + 2**30 * 9  # the same valuations for 5 steps, n mod 9 equal, n mod 27 not
    assert near % 9 == far % 9 and near % 27 != far % 27
    for view, same in ((View(4, 0.02, True, 9), True), (View(4, 0.02, True, 81), False)):
        (_, _, states), (_, _, closed), _ = collatz_eval.ranking_functions(params, view, 0.02)
        mlp = np.log(np.expm1(states([near, far]) - 1e-6)) - closed([near, far])
        assert np.isclose(mlp[0], mlp[1], atol=1e-6) == same, (view, mlp)


def test_validation_orbits_keep_the_best_export(
    tmp_path: Path, eval_set: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``train.valid_orbits``: every validation counts V's violations along segments off the test
    orbits; ``best/`` holds the first export with the fewest, and the eval scores it on request."""
    argv = args(tmp_path, "v", "train.valid_orbits=4", "train.valid_every=10")
    assert torch_recipe.main(argv) == 0
    run = tmp_path / "v"
    counts = {
        r["step"]: r["valid_orbit_violations"] for r in read_metrics(run) if "valid_orbit_violations" in r
    }
    assert list(counts) == [10, 20, 30, 40]
    best_step = min(counts, key=lambda k: (counts[k], k))
    params, meta = load_export(run / "best")
    assert meta["steps"] == best_step and meta["valid_orbit_violations"] == counts[best_step]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["best_export"]["step"] == best_step and summary["valid_orbit_violations"] == counts[40]
    if best_step != 40:
        final, _ = load_export(run / "final")
        assert not np.array_equal(final["layers.0.weight"], params["layers.0.weight"])
    out = evaluate(run, eval_set, export="best")
    assert out["export"] == "best" and out["model"]["steps"] == best_step
    assert (run / "eval-best" / "collatz.json").is_file() and not (run / "eval" / "collatz.json").exists()
    assert headline(out, summary)["export"] == "best"
    (run / "best" / "model.json").write_text("{")
    code, last = main_exit(torch_recipe.main, [*argv, "resume=true"], capsys)
    assert code == 2 and "best/model.json: unreadable" in last, last
    assert torch_recipe.main([*argv, "overwrite=true", "train.valid_orbits=0"]) == 0
    assert not (run / "best").exists()  # a fresh start never keeps an older run's best


def test_faithful_run_trains_on_test_orbits(tmp_path: Path) -> None:
    """The notebook's protocol draws test-orbit states (54 → 27, the fallback seed); the summary says how many."""
    assert torch_recipe.main(args(tmp_path, "f", "protocol=faithful", "train.steps=20")) == 0
    summary = json.loads((tmp_path / "f" / "summary.json").read_text())
    assert summary["protocol"] == "faithful" and summary["seeds_kept"] == 49 and not summary["seeds_dropped"]
    assert summary["test_states_drawn"] > 0 and summary["test_transitions_trained"] > 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_kill_9_then_resume_matches_uninterrupted(backend: str, tmp_path: Path) -> None:
    orbits = "train.valid_orbits=3"
    straight = subprocess.run(
        trainer(backend, tmp_path, "straight", orbits), cwd=ROOT, capture_output=True, timeout=240
    )
    assert straight.returncode == 0, straight.stderr[-2000:]
    proc = subprocess.Popen(
        trainer(backend, tmp_path, "killed", orbits),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("checkpoint saved:") and line.rstrip().endswith(("step-000020", "/20")):
            proc.send_signal(signal.SIGKILL)  # mid-run, right after its second checkpoint
            break
    proc.stdout.close()
    assert proc.wait(timeout=60) == -signal.SIGKILL, "the run ended before it could be killed"
    assert not (tmp_path / "killed" / "final").exists()
    resumed = subprocess.run(
        [*trainer(backend, tmp_path, "killed", orbits), "resume=true"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed from" in resumed.stdout
    for export in ("final", "best"):  # best/: chosen on the validation orbits across the kill
        a, meta_a = load_export(tmp_path / "straight" / export)
        b, meta_b = load_export(tmp_path / "killed" / export)
        assert meta_a["steps"] == meta_b["steps"] and meta_a.get("valid_orbit_violations") == meta_b.get(
            "valid_orbit_violations"
        )
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=f"{export} {key}")
    loss = {r["step"]: r["loss"] for r in read_metrics(tmp_path / "straight") if "loss" in r}
    assert {r["step"]: r["loss"] for r in read_metrics(tmp_path / "killed") if "loss" in r} == loss
    assert json.loads((tmp_path / "killed" / "summary.json").read_text())["resumed_from_step"] >= 20


# ---------------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("backend", BACKENDS)
def test_unknown_config_key_exits_2(backend: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, last = main_exit(RECIPES[backend].main, [f"output_dir={tmp_path}", "model.depth=3"], capsys)
    assert code == 2 and last.startswith("error: unknown key 'model.depth'")
    assert not (tmp_path / "collatz-cpu").exists()


def test_bad_values_exit_2(tmp_path: Path, eval_set: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, last = main_exit(torch_recipe.main, [f"output_dir={tmp_path}", "task.seeds=[27,-5]"], capsys)
    assert code == 2 and "task.seeds: -5 is not a positive integer" in last
    for bad, message in (
        ("model.base_eps=0", "model.base_eps must be > 0"),
        ("model.base=window", "model.base"),
        ("train.valid_orbits=-1", "train.valid_orbits must be >= 0"),
        ("model.scale_free=true", "model.scale_free needs model.base: closed_form"),
        ("model.residues=10", "model.residues must be 1 (none) or one of (3, 9, 27, 81)"),
        ("task.climbers=-1", "task.climbers must be >= 0"),
        ("task.climber_bits=[40,30]", "task.climber_bits must be [low, high] with 3 <= low <= high"),
    ):
        code, last = main_exit(torch_recipe.main, [f"output_dir={tmp_path}", bad], capsys)
        assert code == 2 and message in last, last
    for bad in ("27,54", "-7", "0", "x"):
        code, last = main_exit(collatz_eval.main, ["--run", str(tmp_path), "--orbits", bad], capsys)
        assert code == 2 and last.startswith("error: --orbits: "), last
    code, last = main_exit(
        collatz_eval.main, ["--run", str(tmp_path / "nothing"), "--set", str(eval_set)], capsys
    )
    assert code == 2 and "no config.yaml" in last


@pytest.mark.parametrize("backend", BACKENDS)
def test_corrupt_checkpoint_exits_2(backend: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main = RECIPES[backend].main
    assert main(args(tmp_path, "r", "train.steps=10")) == 0
    ckpts = tmp_path / "r" / "checkpoints"
    files = [p for p in sorted(ckpts.rglob("*")) if p.is_file() and p.stat().st_size > 64]
    weights = [p for p in files if "trainable" in p.name or "params" in p.parts]
    assert weights
    for path in weights:
        path.write_bytes(b"\x00garbage" * 8)
    capsys.readouterr()
    # resume must read the damaged step-10 checkpoint before anything else
    code, last = main_exit(main, args(tmp_path, "r", "train.steps=10", "resume=true"), capsys)
    assert code == 2 and last.startswith("error: ") and "unreadable checkpoint" in last, last


def test_existing_run_and_other_config_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert torch_recipe.main(args(tmp_path, "r", "train.steps=10")) == 0
    capsys.readouterr()
    code, last = main_exit(torch_recipe.main, args(tmp_path, "r", "train.steps=10"), capsys)
    assert code == 2 and "already holds a run" in last
    code, last = main_exit(
        torch_recipe.main, args(tmp_path, "r", "train.steps=10", "resume=true", "loss.margin=0.1"), capsys
    )
    assert code == 2 and "made with another config" in last


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("collatz_*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_load(path: Path) -> None:
    cfg = load_config(CollatzConfig, path)
    assert cfg.task.lookahead >= 1 and cfg.train.steps >= 1
