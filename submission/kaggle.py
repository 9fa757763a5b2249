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
import dataclasses
import hashlib
import importlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from common.config import config_from_mapping, load_config, merge_mappings, read_yaml
from common.errors import InputError, cli
from evals.generate import GenerateConfig
from scripts.dataset.build import BuildConfig

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = "configs/kaggle/notebook.yaml"
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
# Small files of a run dir that make up its evidence (the weights and checkpoints are not evidence).
RUN_FILES = ("config.yaml", "run_manifest.json", "metrics.jsonl", "summary.json", "samples.jsonl")
RUN_DIRS = ("plots", "eval")


# --------------------------------------------------------------------------------------------
# The notebook config
# --------------------------------------------------------------------------------------------


@dataclass
class SetupConfig:
    install: Literal["auto", "always", "never"] = "auto"  # auto: only on Kaggle (KAGGLE_KERNEL_RUN_TYPE set)
    extras: list[str] = field(default_factory=lambda: ["jax"])  # pyproject extras to install
    packages: list[str] = field(default_factory=list)  # further pip requirements (e.g. jax's TPU extra)
    pip_args: list[str] = field(default_factory=list)  # e.g. ["-f", "<wheel index>"]


@dataclass
class DataStage:
    config: str = "configs/data/gsm8k.yaml"  # scripts.dataset build config
    overrides: list[str] = field(default_factory=list)


@dataclass
class RecipeStage:
    config: str = ""
    overrides: list[str] = field(default_factory=list)


@dataclass
class EvalStage:
    config: str = "configs/kaggle/eval_gsm8k_tpu.yaml"
    overrides: list[str] = field(default_factory=list)
    runs: list[Literal["sft", "grpo"]] = field(default_factory=lambda: ["sft", "grpo"])  # runs to evaluate


@dataclass
class EvidenceConfig:
    dir: str = "evidence"  # under output_dir
    include_model: bool = False  # also copy the GRPO run's merged/ export (HF safetensors) to output_dir


@dataclass
class NotebookConfig:
    model_dir: str  # the base model, an HF safetensors dir (on Kaggle: the attached model input)
    workspace: str  # data/ and runs/ go here; every command runs in it
    output_dir: str  # the evidence goes here (on Kaggle: /kaggle/working, kept after the session)
    base: str | None = None  # another notebook config this one extends (relative to this file)
    setup: SetupConfig = field(default_factory=SetupConfig)
    data: DataStage = field(default_factory=DataStage)
    sft: RecipeStage = field(default_factory=lambda: RecipeStage("configs/kaggle/sft_gemma3_1b_tpu.yaml"))
    grpo: RecipeStage = field(default_factory=lambda: RecipeStage("configs/kaggle/grpo_gemma3_1b_tpu.yaml"))
    eval: EvalStage = field(default_factory=EvalStage)
    evidence: EvidenceConfig = field(default_factory=EvidenceConfig)


def _read_chain(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A notebook config's mapping with its ``base:`` chain merged underneath."""
    path = path.resolve()
    if path in seen:
        raise InputError(f"{path}: 'base' chain loops back to itself")
    data = read_yaml(path)
    base = data.get("base")
    if base is None:
        return data
    if not isinstance(base, str):
        raise InputError(f"{path}: base: expected a file path, got {base!r}")
    base_path = Path(base) if Path(base).is_absolute() else path.parent / base
    merged = merge_mappings(_read_chain(base_path, (*seen, path)), data)
    merged["base"] = str(base_path)
    return merged


def load_notebook_config(path: str | Path) -> NotebookConfig:
    """The notebook config, strictly validated (unknown keys and wrong types name the key)."""
    p = Path(path) if Path(path).is_absolute() else ROOT / path
    return config_from_mapping(NotebookConfig, _read_chain(p), p)


def project_path(path: str) -> Path:
    """A path from a config: absolute, or relative to the project root."""
    p = Path(path)
    return p if p.is_absolute() else ROOT / p


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
    git_dir = _git(["rev-parse", "--absolute-git-dir"])
    if git_dir:
        env.setdefault("GIT_DIR", git_dir)
        env.setdefault("GIT_WORK_TREE", str(ROOT))
    return env


def _git(args: list[str]) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


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


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def source_fingerprint() -> dict[str, Any]:
    """The code that ran: the git commit when the project is a checkout, and a hash of its source files."""
    h = hashlib.sha256()
    files = sorted(
        p for top in ("common", "trainers_jax", "trainers_torch", "evals", "scripts", "submission", "configs")
        for p in (ROOT / top).rglob("*") if p.is_file() and p.suffix in (".py", ".yaml", ".ipynb")
    )  # fmt: skip
    for p in files:
        h.update(str(p.relative_to(ROOT)).encode() + b"\0" + p.read_bytes())
    return {"git_commit": _git(["rev-parse", "HEAD"]), "source_sha256": h.hexdigest(), "files": len(files)}


def collect(cfg: NotebookConfig, config_path: str) -> Path:
    """Copy the evidence of the runs into ``<output_dir>/<evidence.dir>`` with an index (sha256 per file)."""
    plan, _ = make_plan(cfg, "collect")
    out = project_path(cfg.output_dir) / cfg.evidence.dir
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
    missing = [s for s in cfg.eval.runs if runs[s]["eval"] is None]
    if missing:
        raise InputError(f"no eval_summary.json for the {', '.join(missing)} run; did the eval stage run?")
    if cfg.evidence.include_model:
        merged = plan.run_dir("grpo") / "merged"
        if not merged.is_dir():
            raise InputError(f"{merged}: no merged export to include (evidence.include_model=true)")
        shutil.copytree(merged, project_path(cfg.output_dir) / "model", dirs_exist_ok=True)
    files = {
        str(p.relative_to(out)): {"bytes": p.stat().st_size, "sha256": _sha256(p)}
        for p in sorted(out.rglob("*"))
        if p.is_file()
    }
    index = {"notebook_config": config_path, "source": source_fingerprint(), "runs": runs, "files": files}
    (out / "evidence.json").write_text(json.dumps(index, indent=2) + "\n")
    print(f"evidence: {out} ({len(files)} files, index evidence.json)")
    for stage, info in runs.items():
        if info["eval"]:
            e = info["eval"]
            metric = e["primary_metric"]
            print(
                f"  {stage} {info['run']}: {metric} accuracy base {e['base']} -> trained {e['trained']} (n={e['n']})"
            )
    return out


def _headline(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    s = json.loads(path.read_text())
    key = f"{s['primary_metric']}_accuracy"
    return {"primary_metric": s["primary_metric"], "base": s["base"].get(key), "trained": s["trained"].get(key),
            "n": s["trained"].get("n")}  # fmt: skip


@cli
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m submission.kaggle", description=__doc__.split("\n\n")[0])
    ap.add_argument("stage", choices=STAGES)
    ap.add_argument("--config", default=os.environ.get("SHOWWORK_NOTEBOOK_CONFIG", DEFAULT_CONFIG))
    ap.add_argument("--configs-only", action="store_true", help="check: skip the model dir (for CI)")
    args = ap.parse_args(argv)
    cfg = load_notebook_config(args.config)
    if args.stage == "check":
        check(cfg, args.configs_only)
    elif args.stage == "setup":
        setup(cfg)
    elif args.stage == "collect":
        collect(cfg, args.config)
    else:
        plan, _ = make_plan(cfg, args.stage)
        run_commands(plan, stage_commands(plan, args.stage))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
