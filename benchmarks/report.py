"""The benchmark suite's verdict from its saved JSON: a markdown table, a PNG bar chart, and a
comparison of the step times with the previous saved run (``pytest-benchmark compare``).

    python -m benchmarks.report --json runs/bench/latest.json --storage runs/bench --out runs/bench/report

Writes ``<out>.md`` and ``<out>.png``; several ``--json`` files (runs of parts of the suite, e.g.
``-k sft`` and ``-k "not sft"``) are reported together. Every row is one entry's ``extra_info`` (tokens/s of
real tokens or samples/s, step time, MFU, peak memory, its peer and the ratio to it).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from common.errors import InputError, cli
from common.jsonl import atomic_open

COLUMNS = ("group", "side", "tokens/s", "samples/s", "step s", "MFU", "peak RSS MB", "peer", "ratio")


def load_entries(path: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """``(machine_info, [{group, name, extra_info, median}, ...])`` of a pytest-benchmark JSON."""
    from benchmarks.harness import INFO_KEYS, load_json

    if not path.is_file():
        raise InputError(f"{path}: no benchmark results (run `make bench` first)")
    try:
        data = load_json(path)
        rows = [
            {"group": b.get("group") or "", "name": b["name"], "info": b.get("extra_info") or {},
             "median": (b.get("stats") or {}).get("median")}
            for b in data["benchmarks"]
        ]  # fmt: skip
    except (ValueError, KeyError, TypeError) as err:
        raise InputError(f"{path}: not a pytest-benchmark JSON ({err})") from None
    rows = [r for r in rows if all(k in r["info"] for k in INFO_KEYS)]
    if not rows:
        raise InputError(f"{path}: no entry carries {', '.join(INFO_KEYS)} in extra_info")
    return data.get("machine_info") or {}, rows


def _fmt(value: Any, pattern: str) -> str:
    return "" if value is None else pattern.format(value)


def markdown(machine: dict[str, Any], rows: list[dict[str, Any]], sources: list[Path]) -> str:
    first = rows[0]["info"]
    lines = [
        f"# Benchmarks ({', '.join(map(str, sources))})",
        "",
        f"{machine.get('cpu', {}).get('brand_raw', 'unknown CPU')}, {first.get('threads')} threads, "
        f"{first.get('device')} {first.get('dtype')}; matmul peak {first.get('matmul_peak_gflops')} GFLOP/s "
        f"({first.get('matmul_peak_kernel', 'torch.mm')}) measured in the same run; load: {first.get('load')}.",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
    ]
    for r in rows:
        i = r["info"]
        cells = [
            r["group"], i.get("side", r["name"]), _fmt(i["tokens_per_s"], "{:.1f}"), _fmt(i["samples_per_s"], "{:.3f}"),
            _fmt(i.get("step_time_s"), "{:.2f}"), _fmt(i["mfu"], "{:.1%}"), _fmt(i["peak_rss_mb"], "{:.0f}"),
            i["peer"] or "", _fmt(i["ratio_to_peer"], "{:.2f}x"),
        ]  # fmt: skip
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def chart(rows: list[dict[str, Any]], out: Path) -> None:
    """One bar per entry (tokens/s), grouped, each labelled with its ratio to its peer."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = list(dict.fromkeys(r["group"] for r in rows))
    fig, axes = plt.subplots(1, len(groups), figsize=(3.2 * len(groups), 3.8), squeeze=False)
    for ax, group in zip(axes[0], groups, strict=True):
        mine = [r for r in rows if r["group"] == group]
        names = [r["info"].get("side", r["name"]).replace("_", "\n", 1) for r in mine]
        values = [r["info"]["tokens_per_s"] for r in mine]
        bars = ax.bar(
            range(len(mine)), values, color=["#2b6cb0" if "ours" in n else "#a0aec0" for n in names]
        )
        for bar, r in zip(bars, mine, strict=True):
            ratio = r["info"]["ratio_to_peer"]
            if ratio is not None:
                ax.annotate(f"{ratio:.2f}x", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                            ha="center", va="bottom", fontsize=8)  # fmt: skip
        ax.set_xticks(range(len(mine)), names, fontsize=7)
        ax.set_title(group, fontsize=9)
        ax.set_ylabel("tokens/s" if ax is axes[0][0] else "")
    fig.tight_layout()
    with atomic_open(out, "wb") as fh:
        fig.savefig(fh, format="png", dpi=110)
    plt.close(fig)


def saved_runs(storage: Path) -> list[Path]:
    """The runs saved under ``storage`` (``NNNN_<commit>_<date>_<time>[_uncommitted-changes].json``),
    oldest first by the date and time in their names: counters repeat when runs come from several
    checkouts."""

    def when(path: Path) -> tuple[str, str]:
        stamp = re.search(r"_(\d{8})_(\d{6})(?:_|$)", path.stem)
        return (stamp.group(1) + stamp.group(2) if stamp else "", path.name)

    return sorted(storage.glob("*/[0-9][0-9][0-9][0-9]_*.json"), key=when)


def compare(storage: Path) -> str:
    """``pytest-benchmark compare`` of the two newest saved runs (step-time medians), or why not."""
    saved = saved_runs(storage)
    if len(saved) < 2:
        return f"(no earlier run saved under {storage} to compare with)\n"
    run_cli = "import sys; from pytest_benchmark.cli import main; sys.argv[0] = 'pytest-benchmark'; main()"
    cmd = [sys.executable, "-c", run_cli, "--storage", f"file://{storage}", "compare",
           "--columns=median,min,max", "--group-by=group", "--sort=name", str(saved[-2]), str(saved[-1])]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True)
    return (
        proc.stdout
        if proc.returncode == 0
        else f"(compare failed: {proc.stderr.strip().splitlines()[-1:]})\n"
    )


@cli
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", type=Path, nargs="+", default=[Path("runs/bench/latest.json")])
    parser.add_argument("--storage", type=Path, default=Path("runs/bench"))
    parser.add_argument("--out", type=Path, default=Path("runs/bench/report"))
    args = parser.parse_args(argv)
    machine: dict[str, Any] = {}
    rows: list[dict[str, Any]] = []
    for path in args.json:
        machine, more = load_entries(path)
        rows += more
    text = markdown(machine, rows, args.json)
    text += "\n## Step times against the previous saved run\n\n```\n" + compare(args.storage) + "```\n"
    md, png = args.out.with_suffix(".md"), args.out.with_suffix(".png")
    md.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(md) as fh:
        fh.write(text)
    chart(rows, png)
    print(text)
    print(f"wrote {md} and {png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
