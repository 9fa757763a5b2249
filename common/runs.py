"""Run directories, manifests, seeding and the metrics logger.

A run lives in ``runs/<name>/``: ``config.yaml`` (resolved), ``run_manifest.json``,
``metrics.jsonl``, TensorBoard event files under ``tb/``, ``checkpoints/``, ``plots/``
and ``eval/``. Reports and packages read only these files.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import hashlib
import importlib.metadata
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any

from common.config import config_hash, dump_yaml
from common.errors import InputError
from common.evidence import write_evidence
from common.jsonl import atomic_open, dumps, write_json

LIBRARIES = (
    "torch", "transformers", "peft", "accelerate", "gguf", "jax", "jaxlib", "flax",
    "optax", "qwix", "orbax-checkpoint", "google-tunix", "numpy", "reasoning-gym",
)  # fmt: skip


def say(msg: str) -> None:
    """One line to stdout, above any progress bar (the trainers' start, eval and done lines)."""
    from tqdm import tqdm

    tqdm.write(msg, file=sys.stdout)
    sys.stdout.flush()


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def sha256_file(path: str | Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def weights_sha256(model_dir: str | Path) -> str | None:
    """sha256 over a model directory's weight files, cached in ``weights.sha256``.

    The cache is trusted only while every weight file keeps its size and mtime.
    """
    d = Path(model_dir)
    files = sorted(d.glob("*.safetensors")) + sorted(d.glob("*.bin"))
    if not files:
        return None
    stamp = [[f.name, f.stat().st_size, int(f.stat().st_mtime)] for f in files]
    cache = d / "weights.sha256"
    if cache.exists():
        try:
            cached = json.loads(cache.read_text())
            if cached.get("files") == stamp:
                return str(cached["sha256"])
        except (ValueError, KeyError):
            pass
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode())
        h.update(sha256_file(f).encode())
    digest = h.hexdigest()
    with contextlib.suppress(OSError):  # read-only model dirs are fine
        write_json(cache, {"files": stamp, "sha256": digest})
    return digest


def git_commit() -> str | None:
    """Current commit, with ``+dirty`` when the tree has uncommitted changes."""
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, check=True, timeout=10,
        ).stdout.strip()  # fmt: skip
        return rev + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def library_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in LIBRARIES:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            out[name] = importlib.metadata.version(name)
    return out


def seed_everything(seed: int) -> None:
    """Seed python, numpy and (if loaded) torch; JAX code derives its keys from ``seed``."""
    random.seed(seed)
    os.environ["PYTHONHASHSEED"] = str(seed)
    try:
        import numpy as np

        np.random.seed(seed % (2**32))
    except ImportError:
        pass
    if "torch" in sys.modules:
        import torch

        torch.manual_seed(seed)


class RunDir:
    """One run's directory and manifest (checked against ``submission/schemas/run_manifest.json`` on every write)."""

    def __init__(self, root: str | Path):
        self.path = Path(root)
        self.checkpoints = self.path / "checkpoints"
        self.plots = self.path / "plots"
        self.eval = self.path / "eval"
        self.manifest_path = self.path / "run_manifest.json"

    @classmethod
    def start(
        cls,
        root: str | Path,
        cfg: Any,
        *,
        data_files: Mapping[str, str | Path] | None = None,
        model_dir: str | Path | None = None,
        device: str = "cpu",
        extra: dict[str, Any] | None = None,
    ) -> RunDir:
        """Create (or reopen) the run dir, write config.yaml and a fresh manifest section."""
        run = cls(root)
        for d in (run.path, run.checkpoints, run.plots, run.eval):
            d.mkdir(parents=True, exist_ok=True)
        with atomic_open(run.path / "config.yaml") as fh:
            fh.write(dump_yaml(cfg))
        previous = run.read_manifest()
        manifest: dict[str, Any] = {
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "git_commit": git_commit(),
            "config_hash": config_hash(cfg),
            "data": {k: {"path": str(v), "sha256": sha256_file(v)} for k, v in (data_files or {}).items()},
            "model": None,
            "libraries": library_versions(),
            "device": device,
            "host": {"platform": platform.platform(), "cpus": os.cpu_count()},
            "start_time": now_iso(),
            "end_time": None,
            "status": "running",
        }
        if model_dir is not None:
            manifest["model"] = {"path": str(model_dir), "weights_sha256": weights_sha256(model_dir)}
        if extra:
            manifest.update(extra)
        if previous:
            manifest["previous_attempts"] = [
                *previous.get("previous_attempts", []),
                {k: previous.get(k) for k in ("start_time", "end_time", "status", "command")},
            ]
        write_evidence(run.manifest_path, "run_manifest", manifest)
        return run

    def read_manifest(self) -> dict[str, Any]:
        if not self.manifest_path.exists():
            return {}
        return json.loads(self.manifest_path.read_text())

    def update_manifest(self, **fields: Any) -> None:
        manifest = self.read_manifest()
        manifest.update(fields)
        write_evidence(self.manifest_path, "run_manifest", manifest)

    def finish(self, status: str = "completed", **fields: Any) -> None:
        self.update_manifest(end_time=now_iso(), status=status, **fields)

    def complete(self, summary: dict[str, Any], line: str) -> dict[str, Any]:
        """A trainer's end: ``summary.json``, the manifest marked completed, the last line printed."""
        write_json(self.path / "summary.json", summary)
        self.finish(summary=summary)
        say(line)
        return summary

    def clear(self) -> None:
        """Remove a previous run's outputs (``overwrite=true``); config and manifest are rewritten anyway."""
        for name in ("checkpoints", "final", "best", "merged", "plots", "eval", "eval-best", "tb"):
            shutil.rmtree(self.path / name, ignore_errors=True)
        (self.path / "metrics.jsonl").unlink(missing_ok=True)

    def truncate_metrics(self, last_step: int) -> None:
        """Drop metric records after ``last_step`` (written by a killed attempt after its checkpoint)."""
        keep = [r for r in read_metrics(self.path) if r.get("step", 0) <= last_step]
        with atomic_open(self.path / "metrics.jsonl") as fh:
            for rec in keep:
                fh.write(dumps(rec) + "\n")


def refuse_existing_run(run_path: Path, has_run: bool, resume: bool, overwrite: bool, holds: str) -> None:
    """A run dir that already ``holds`` a run is neither reused nor clobbered unless the config says so."""
    if has_run and not resume and not overwrite:
        raise InputError(
            f"{run_path}: already holds a run ({holds}); pass resume=true to continue it, "
            "overwrite=true to start over, or another run_name"
        )


def write_dir(target: Path, fill: Callable[[Path], None]) -> Path:
    """Fill a fresh temp dir beside ``target``, then swap it in: no half-written export is ever visible."""
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    fill(tmp)
    if target.exists():
        shutil.rmtree(target)
    os.rename(tmp, target)
    return target


def check_resume(meta: dict[str, Any], cfg: Any, checkpoint: str | Path) -> None:
    """A checkpoint continues only the config it was made with (its ``config_hash``)."""
    if meta.get("config_hash") != resume_hash(cfg):
        raise InputError(
            f"{checkpoint}: made with another config than this one (resume needs the same config; "
            "start over with overwrite=true or another run_name)"
        )


def resume_hash(cfg: Any) -> str:
    """Config hash a checkpoint must share with the run resuming from it (resume/overwrite flags aside)."""
    return config_hash(dataclasses.replace(cfg, resume=False, overwrite=False))


class MetricsLogger:
    """Append one JSON record per step to ``metrics.jsonl`` and mirror scalars to TensorBoard."""

    def __init__(self, run_dir: str | Path, tensorboard: bool = True):
        self.path = Path(run_dir) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = self.path.open("a", encoding="utf-8")
        self._tb = None
        if tensorboard:
            try:
                from tensorboardX import SummaryWriter

                self._tb = SummaryWriter(str(Path(run_dir) / "tb"), flush_secs=10)
            except ImportError:
                self._tb = None

    def log(self, step: int, **values: Any) -> None:
        record = {"step": step, "time": round(time.time(), 3), **values}
        self._fh.write(json.dumps(record) + "\n")
        self._fh.flush()
        if self._tb is not None:
            for key, val in values.items():
                if isinstance(val, int | float) and not isinstance(val, bool):
                    self._tb.add_scalar(key, val, step)

    def close(self) -> None:
        self._fh.close()
        if self._tb is not None:
            self._tb.close()

    def __enter__(self) -> MetricsLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """Records of ``metrics.jsonl``; a torn last line from a killed run is ignored."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def write_plots(run: RunDir) -> None:
    """plots/loss.png (train + held-out loss) and plots/lr.png from metrics.jsonl (any trainer)."""
    plot_metrics(run, {"loss": ["loss", "valid_loss"], "lr": ["lr"]}, markers={"valid_loss"})


def plot_metrics(run: RunDir, plots: dict[str, list[str]], markers: Collection[str] = ()) -> None:
    """One ``plots/<name>.png`` per entry: the metrics.jsonl series ``keys`` against step.

    A plot none of whose keys was logged is not written; keys in ``markers`` get dots (sparse evals).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(run.path)
    for name, keys in plots.items():
        series = [(key, [r for r in records if isinstance(r.get(key), int | float)]) for key in keys]
        if not any(rows for _, rows in series):
            continue
        fig, ax = plt.subplots(figsize=(6, 3.5))
        for key, rows in series:
            if rows:
                ax.plot(
                    [r["step"] for r in rows],
                    [r[key] for r in rows],
                    marker="o" if key in markers else None,
                    label=key,
                )
        ax.set_xlabel("step")
        ax.set_ylabel(name)
        ax.legend()
        ax.grid(alpha=0.3)
        fig.tight_layout()
        with atomic_open(run.plots / f"{name}.png", "wb") as fh:
            fig.savefig(fh, format="png", dpi=100)
        plt.close(fig)
