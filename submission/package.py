"""``make package``: one run's submission as a deterministic, verified, secret-free zip.

    python -m submission.package --run runs/<name> [--sweep <sweep dir>] [--with-model]
                                 [--also runs/<other> ...] [--notebook-config configs/kaggle/notebook.yaml]
                                 [--out-dir dist]

Writes ``<out-dir>/showwork_<run>_<date>_<commit7>.zip`` and prints its path as the last line.
It holds the Kaggle notebook and the configs its notebook config names; the run's evidence
under ``evidence/runs/<run>/`` (resolved config, run manifest, metrics, summary, samples,
plots/, eval/: eval summary, comparison, report, predictions); ``evidence/best_params.json``
with ``--sweep``; ``model/`` with ``--with-model`` (``submission.checkpoint``); the generated
README_SUBMISSION.md and WRITEUP.md (``submission.writeup``); and MANIFEST.json with every
other member's sha256 and size.

Before anything is written: every evidence file must pass its schema
(``submission/schemas/``), the run must have finished and been evaluated with no null or
placeholder figure (``submission.contents.finished_problems``), and no member may hold a secret
(``submission.secret_scan``); a failure exits 2 with one line naming the member, and no zip is
left behind. Absolute home directories in text members are rewritten to ``~`` (listed in
MANIFEST.json). The zip is reproducible: sorted entries, every timestamp
``SOURCE_DATE_EPOCH`` (else the commit time of HEAD, else the run's end time), fixed modes,
deflate at zlib's default level; two builds of the same inputs are byte-identical.
``python -m submission.verify`` checks a package.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import hashlib
import json
import os
import re
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from common.errors import InputError, cli
from common.evidence import validate
from common.runs import sha256_file
from submission import contents
from submission.contents import MANIFEST, MODEL, Evidence, schema_for
from submission.notebook_config import DEFAULT_CONFIG, ROOT, config_files
from submission.secret_scan import is_text, scan
from submission.source import source_date_epoch, source_fingerprint
from submission.writeup import check_word_limit, render_readme, render_writeup

FILE_MODE = 0o100644  # a regular file, rw-r--r--, for every member
UNIX = 3  # ZipInfo.create_system
HOME_DIRS = re.compile(r"(?<![\w.~-])(?:/home/[^/\s\"'<>]+|/Users/[^/\s\"'<>]+|/root)(?=/)")

Source = bytes | Path  # a member's bytes, or the file holding them (large model files are read when written)


# --------------------------------------------------------------------------------------------
# Members
# --------------------------------------------------------------------------------------------


def member_name(path: Path) -> str:
    """A project file's name inside the package: its path in the project, or ``configs/external/<name>``."""
    try:
        return path.resolve().relative_to(ROOT).as_posix()
    except ValueError:
        return f"configs/external/{path.name}"


def run_members(run: Path) -> dict[str, Source]:
    """A run dir's evidence files under ``evidence/runs/<name>/`` (its plots/ and eval/ whole)."""
    out: dict[str, Source] = {}
    prefix = contents.run_prefix(run.name)
    for name in contents.RUN_FILES:
        if (run / name).is_file():
            out[prefix + name] = run / name
    for sub in contents.RUN_DIRS:
        for f in sorted((run / sub).rglob("*")) if (run / sub).is_dir() else []:
            if f.is_file():
                out[prefix + f.relative_to(run).as_posix()] = f
    return out


def project_members(notebook_config: str | Path) -> dict[str, Source]:
    """The notebook and its configs: the notebook config, its ``base:`` chain and the recipe configs it names."""
    out: dict[str, Source] = {contents.NOTEBOOK: ROOT / contents.NOTEBOOK}
    for f in config_files(notebook_config):
        if not f.is_file():
            raise InputError(f"{notebook_config}: names {f}, which does not exist")
        out[member_name(f)] = f
    return out


def rewrite_home(data: bytes) -> bytes:
    """Absolute home directories (``/home/<user>``, ``/Users/<user>``, ``/root``, ``$HOME``) as ``~``."""
    text = data.decode("utf-8")
    home = str(Path.home())
    if home not in ("/", "") and len(Path(home).parts) > 1:
        text = re.sub(re.escape(home) + r"(?=/)", "~", text)
    return HOME_DIRS.sub("~", text).encode("utf-8")


def _read(src: Source) -> bytes:
    return src if isinstance(src, bytes) else src.read_bytes()


def _size(src: Source) -> int:
    return len(src) if isinstance(src, bytes) else src.stat().st_size


def _sha256(src: Source) -> str:
    return hashlib.sha256(src).hexdigest() if isinstance(src, bytes) else sha256_file(src)


# --------------------------------------------------------------------------------------------
# The zip
# --------------------------------------------------------------------------------------------


def write_zip(path: Path, members: dict[str, Source], epoch: int) -> None:
    """Sorted members, each with the same time, mode and compression; written to a temp file, then renamed."""
    stamp = time.gmtime(epoch)[:6]
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED, allowZip64=True) as zf:
            for name in sorted(members):
                info = zipfile.ZipInfo(name, date_time=stamp)
                info.compress_type = zipfile.ZIP_DEFLATED
                info.create_system = UNIX
                info.external_attr = FILE_MODE << 16
                src = members[name]
                if isinstance(src, bytes):
                    zf.writestr(info, src)
                else:
                    info.file_size = src.stat().st_size
                    with (
                        src.open("rb") as fh,
                        zf.open(info, "w", force_zip64=info.file_size > zipfile.ZIP64_LIMIT) as out,
                    ):
                        while block := fh.read(1 << 22):
                            out.write(block)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


# --------------------------------------------------------------------------------------------
# Building
# --------------------------------------------------------------------------------------------


def _end_epoch(run: Path) -> int | None:
    """The run's end time in seconds (a package's time when there is neither SOURCE_DATE_EPOCH nor git)."""
    try:
        end = json.loads((run / "run_manifest.json").read_text()).get("end_time")
        return int(dt.datetime.fromisoformat(end).timestamp())
    except (OSError, ValueError, TypeError, AttributeError):
        return None  # the manifest's own checks say what is wrong with it


def _refuse(problems: Sequence[Any], what: str, shown: int = 3) -> None:
    """Raise one ``InputError`` line naming the first few problems (``(member, why)`` pairs or hits)."""
    if problems:
        text = "; ".join(f"{p[0]}: {p[1]}" if isinstance(p, tuple) else str(p) for p in problems[:shown])
        more = f" (and {len(problems) - shown} more)" if len(problems) > shown else ""
        raise InputError(f"{what}: {text}{more}; no package written")


@contextlib.contextmanager
def _model_members(run: Path, with_model: bool, epoch: int, scratch: Path) -> Iterator[dict[str, Source]]:
    if not with_model:
        yield {}
        return
    from submission.checkpoint import export_orbax

    merged = run / "merged"
    if not (merged / "config.json").is_file():
        raise InputError(
            f"{run}: no merged/ HF export to convert (WITH_MODEL=1 packages the run's final weights)"
        )
    out = export_orbax(merged, scratch / MODEL, epoch)
    yield {f"{MODEL}/{f.relative_to(out).as_posix()}": f for f in sorted(out.rglob("*")) if f.is_file()}


def build_package(
    run: str | Path,
    *,
    also: Sequence[str | Path] = (),
    sweep: str | Path | None = None,
    notebook_config: str | Path = DEFAULT_CONFIG,
    notebook_log: dict[str, Any] | None = None,
    with_model: bool = False,
    out_dir: str | Path = "dist",
    say: Callable[[str], object] = print,
) -> Path:
    """Build the package of ``run`` (plus the evidence of the runs in ``also``); returns the zip's path."""
    run = Path(run)
    runs = [run, *map(Path, also)]
    for r in runs:
        if not (r / "run_manifest.json").is_file():
            raise InputError(f"{r}: not a run directory (no run_manifest.json)")
    names = [r.name for r in runs]
    if len(set(names)) != len(names):
        raise InputError(f"runs {', '.join(map(str, runs))}: two runs share a name")
    epoch = source_date_epoch(_end_epoch(run))
    source = source_fingerprint()
    commit = source["git_commit"]
    tag = (
        (commit[:7] + ("-dirty" if commit.endswith("+dirty") else ""))
        if commit
        else source["source_sha256"][:7]
    )
    date = time.strftime("%Y-%m-%d", time.gmtime(epoch))
    name = f"showwork_{run.name}_{date}_{tag}.zip"

    members: dict[str, Source] = project_members(notebook_config)
    for r in runs:
        members.update(run_members(r))
    if sweep is not None:
        best = Path(sweep) / "best_params.json"
        if not best.is_file():
            raise InputError(f"--sweep {sweep}: no best_params.json (did the sweep finish?)")
        members[contents.BEST_PARAMS] = best
    if notebook_log is not None:
        members[contents.NOTEBOOK_LOG] = (json.dumps(notebook_log, indent=2) + "\n").encode()

    rewritten = load_members(members)
    loaded = {m: _read(v) for m, v in members.items()}  # all bytes after load_members
    say(f"scanning {len(members)} members for secrets")
    _refuse(scan(loaded.items()), "secrets found")
    _refuse([(m, p) for m in sorted(loaded) if (s := schema_for(m)) for p in _schema_problem(s, loaded[m])],
            "evidence does not match its schema")  # fmt: skip
    config_path = Path(notebook_config) if Path(notebook_config).is_absolute() else ROOT / notebook_config
    package = {
        "name": name,
        "run": run.name,
        "runs": names,
        "date": date,
        "source_date_epoch": epoch,
        "source": {"git_commit": commit, "source_sha256": source["source_sha256"]},
        "notebook_config": member_name(config_path),
        "sweep": None if sweep is None else Path(sweep).name,
        "with_model": with_model,
    }
    files = dict(loaded)
    sizes = {m: _size(v) for m, v in members.items()}
    _refuse(contents.finished_problems(Evidence(files, sizes, package)), "not a finished, evaluated run")

    with (
        tempfile.TemporaryDirectory(prefix="showwork-model-") as scratch,
        _model_members(run, with_model, epoch, Path(scratch)) as model,
    ):
        if model:
            rewritten += load_members(model, keep_binary_paths=True)
            say(f"model: {len(model)} files of the Orbax checkpoint; scanning them for secrets")
            _refuse(scan((m, _read(v)) for m, v in model.items()), "secrets found")
        members.update(model)
        ev = Evidence(files, {m: _size(v) for m, v in members.items()}, package)
        writeup = render_writeup(ev)
        check_word_limit(writeup)
        members[contents.WRITEUP] = writeup.encode()
        members[contents.README] = render_readme(ev).encode()
        manifest = {
            "format": contents.FORMAT,
            "package": package,
            "rewritten_home_paths": sorted(rewritten),
            "members": {
                m: {
                    "sha256": _sha256(v),
                    "bytes": _size(v),
                    **({"schema": s} if (s := schema_for(m)) else {}),
                }
                for m, v in sorted(members.items())
            },
        }
        validate("package_manifest", manifest, MANIFEST)
        members[MANIFEST] = (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()
        generated = (contents.WRITEUP, contents.README, MANIFEST)
        _refuse(scan((m, _read(members[m])) for m in generated), "secrets found")
        path = Path(out_dir) / name
        write_zip(path, members, epoch)
    return path


def load_members(members: dict[str, Source], keep_binary_paths: bool = False) -> list[str]:
    """Read the members into bytes in place, text with its home directories rewritten; returns the rewritten.

    With ``keep_binary_paths``, binary files stay paths, read only when scanned and written (model weights).
    """
    rewritten = []
    for m, src in members.items():
        if keep_binary_paths and isinstance(src, Path):
            with src.open("rb") as fh:
                if b"\0" in fh.read(8192):
                    continue
        data = _read(src)
        members[m] = rewrite_home(data) if is_text(data) else data
        if members[m] != data:
            rewritten.append(m)
    return rewritten


def _schema_problem(schema: str, data: Source) -> list[str]:
    from common.evidence import problems

    try:
        doc = json.loads(_read(data))
    except ValueError as err:
        return [f"invalid JSON: {err}"]
    found = problems(schema, doc)
    return [f"{found[0]} (submission/schemas/{schema}.json)"] if found else []


@cli
def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(prog="python -m submission.package", description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", required=True, help="the run dir to package (runs/<name>)")
    ap.add_argument("--also", nargs="*", default=[], help="further run dirs whose evidence goes in too")
    ap.add_argument("--sweep", help="a sweep dir holding best_params.json")
    ap.add_argument(
        "--with-model", action="store_true", help="the final checkpoint, Orbax (Tunix's Gemma 3 layout)"
    )
    ap.add_argument("--notebook-config", default=os.environ.get("SHOWWORK_NOTEBOOK_CONFIG", DEFAULT_CONFIG))
    ap.add_argument("--out-dir", default="dist")
    args = ap.parse_args(argv)
    start = time.perf_counter()
    path = build_package(
        args.run, also=args.also, sweep=args.sweep, notebook_config=args.notebook_config,
        with_model=args.with_model, out_dir=args.out_dir,
    )  # fmt: skip
    with zipfile.ZipFile(path) as zf:
        count = len(zf.infolist())
    print(
        f"package: {count} members, {path.stat().st_size:,} bytes, built in {time.perf_counter() - start:.1f} s"
    )
    print(path)
    return path


if __name__ == "__main__":
    main()
