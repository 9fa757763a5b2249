"""Curriculum SFT: train stages in order, each from the previous stage's final weights.

    python -m scripts.run_curriculum --config configs/curriculum/sft_gsm8k_steps_cpu.yaml [key=value ...]

Stage files come from ``python -m scripts.dataset curriculum`` (``stage_<name>.jsonl``). Each
stage is one ``trainers_torch.sft`` run in ``runs/<run_name>/stage_<name>/`` with its own
epochs; a LoRA stage continues the previous stage's adapter (``final/``), a full fine-tune
stage starts from the previous ``merged/``. Every stage ends with the SFT trainer's held-out
eval (loss, plus generation through ``evals/`` when available). ``curriculum_summary.json``
(rewritten after every stage) holds loss, steps, runtime and samples/s per stage.
``resume=true`` skips finished stages and resumes the interrupted one from its checkpoint.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.config import config_from_cli, load_config
from common.errors import InputError, cli
from common.jsonl import write_json
from common.runs import say
from common.sft_config import SFTConfig
from trainers_torch.sft import train


@dataclass
class StageConfig:
    name: str
    train: str  # the stage's record file
    epochs: float = 1.0
    overrides: list[str] = field(default_factory=list)  # key=value for this stage's SFT config only


@dataclass
class CurriculumConfig:
    run_name: str = "curriculum-gsm8k-cpu"
    output_dir: str = "runs"
    seed: int = 0
    resume: bool = False
    sft_config: str = "configs/sft_gemma3_270m_cpu.yaml"  # the SFT recipe every stage starts from
    overrides: list[str] = field(default_factory=list)  # key=value applied to every stage
    stages: list[StageConfig] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.stages:
            raise ValueError("stages: at least one stage is needed")
        names = [s.name for s in self.stages]
        if len(set(names)) != len(names):
            raise ValueError(f"stages: names must be unique, got {names}")


def stage_config(cfg: CurriculumConfig, k: int, previous: Path | None) -> SFTConfig:
    """The SFT config of stage ``k``; ``previous`` is the run dir of stage ``k - 1``."""
    stage = cfg.stages[k]
    base: list[str] = [
        f"output_dir={Path(cfg.output_dir) / cfg.run_name}",
        f"run_name=stage_{stage.name}",
        f"seed={cfg.seed}",
        f"resume={str(cfg.resume).lower()}",
        f"data.train={stage.train}",
        f"train.epochs={stage.epochs}",
        "train.max_steps=null",
        "export=true",
    ]
    sft = load_config(SFTConfig, cfg.sft_config, [*base, *cfg.overrides, *stage.overrides])
    if not Path(stage.train).is_file():
        raise InputError(
            f"stages[{k}].train: {stage.train} not found (build it with `python -m scripts.dataset curriculum`)"
        )
    if previous is not None:
        if sft.train.method == "lora":
            sft.model.init_adapter = str(previous / "final")
        else:
            sft.model.path = str(previous / "merged")
    return sft


def finished_summary(run_dir: Path) -> dict[str, Any] | None:
    """A finished stage's summary (manifest completed, exports present), else None."""
    try:
        manifest = json.loads((run_dir / "run_manifest.json").read_text())
        summary = json.loads((run_dir / "summary.json").read_text())
    except (OSError, ValueError):
        return None
    done = (
        manifest.get("status") == "completed"
        and (run_dir / "final").is_dir()
        and (run_dir / "merged").is_dir()
    )
    return summary if done else None


def stage_row(stage: StageConfig, summary: dict[str, Any]) -> dict[str, Any]:
    return {
        "stage": stage.name,
        "train_file": stage.train,
        "epochs": stage.epochs,
        "examples": summary["examples"],
        "steps": summary["steps"],
        "final_loss": summary["final_loss"],
        "valid_loss": summary["valid_loss"],
        "runtime_s": summary["train_seconds"],
        "samples_per_s": summary["samples_per_s"],
        "tokens_per_s": summary["tokens_per_s"],
        "eval": summary["final_eval"],
        "run_dir": summary["run_dir"],
        "final": summary.get("final"),
        "merged": summary.get("merged"),
    }


def run_curriculum(cfg: CurriculumConfig) -> dict[str, Any]:
    root = Path(cfg.output_dir) / cfg.run_name
    configs, previous = [], None
    for k in range(len(cfg.stages)):  # check every stage's config and file before training any
        configs.append(stage_config(cfg, k, previous))
        previous = root / f"stage_{cfg.stages[k].name}"
    t0 = time.perf_counter()
    rows: list[dict[str, Any]] = []
    previous = None
    for k, stage in enumerate(cfg.stages):
        sft = stage_config(cfg, k, previous)
        run_dir = Path(sft.output_dir) / sft.run_name
        done = finished_summary(run_dir) if cfg.resume else None
        if done is not None:
            say(f"stage {stage.name}: already finished in {run_dir}, skipped")
            summary = done
        else:
            say(
                f"stage {stage.name} ({k + 1}/{len(cfg.stages)}): {stage.train}, {stage.epochs} epochs → {run_dir}"
            )
            summary = train(sft)
        rows.append(stage_row(stage, summary))
        previous = run_dir
        out = {
            "run_name": cfg.run_name,
            "sft_config": cfg.sft_config,
            "method": sft.train.method,
            "stages": rows,
            "complete": k + 1 == len(cfg.stages),
            "wall_seconds_this_attempt": round(time.perf_counter() - t0, 2),
        }
        write_json(root / "curriculum_summary.json", out)
    say(f"curriculum done: {root / 'curriculum_summary.json'}")
    for row in rows:
        say(
            f"  stage {row['stage']}: loss {row['final_loss']:.4f}, steps {row['steps']}, "
            f"{row['runtime_s']:.1f}s, {row['samples_per_s']:.2f} samples/s"
            + (f", valid loss {row['valid_loss']:.4f}" if row["valid_loss"] is not None else "")
        )
    return out


@cli
def main(argv: list[str] | None = None) -> int:
    run_curriculum(
        config_from_cli(
            CurriculumConfig, argv, "python -m scripts.run_curriculum", __doc__, config_required=True
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
