"""The Kaggle notebook's stages, one subcommand each, all driven by one notebook config.

    python -m submission.kaggle check   --config configs/kaggle/notebook.yaml [--configs-only]
    python -m submission.kaggle setup   --config ...   install the pinned stack (on Kaggle only)
    python -m submission.kaggle data    --config ...   build the dataset into <workspace>/data
    python -m submission.kaggle sft     --config ...   python -m trainers_jax.sft ...
    python -m submission.kaggle grpo    --config ...   python -m trainers_jax.grpo ... init.sft_run=<SFT run>
    python -m submission.kaggle eval    --config ...   python -m evals.run_eval --run <run> ... per run
    python -m submission.kaggle collect --config ...   evidence into <output_dir>/<evidence.dir>

``submission/kaggle_notebook.ipynb`` calls these in order; every setting is in the notebook
config (``configs/kaggle/notebook.yaml``) and the recipe configs it names. A notebook config
may extend another with ``base: other.yaml`` (relative to its own file): mappings merge key
by key, anything else replaces. Paths in it are absolute or relative to the project root.

Each stage prints the command it runs and runs it with the workspace as working directory
(the project itself may sit on a read-only Kaggle input), the project on ``PYTHONPATH``,
and every path passed absolute. ``check`` validates the notebook config and every recipe
config through the trainers' own loaders, with the same overrides the stages will pass, so a
typo fails in seconds with exit status 2 instead of hours into a run.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
import tomllib
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.config import load_config
from common.errors import InputError, cli
from common.evidence import write_evidence
from common.jsonl import iter_jsonl
from common.runs import now_iso, sha256_file
from evals.generate import GenerateConfig
from evals.score import PRIMARY_SCORE_DEFINITION, describe_primary_score
from scripts.dataset.build import BuildConfig
from submission.contents import MODEL, RUN_DIRS, RUN_FILES
from submission.notebook_config import (
    DEFAULT_CONFIG,
    ROOT,
    NotebookConfig,
    load_notebook_config,
    project_path,
)
from submission.package import build_package
from submission.source import git, source_fingerprint

STAGES = ("check", "setup", "data", "sft", "grpo", "eval", "collect")
# What each trainer stage runs, and the config dataclass (module, name) its command line is validated into.
TRAINERS = {
    "sft": ("trainers_jax.sft", ("trainers_jax.config", "JaxSFTConfig")),
    "grpo": ("trainers_jax.grpo", ("trainers_jax.config", "JaxGRPOConfig")),
}
# Modules the stages import; `setup` checks them where it installs nothing.
NEEDED_MODULES = (
    "yaml",
    "numpy",
    "transformers",
    "jax",
    "flax",
    "optax",
    "qwix",
    "tunix",
    "orbax.checkpoint",
)
LOG_NAME = "notebook_log.jsonl"  # in output_dir: one record per stage run (kept after a Kaggle session)


# --------------------------------------------------------------------------------------------
# The plan: the exact commands, with every path made absolute
# --------------------------------------------------------------------------------------------


@dataclass
class Plan:
    cfg: NotebookConfig
    workspace: Path
    data_dir: Path
    runs_dir: Path
    data_name: str
    sft_run: str
    grpo_run: str

    def data_file(self, split: str) -> str:
        return str(self.data_dir / self.data_name / f"{split}.jsonl")

    def run_dir(self, stage: str) -> Path:
        return self.runs_dir / (self.sft_run if stage == "sft" else self.grpo_run)


def _py(*args: str) -> list[str]:
    return [sys.executable, "-m", *args]


def data_overrides(plan: Plan, data_cfg: Any) -> list[str]:
    out = [f"out_dir={plan.data_dir}"]
    if data_cfg.kind == "gsm8k" and not Path(data_cfg.gsm8k.dir).is_absolute():
        out.append(f"gsm8k.dir={ROOT / data_cfg.gsm8k.dir}")  # the vendored copy inside the project
    return out


def recipe_overrides(plan: Plan, stage: str) -> list[str]:
    """Where a trainer reads and writes: the notebook's model, data and workspace (then the config's own overrides)."""
    wiring = [
        f"model.path={project_path(plan.cfg.model_dir)}",
        f"output_dir={plan.runs_dir}",
        f"data.train={plan.data_file('train')}",
        f"data.valid={plan.data_file('valid')}",
    ]
    if stage == "grpo":
        wiring.append(f"init.sft_run={plan.run_dir('sft')}")
    return [*wiring, *getattr(plan.cfg, stage).overrides]


def eval_overrides(plan: Plan) -> list[str]:
    return [
        f"data.path={plan.data_file('test')}",
        f"out={plan.runs_dir / 'eval' / 'predictions.jsonl'}",
        *plan.cfg.eval.overrides,
    ]


def _load_recipe(stage: str, path: Path, overrides: list[str]) -> Any:
    """``stage``'s config as its trainer will read it (the same dataclass, loader and overrides)."""
    module, cls = TRAINERS[stage][1]
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as err:
        raise InputError(
            f"{stage}: {module} cannot be imported ({err}); the {stage} stage cannot run"
        ) from None
    return load_config(getattr(mod, cls), path, overrides)


# What each stage loads: its own config, and the recipe configs that name the runs it touches.
NEEDS = {
    "data": ("data",),
    "sft": ("data", "sft"),
    "grpo": ("data", "sft", "grpo"),
    "eval": ("data", "sft", "grpo", "eval"),
    "collect": ("data", "sft", "grpo", "eval"),
    "check": ("data", "sft", "grpo", "eval"),
}


def make_plan(cfg: NotebookConfig, stage: str = "check") -> tuple[Plan, dict[str, Any]]:
    """The plan and the configs ``stage`` needs, each loaded by its own loader with the stage's overrides."""
    needs = NEEDS[stage]
    workspace = project_path(cfg.workspace)
    data_cfg = load_config(BuildConfig, project_path(cfg.data.config), cfg.data.overrides)
    plan = Plan(cfg, workspace, workspace / "data", workspace / "runs", data_cfg.name, "", "")
    loaded: dict[str, Any] = {"data": data_cfg}
    # The run names come from the recipe configs themselves (with the notebook's overrides).
    if "sft" in needs:
        loaded["sft"] = _load_recipe("sft", project_path(cfg.sft.config), recipe_overrides(plan, "sft"))
        plan.sft_run = loaded["sft"].run_name
    if "grpo" in needs:
        loaded["grpo"] = _load_recipe("grpo", project_path(cfg.grpo.config), recipe_overrides(plan, "grpo"))
        plan.grpo_run = loaded["grpo"].run_name
        if plan.sft_run == plan.grpo_run:
            raise InputError(
                f"sft and grpo configs share run_name '{plan.sft_run}'; the GRPO run would overwrite SFT's"
            )
    if "eval" in needs:
        loaded["eval"] = load_config(GenerateConfig, project_path(cfg.eval.config), eval_overrides(plan))
    return plan, loaded


def stage_commands(plan: Plan, stage: str) -> list[list[str]]:
    cfg = plan.cfg
    if stage == "data":
        data_cfg = load_config(BuildConfig, project_path(cfg.data.config), cfg.data.overrides)
        extra = data_overrides(plan, data_cfg)
        return [_py("scripts.dataset", "build", "--config", str(project_path(cfg.data.config)),
                    *cfg.data.overrides, *extra)]  # fmt: skip
    if stage in TRAINERS:
        module = TRAINERS[stage][0]
        config = str(project_path(getattr(cfg, stage).config))
        return [_py(module, "--config", config, *recipe_overrides(plan, stage))]
    if stage == "eval":
        config = str(project_path(cfg.eval.config))
        return [
            _py("evals.run_eval", "--run", str(plan.run_dir(run)), "--config", config, *eval_overrides(plan))
            for run in cfg.eval.runs
        ]
    raise InputError(f"stage '{stage}' runs no command")


def child_env() -> dict[str, str]:
    """The project importable from the workspace; git (for run manifests) pointed at the project's checkout."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    git_dir = git(["rev-parse", "--absolute-git-dir"])
    if git_dir:
        env.setdefault("GIT_DIR", git_dir)
        env.setdefault("GIT_WORK_TREE", str(ROOT))
    return env


def run_commands(plan: Plan, commands: list[list[str]]) -> None:
    plan.workspace.mkdir(parents=True, exist_ok=True)
    env = child_env()
    for cmd in commands:
        print(f"$ (cd {plan.workspace} && {' '.join(cmd)})", flush=True)
        code = subprocess.run(cmd, cwd=plan.workspace, env=env).returncode
        if code != 0:
            raise SystemExit(f"error: exit status {code} from: {' '.join(cmd)}")


# --------------------------------------------------------------------------------------------
# Stages
# --------------------------------------------------------------------------------------------


def check(cfg: NotebookConfig, configs_only: bool = False) -> Plan:
    """Validate everything a long run depends on; print the plan."""
    if not configs_only:
        model = project_path(cfg.model_dir)
        if not (model / "config.json").is_file():
            raise InputError(f"model_dir: {model} is not an HF model directory (no config.json)")
        if not any(model.glob("*.safetensors")):
            raise InputError(f"model_dir: {model} holds no *.safetensors weights")
        from trainers_jax.model import tunix_config

        tunix_config(
            model
        )  # a family the JAX trainers load (Gemma 3, Gemma 2, Llama), or the field they refuse
        model_type = json.loads((model / "config.json").read_text()).get("model_type")
        if cfg.evidence.include_model and not str(model_type).startswith("gemma3"):
            raise InputError(
                "evidence.include_model: the Orbax export (submission/checkpoint.py) covers Gemma 3 only; "
                f"{model} is {model_type}: set include_model: false"
            )
    plan, loaded = make_plan(cfg, "check")
    print(f"notebook config ok; project {ROOT}")
    print(f"  model      {project_path(cfg.model_dir)}")
    print(f"  workspace  {plan.workspace} (data/, runs/)")
    print(f"  evidence   {project_path(cfg.output_dir) / cfg.evidence.dir}")
    for stage in ("data", "sft", "grpo", "eval"):
        what = loaded[stage]
        name = getattr(what, "run_name", None) or getattr(what, "name", None) or ""
        print(f"  {stage:<5} {getattr(cfg, stage).config} ok {name}".rstrip())
        for cmd in stage_commands(plan, stage):
            print(f"        $ {' '.join(cmd[1:])}")
    return plan


def setup(cfg: NotebookConfig) -> None:
    on_kaggle = bool(os.environ.get("KAGGLE_KERNEL_RUN_TYPE"))
    install = cfg.setup.install == "always" or (cfg.setup.install == "auto" and on_kaggle)
    if install:
        project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
        reqs = list(project["dependencies"])
        for extra in cfg.setup.extras:
            if extra not in project["optional-dependencies"]:
                raise InputError(f"setup.extras: '{extra}' is not an extra of pyproject.toml")
            reqs += project["optional-dependencies"][extra]
        reqs += cfg.setup.packages
        cmd = [sys.executable, "-m", "pip", "install", "--disable-pip-version-check",
               "-c", str(ROOT / "requirements.lock"), *cfg.setup.pip_args, *reqs]  # fmt: skip
        print(f"$ {' '.join(cmd)}", flush=True)
        code = subprocess.run(cmd).returncode
        if code != 0:
            raise SystemExit(f"error: pip exit status {code}")
    else:
        print(
            "installing nothing (setup.install="
            + cfg.setup.install
            + ", "
            + ("on" if on_kaggle else "not on")
            + " Kaggle)"
        )
    missing = [m for m in NEEDED_MODULES if importlib.util.find_spec(m.split(".")[0]) is None]
    if missing:
        raise InputError(f"modules missing: {', '.join(missing)}; run `make setup` (or setup.install=always)")
    import jax

    print(
        f"environment ready: python {sys.version.split()[0]}, jax {jax.__version__}, devices {jax.devices()}"
    )


def collect(cfg: NotebookConfig, config_path: str) -> Path:
    """The evidence of the runs into ``<output_dir>/<evidence.dir>`` (with an index, sha256 per file), and
    the package of the last evaluated run (``submission.package``, the other run's evidence in it too)
    into ``<output_dir>``; its model (``evidence.include_model``) also unpacked into ``<output_dir>/model``."""
    plan, _ = make_plan(cfg, "collect")
    output = project_path(cfg.output_dir)
    out = output / cfg.evidence.dir
    if out.exists():
        shutil.rmtree(out)
    (out / "configs").mkdir(parents=True)
    for stage in ("data", "sft", "grpo", "eval"):
        src = project_path(getattr(cfg, stage).config)
        shutil.copyfile(src, out / "configs" / f"{stage}-{src.name}")
    (out / "configs" / "notebook.resolved.json").write_text(
        json.dumps(dataclasses.asdict(cfg), indent=2) + "\n"
    )
    runs: dict[str, Any] = {}
    for stage in ("sft", "grpo"):
        run = plan.run_dir(stage)
        if not (run / "metrics.jsonl").is_file():
            raise InputError(f"{run}: no metrics.jsonl; did the {stage} stage run?")
        dest = out / "runs" / run.name
        dest.mkdir(parents=True)
        for name in RUN_FILES:
            if (run / name).is_file():
                shutil.copyfile(run / name, dest / name)
        for name in RUN_DIRS:
            if (run / name).is_dir():
                shutil.copytree(run / name, dest / name)
        runs[stage] = {"run": run.name, "eval": _headline(run / "eval" / "eval_summary.json")}
    if not cfg.eval.runs:
        raise InputError("eval.runs: empty; the package is of an evaluated run")
    missing = [s for s in cfg.eval.runs if runs[s]["eval"] is None]
    if missing:
        raise InputError(f"no eval_summary.json for the {', '.join(missing)} run; did the eval stage run?")
    log = notebook_log(cfg, config_path)
    write_evidence(out / "notebook_log.json", "notebook_log", log)
    files = {
        str(p.relative_to(out)): {"bytes": p.stat().st_size, "sha256": sha256_file(p)}
        for p in sorted(out.rglob("*"))
        if p.is_file()
    }
    index = {"notebook_config": config_path, "source": source_fingerprint(), "runs": runs, "files": files}
    (out / "evidence.json").write_text(json.dumps(index, indent=2) + "\n")
    print(f"evidence: {out} ({len(files)} files, index evidence.json)")
    for stage, info in runs.items():
        if info["eval"]:
            e = info["eval"]
            print(f"  {stage} {info['run']}: primary score base {describe_primary_score(e['base'])}")
            print(
                f"  {' ' * len(stage)} {' ' * len(info['run'])}  trained {describe_primary_score(e['trained'])}"
            )
    # the package: the last evaluated run, with the other run's evidence beside it
    last = [s for s in ("sft", "grpo") if s in cfg.eval.runs][-1]
    zip_path = build_package(
        plan.run_dir(last),
        also=[plan.run_dir(s) for s in ("sft", "grpo") if s != last],
        notebook_config=config_path,
        notebook_log=log,
        with_model=cfg.evidence.include_model,
        out_dir=output,
    )
    if cfg.evidence.include_model:
        model = output / MODEL
        shutil.rmtree(model, ignore_errors=True)
        with zipfile.ZipFile(zip_path) as zf:
            zf.extractall(output, [n for n in zf.namelist() if n.startswith(f"{MODEL}/")])
        print(f"model: {model} (Orbax, Tunix's Gemma 3 layout)")
    print(f"package: {zip_path}")
    return zip_path


def _headline(path: Path) -> dict[str, Any] | None:
    """A run's primary scores (base and trained) as its eval summary holds them; None if not evaluated."""
    if not path.is_file():
        return None
    s = json.loads(path.read_text())
    return {"definition": PRIMARY_SCORE_DEFINITION, "base": s["base"]["primary_score"],
            "trained": s["trained"]["primary_score"], "n": s["trained"]["n"]}  # fmt: skip


# --------------------------------------------------------------------------------------------
# The notebook's run log: one record per stage, in <output_dir>/notebook_log.jsonl
# --------------------------------------------------------------------------------------------


def log_path(cfg: NotebookConfig) -> Path:
    return project_path(cfg.output_dir) / LOG_NAME


@contextlib.contextmanager
def logged_stage(cfg: NotebookConfig, stage: str) -> Iterator[dict[str, Any]]:
    """Append ``stage``'s record (commands, start, end, seconds, exit status) to the log, however it ends."""
    record: dict[str, Any] = {"stage": stage, "commands": [], "started": now_iso()}
    start, status = time.perf_counter(), 1
    try:
        yield record
        status = 0
    except InputError:
        status = 2
        raise
    except SystemExit as err:
        status = err.code if isinstance(err.code, int) else 1
        raise
    finally:
        record.update(ended=now_iso(), seconds=round(time.perf_counter() - start, 3), exit_status=status)
        path = log_path(cfg)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")


def notebook_log(cfg: NotebookConfig, config_path: str) -> dict[str, Any]:
    """The stages logged so far (``notebook_log.json``, checked against its schema when written)."""
    path = log_path(cfg)
    stages = [rec for _, rec in iter_jsonl(path)] if path.is_file() else []
    if not stages:
        raise InputError(f"{path}: no stage was logged; run the notebook's stages before collect")
    return {"notebook_config": config_path, "stages": stages}


@cli
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m submission.kaggle", description=__doc__.split("\n\n")[0])
    ap.add_argument("stage", choices=STAGES)
    ap.add_argument("--config", default=os.environ.get("SHOWWORK_NOTEBOOK_CONFIG", DEFAULT_CONFIG))
    ap.add_argument("--configs-only", action="store_true", help="check: skip the model dir (for CI)")
    args = ap.parse_args(argv)
    cfg = load_notebook_config(args.config)
    if args.configs_only:  # the CI check: nothing runs, nothing is logged
        check(cfg, configs_only=True)
        return 0
    with logged_stage(cfg, args.stage) as record:
        if args.stage == "check":
            check(cfg)
        elif args.stage == "setup":
            setup(cfg)
        elif args.stage == "collect":
            collect(cfg, args.config)
        else:
            plan, _ = make_plan(cfg, args.stage)
            record["commands"] = stage_commands(plan, args.stage)
            run_commands(plan, record["commands"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
