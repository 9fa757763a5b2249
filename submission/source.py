"""The code a notebook run or a package came from: its git commit and a hash of its source files."""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SOURCE_DIRS = ("common", "trainers_jax", "trainers_torch", "evals", "scripts", "submission", "configs")
SOURCE_SUFFIXES = (".py", ".yaml", ".ipynb", ".json")
ZIP_EPOCH_MIN = 315532800  # 1980-01-01T00:00:00Z: a ZIP cannot store an earlier time


def git(args: list[str]) -> str | None:
    """``git <args>`` in the project's checkout; None when it is not one (e.g. a Kaggle dataset copy)."""
    try:
        out = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def git_commit() -> str | None:
    """HEAD, with ``+dirty`` when tracked files have uncommitted changes; None outside a checkout."""
    head = git(["rev-parse", "HEAD"])
    if head is None:
        return None
    return head + ("+dirty" if git(["status", "--porcelain", "--untracked-files=no"]) else "")


def source_fingerprint() -> dict[str, Any]:
    """The git commit (when the project is a checkout) and a sha256 over its source files."""
    h = hashlib.sha256()
    files = sorted(
        p
        for top in SOURCE_DIRS
        for p in (ROOT / top).rglob("*")
        if p.is_file() and p.suffix in SOURCE_SUFFIXES
    )
    for p in files:
        h.update(str(p.relative_to(ROOT)).encode() + b"\0" + p.read_bytes())
    return {"git_commit": git_commit(), "source_sha256": h.hexdigest(), "files": len(files)}


def source_date_epoch(fallback: int | None = None) -> int:
    """The fixed time stamped into a package: ``SOURCE_DATE_EPOCH``, else HEAD's commit time, else ``fallback``."""
    env = os.environ.get("SOURCE_DATE_EPOCH")
    if env:
        if not env.isdigit():
            from common.errors import InputError

            raise InputError(f"SOURCE_DATE_EPOCH={env!r}: expected whole seconds since 1970")
        return max(ZIP_EPOCH_MIN, int(env))
    commit_time = git(["log", "-1", "--format=%ct"])
    if commit_time and commit_time.isdigit():
        return max(ZIP_EPOCH_MIN, int(commit_time))
    if fallback is None:
        from common.errors import InputError

        raise InputError("no SOURCE_DATE_EPOCH, no git checkout and no run end time: set SOURCE_DATE_EPOCH")
    return max(ZIP_EPOCH_MIN, fallback)
