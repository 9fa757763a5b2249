"""The schema-based YAML-trace generator: pattern files + vocabulary -> solver-checked records.

For every split it allots items to experts by ``shares`` and to each expert's patterns
evenly, then samples each item: vocabulary entries (distinct per list), variables, derived
values, constraints (the whole sample is redrawn until every constraint holds; one that holds
in none of ``max_draws`` draws is an error naming the file and constraint), a phrasing, the
question, the trace and the answer expression. The trace is executed by ``common.traces``
exactly as a model's completion would be (``<reasoning>trace</reasoning>``) and the item is
kept only when it executes to the answer expression's value; anything else is a rejection,
counted per pattern with its reason, and a pattern rejecting more than ``max_reject_share``
of its samples fails the build. Questions are deduplicated (normalised text) across splits.

Splits: the last ``heldout_templates`` phrasings of every pattern are used only by the
splits in ``template_splits`` (phrasings never trained on); every other split uses the
remaining phrasings with its own random stream (held out by seed). Everything follows
``seed``: the same config gives byte-identical files.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from tqdm import tqdm

from common.errors import InputError
from common.prompts import format_target
from common.records import allot
from common.traces import parse_trace
from scripts.dataset.text import normalise
from scripts.dataset.traces.expr import ExprError
from scripts.dataset.traces.patterns import COMPOSITION, EXPERTS, Pattern, PatternError, load_patterns
from scripts.dataset.traces.render import Context, RenderError, number_text, trace_record, trace_text
from scripts.dataset.traces.vocab import Vocab, load_vocab

SOURCE = "yaml_traces"


@dataclass
class TraceGenConfig:
    patterns: str = "scripts/dataset/traces/patterns"  # <expert>/<name>.yaml
    vocab: str = "scripts/dataset/traces/vocab"  # *.yaml lists
    sizes: dict[str, int] = field(
        default_factory=lambda: {"train": 3000, "valid": 200, "heldout_seed": 600, "heldout_template": 600}
    )
    # The notebook's best mix (run 18): entity 20%, arithmetic 30%, rate 10%, comparison 15%,
    # percentage 10%, composition 15%. Renormalised over the experts that have patterns.
    shares: dict[str, float] = field(
        default_factory=lambda: {"arithmetic": 0.30, "entity_track": 0.20, "rate_equation": 0.10,
                                 "comparison": 0.15, "percentage": 0.10, "composition": 0.15}
    )  # fmt: skip
    heldout_templates: int = 1  # the last N phrasings of each pattern: only template_splits use them
    template_splits: list[str] = field(default_factory=lambda: ["heldout_template"])
    max_reject_share: float = 0.01  # a pattern rejecting more of its samples fails the build
    max_draws: int = 1000  # constraint redraws for one item before the constraint counts as unsatisfiable
    max_duplicate_factor: int = 30  # samples per wanted item before a pattern counts as too narrow
    answer_places: int = 2  # answers must be decimals with at most this many places

    def __post_init__(self) -> None:
        for name, n in self.sizes.items():
            if n < 0:
                raise ValueError(f"sizes.{name}: must be >= 0, got {n}")
        for name, share in self.shares.items():
            if name not in EXPERTS:
                raise ValueError(f"shares.{name}: unknown expert; known: {', '.join(EXPERTS)}")
            if share < 0:
                raise ValueError(f"shares.{name}: must be >= 0, got {share}")
        if self.heldout_templates < 0:
            raise ValueError(f"heldout_templates: must be >= 0, got {self.heldout_templates}")
        if not 0 <= self.max_reject_share <= 1:
            raise ValueError(f"max_reject_share: must be in [0, 1], got {self.max_reject_share}")


class Reject(Exception):
    """One sample the build leaves out; ``reason`` is its short, countable cause."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.detail = detail


@dataclass
class Sample:
    question: str
    trace: str
    answer: str
    template: int


def _draw_number(spec: Any, rng: random.Random) -> Fraction:
    first, last = spec.grid()
    return spec.step * rng.randint(first, last)


def sample_values(pattern: Pattern, vocab: Vocab, rng: random.Random, max_draws: int) -> Context:
    """Vocabulary entries, variables and derived values that meet every constraint."""
    entries: dict[str, dict[str, Any]] = {}
    by_list: dict[str, list[str]] = {}
    for slot, name in pattern.vocab.items():
        by_list.setdefault(name, []).append(slot)
    for name, slots in by_list.items():
        for slot, entry in zip(slots, rng.sample(vocab.lists[name], len(slots)), strict=True):
            entries[slot] = entry
    failures: Counter[str] = Counter()
    for _ in range(max_draws):
        numbers: dict[str, Fraction] = {}
        choices: dict[str, dict[str, Any]] = {}
        for slot, entry in entries.items():
            for key, value in entry.items():
                if isinstance(value, int | float) and not isinstance(value, bool):
                    numbers[f"{slot}.{key}"] = (
                        Fraction(repr(value)) if isinstance(value, float) else Fraction(value)
                    )
        for name, spec in pattern.variables.items():
            if spec.kind == "choice":
                choices[name] = rng.choice(spec.options)
                numbers[name] = choices[name]["value"]
            else:
                numbers[name] = _draw_number(spec, rng)
        try:
            for name, expr in pattern.derived:
                numbers[name] = expr(numbers)
            failed = next((c for c in pattern.constraints if not c.holds(c.expr(numbers))), None)
        except ExprError as err:  # division by zero in a derived value: redraw
            failures[f"derived ({err})"] += 1
            continue
        if failed is None:
            return Context(entries, numbers, choices)
        failures[f"{failed.where} ({failed.expr.text})"] += 1
    worst = failures.most_common(1)[0][0] if failures else "constraints"
    raise PatternError(
        f"{pattern.path}: {worst}: unsatisfiable: no draw out of {max_draws} met every constraint "
        f"(failures: {dict(failures.most_common(3))})"
    )


def make_sample(
    pattern: Pattern, vocab: Vocab, rng: random.Random, templates: list[int], cfg: TraceGenConfig
) -> Sample:
    """One checked sample; ``Reject`` when it cannot be rendered or does not execute to its answer."""
    ctx = sample_values(pattern, vocab, rng, cfg.max_draws)
    k = rng.choice(templates)
    try:
        question = ctx.render(pattern.templates[k])
        trace = trace_text(pattern, ctx)
        value = pattern.answer(ctx.numbers)
        answer = number_text(value).replace(",", "")
    except (RenderError, ExprError) as err:
        raise Reject("render", str(err)) from None
    if value < 0:
        raise Reject("negative_answer", answer)
    if "." in answer and len(answer.split(".")[1]) > cfg.answer_places:
        raise Reject("answer_places", answer)
    result = parse_trace(format_target(trace, answer))
    if not result.valid:
        raise Reject(f"solver_{result.error_kind}", result.error or "")
    if result.value != value:
        raise Reject("solver_disagrees", f"trace gives {result.value}, answer expression {value}")
    return Sample(question, trace, answer, k)


def pattern_counts(patterns: list[Pattern], total: int, shares: dict[str, float]) -> dict[str, int]:
    """Items per pattern: experts by share, then each expert's patterns evenly."""
    by_expert: dict[str, list[Pattern]] = {}
    for p in patterns:
        by_expert.setdefault(p.expert, []).append(p)
    missing = sorted(set(by_expert) - set(shares))
    if missing:
        raise InputError(f"shares: no share for expert '{missing[0]}', which has patterns")
    experts = allot(total, {e: shares[e] for e in by_expert})
    out = {}
    for expert, group in by_expert.items():
        out.update(allot(experts[expert], {p.name: 1.0 for p in group}))
    return out


@dataclass
class PatternStats:
    expert: str
    shape: str
    samples: int = 0
    kept: dict[str, int] = field(default_factory=dict)  # per split
    duplicates: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    examples: list[dict[str, str]] = field(default_factory=list)  # a few rejects, for the report

    def as_dict(self) -> dict[str, Any]:
        return {
            "expert": self.expert,
            "shape": self.shape,
            "samples": self.samples,
            "kept": self.kept,
            "duplicates": self.duplicates,
            "rejected": sum(self.rejected.values()),
            "reject_share": round(sum(self.rejected.values()) / self.samples, 6) if self.samples else 0.0,
            "reject_reasons": dict(self.rejected.most_common()),
        }


def check_rejects(pattern: Pattern, st: PatternStats, cfg: TraceGenConfig) -> None:
    """Fail the build, naming the pattern, when it rejected more than ``max_reject_share`` of its samples."""
    share = sum(st.rejected.values()) / st.samples if st.samples else 0.0
    if share > cfg.max_reject_share:
        reason, n = st.rejected.most_common(1)[0]
        raise InputError(
            f"{pattern.path}: pattern '{pattern.name}' rejected {share:.1%} of {st.samples} samples (limit "
            f"{cfg.max_reject_share:.1%}); most often {reason} ({n}x): fix the pattern's constraints or trace"
        )


def template_sets(pattern: Pattern, cfg: TraceGenConfig) -> tuple[list[int], list[int]]:
    """``(training phrasings, held-out phrasings)`` of a pattern, by index."""
    n = len(pattern.templates)
    held = min(cfg.heldout_templates, n - 1)
    return list(range(n - held)), list(range(n - held, n))


def generate(
    cfg: TraceGenConfig, seed: int
) -> tuple[dict[str, list[dict[str, Any]]], list[dict[str, Any]], dict[str, Any]]:
    """Records per split, rejects, and the generator's report (per-pattern counts and reasons)."""
    vocab = load_vocab(cfg.vocab)
    patterns = load_patterns(cfg.patterns, vocab)
    stats = {p.name: PatternStats(p.expert, p.shape) for p in patterns}
    seen: set[str] = set()
    splits: dict[str, list[dict[str, Any]]] = {}
    rejects: list[dict[str, Any]] = []
    for split, size in cfg.sizes.items():
        counts = pattern_counts(patterns, size, cfg.shares)
        records: list[dict[str, Any]] = []
        held_out = split in cfg.template_splits
        for p in tqdm(patterns, desc=f"traces {split}", leave=False):
            train_t, held_t = template_sets(p, cfg)
            templates = held_t if held_out else train_t
            if held_out and not templates:
                raise InputError(
                    f"{p.path}: templates: no held-out phrasing for split '{split}' (heldout_templates=0)"
                )
            st = stats[p.name]
            rng = random.Random(f"{seed}/{split}/{p.name}")
            kept = 0
            budget = cfg.max_duplicate_factor * counts[p.name] + 10
            while kept < counts[p.name]:
                if budget == 0:
                    check_rejects(p, st, cfg)
                    raise InputError(
                        f"{p.path}: variables: too few distinct questions for split '{split}' "
                        f"({kept} of {counts[p.name]} after {st.duplicates} duplicates); widen the ranges"
                    )
                budget -= 1
                st.samples += 1
                try:
                    s = make_sample(p, vocab, rng, templates, cfg)
                except Reject as rej:
                    st.rejected[rej.reason] += 1
                    rejects.append(
                        {
                            "where": f"{p.path}",
                            "task": p.name,
                            "reason": rej.reason,
                            "detail": rej.detail[:300],
                        }
                    )
                    continue
                key = normalise(s.question)
                if key in seen:
                    st.duplicates += 1
                    st.samples -= 1  # a duplicate is not a judged sample
                    continue
                seen.add(key)
                kept += 1
                meta = {
                    "source": SOURCE,
                    "category": p.expert,
                    "expert": p.expert,
                    "experts": p.experts,
                    "pattern": p.name,
                    "template": f"{p.name}#{s.template}",
                    "template_heldout": s.template in held_t,
                    "shape": p.shape,
                    "split_kind": "template" if held_out else "seed",
                }
                records.append(trace_record("", s.question, s.answer, s.trace, meta))
            st.kept[split] = kept
        random.Random(f"{seed}/{split}/order").shuffle(records)
        for i, rec in enumerate(records):
            rec["id"] = f"yt-{split}-{i:05d}"
        splits[split] = records
    for p in patterns:
        check_rejects(p, stats[p.name], cfg)
    report = {
        "patterns": {name: st.as_dict() for name, st in stats.items()},
        "n_patterns": len(patterns),
        "by_expert": dict(Counter(p.expert for p in patterns)),
        "templates": sum(len(p.templates) for p in patterns),
        "vocab_lists": {name: len(entries) for name, entries in vocab.lists.items()},
        "composition_experts": sorted({len(p.experts) for p in patterns if p.expert == COMPOSITION}),
    }
    return splits, rejects, report
