"""GRPO reward functions, shared by the torch and JAX/Tunix trainers.

Each reward has the TRL/Tunix signature ``fn(prompts, completions, **columns) -> list[float]``:
dataset columns arrive as keyword lists aligned with ``completions`` (``answer=[...]``,
``meta=[...]``); unknown keywords are ignored. ``build_rewards(["format_exact", ...], cfg)``
turns the reward names a trainer YAML lists into callables with their weights bound.

The default weights reproduce the Tunix GRPO Gemma demo (google/tunix at commit c7d8950f,
``examples/grpo_gemma.ipynb`` and ``examples/math_gsm8k/gemma_grpo_demo_nb.py``:
``match_format_exactly`` 3.0; ``match_format_approximately`` ±0.5 per tag;
``check_answer`` 3.0 exact, 1.5 equal after strip, 0.5 / 0.25 for a ratio within
0.9–1.1 / 0.8–1.2, −1.0 otherwise, −0.5 when ``float()`` fails, 0 without a match;
``check_numbers`` 1.5). The tiers are ours and use ``common.answers``, so a reward and the
eval always agree on what the answer was; ``evals/SCORING.md`` lists where they differ
from the demo.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from fractions import Fraction
from typing import Any, Literal

from common.answers import (
    TAGS,
    answer_text,
    as_text,
    first_number,
    format_ok,
    gold_text,
    last_number,
    parse_number,
    within,
)
from common.errors import InputError
from common.traces import parse_trace

RewardFn = Callable[..., list[float]]


@dataclasses.dataclass
class RewardConfig:
    """Reward weights; the defaults are the Tunix GRPO demo's values."""

    format_exact: float = 3.0  # the whole completion passes format_ok
    format_tag: float = 0.5  # per tag: +w if it appears exactly once, else -w
    format_starts: float = 0.0  # +w if the completion starts with <reasoning>, else -w (the notebook: 0.5)
    answer_exact: float = 3.0  # answer text == gold, character for character
    answer_equal: float = 1.5  # equal after stripping whitespace, or as numbers ("18.0", "$18")
    answer_close: float = 0.5  # number within close_ratio of gold
    answer_near: float = 0.25  # number within near_ratio of gold
    answer_wrong: float = -1.0  # a number further off (or any other text, for a text gold)
    answer_unparsable: float = -0.5  # an answer that is not one number (numeric gold)
    answer_missing: float = 0.0  # no closed <answer> pair
    close_ratio: float = 0.1
    near_ratio: float = 0.2
    number_match: float = 1.5  # the picked numeral in the answer equals gold
    number_pick: Literal["first", "last"] = "first"
    reasoning_gym: float = 1.0  # times the task's own score_answer (0..1)
    # yaml_trace tiers, lab notebook 002's shaped rewards (``common.traces`` decides the tier):
    # 1.0 the executed trace gives gold; 0.7 executed, another value; 0.5 failed execution
    # (short-circuit, op outside its expert, undefined variable, ...); 0.3 wrong expert, only
    # where the item's gold experts are known (meta.experts); 0.0 no trace (no YAML, a YAML
    # error, steps that fail typed validation).
    trace_correct: float = 1.0
    trace_wrong: float = 0.7
    trace_invalid: float = 0.5
    trace_wrong_expert: float = 0.3
    trace_unparsed: float = 0.0

    def __post_init__(self) -> None:
        if not 0 <= self.close_ratio <= self.near_ratio:
            raise ValueError("need 0 <= close_ratio <= near_ratio")
        if self.number_pick not in ("first", "last"):
            raise ValueError(f"number_pick must be 'first' or 'last', got {self.number_pick!r}")


def _column(name: str, values: Any, completions: Sequence[Any]) -> list[Any]:
    if values is None:
        raise InputError(f"reward needs the dataset column '{name}'")
    values = list(values)
    if len(values) != len(completions):
        raise InputError(f"column '{name}' has {len(values)} values for {len(completions)} completions")
    return values


def format_exact(prompts: Any, completions: Sequence[Any], cfg: RewardConfig, **_: Any) -> list[float]:
    """``cfg.format_exact`` when the completion passes ``format_ok``, else 0."""
    return [cfg.format_exact if format_ok(as_text(c)) else 0.0 for c in completions]


def format_approx(prompts: Any, completions: Sequence[Any], cfg: RewardConfig, **_: Any) -> list[float]:
    """Per tag, ``+cfg.format_tag`` if it appears exactly once, else ``-cfg.format_tag``.

    With ``cfg.format_starts`` set, also ± that for starting with ``<reasoning>`` (leading
    whitespace counts against it, as in the demo notebook).
    """
    scores = []
    for c in completions:
        text = as_text(c)
        score = sum(cfg.format_tag if text.count(tag) == 1 else -cfg.format_tag for tag in TAGS)
        if cfg.format_starts:
            score += cfg.format_starts if text.startswith(TAGS[0]) else -cfg.format_starts
        scores.append(score)
    return scores


def answer_tier(completion: Any, gold: Any, cfg: RewardConfig) -> float:
    """The reward tier of one completion's answer text (see ``RewardConfig``)."""
    ans = answer_text(as_text(completion))
    if ans is None:
        return cfg.answer_missing
    gold_s = gold_text(gold)
    if ans == gold_s:
        return cfg.answer_exact
    if ans.strip() == gold_s.strip() and ans.strip():
        return cfg.answer_equal
    gold_value = parse_number(gold_s)
    if gold_value is None:
        return cfg.answer_wrong
    value = parse_number(ans)
    if value is None:
        return cfg.answer_unparsable
    if value == gold_value:
        return cfg.answer_equal
    if within(value, gold_value, Fraction(str(cfg.close_ratio))):
        return cfg.answer_close
    if within(value, gold_value, Fraction(str(cfg.near_ratio))):
        return cfg.answer_near
    return cfg.answer_wrong


def answer_tiers(
    prompts: Any, completions: Sequence[Any], cfg: RewardConfig, answer: Any = None, **_: Any
) -> list[float]:
    """Tiers on the answer text: exact, equal, within 10%, within 20%, wrong, unparsable, missing."""
    golds = _column("answer", answer, completions)
    return [answer_tier(c, g, cfg) for c, g in zip(completions, golds, strict=True)]


def number_match(
    prompts: Any, completions: Sequence[Any], cfg: RewardConfig, answer: Any = None, **_: Any
) -> list[float]:
    """``cfg.number_match`` when the first (or last) numeral in the answer text equals gold."""
    golds = _column("answer", answer, completions)
    pick = first_number if cfg.number_pick == "first" else last_number
    scores = []
    for c, g in zip(completions, golds, strict=True):
        numeral = pick(answer_text(as_text(c)))
        value = parse_number(numeral)
        gold_value = parse_number(gold_text(g))
        scores.append(cfg.number_match if value is not None and value == gold_value else 0.0)
    return scores


_RG_SCORERS: dict[str, Callable[[str | None, dict], float]] = {}


def _rg_scorer(task: str) -> Callable[[str | None, dict], float]:
    if task not in _RG_SCORERS:
        import reasoning_gym  # slow to import; only the reasoning-gym reward needs it

        try:
            _RG_SCORERS[task] = reasoning_gym.get_score_answer_fn(task)
        except ValueError as err:
            raise InputError(f"meta.rg_task: {err}") from None
    return _RG_SCORERS[task]


def reasoning_gym_score(
    prompts: Any, completions: Sequence[Any], cfg: RewardConfig, meta: Any = None, **_: Any
) -> list[float]:
    """``cfg.reasoning_gym`` times the reasoning-gym task's ``score_answer`` on the answer text.

    Items whose ``meta.source`` is not ``"reasoning_gym"`` get 0; so does a completion with
    no closed answer pair, or one the task's scorer chokes on.
    """
    metas = _column("meta", meta, completions)
    scores = []
    for i, (c, m) in enumerate(zip(completions, metas, strict=True)):
        if not isinstance(m, dict) or m.get("source") != "reasoning_gym":
            scores.append(0.0)
            continue
        task, entry = m.get("rg_task"), m.get("rg_entry")
        if not isinstance(task, str) or not isinstance(entry, dict):
            raise InputError(f"meta[{i}]: a reasoning_gym item needs 'rg_task' (str) and 'rg_entry' (dict)")
        ans = answer_text(as_text(c))
        if ans is None:
            scores.append(0.0)
            continue
        try:
            score = float(_rg_scorer(task)(ans.strip(), entry))
        except InputError:
            raise
        except Exception:  # a task scorer failing on odd model output scores it 0
            score = 0.0
        scores.append(cfg.reasoning_gym * score)
    return scores


def trace_reward(
    completion: Any, gold: Any, cfg: RewardConfig, gold_experts: Sequence[str] | None = None
) -> float:
    """The yaml_trace tier value of one completion (bounded by the tier values; never raises)."""
    result = parse_trace(as_text(completion))
    tier = result.tier(parse_number(gold_text(gold)), gold_experts)
    return {
        "correct": cfg.trace_correct,
        "wrong_answer": cfg.trace_wrong,
        "failed": cfg.trace_invalid,
        "wrong_expert": cfg.trace_wrong_expert,
        "no_trace": cfg.trace_unparsed,
    }[tier]


def gold_experts(meta: Any) -> list[str] | None:
    """An item's gold experts (``meta.experts``, a list of expert names), or None when unknown."""
    experts = meta.get("experts") if isinstance(meta, dict) else None
    if isinstance(experts, list) and experts and all(isinstance(e, str) for e in experts):
        return experts
    return None


def yaml_trace(
    prompts: Any,
    completions: Sequence[Any],
    cfg: RewardConfig,
    answer: Any = None,
    meta: Any = None,
    **_: Any,
) -> list[float]:
    """Shaped reward on the YAML trace in ``<reasoning>``, executed by ``common.traces``.

    The tiers of ``RewardConfig`` (correct, wrong answer, failed execution, wrong expert, no
    trace); the wrong-expert tier applies only to items whose ``meta.experts`` is given. The
    ``<answer>`` text is not looked at.
    """
    golds = _column("answer", answer, completions)
    metas = [None] * len(completions) if meta is None else _column("meta", meta, completions)
    return [
        trace_reward(c, g, cfg, gold_experts(m)) for c, g, m in zip(completions, golds, metas, strict=True)
    ]


REWARDS: dict[str, RewardFn] = {
    "format_exact": format_exact,
    "format_approx": format_approx,
    "answer_tiers": answer_tiers,
    "number_match": number_match,
    "reasoning_gym": reasoning_gym_score,
    "yaml_trace": yaml_trace,
}

# The four rewards of the Tunix GRPO demo, in its order.
DEFAULT_REWARDS = ("format_exact", "format_approx", "answer_tiers", "number_match")


def build_rewards(names: Sequence[str] = DEFAULT_REWARDS, cfg: RewardConfig | None = None) -> list[RewardFn]:
    """The named rewards with ``cfg`` bound; each keeps its name as ``__name__`` (for logging)."""
    cfg = cfg or RewardConfig()
    unknown = [n for n in names if n not in REWARDS]
    if unknown:
        raise InputError(f"unknown reward '{unknown[0]}'; known rewards: {', '.join(REWARDS)}")
    return [_bind(name, REWARDS[name], cfg) for name in names]


def _bind(name: str, fn: RewardFn, cfg: RewardConfig) -> RewardFn:
    def reward(prompts: Any, completions: Sequence[Any], **columns: Any) -> list[float]:
        return fn(prompts, completions, cfg, **columns)

    reward.__name__ = reward.__qualname__ = name
    reward.__doc__ = fn.__doc__
    return reward
