"""The SFT trainers' held-out generation check, one function for torch and JAX models.

Greedy completions for the first ``eval.generate_n`` records of ``data.valid`` through
``evals.generate``, scored by ``evals.score``: the predictions go to ``out``, the decode
settings and full scores beside it (``scores-*.json``), and the scalar scores come back for
metrics.jsonl (``gen_*``).
"""

from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path
from typing import Any

from common.jsonl import atomic_open, dumps, write_json
from common.prompts import format_prompt
from common.records import iter_records
from common.sft_config import SFTConfig
from evals.generate import DecodeSettings, generate_completions
from evals.score import score_predictions


def heldout_records(cfg: SFTConfig) -> list[dict[str, Any]]:
    """The records the check generates on: the first ``generate_n`` of ``data.valid``, long ones
    included (generation has no ``max_len``)."""
    if not cfg.data.valid or cfg.eval.generate_n <= 0:
        return []
    return [r for _, r in itertools.islice(iter_records(cfg.data.valid), cfg.eval.generate_n)]


def generation_eval(
    model: Any, tok: Any, records: list[dict[str, Any]], cfg: SFTConfig, out: Path
) -> dict[str, Any]:
    """Generate on ``records`` with ``model`` (torch in eval mode with its KV cache on, or a Tunix
    NNX model) and score them; returns the scalar scores."""
    prompts = [format_prompt(tok, r["question"], cfg.data.trace_format) for r in records]
    settings = DecodeSettings(max_new_tokens=cfg.eval.max_new_tokens)
    outputs = generate_completions(
        model, tok, prompts, settings, batch_size=cfg.eval.batch_size, progress=True
    )
    predictions = [
        {"id": r["id"], "prompt": p, **o} for r, p, o in zip(records, prompts, outputs, strict=True)
    ]
    with atomic_open(out) as fh:
        for rec in predictions:
            fh.write(dumps(rec) + "\n")
    scores = score_predictions(predictions, records)
    write_json(
        out.with_name(out.name.replace("predictions-", "scores-").replace(".jsonl", ".json")),
        {
            "items": cfg.data.valid,
            "n": len(records),
            "decode": dataclasses.asdict(settings),
            "scores": scores,
        },
    )
    return {k: v for k, v in scores.items() if isinstance(v, int | float) and not isinstance(v, bool)}
