"""Property tests of the trace solver and its reward: any completion, any trace-shaped YAML,
any gold; nothing raises, the tier is one of five and the reward stays within its tiers."""

from __future__ import annotations

from fractions import Fraction
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common.rewards import RewardConfig, build_rewards
from common.traces import OUTCOMES, TIERS, execute, parse_trace

FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
TIER_VALUES = {1.0, 0.7, 0.5, 0.3, 0.0}

NAMES = st.sampled_from(["a", "b", "rate", "time", "result", "step1", "prev", "prev.result", "x.y", "", "1x"])
SCALARS = st.one_of(
    NAMES,
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.none(),
    st.text(max_size=8),
)
OPS = st.sampled_from(["init", "compute", "percent_of", "percent_off", "percent_increase", "consume",
                       "transfer", "query", "add", "", None])  # fmt: skip
KEYS = st.sampled_from(["var", "value", "source", "from", "to", "amount", "args", "compute_op", "base",
                        "rate", "unit"])  # fmt: skip
STEP = st.builds(
    lambda op, fields: {"op": op, **fields},
    OPS,
    st.dictionaries(KEYS, st.one_of(SCALARS, st.lists(SCALARS, max_size=4),
                                    st.sampled_from(["add", "sub", "mul", "div", "mod", "pow"])), max_size=4),
)  # fmt: skip
EXPERT = st.sampled_from(
    ["arithmetic", "entity_track", "rate_equation", "comparison", "percentage", "x", None]
)
SUB = st.builds(lambda e, steps: {"expert": e, "trace": steps}, EXPERT, st.lists(STEP, max_size=6))
DOCS = st.one_of(st.lists(STEP, max_size=8), SUB, st.lists(SUB, min_size=1, max_size=3), SCALARS,
                 st.dictionaries(st.text(max_size=4), SCALARS, max_size=3))  # fmt: skip
GOLDS = st.one_of(st.integers(-1000, 1000), st.text(max_size=6), st.sampled_from(["245", "2.5", "1,000", ""]))
GOLD_EXPERTS = st.one_of(st.none(), st.lists(EXPERT.filter(lambda e: e is not None), min_size=1, max_size=3))


def _check(result: Any, gold: Fraction | None, experts: list[str] | None) -> None:
    assert result.outcome(gold, experts) in OUTCOMES
    assert result.tier(gold, experts) in set(TIERS.values())
    assert result.valid == (result.value is not None)
    assert not result.valid or result.parsed


@FAST
@given(DOCS, st.one_of(st.none(), st.fractions(max_denominator=8)), GOLD_EXPERTS)
def test_any_trace_shape_executes_or_names_a_kind(
    doc: Any, gold: Fraction | None, experts: list[str] | None
) -> None:
    result = execute(doc)
    _check(result, gold, experts)
    assert result.valid or result.error_kind


@FAST
@given(DOCS, GOLDS, GOLD_EXPERTS)
def test_the_reward_is_one_of_its_tiers(doc: Any, gold: Any, experts: list[str] | None) -> None:
    try:
        text = yaml.safe_dump(doc, default_flow_style=True)
    except yaml.YAMLError:
        text = str(doc)
    completion = f"<reasoning>{text}</reasoning><answer>{gold}</answer>"
    (fn,) = build_rewards(["yaml_trace"])
    (score,) = fn(["p"], [completion], answer=[gold], meta=[{"experts": experts}])
    assert score in TIER_VALUES
    _check(parse_trace(completion), None, experts)


@FAST
@given(st.text(max_size=300), GOLDS)
def test_any_text_is_handled(text: str, gold: Any) -> None:
    (fn,) = build_rewards(["yaml_trace"], RewardConfig())
    for completion in (text, f"<reasoning>{text}</reasoning>", f"<reasoning>- {{{text}}}</reasoning>"):
        (score,) = fn(["p"], [completion], answer=[gold])
        assert score in TIER_VALUES
