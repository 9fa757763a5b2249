"""The trainers' held-out evals, one function each for torch and JAX models.

SFT: greedy completions for the first ``eval.generate_n`` records of ``data.valid`` through
``evals.generate``, scored by ``evals.score``: the predictions go to ``out``, the decode
settings and full scores beside it (``scores-*.json``), and the scalar scores come back for
metrics.jsonl (``gen_*``).

GRPO: the shared rewards and the scorer on greedy completions of fixed held-out prompts
(``eval_*`` metrics), and the paired per-prompt test of how the held-out reward moved.
"""

from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path
from typing import Any

from common.grpo_config import GRPOConfig
from common.grpo_prompts import Prompt, score_rewards
from common.jsonl import atomic_open, dumps, iter_jsonl, write_json
from common.prompts import format_prompt
from common.records import iter_records
from common.runs import RunDir, read_metrics
from common.sft_config import SFTConfig
from evals.generate import DecodeSettings, generate_completions
from evals.score import score_predictions
from evals.stats import paired_change


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


def score_heldout(
    prompts: list[Prompt], outs: list[dict], reward_fns: list[Any], cfg: GRPOConfig, out: Path
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Held-out metrics of greedy completions ``outs`` (one per prompt, as ``evals.generate``
    returns them): mean total reward (and per reward), format / strict accuracy; writes the
    predictions to ``out`` and returns ``(metrics, samples)``."""
    texts = [p.text for p in prompts]
    records = [p.record for p in prompts]
    completions = [o["completion"] for o in outs]
    totals, per = score_rewards(reward_fns, cfg.rewards.weight_list(), texts, completions, records)
    predictions = []
    for k, (p, o) in enumerate(zip(prompts, outs, strict=True)):
        o = {key: v for key, v in o.items() if key != "completion_ids"}
        rewards = {name: per[name][k] for name in per}
        predictions.append(
            {"id": p.record["id"], "prompt": p.text, **o, "reward": totals[k], "rewards": rewards}
        )
    with atomic_open(out) as fh:
        for rec in predictions:
            fh.write(dumps(rec) + "\n")
    scores = score_predictions(predictions, records)
    metrics: dict[str, Any] = {"eval_reward": sum(totals) / len(totals)}
    for name, values in per.items():
        metrics[f"eval_reward_{name}"] = sum(values) / len(values)
    for key in ("format_accuracy", "strict_accuracy", "flexible_accuracy", "partial_accuracy"):
        metrics[f"eval_{key}"] = scores[key]
    metrics["eval_n"] = len(prompts)
    metrics["eval_truncated"] = sum(o["stop_reason"] == "max_new_tokens" for o in outs) / len(outs)
    metrics["eval_completion_len_mean"] = sum(o["completion_tokens"] for o in outs) / len(outs)
    samples = [
        {
            "id": r["id"],
            "question": p.record["question"],
            "completion": r["completion"],
            "stop_reason": r["stop_reason"],
            "reward": r["reward"],
            "rewards": r["rewards"],
        }
        for p, r in zip(prompts, predictions, strict=True)
    ]
    return metrics, samples


def heldout_change(run: RunDir, last: int) -> dict[str, Any] | None:
    """The paired per-prompt test of the held-out reward between the run's first eval (in its
    metrics.jsonl) and the one at step ``last`` (their predictions files), or None when either
    file is missing."""
    first = min((r["step"] for r in read_metrics(run.path) if "eval_reward" in r), default=0)
    eval_dir = run.eval
    paths = [eval_dir / f"predictions-step-{s:06d}.jsonl" for s in (first, last)]
    if first == last or not all(p.exists() for p in paths):
        return None
    before, after = ({r["id"]: float(r["reward"]) for _, r in iter_jsonl(p)} for p in paths)
    return {"from_step": first, "to_step": last, **paired_change(before, after)}
