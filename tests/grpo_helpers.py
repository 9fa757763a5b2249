"""A reward the tiny random model's completions actually vary on, for the GRPO trainer tests.

The shared rewards look for <reasoning>/<answer> tags, which a random model never writes: every
completion would score the same and no gradient would flow. ``register()`` adds this one to
``common.rewards.REWARDS`` (in the test process, or in a subprocess before ``grpo.main``).
"""

from __future__ import annotations

from typing import Any

from common.rewards import REWARDS


def digit_count(prompts: Any, completions: list[str], cfg: Any, **_: Any) -> list[float]:
    """The number of digit characters in the completion."""
    return [float(sum(ch.isdigit() for ch in c)) for c in completions]


def register() -> None:
    REWARDS["digit_count"] = digit_count


def unregister() -> None:
    REWARDS.pop("digit_count", None)


# argv after -c: run the trainer's CLI with the test reward registered
CLI = "import sys; from tests.grpo_helpers import register; register(); from trainers_torch.grpo import main; main(sys.argv[1:])"
