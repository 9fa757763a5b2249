"""JSONL reading and writing: errors name ``file:line``; writes are atomic or resumable."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from common.errors import InputError

MAX_LINE_BYTES = 16 * 1024 * 1024
_UMASK = os.umask(0)
os.umask(_UMASK)


def iter_jsonl(path: str | Path, max_line_bytes: int = MAX_LINE_BYTES) -> Iterator[tuple[int, Any]]:
    """Yield ``(line_number, value)`` for each non-blank line; raise ``InputError`` on the first bad one.

    Lines longer than ``max_line_bytes`` are rejected without being held in memory whole.
    """
    for lineno, value, error in scan_jsonl(path, max_line_bytes):
        if error is not None:
            raise InputError(f"{path}:{lineno}: {error}")
        yield lineno, value


def scan_jsonl(
    path: str | Path, max_line_bytes: int = MAX_LINE_BYTES
) -> Iterator[tuple[int, Any, str | None]]:
    """Yield ``(line_number, value, error)`` for every non-blank line, never raising on content.

    ``error`` is ``None`` for a good line; otherwise ``value`` is ``None`` and ``error`` says why.
    """
    p = Path(path)
    try:
        fh = p.open("rb")
    except FileNotFoundError:
        raise InputError(f"{p}: file not found") from None
    except IsADirectoryError:
        raise InputError(f"{p}: is a directory, expected a .jsonl file") from None
    with fh:
        lineno = 0
        while True:
            raw = fh.readline(max_line_bytes + 1)
            if not raw:
                break
            lineno += 1
            if len(raw) > max_line_bytes and not raw.endswith(b"\n"):
                while (chunk := fh.readline(1 << 20)) and not chunk.endswith(b"\n"):
                    pass
                yield lineno, None, f"line longer than {max_line_bytes} bytes"
                continue
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                yield lineno, None, f"not UTF-8 ({err.reason} at byte {err.start})"
                continue
            if not text.strip():
                continue
            try:
                yield lineno, json.loads(text), None
            except json.JSONDecodeError as err:
                yield lineno, None, f"invalid JSON: {err.msg} (column {err.colno})"


def read_jsonl(path: str | Path) -> list[Any]:
    """All values of a JSONL file (strict)."""
    return [value for _, value in iter_jsonl(path)]


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "w") -> Iterator[IO[Any]]:
    """Write to a temp file beside ``path`` and rename it into place only on success."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the usual mode of a new file
    try:
        with os.fdopen(fd, mode, encoding=None if "b" in mode else "utf-8") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, p)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def dumps(record: Any) -> str:
    """One JSONL line (no trailing newline); non-ASCII kept readable."""
    return json.dumps(record, ensure_ascii=False)


def write_jsonl(path: str | Path, records: Iterable[Any]) -> int:
    """Atomically write records to ``path``; returns the count."""
    n = 0
    with atomic_open(path) as fh:
        for rec in records:
            fh.write(dumps(rec) + "\n")
            n += 1
    return n


def write_json(path: str | Path, value: Any) -> None:
    """Atomically write pretty JSON."""
    with atomic_open(path) as fh:
        json.dump(value, fh, indent=2, ensure_ascii=False)
        fh.write("\n")


class JsonlAppender:
    """Append records one at a time, durably, so a crashed job can resume.

    On open, a torn last line (a crash mid-write) is cut off; ``existing`` holds the
    records already complete, so callers can skip the work they describe.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.existing: list[Any] = []
        if self.path.exists():
            data = self.path.read_bytes()
            keep = data.rfind(b"\n") + 1
            if keep < len(data):
                with self.path.open("r+b") as fh:
                    fh.truncate(keep)
            self.existing = read_jsonl(self.path)
        self._fh = self.path.open("a", encoding="utf-8")

    def append(self, record: Any) -> None:
        self._fh.write(dumps(record) + "\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> JsonlAppender:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
