"""The Kaggle notebook (submission/kaggle_notebook.ipynb): valid, free of settings, its configs
validated before anything long starts, and run end to end on CPU with configs/kaggle/ci_tiny.yaml
on the tiny Gemma 3 (every stage: setup, check, data, JAX SFT, JAX GRPO, eval, evidence)."""

from __future__ import annotations

import ast
import json
import re
import zipfile
from pathlib import Path

import nbformat
import pytest

from evals.score import describe_primary_score
from submission import kaggle, verify

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "submission" / "kaggle_notebook.ipynb"
CI_TINY = ROOT / "configs" / "kaggle" / "ci_tiny.yaml"
CONFIG_ENV = "SHOWWORK_NOTEBOOK_CONFIG"
STAGE_ORDER = ["setup", "check", "data", "sft", "grpo", "eval", "collect"]
OVERRIDE = re.compile(r"^[A-Za-z_][\w.]*=")


def settings_in_cells(nb: nbformat.NotebookNode) -> list[str]:
    """Everything in the code cells that looks like a setting: numbers, key=value overrides,
    config paths other than the env var's default, environment reads other than that one."""
    found = []
    for i, cell in enumerate(c for c in nb.cells if c.cell_type == "code"):
        tree = ast.parse(cell.source)
        env_defaults = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and ast.unparse(node.func) in ("os.environ.get", "os.getenv"):
                args = [ast.literal_eval(a) for a in node.args]
                if args[:1] != [CONFIG_ENV]:
                    found.append(f"cell {i}: reads environment variable {args[:1]}")
                env_defaults.update(id(a) for a in node.args)
            elif isinstance(node, ast.Subscript) and ast.unparse(node.value) == "os.environ":
                found.append(f"cell {i}: {ast.unparse(node)}")
        for node in ast.walk(tree):
            if not isinstance(node, ast.Constant) or id(node) in env_defaults:
                continue
            value = node.value
            if isinstance(value, int | float | complex) and not isinstance(value, bool):
                found.append(f"cell {i}: number {value!r}")
            elif isinstance(value, str) and (OVERRIDE.match(value) or value.endswith((".yaml", ".yml"))):
                found.append(f"cell {i}: setting {value!r}")
    return found


def stage_calls(nb: nbformat.NotebookNode) -> list[str]:
    calls = []
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        for node in ast.walk(ast.parse(cell.source)):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "step":
                calls.append(ast.literal_eval(node.args[0]))
    return calls


def test_notebook_validates():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    assert nb.cells[0].cell_type == "markdown" and "estimate, not measured" in nb.cells[0].source
    assert not any(c.get("outputs") for c in nb.cells if c.cell_type == "code")  # shipped unexecuted


def test_gemma2_notebook_config_validates_its_recipes(capsys):
    """notebook_gemma2.yaml (the Gemma 2 2B choice) extends notebook.yaml with its own recipes."""
    from submission import kaggle

    cfg = kaggle.load_notebook_config("configs/kaggle/notebook_gemma2.yaml")
    kaggle.check(cfg, configs_only=True)
    out = capsys.readouterr().out
    assert "gemma-2-2b" in cfg.model_dir and cfg.eval.config == "configs/kaggle/eval_gsm8k_tpu.yaml"
    assert (
        "sft_gemma2_2b_tpu.yaml ok sft-gemma2-2b-tpu" in out
        and "grpo_gemma2_2b_tpu.yaml ok grpo-gemma2-2b-tpu" in out
    )


def test_llama_notebook_config_validates_its_recipes_and_maps_a_llama_dir(tiny_llama, tmp_path, capsys):
    """notebook_llama32.yaml names a Llama-architecture dir; `check` maps its config.json onto
    Tunix's Llama, and refuses a Qwen dir naming its model_type."""
    import shutil

    from common.errors import InputError

    cfg = kaggle.load_notebook_config("configs/kaggle/notebook_llama32.yaml")
    kaggle.check(cfg, configs_only=True)
    out = capsys.readouterr().out
    assert "llama-3.2" in cfg.model_dir
    assert "sft_llama32_1b_tpu.yaml ok sft-llama32-1b-tpu" in out and "grpo_llama32_1b_tpu.yaml ok" in out
    kaggle.check(kaggle.dataclasses.replace(cfg, model_dir=str(tiny_llama)))  # the model dir too
    qwen = shutil.copytree(tiny_llama, tmp_path / "qwen")
    hf = json.loads((qwen / "config.json").read_text())
    (qwen / "config.json").write_text(json.dumps({**hf, "model_type": "qwen2"}))
    with pytest.raises(InputError, match="model_type 'qwen2'"):
        kaggle.check(kaggle.dataclasses.replace(cfg, model_dir=str(qwen)))


def test_cells_hold_no_settings_and_call_every_stage_in_order():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert settings_in_cells(nb) == []
    assert stage_calls(nb) == STAGE_ORDER
    assert set(STAGE_ORDER) == set(kaggle.STAGES)
    # the one config reference: the env var, defaulting to the shipped notebook config
    sources = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    assert f'os.environ.get("{CONFIG_ENV}", "{kaggle.DEFAULT_CONFIG}")' in sources
    assert (ROOT / kaggle.DEFAULT_CONFIG).is_file()


@pytest.mark.parametrize(
    "bad",
    ["lr = 1e-4", 'step("sft", "train.max_steps=3")', 'cfg = "configs/kaggle/other.yaml"',
     'x = os.environ.get("MAX_STEPS")', "steps = [i for i in range(3)]"],
)  # fmt: skip
def test_settings_check_catches_a_setting_in_a_cell(bad):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell(f"import os\n{bad}"))
    assert settings_in_cells(nb), bad


def write_notebook_config(tmp_path: Path, model_dir: Path, **sections: str) -> Path:
    """A notebook config extending ci_tiny.yaml with this machine's model and tmp folders."""
    path = tmp_path / "notebook.yaml"
    extra = "".join(f"{k}:\n{v}" for k, v in sections.items())
    path.write_text(
        f"base: {CI_TINY}\nmodel_dir: {model_dir}\nworkspace: {tmp_path / 'work'}\n"
        f"output_dir: {tmp_path / 'out'}\n{extra}"
    )
    return path


@pytest.mark.parametrize(
    ("section", "body", "message"),
    [
        ("sft", "  overrides: [train.max_stepz=1]\n", "unknown key 'train.max_stepz'"),
        ("sft", "  overrides: [optim.lr=fast]\n", "optim.lr: expected float"),
        ("evidence", "  include_modle: true\n", "unknown key 'evidence.include_modle'"),
        ("data", "  config: configs/data/nope.yaml\n", "config file not found"),
    ],
)
def test_check_fails_fast_on_a_bad_config(tmp_path, tiny_gemma3, capsys, section, body, message):
    config = write_notebook_config(tmp_path, tiny_gemma3, **{section: body})
    with pytest.raises(SystemExit) as exit_info:
        kaggle.main(["check", "--config", str(config)])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "work").exists()  # nothing ran


def test_check_refuses_a_missing_model_dir(tmp_path, capsys):
    config = write_notebook_config(tmp_path, tmp_path / "no-model")
    with pytest.raises(SystemExit) as exit_info:
        kaggle.main(["check", "--config", str(config)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "model_dir" in err and "no config.json" in err
    (record,) = [json.loads(line) for line in (tmp_path / "out" / kaggle.LOG_NAME).read_text().splitlines()]
    assert record["stage"] == "check" and record["exit_status"] == 2 and record["seconds"] >= 0  # the run log


def test_stage_commands_pass_absolute_paths_and_the_configs_overrides(tmp_path, tiny_gemma3):
    cfg = kaggle.load_notebook_config(write_notebook_config(tmp_path, tiny_gemma3))
    plan, loaded = kaggle.make_plan(cfg, "sft")
    (sft,) = kaggle.stage_commands(plan, "sft")
    assert sft[1:3] == ["-m", "trainers_jax.sft"]
    assert f"model.path={tiny_gemma3}" in sft and f"output_dir={tmp_path / 'work' / 'runs'}" in sft
    assert sft[-len(cfg.sft.overrides) :] == cfg.sft.overrides  # the config's overrides come last
    assert loaded["sft"].train.max_steps == 1 and loaded["sft"].mesh.fsdp == 1  # ci_tiny over the TPU file
    (data,) = kaggle.stage_commands(plan, "data")
    assert f"gsm8k.dir={ROOT / 'data' / 'gsm8k'}" in data  # the vendored copy, whatever the cwd


@pytest.mark.slow
def test_notebook_runs_end_to_end_on_cpu(tmp_path, tiny_gemma3, monkeypatch):
    from nbclient import NotebookClient

    config = write_notebook_config(tmp_path, tiny_gemma3)
    monkeypatch.setenv(CONFIG_ENV, str(config))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}
    ).execute()

    runs = tmp_path / "work" / "runs"
    sft = [
        json.loads(line) for line in (runs / "sft-gemma3-1b-tpu" / "metrics.jsonl").read_text().splitlines()
    ]
    assert any("loss" in r for r in sft)
    grpo_run = runs / "grpo-gemma3-1b-tpu"
    grpo = [json.loads(line) for line in (grpo_run / "metrics.jsonl").read_text().splitlines()]
    assert any("reward" in r for r in grpo)
    summary = json.loads((grpo_run / "eval" / "eval_summary.json").read_text())
    assert summary["trained"]["n"] == 2 and summary["base"]["n"] == 2
    assert (grpo_run / "eval" / "report.html").is_file()

    evidence = tmp_path / "out" / "evidence"
    index = json.loads((evidence / "evidence.json").read_text())
    assert index["runs"]["grpo"]["eval"]["n"] == 2
    for name in ("runs/grpo-gemma3-1b-tpu/eval/report.html", "runs/grpo-gemma3-1b-tpu/metrics.jsonl",
                 "runs/grpo-gemma3-1b-tpu/run_manifest.json", "runs/sft-gemma3-1b-tpu/metrics.jsonl",
                 "configs/sft-sft_gemma3_1b_tpu.yaml"):  # fmt: skip
        assert (evidence / name).is_file() and name in index["files"], name
    assert not list(evidence.rglob("*.safetensors"))  # evidence, not weights (include_model is off)

    # the package of the last evaluated run (GRPO), with the SFT run's evidence and the stage log
    (package,) = (tmp_path / "out").glob("showwork_grpo-gemma3-1b-tpu_*.zip")
    assert verify.main([str(package)]) == 0
    with zipfile.ZipFile(package) as zf:
        names = zf.namelist()
        log = json.loads(zf.read("evidence/notebook_log.json"))
        summary_in_zip = json.loads(zf.read("evidence/runs/grpo-gemma3-1b-tpu/eval/eval_summary.json"))
        readme = zf.read("README_SUBMISSION.md").decode()
    assert (
        "evidence/runs/sft-gemma3-1b-tpu/metrics.jsonl" in names and "configs/external/notebook.yaml" in names
    )
    assert [s["stage"] for s in log["stages"]] == STAGE_ORDER[:-1] and {
        s["exit_status"] for s in log["stages"]
    } == {0}
    assert summary_in_zip["trained"]["primary_score"] == summary["trained"]["primary_score"]
    assert index["runs"]["grpo"]["eval"]["trained"] == summary["trained"]["primary_score"]
    assert describe_primary_score(summary["trained"]["primary_score"]) in readme

    # each cell printed the command it ran
    text = "\n".join(
        o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
    )
    assert "-m submission.kaggle sft --config" in text


def test_check_refuses_a_model_export_the_package_cannot_write(tmp_path, tiny_gemma2, capsys):
    """include_model packages an Orbax checkpoint in Tunix's Gemma 3 layout: a Gemma 2 model fails at check."""
    config = write_notebook_config(tmp_path, tiny_gemma2, evidence="  include_model: true\n")
    with pytest.raises(SystemExit) as exit_info:
        kaggle.main(["check", "--config", str(config)])
    assert exit_info.value.code == 2
    assert "evidence.include_model: the Orbax export" in capsys.readouterr().err
