"""GRPO rewards: default weights reproduce the Tunix GRPO Gemma demo's values."""

from __future__ import annotations

import json

import pytest

from common.config import load_config
from common.errors import InputError
from common.rewards import DEFAULT_REWARDS, REWARDS, RewardConfig, build_rewards

GOOD = "<reasoning>9 * 2 = 18</reasoning>\n<answer>18</answer>"


def reward(name: str, completions: list, cfg: RewardConfig | None = None, **columns: object) -> list[float]:
    (fn,) = build_rewards([name], cfg)
    return fn(["prompt"] * len(completions), completions, **columns)


def test_registry_and_names() -> None:
    fns = build_rewards(list(REWARDS))
    assert [f.__name__ for f in fns] == list(REWARDS)
    assert list(DEFAULT_REWARDS) == ["format_exact", "format_approx", "answer_tiers", "number_match"]
    with pytest.raises(InputError, match="unknown reward 'nope'"):
        build_rewards(["format_exact", "nope"])


def test_format_exact_is_three() -> None:
    completions = [GOOD, GOOD + "<end_of_turn>", "18", "<reasoning>r</reasoning>x<answer>18</answer>", ""]
    assert reward("format_exact", completions) == [3.0, 3.0, 0.0, 0.0, 0.0]


def test_format_approx_half_point_per_tag() -> None:
    completions = [
        GOOD,  # all four once: 4 * 0.5
        "",  # none: 4 * -0.5
        "<answer>18</answer>",  # two of four
        GOOD + "<answer>",  # <answer> twice
        "<reasoning><reasoning></reasoning></reasoning><answer>1</answer>",
    ]
    assert reward("format_approx", completions) == [2.0, -2.0, 0.0, 1.0, 0.0]


def test_format_approx_notebook_variant_checks_the_start() -> None:
    cfg = RewardConfig(format_starts=0.5)  # examples/grpo_gemma.ipynb also rewards starting with <reasoning>
    assert reward("format_approx", [GOOD, " " + GOOD, ""], cfg) == [2.5, 1.5, -2.5]


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ("18", 3.0),  # exact string
        (" 18 ", 1.5),  # equal after stripping whitespace (the demo's 1.5 tier)
        ("18.0", 1.5),  # equal as a number (the demo: ratio 1.0 -> 0.5)
        ("$18.", 1.5),  # equal as a number (the demo: float() fails -> -0.5)
        ("17", 0.5),  # ratio 0.94: within 10%
        ("19.8", 0.5),  # ratio 1.1 exactly
        ("16.2", 0.5),  # ratio 0.9 exactly
        ("15", 0.25),  # ratio 0.83: within 20%
        ("21.6", 0.25),  # ratio 1.2 exactly
        ("21.7", -1.0),
        ("-18", -1.0),
        ("eighteen", -0.5),  # not a number
        ("18 dollars", -0.5),
        ("", -0.5),
    ],
)
def test_answer_tiers_match_the_demo_values(answer: str, expected: float) -> None:
    assert reward("answer_tiers", [f"<reasoning>r</reasoning><answer>{answer}</answer>"], answer=["18"]) == [
        expected
    ]


def test_answer_tiers_missing_answer_and_odd_golds() -> None:
    assert reward("answer_tiers", ["18", "<answer>18"], answer=["18", "18"]) == [0.0, 0.0]
    assert reward("answer_tiers", ["<answer>0</answer>", "<answer>0.1</answer>"], answer=["0", "0"]) == [
        3.0,
        -1.0,
    ]
    assert reward("answer_tiers", ["<answer>1,234</answer>"], answer=["1234"]) == [1.5]
    assert reward("answer_tiers", ["<answer>18</answer>"], answer=[18]) == [3.0]  # a JSON number gold
    assert reward("answer_tiers", ["<answer>yes</answer>", "<answer>no</answer>"], answer=["yes"] * 2) == [
        3.0,
        -1.0,
    ]


def test_number_match_first_or_last() -> None:
    completions = [
        "<answer>It is 18, not 19</answer>",
        "<answer>It is 19, not 18</answer>",
        "<answer>$1,234.00</answer>",
        "18 <answer>none</answer>",
        "18",
    ]
    golds = ["18", "18", "1,234", "18", "18"]
    assert reward("number_match", completions, answer=golds) == [1.5, 0.0, 1.5, 0.0, 0.0]
    last = RewardConfig(number_pick="last")
    assert reward("number_match", completions, last, answer=golds) == [0.0, 1.5, 1.5, 0.0, 0.0]


def test_rewards_take_trl_and_tunix_calling_conventions() -> None:
    chat = [[{"role": "assistant", "content": GOOD}]]  # TRL conversational completions
    for fn in build_rewards():
        assert fn(prompts=["p"], completions=chat, answer=["18"], question=["q"], trainer_state=None) in (
            [3.0],
            [2.0],
            [1.5],
        )
    assert [fn(["p"], [None], answer=["18"])[0] for fn in build_rewards()] == [0.0, -2.0, 0.0, 0.0]


def test_rewards_check_columns() -> None:
    with pytest.raises(InputError, match="column 'answer'"):
        reward("answer_tiers", [GOOD])
    with pytest.raises(InputError, match="2 values for 1 completions"):
        reward("number_match", [GOOD], answer=["1", "2"])


def test_config_from_yaml_overrides() -> None:
    cfg = load_config(RewardConfig, overrides=["answer_exact=2", "number_pick=last", "format_starts=0.5"])
    assert cfg.answer_exact == 2.0 and cfg.number_pick == "last" and cfg.format_starts == 0.5
    with pytest.raises(InputError, match="number_pick"):
        load_config(RewardConfig, overrides=["number_pick=middle"])
    with pytest.raises(InputError, match="close_ratio"):
        load_config(RewardConfig, overrides=["close_ratio=0.5"])
    assert reward("answer_tiers", ["<answer>18</answer>"], cfg, answer=["18"]) == [2.0]


@pytest.fixture(scope="module")
def rg_meta() -> list[dict]:
    reasoning_gym = pytest.importorskip("reasoning_gym")
    data = reasoning_gym.create_dataset("chain_sum", size=2, seed=7)
    entries = [json.loads(json.dumps(data[i])) for i in range(2)]  # as stored in a JSONL dataset
    return [{"source": "reasoning_gym", "rg_task": "chain_sum", "rg_entry": e} for e in entries]


def test_reasoning_gym_reward_uses_the_task_scorer(rg_meta: list[dict]) -> None:
    gold = rg_meta[0]["rg_entry"]["answer"]
    completions = [
        f"<reasoning>r</reasoning><answer> {gold} </answer>",
        "<reasoning>r</reasoning><answer>123456789</answer>",
        f"no answer tags, just {gold}",
        f"<answer>{gold}</answer>",
    ]
    metas = [rg_meta[0], rg_meta[0], rg_meta[0], {"source": "gsm8k"}]
    assert reward("reasoning_gym", completions, meta=metas) == [1.0, 0.0, 0.0, 0.0]
    cfg = RewardConfig(reasoning_gym=2.0)
    assert reward("reasoning_gym", completions[:1], cfg, meta=metas[:1]) == [2.0]


def test_reasoning_gym_reward_rejects_bad_meta(rg_meta: list[dict]) -> None:
    with pytest.raises(InputError, match="rg_task"):
        reward("reasoning_gym", [GOOD], meta=[{"source": "reasoning_gym"}])
    bad_task = {**rg_meta[0], "rg_task": "no_such_task"}
    with pytest.raises(InputError, match="no_such_task"):
        reward("reasoning_gym", ["<answer>1</answer>"], meta=[bad_task])


def test_reasoning_gym_reward_edges(rg_meta: list[dict]) -> None:
    gold = rg_meta[0]["rg_entry"]["answer"]
    right, wrong = f"<answer>{gold}</answer>", "<answer>123456789</answer>"
    broken = {**rg_meta[0], "rg_entry": {}}  # the task's scorer raises on it: scored 0
    metas = [None, {"source": "gsm8k"}, broken, rg_meta[0], rg_meta[0]]
    cfg = RewardConfig(reasoning_gym=2.0)
    assert reward("reasoning_gym", [right, right, right, right, wrong], cfg, meta=metas) == [
        0.0,
        0.0,
        0.0,
        2.0,
        0.0,
    ]
    with pytest.raises(InputError, match=r"meta\[1\]: a reasoning_gym item needs 'rg_task'"):
        reward(
            "reasoning_gym", [right, right], meta=[rg_meta[0], {"source": "reasoning_gym", "rg_task": "x"}]
        )


def test_yaml_trace_tiers_take_their_weights() -> None:
    trace = "- {op: init, var: a, value: 2}\n- {op: compute, compute_op: mul, args: [a, 3], var: b}\n"
    completions = [
        f"<reasoning>{trace}- {{op: query, var: b}}</reasoning><answer>x</answer>",  # 6: right
        f"<reasoning>{trace}- {{op: query, var: b}}</reasoning><answer>6</answer>",  # 6 against gold 7
        f"<reasoning>{trace}- {{op: query, var: c}}</reasoning><answer>6</answer>",  # undefined: invalid
        "<reasoning>no trace here</reasoning><answer>6</answer>",  # not a trace
    ]
    cfg = RewardConfig(trace_correct=4.0, trace_wrong=3.0, trace_invalid=2.0, trace_unparsed=1.0)
    assert reward("yaml_trace", completions, cfg, answer=[6, "7", "6", "6"]) == [4.0, 3.0, 2.0, 1.0]
    assert reward("yaml_trace", completions[:1], cfg, answer=["six"]) == [3.0]  # no numeric gold: never right


@pytest.mark.parametrize(
    ("name", "columns", "message"),
    [("number_match", {}, "reward needs the dataset column 'answer'"),
     ("number_match", {"answer": ["1", "2"]}, "column 'answer' has 2 values for 1 completions"),
     ("yaml_trace", {}, "reward needs the dataset column 'answer'"),
     ("yaml_trace", {"answer": ["1"], "meta": [{}, {}]}, "column 'meta' has 2 values for 1 completions"),
     ("reasoning_gym", {}, "reward needs the dataset column 'meta'"),
     ("reasoning_gym", {"meta": []}, "column 'meta' has 0 values for 1 completions")],
)  # fmt: skip
def test_a_missing_or_short_column_is_named(name: str, columns: dict, message: str) -> None:
    with pytest.raises(InputError) as err:
        reward(name, [GOOD], **columns)
    assert str(err.value) == message


def test_unknown_reward_lists_the_known_ones_and_bound_rewards_keep_their_docs() -> None:
    with pytest.raises(InputError) as err:
        build_rewards(["format_exact", "speed"])
    assert str(err.value) == f"unknown reward 'speed'; known rewards: {', '.join(REWARDS)}"
    for fn in build_rewards(list(REWARDS)):
        assert fn.__doc__ == REWARDS[fn.__name__].__doc__ and fn.__doc__


def test_gold_experts_only_from_a_non_empty_list_of_names() -> None:
    from common.rewards import gold_experts

    assert gold_experts({"experts": ["percentage", "arithmetic"]}) == ["percentage", "arithmetic"]
    for meta in ({"experts": []}, {"experts": ["arithmetic", 3]}, {"experts": "arithmetic"}, {}, None, ["x"]):
        assert gold_experts(meta) is None


def test_reward_config_ratio_bounds_from_both_sides() -> None:
    assert RewardConfig(close_ratio=0.0, near_ratio=0.0).close_ratio == 0.0
    assert RewardConfig(close_ratio=0.2, near_ratio=0.2).near_ratio == 0.2
    for close, near in ((0.3, 0.2), (-0.1, 0.2)):
        with pytest.raises(ValueError) as err:
            RewardConfig(close_ratio=close, near_ratio=near)
        assert str(err.value) == "need 0 <= close_ratio <= near_ratio"
    with pytest.raises(ValueError) as err:
        RewardConfig(number_pick="middle")  # type: ignore[arg-type]
    assert str(err.value) == "number_pick must be 'first' or 'last', got 'middle'"
