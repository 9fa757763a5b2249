"""Atomic, resumable training checkpoints (torch side).

A checkpoint is a directory ``checkpoints/step-XXXXXX/`` holding

- ``trainable.safetensors``: every parameter that requires grad, by its live name
  (the LoRA weights, or the unfrozen weights of a full fine-tune),
- ``adapter/``: the LoRA adapter in PEFT format (LoRA runs only), loadable on its own,
- ``optimizer.pt``, ``scheduler.pt``, ``rng.pt``: optimizer, LR schedule and RNG states,
- ``state.json``: step, data-order position, tokens seen, config hash — written last.

It is written into ``checkpoints/.tmp-step-XXXXXX-<pid>/`` and renamed into place only when
complete, so a job killed mid-save leaves at most a ``.tmp-*`` directory, which resume ignores
and the next start removes. Only ``step-*`` directories with a ``state.json`` count.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from common.errors import InputError
from common.runs import refuse_existing_run

STEP_DIR = re.compile(r"^step-(\d{6,})$")


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _fsync_tree(path: Path) -> None:
    for p in sorted(path.rglob("*")):
        if p.is_file():
            with p.open("rb") as fh:
                os.fsync(fh.fileno())
    for d in [path, *(p for p in path.rglob("*") if p.is_dir())]:
        _fsync_dir(d)


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter that requires grad, detached and contiguous (tied weights saved once)."""
    out: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for name, p in model.named_parameters():
        if p.requires_grad and id(p) not in seen:
            seen.add(id(p))
            out[name] = p.detach().contiguous()
    return out


def step_dir_name(step: int) -> str:
    return f"step-{step:06d}"


def save_checkpoint(
    checkpoints: Path,
    step: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    state: dict[str, Any],
    save_adapter: Callable[[Path], None] | None = None,
    keep_last: int = 2,
) -> Path:
    """Write checkpoint ``step`` atomically; keep only the newest ``keep_last``; return its path."""
    checkpoints.mkdir(parents=True, exist_ok=True)
    final = checkpoints / step_dir_name(step)
    tmp = checkpoints / f".tmp-{step_dir_name(step)}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    save_file(trainable_state(model), str(tmp / "trainable.safetensors"))
    if save_adapter is not None:
        save_adapter(tmp / "adapter")
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    torch.save(rng_state(), tmp / "rng.pt")
    (tmp / "state.json").write_text(json.dumps({"step": step, **state}, indent=2) + "\n")
    _fsync_tree(tmp)
    if final.exists():  # the same step written again (a resumed run): replace it
        shutil.rmtree(final)
    os.rename(tmp, final)
    _fsync_dir(checkpoints)
    prune_checkpoints(checkpoints, keep_last)
    return final


def complete_checkpoints(checkpoints: Path) -> list[tuple[int, Path]]:
    """``(step, path)`` of every complete checkpoint, oldest first."""
    if not checkpoints.is_dir():
        return []
    found = []
    for p in checkpoints.iterdir():
        m = STEP_DIR.match(p.name)
        if m and p.is_dir() and (p / "state.json").is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


def latest_checkpoint(checkpoints: Path) -> Path | None:
    found = complete_checkpoints(checkpoints)
    return found[-1][1] if found else None


def prune_checkpoints(checkpoints: Path, keep_last: int) -> None:
    found = complete_checkpoints(checkpoints)
    for _, path in found[: max(0, len(found) - keep_last)]:
        shutil.rmtree(path, ignore_errors=True)


def remove_partial(checkpoints: Path) -> list[str]:
    """Delete ``.tmp-*`` leftovers of killed saves; return their names."""
    if not checkpoints.is_dir():
        return []
    gone = []
    for p in checkpoints.iterdir():
        if p.name.startswith(".tmp-"):
            shutil.rmtree(p, ignore_errors=True)
            gone.append(p.name)
    return sorted(gone)


def load_checkpoint(
    path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any
) -> dict[str, Any]:
    """Restore weights, optimizer, scheduler and RNG states from ``path``; return its ``state.json``."""
    try:
        state = json.loads((path / "state.json").read_text())
        weights = load_file(str(path / "trainable.safetensors"))
    except (OSError, ValueError) as err:
        raise InputError(f"{path}: unreadable checkpoint ({err})") from None
    params = dict(model.named_parameters())
    expected = set(trainable_state(model))
    if set(weights) != expected:
        missing = sorted(expected - set(weights))
        extra = sorted(set(weights) - expected)
        raise InputError(
            f"{path}/trainable.safetensors: does not match this model's trainable parameters "
            f"(missing {missing[:3]}, unexpected {extra[:3]})"
        )
    with torch.no_grad():
        for name, value in weights.items():
            if params[name].shape != value.shape:
                raise InputError(
                    f"{path}/trainable.safetensors: {name}: shape {tuple(value.shape)}, model has {tuple(params[name].shape)}"
                )
            params[name].copy_(value)
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=False, map_location="cpu"))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=False))
    set_rng_state(torch.load(path / "rng.pt", weights_only=False))
    return state


def prepare_run_dir(cfg: Any) -> tuple[Path, Path | None]:
    """``(run_path, checkpoint to resume from or None)`` of an SFT or GRPO config; refuses to
    clobber an existing run."""
    run_path = Path(cfg.output_dir) / cfg.run_name
    latest = latest_checkpoint(run_path / "checkpoints")
    has_run = latest is not None or (run_path / "final").exists()
    refuse_existing_run(run_path, has_run, cfg.resume, cfg.overwrite, "checkpoints or final/")
    return run_path, latest if cfg.resume else None
