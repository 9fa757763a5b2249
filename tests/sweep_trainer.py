"""A fast stand-in trainer for the sweep tests: an ordinary run dir whose held-out loss depends on lr.

    python -m tests.sweep_trainer --config C.yaml key=value ...

valid_loss at step s is ``1 + |log10(optim.lr) + 3| + 1 / s`` (best at lr = 1e-3), logged every
``eval.every_steps`` and at the end; one JSON checkpoint per step; ``resume=true`` continues from
it. Each start appends its pid and start step to ``invocations.jsonl``, so tests can count reruns.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from common.config import config_from_cli
from common.errors import cli
from common.jsonl import write_json
from common.runs import MetricsLogger, RunDir


@dataclass
class FakeTrain:
    max_steps: int = 8
    step_seconds: float = 0.0
    threads: int | None = None


@dataclass
class FakeOptim:
    lr: float = 1e-3
    warmup_steps: int = 0


@dataclass
class FakeEval:
    every_steps: int = 2


@dataclass
class FakeConfig:
    run_name: str = "fake"
    output_dir: str = "runs"
    seed: int = 0
    resume: bool = False
    overwrite: bool = False
    train: FakeTrain = field(default_factory=FakeTrain)
    optim: FakeOptim = field(default_factory=FakeOptim)
    eval: FakeEval = field(default_factory=FakeEval)


def valid_loss(cfg: FakeConfig, step: int) -> float:
    return 1.0 + abs(math.log10(cfg.optim.lr) + 3.0) + 1.0 / step


def train(cfg: FakeConfig) -> None:
    path = Path(cfg.output_dir) / cfg.run_name
    ckpt = path / "checkpoints" / "state.json"
    start = json.loads(ckpt.read_text())["step"] if cfg.resume and ckpt.exists() else 0
    run = RunDir.start(path, cfg, extra={"trainer": "tests.sweep_trainer"})
    if start:
        run.truncate_metrics(start)
    elif cfg.overwrite:
        (path / "metrics.jsonl").unlink(missing_ok=True)
    with (path / "invocations.jsonl").open("a") as fh:
        fh.write(json.dumps({"pid": os.getpid(), "start_step": start, "threads": cfg.train.threads}) + "\n")
    with MetricsLogger(path, tensorboard=False) as logger:
        for step in range(start + 1, cfg.train.max_steps + 1):
            time.sleep(cfg.train.step_seconds)
            logger.log(step, loss=valid_loss(cfg, step))
            if step % cfg.eval.every_steps == 0 or step == cfg.train.max_steps:
                logger.log(step, valid_loss=valid_loss(cfg, step))
            write_json(ckpt, {"step": step})
    run.finish()


@cli
def main(argv: list[str] | None = None) -> int:
    train(config_from_cli(FakeConfig, argv, "python -m tests.sweep_trainer", __doc__))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
