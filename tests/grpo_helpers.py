"""A reward the tiny random model's completions actually vary on, for the GRPO trainer tests.

The shared rewards look for <reasoning>/<answer> tags, which a random model never writes: every
completion would score the same and no gradient would flow. ``register()`` adds this one to
``common.rewards.REWARDS`` (in the test process, or in a subprocess before ``grpo.main``).
"""

from __future__ import annotations

import textwrap
from pathlib import Path
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


def write_setup(root: Path, model: Path, sections: str, seed: int = 3) -> Path:
    """12 train and 4 valid arithmetic records under ``root`` and a GRPO config (``seed``) that
    reads them with ``model``, plus the YAML ``sections``; returns the config's path."""
    from tests.sft_data import arithmetic_records, write_records

    train_file = write_records(root / "train.jsonl", arithmetic_records(12, seed=0))
    valid_file = write_records(root / "valid.jsonl", arithmetic_records(4, seed=1, prefix="v"))
    head = (
        f"output_dir: {root / 'runs'}\nseed: {seed}\nmodel: {{path: {model}}}\n"
        f"data: {{train: {train_file}, valid: {valid_file}, max_prompt_tokens: 400}}\n"
    )
    config = root / "grpo.yaml"
    config.write_text(head + textwrap.dedent(sections))
    return config
