"""Check a package built by ``submission.package``: ``python -m submission.verify <zip>``.

In order, and stopping at the first failure:
1. MANIFEST.json is there and valid (``submission/schemas/package_manifest.json``);
2. every member is listed in it, every listed member is in the zip, and each one's size and
   sha256 match;
3. each evidence file passes its schema (``submission.contents.schema_for``);
4. the evidence is a finished, evaluated run's: no null or placeholder figure, the same
   primary score in the eval summary and the comparison (``submission.contents.finished_problems``);
5. README_SUBMISSION.md and WRITEUP.md are what the evidence renders to, figure for figure
   (``submission.writeup``), and the writeup is within the word limit.

Exit 0 when all hold; exit 1 with one line naming the first member that does not (exit 2 when
the path is not a file).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import zipfile
import zlib
from pathlib import Path
from typing import Any

from common.errors import InputError, cli
from common.evidence import problems
from submission import contents
from submission.contents import MANIFEST, MODEL, Evidence, schema_for
from submission.writeup import WORD_LIMIT, render_readme, render_writeup, word_count


def _read(zf: zipfile.ZipFile, name: str) -> bytes:
    """A member's bytes; ``UnreadableMember`` when they no longer inflate or fail their CRC."""
    try:
        return zf.read(name)
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as err:
        raise UnreadableMember(f"unreadable ({err})") from None


class UnreadableMember(Exception):
    pass


def _first_difference(actual: str, expected: str) -> tuple[int, str]:
    """``(line, what)`` of the first line where ``actual`` and ``expected`` part."""
    got, want = actual.splitlines(), expected.splitlines()
    for i, (a, b) in enumerate(zip(got, want, strict=False), start=1):
        if a != b:
            return i, f"says {a.strip()!r}, the evidence gives {b.strip()!r}"
    return min(len(got), len(want)) + 1, f"{len(got)} lines, the evidence renders {len(want)}"


def check(path: str | Path) -> list[tuple[str, str]]:
    """``(member, problem)`` in the order of the checks above; empty when the package verifies."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    try:
        zf = zipfile.ZipFile(path)
    except zipfile.BadZipFile as err:
        return [(str(path), f"not a zip file ({err})")]
    with zf:
        infos = {i.filename: i for i in zf.infolist()}
        if MANIFEST not in infos:
            return [(MANIFEST, "missing")]
        try:
            manifest = json.loads(_read(zf, MANIFEST))
        except (ValueError, UnreadableMember) as err:
            return [(MANIFEST, f"not readable JSON: {err}")]
        found = problems("package_manifest", manifest)
        if found:
            return [(MANIFEST, found[0])]
        listed = manifest["members"]
        out: list[tuple[str, str]] = []
        files = {}
        for name in sorted((set(infos) | set(listed)) - {MANIFEST}):
            if name not in infos:
                out.append((name, f"listed in {MANIFEST} but missing from the zip"))
                continue
            if name not in listed:
                out.append((name, f"in the zip but not listed in {MANIFEST}"))
                continue
            try:
                data = _read(zf, name)
            except UnreadableMember as err:
                out.append((name, str(err)))
                continue
            want = listed[name]
            digest = hashlib.sha256(data).hexdigest()
            if len(data) != want["bytes"]:
                out.append((name, f"{len(data)} bytes, {MANIFEST} says {want['bytes']}"))
            elif digest != want["sha256"]:
                out.append((name, f"sha256 {digest} does not match {MANIFEST}'s {want['sha256']}"))
            elif not name.startswith(f"{MODEL}/"):
                files[name] = data
        if out:
            return out
    ev = Evidence(files, {n: i.file_size for n, i in infos.items()}, manifest["package"])
    for name in ev.members:
        schema = schema_for(name)
        if schema and schema != "package_manifest":
            try:
                found = problems(schema, ev.json(name))
            except InputError as err:
                found = [str(err)]
            out += [(name, f"{found[0]} (submission/schemas/{schema}.json)")] if found else []
    if out:
        return out
    out += contents.finished_problems(ev)
    if out:
        return out
    for name, render in ((contents.README, render_readme), (contents.WRITEUP, render_writeup)):
        if not ev.has(name):
            out.append((name, "missing"))
            continue
        expected, actual = render(ev), ev.text(name)
        if actual != expected:
            line, what = _first_difference(actual, expected)
            out.append((f"{name}:{line}", what))
    if ev.has(contents.WRITEUP) and (words := word_count(ev.text(contents.WRITEUP))) > WORD_LIMIT:
        out.append((contents.WRITEUP, f"{words} words, over the {WORD_LIMIT}-word limit"))
    return out


@cli
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m submission.verify", description=__doc__.split("\n\n")[0])
    ap.add_argument("package", help="a zip built by `make package`")
    args = ap.parse_args(argv)
    found: Any = check(args.package)
    if found:
        member, problem = found[0]
        more = f" ({len(found) - 1} more problems)" if len(found) > 1 else ""
        print(f"FAIL {member}: {problem}{more}", file=sys.stderr)
        return 1
    with zipfile.ZipFile(args.package) as zf:
        n = len(zf.infolist())
    print(
        f"ok: {args.package}: {n} members match {MANIFEST}; evidence valid; README and WRITEUP match the evidence"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
