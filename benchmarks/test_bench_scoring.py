"""Scoring speed: 1,319 predictions (GSM8K test size) and linear growth, against a naive regex peer.

    python -m pytest benchmarks/test_bench_scoring.py --benchmark-enable -s

The predictions are the real Gemma 3 270M completions in tests/data, repeated to 1,319.
The peer is how one would write the rules with regular expressions (as the Tunix demo and
lm-evaluation-harness do): correct enough on ordinary completions, but its lazy ``.+?``
patterns make it quadratic on adversarial ones.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import pytest

from common.answers import score_completion
from evals.score import score_predictions

FIXTURE = Path(__file__).resolve().parents[1] / "tests" / "data" / "gemma3_270m_completions.jsonl"
N = 1319

NAIVE_FORMAT = re.compile(
    r"^\s*<reasoning>(.+?)</reasoning>\s*<answer>(.+?)</answer>\s*$", re.MULTILINE | re.DOTALL
)
NAIVE_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
NAIVE_NUMBER = re.compile(r"-?[\d,]*\.?\d+")


def naive_score(completion: str, gold: str) -> dict[str, object]:
    """The peer: format, strict and flexible verdicts from three regular expressions."""
    fmt = NAIVE_FORMAT.search(completion.replace("<end_of_turn>", ""))
    answers = NAIVE_ANSWER.findall(completion)
    ans = answers[-1] if answers else None
    numbers = NAIVE_NUMBER.findall(ans if ans is not None else completion)
    gold_f = float(gold.replace(",", ""))
    try:
        strict = ans is not None and float(ans.strip().strip(".").replace("$", "").replace(",", "")) == gold_f
    except ValueError:
        strict = False
    try:
        flexible = bool(numbers) and float(numbers[-1].replace(",", "")) == gold_f
    except ValueError:
        flexible = False
    return {"format_ok": fmt is not None, "strict": strict, "flexible": flexible}


@pytest.fixture(scope="module")
def gsm8k_sized() -> tuple[list[dict], list[dict]]:
    real = [json.loads(line) for line in FIXTURE.read_text(encoding="utf-8").splitlines()]
    rows = [real[i % len(real)] for i in range(N)]
    predictions = [{"id": i, "completion": r["completion"]} for i, r in enumerate(rows)]
    dataset = [{"id": i, "answer": r["gold"]} for i, r in enumerate(rows)]
    return predictions, dataset


@pytest.mark.benchmark(group="score 1,319 predictions")
def test_bench_score_predictions(benchmark, gsm8k_sized: tuple[list[dict], list[dict]]) -> None:
    predictions, dataset = gsm8k_sized
    summary = benchmark(score_predictions, predictions, dataset)
    assert summary["n"] == N
    if benchmark.stats:  # with --benchmark-enable: the target is well under a second
        assert benchmark.stats.stats.median < 0.5


@pytest.mark.benchmark(group="score 1,319 predictions")
def test_bench_score_completion_only(benchmark, gsm8k_sized: tuple[list[dict], list[dict]]) -> None:
    """The per-item rules alone (no validation, no summary): like for like with the peer."""
    predictions, dataset = gsm8k_sized

    def run() -> list[dict]:
        return [
            score_completion(p["completion"], d["answer"]) for p, d in zip(predictions, dataset, strict=True)
        ]

    assert len(benchmark(run)) == N


@pytest.mark.benchmark(group="score 1,319 predictions")
def test_bench_naive_regex_peer(benchmark, gsm8k_sized: tuple[list[dict], list[dict]]) -> None:
    predictions, dataset = gsm8k_sized

    def run() -> list[dict]:
        return [naive_score(p["completion"], d["answer"]) for p, d in zip(predictions, dataset, strict=True)]

    verdicts = benchmark(run)
    assert len(verdicts) == N


def best_of(fn: Callable[[], object], repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


ADVERSARIAL = {
    "newline-separated reasoning openers": "\n<reasoning>x",
    "answer openers, never closed": "<answer>",
    "commas, no digits": ",",
}


@pytest.mark.parametrize("name", list(ADVERSARIAL))
def test_growth_n_vs_4n(name: str) -> None:
    """Ours grows about 4x from n to 4n characters (linear); the peer about 16x (quadratic)."""
    unit = ADVERSARIAL[name]
    ours = [best_of(partial(score_completion, unit * k, "7")) for k in (1 << 16, 1 << 18)]
    peer = [best_of(partial(naive_score, unit * k, "7"), repeat=1) for k in (1 << 10, 1 << 12)]
    ratio_ours, ratio_peer = ours[1] / ours[0], peer[1] / peer[0]
    print(
        f"\n{name}: ours {len(unit) << 16} -> {len(unit) << 18} chars: {ours[0] * 1e3:.1f} -> "
        f"{ours[1] * 1e3:.1f} ms (x{ratio_ours:.1f}); peer {len(unit) << 10} -> {len(unit) << 12} chars: "
        f"{peer[0] * 1e3:.1f} -> {peer[1] * 1e3:.1f} ms (x{ratio_peer:.1f})"
    )
    assert ratio_ours < 8
