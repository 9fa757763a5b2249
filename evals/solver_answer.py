"""Solver-answer decoding for YAML traces: the model writes the trace, the solver the answer.

With ``decode.solver_answer`` the model's completion is cut right after its first
``</reasoning>``, the trace inside is executed by ``common.traces``, and when it executes
``<answer>VALUE</answer>`` follows with the exact value; when it does not, the model's own
continuation stands (it completes the answer itself). Decoding runs on past ``</reasoning>``,
so the model's written answer is kept beside the solver's for the evals; the text up to
``</reasoning>`` is what a decode stopped there would give, token for token (a token never
depends on the ones after it), so the result is the same as stopping and appending.

The record gains ``model_completion`` (the model's whole output), ``answer_source``
(``solver`` or ``model``) and ``solver_value``; ``completion`` is the one scored and submitted.
"""

from __future__ import annotations

from typing import Any

from common.answers import REASONING_CLOSE
from common.traces import format_value, parse_trace


def with_solver_answer(completion: str) -> dict[str, Any]:
    """``{completion, model_completion, answer_source, solver_value}`` for one model completion."""
    end = completion.find(REASONING_CLOSE)
    if end >= 0:
        head = completion[: end + len(REASONING_CLOSE)]
        result = parse_trace(head)
        if result.valid:
            value = format_value(result.value)
            return {
                "completion": f"{head}<answer>{value}</answer>",
                "model_completion": completion,
                "answer_source": "solver",
                "solver_value": value,
            }
    return {
        "completion": completion,
        "model_completion": completion,
        "answer_source": "model",
        "solver_value": None,
    }
