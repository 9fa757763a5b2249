"""Command line of ``python -m scripts.dataset``: build trace datasets and check, filter, merge, split and stage them.

    build --config configs/data/gsm8k.yaml [key=value ...]
    validate FILE [--skip-bad OUT]
    stats FILE --out DIR [--tokenizer DIR] [--max-len N]
    filter FILE --out OUT [--config RULES.yaml] [max_steps=4 categories=[mixed] ...]
    merge FILE FILE... --out OUT
    split FILE --out DIR (sizes.valid=500 | fractions.valid=0.1) [rest=train]
    curriculum FILE --config configs/curriculum/gsm8k_steps.yaml --out DIR
    contamination TRAIN EVAL [--n 8] [--threshold 0.01] [--out REPORT.json]

Subcommands with settings take ``--config`` and ``key=value`` overrides (``seed=1``);
named flags override both. Exit status: 0 ok, 1 contamination above the threshold,
2 bad input (one line naming file:line: field: reason).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, TypeVar

from common.config import load_config, split_cli
from common.errors import InputError, cli
from scripts.dataset.build import BuildConfig, build, summary
from scripts.dataset.contamination import ContaminationConfig, contamination, default_report_path
from scripts.dataset.contamination import summary as contamination_summary
from scripts.dataset.curriculum import CurriculumConfig, build_curriculum
from scripts.dataset.stats import StatsConfig, report_text, run_stats
from scripts.dataset.tools import FilterConfig, SplitConfig, filter_file, merge, split_file, validate

T = TypeVar("T")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m scripts.dataset", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, help: str, config: bool = True) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help, description=help)
        if config:
            sp.add_argument("--config", help="YAML settings; key=value arguments override them")
        return sp

    sp = add("build", "build a dataset from a config into <out_dir>/<name>/")
    sp = add("validate", "check every line against the record schema", config=False)
    sp.add_argument("file")
    sp.add_argument(
        "--skip-bad", metavar="OUT", help="write good records to OUT, rejects to OUT.rejects.jsonl"
    )
    sp = add("stats", "counts, step histogram, token lengths and truncation share")
    sp.add_argument("file")
    sp.add_argument("--out", required=True, help="output folder for stats.json, stats.txt and PNGs")
    sp.add_argument("--tokenizer", help="Hugging Face tokenizer folder")
    sp.add_argument("--max-len", type=int, help="sequence length to report truncation at (default 512)")
    sp = add("filter", "keep records passing category/length/steps/language/quality rules")
    sp.add_argument("file")
    sp.add_argument("--out", required=True)
    sp = add("merge", "concatenate record files, dropping (and reporting) duplicate questions", config=False)
    sp.add_argument("files", nargs="+")
    sp.add_argument("--out", required=True)
    sp = add("split", "split by id hash into sized or fractional parts")
    sp.add_argument("file")
    sp.add_argument("--out", required=True, help="output folder")
    sp = add("curriculum", "stage records by ordered rules into stage_<name>.jsonl")
    sp.add_argument("file")
    sp.add_argument("--out", required=True, help="output folder")
    sp = add("contamination", "word n-gram overlap of a training set against an eval set")
    sp.add_argument("train")
    sp.add_argument("eval")
    sp.add_argument("--n", type=int, help="n-gram length in words (default 8)")
    sp.add_argument("--threshold", type=float, help="largest acceptable contaminated share (default 0.01)")
    sp.add_argument("--out", help="report path (default: beside TRAIN)")
    return p


def settings(cls: type[T], args: argparse.Namespace, overrides: list[str], **flags: Any) -> T:
    """The subcommand's config: YAML file, then key=value overrides, then the named flags that were given."""
    given = [f"{key}={json.dumps(value)}" for key, value in flags.items() if value is not None]
    return load_config(cls, args.config, [*overrides, *given])


@cli
def main(argv: list[str] | None = None) -> int:
    flags, overrides = split_cli(sys.argv[1:] if argv is None else list(argv))
    args = parser().parse_args(flags)
    if overrides and not hasattr(args, "config"):
        raise InputError(f"{args.command} takes no key=value settings, got {overrides[0]!r}")

    if args.command == "build":
        if not args.config:
            raise InputError("build needs --config configs/data/<name>.yaml")
        cfg = settings(BuildConfig, args, overrides)
        manifest = build(cfg, args.config)
        print(summary(manifest, Path(cfg.out_dir) / cfg.name))
        return 0
    if args.command == "validate":
        return validate(args.file, args.skip_bad)
    if args.command == "stats":
        stats = run_stats(
            args.file,
            args.out,
            settings(StatsConfig, args, overrides, tokenizer=args.tokenizer, max_len=args.max_len),
        )
        print(report_text(stats))
        print(f"wrote {Path(args.out) / 'stats.json'}")
        return 0
    if args.command == "filter":
        filter_file(args.file, args.out, settings(FilterConfig, args, overrides))
        return 0
    if args.command == "merge":
        merge(args.files, args.out)
        return 0
    if args.command == "split":
        split_file(args.file, args.out, settings(SplitConfig, args, overrides))
        return 0
    if args.command == "curriculum":
        if not args.config:
            raise InputError("curriculum needs --config configs/curriculum/<name>.yaml")
        build_curriculum(args.file, args.out, settings(CurriculumConfig, args, overrides))
        return 0
    if args.command == "contamination":
        overlap = settings(ContaminationConfig, args, overrides, n=args.n, threshold=args.threshold)
        out = args.out or default_report_path(args.train, args.eval)
        report = contamination(args.train, args.eval, overlap, out)
        contamination_summary(report, out)
        return 1 if report["above_threshold"] else 0
    raise AssertionError(args.command)
