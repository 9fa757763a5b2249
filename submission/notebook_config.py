"""The Kaggle notebook's one config: what it runs, on which model, and where it writes.

``configs/kaggle/notebook.yaml`` (or the file ``SHOWWORK_NOTEBOOK_CONFIG`` names) is validated
into ``NotebookConfig``. A notebook config may extend another with ``base: other.yaml``
(relative to its own file): mappings merge key by key, anything else replaces. Paths in it are
absolute or relative to the project root. ``submission.kaggle`` runs its stages;
``submission.package`` ships it with the recipe configs it names.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from common.config import config_from_mapping, merge_mappings, read_yaml
from common.errors import InputError

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = "configs/kaggle/notebook.yaml"
RECIPE_STAGES = ("data", "sft", "grpo", "eval")  # the stages whose recipe config the notebook config names


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
    include_model: bool = False  # the packaged run's final weights, Orbax (Tunix's Gemma 3 layout): in the zip and <output_dir>/model


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


def chain_files(path: Path, seen: tuple[Path, ...] = ()) -> list[Path]:
    """``path`` and the files its ``base:`` chain names, the most basic first."""
    path = path.resolve()
    if path in seen:
        raise InputError(f"{path}: 'base' chain loops back to itself")
    base = read_yaml(path).get("base")
    if base is None:
        return [path]
    if not isinstance(base, str):
        raise InputError(f"{path}: base: expected a file path, got {base!r}")
    base_path = Path(base) if Path(base).is_absolute() else path.parent / base
    return [*chain_files(base_path, (*seen, path)), path]


def read_chain(path: Path) -> dict[str, Any]:
    """A notebook config's mapping with its ``base:`` chain merged underneath."""
    files = chain_files(path)
    merged: dict[str, Any] = {}
    for f in files:
        merged = merge_mappings(merged, read_yaml(f))
    if len(files) > 1:
        merged["base"] = str(files[-2])
    return merged


def load_notebook_config(path: str | Path) -> NotebookConfig:
    """The notebook config, strictly validated (unknown keys and wrong types name the key)."""
    p = Path(path) if Path(path).is_absolute() else ROOT / path
    return config_from_mapping(NotebookConfig, read_chain(p), p)


def project_path(path: str) -> Path:
    """A path from a config: absolute, or relative to the project root."""
    p = Path(path)
    return p if p.is_absolute() else ROOT / p


def config_files(path: str | Path) -> list[Path]:
    """The notebook config, every file of its ``base:`` chain, and the recipe configs it names."""
    p = Path(path) if Path(path).is_absolute() else ROOT / path
    cfg = load_notebook_config(p)
    return [*chain_files(p), *(project_path(getattr(cfg, stage).config) for stage in RECIPE_STAGES)]
