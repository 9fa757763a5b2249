"""The GRPO recipe's config and the pure-Python pieces both GRPO trainers share.

``trainers_torch.grpo`` and ``trainers_jax.grpo`` read the same YAML files
(``configs/grpo_*.yaml``) into these dataclasses, so every key means the same thing on
either side (a key one framework cannot honour is rejected or announced by that trainer).
Also here: the prompts (record file → prompt strings and ids, the seeded per-step order),
scoring completions with the shared rewards, the held-out eval's bookkeeping and
``samples.jsonl``, so both trainers pick the same prompts at each step and log the same
fields.
"""

from __future__ import annotations

import functools
import json
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from common.config import load_config
from common.errors import InputError
from common.jsonl import atomic_open, dumps, iter_jsonl
from common.prompts import format_prompt
from common.records import iter_records
from common.rewards import DEFAULT_REWARDS, REWARDS, RewardConfig
from common.runs import RunDir, read_metrics
from common.sft_config import CheckpointConfig, LoraConfig, ModelConfig, OptimConfig

# --------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------


@dataclass
class InitConfig:
    # runs/<name> of an SFT run to start from (None: model.path itself).
    sft_run: str | None = None
    # continue: keep training the run's final/ LoRA adapter on model.path (the reference is
    #   model.path, the adapter disabled); merged: start a fresh adapter on the run's merged/
    #   export (the reference is the SFT model). Full fine-tuning always starts from merged/.
    sft_mode: Literal["continue", "merged"] = "continue"


@dataclass
class PromptDataConfig:
    train: str = "data/built/gsm8k/train.jsonl"
    valid: str | None = "data/built/gsm8k/valid.jsonl"  # held-out eval prompts (the first eval.n)
    train_limit: int | None = None  # a seeded sample of this many training prompts
    trace_format: Literal["text", "yaml"] = "text"
    max_prompt_tokens: int = 256
    on_overflow: Literal["drop", "fail"] = "drop"

    def __post_init__(self) -> None:
        if self.max_prompt_tokens < 1:
            raise ValueError("data.max_prompt_tokens must be >= 1")
        if self.train_limit is not None and self.train_limit < 1:
            raise ValueError("data.train_limit must be >= 1 (or null for all)")


@dataclass
class SamplingConfig:
    prompts_per_step: int = 4  # P
    num_generations: int = 4  # G, completions per prompt
    max_new_tokens: int = 200
    temperature: float = 1.0
    top_k: int = 0  # 0: off
    top_p: float = 1.0
    batch_size: int = 0  # sequences per generate call; 0: all P * G at once

    def __post_init__(self) -> None:
        if self.prompts_per_step < 1:
            raise ValueError("generation.prompts_per_step must be >= 1")
        if self.num_generations < 2:
            raise ValueError("generation.num_generations must be >= 2 (advantages compare within a group)")
        if self.max_new_tokens < 1:
            raise ValueError("generation.max_new_tokens must be >= 1")
        if self.temperature <= 0:
            raise ValueError("generation.temperature must be > 0 (GRPO samples; greedy groups are all alike)")
        if self.top_k < 0:
            raise ValueError("generation.top_k must be >= 0 (0 = off)")
        if not 0 < self.top_p <= 1:
            raise ValueError("generation.top_p must be in (0, 1]")
        if self.batch_size < 0:
            raise ValueError("generation.batch_size must be >= 0 (0 = all at once)")


@dataclass
class LossConfig:
    loss_type: Literal["grpo", "dr_grpo", "dapo"] = "grpo"
    epsilon: float = 0.2  # ratio clipped to [1 - epsilon, 1 + epsilon_high]
    epsilon_high: float | None = None  # None: = epsilon (DAPO's clip-higher uses e.g. 0.28)
    beta: float = 0.0  # KL weight; 0 skips the reference model entirely
    num_iterations: int = 1  # mu: optimizer updates per generation batch
    scale_rewards: Literal["group", "none"] = "group"

    def __post_init__(self) -> None:
        if not 0 < self.epsilon < 1:
            raise ValueError("grpo.epsilon must be in (0, 1)")
        if self.epsilon_high is not None and self.epsilon_high <= 0:
            raise ValueError("grpo.epsilon_high must be > 0 (or null for epsilon)")
        if self.beta < 0:
            raise ValueError("grpo.beta must be >= 0")
        if self.num_iterations < 1:
            raise ValueError("grpo.num_iterations must be >= 1")

    @property
    def clip_range(self) -> tuple[float, float]:
        high = self.epsilon if self.epsilon_high is None else self.epsilon_high
        return 1.0 - self.epsilon, 1.0 + high


@dataclass
class RewardsConfig:
    names: list[str] = field(default_factory=lambda: list(DEFAULT_REWARDS))
    weights: list[float] | None = None  # None: 1.0 each
    params: RewardConfig = field(default_factory=RewardConfig)  # tier values (common.rewards)

    def __post_init__(self) -> None:
        if not self.names:
            raise ValueError("rewards.names: list at least one reward")
        unknown = [n for n in self.names if n not in REWARDS]
        if unknown:
            raise ValueError(f"rewards.names: unknown reward '{unknown[0]}'; known: {', '.join(REWARDS)}")
        if len(set(self.names)) != len(self.names):
            raise ValueError("rewards.names: a reward is listed twice (give it one weight instead)")
        if self.weights is not None and len(self.weights) != len(self.names):
            raise ValueError(
                f"rewards.weights: {len(self.weights)} weights for {len(self.names)} rewards {self.names}"
            )

    def weight_list(self) -> list[float]:
        return list(self.weights) if self.weights is not None else [1.0] * len(self.names)


@dataclass
class GRPOTrainConfig:
    method: Literal["lora", "full"] = "lora"
    trainable_layers: int | None = None  # as in SFT: only the last N decoder blocks train
    train_lm_head: bool = True  # full method with trainable_layers
    max_steps: int = 20  # generation batches (each gives grpo.num_iterations optimizer updates)
    micro_batch_rows: int = 1  # packed rows per forward pass
    pack_tokens: int = 1024  # tokens per packed row (prompt + completion sequences)
    loss_chunk_tokens: int = 256  # completion positions per LM-head chunk
    gradient_checkpointing: bool = False
    threads: int | None = None

    def __post_init__(self) -> None:
        if self.max_steps < 1:
            raise ValueError("train.max_steps must be >= 1")
        for name in ("micro_batch_rows", "pack_tokens", "loss_chunk_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"train.{name} must be >= 1")
        if self.trainable_layers is not None and self.trainable_layers < 1:
            raise ValueError("train.trainable_layers must be >= 1 (or null for all)")


@dataclass
class GRPOEvalConfig:
    every: int = 0  # held-out eval every N steps (always at step 0 and at the end); 0: only those
    n: int = 32  # the first n prompts of data.valid (0: no held-out eval)
    max_new_tokens: int | None = None  # None: generation.max_new_tokens
    batch_size: int = 16
    samples: int = 4  # completions per kind (held-out, training) written to samples.jsonl per eval

    def __post_init__(self) -> None:
        if self.every < 0 or self.n < 0 or self.samples < 0:
            raise ValueError("eval.every, eval.n and eval.samples must be >= 0")
        if self.batch_size < 1:
            raise ValueError("eval.batch_size must be >= 1")
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise ValueError("eval.max_new_tokens must be >= 1 (or null)")


@dataclass
class GRPOConfig:
    run_name: str = "grpo-gemma3-270m-cpu"
    output_dir: str = "runs"
    seed: int = 0
    resume: bool = False
    overwrite: bool = False
    export: bool = True
    model: ModelConfig = field(default_factory=ModelConfig)
    init: InitConfig = field(default_factory=InitConfig)
    data: PromptDataConfig = field(default_factory=PromptDataConfig)
    generation: SamplingConfig = field(default_factory=SamplingConfig)
    grpo: LossConfig = field(default_factory=LossConfig)
    rewards: RewardsConfig = field(default_factory=RewardsConfig)
    lora: LoraConfig = field(default_factory=lambda: LoraConfig(dropout=0.0))
    train: GRPOTrainConfig = field(default_factory=GRPOTrainConfig)
    optim: OptimConfig = field(
        default_factory=lambda: OptimConfig(lr=5e-5, warmup_steps=0, schedule="constant")
    )
    eval: GRPOEvalConfig = field(default_factory=GRPOEvalConfig)
    checkpoint: CheckpointConfig = field(default_factory=lambda: CheckpointConfig(every_steps=5, keep_last=2))


def load_grpo_config(path: str | Path | None, overrides: list[str]) -> GRPOConfig:
    return load_config(GRPOConfig, path, overrides)


# --------------------------------------------------------------------------------------------
# Prompts: records → prompt strings and ids → the seeded per-step order
# --------------------------------------------------------------------------------------------


@dataclass
class Prompt:
    record: dict[str, Any]
    line: int
    text: str
    ids: list[int]


def load_prompts(
    path: str | Path, tok: Any, cfg: PromptDataConfig, limit: int | None = None, seed: int | None = None
) -> tuple[list[Prompt], dict[str, Any]]:
    """The prompts of a record file that fit ``max_prompt_tokens``, and a report of the rest.

    ``limit`` keeps that many (a seeded sample when ``seed`` is given, else the first ones).
    """
    pairs = list(iter_records(path))
    texts = [format_prompt(tok, r["question"], cfg.trace_format) for _, r in pairs]
    ids = tok(texts).input_ids if texts else []
    prompts, too_long = [], []
    for (line, rec), text, p_ids in zip(pairs, texts, ids, strict=True):
        if len(p_ids) > cfg.max_prompt_tokens:
            if cfg.on_overflow == "fail":
                raise InputError(
                    f"{path}:{line}: id {rec['id']!r}: prompt is {len(p_ids)} tokens, over "
                    f"data.max_prompt_tokens={cfg.max_prompt_tokens} (raise it or set data.on_overflow=drop)"
                )
            too_long.append((rec["id"], len(p_ids)))
            continue
        prompts.append(Prompt(rec, line, text, list(p_ids)))
    if not prompts:
        raise InputError(
            f"{path}: no usable prompts ({len(pairs)} records, all over data.max_prompt_tokens?)"
        )
    if limit is not None and limit < len(prompts):
        order = list(range(len(prompts)))
        if seed is not None:
            random.Random(f"grpo-subset-{seed}").shuffle(order)
        prompts = [prompts[i] for i in sorted(order[:limit])]
    report = {
        "file": str(path),
        "records": len(pairs),
        "used": len(prompts),
        "max_prompt_tokens": cfg.max_prompt_tokens,
        "overflow_count": len(too_long),
        "overflow_ids": [i for i, _ in too_long[:20]],
        "prompt_tokens_max": max(len(p.ids) for p in prompts),
    }
    return prompts, report


@functools.lru_cache(maxsize=8)
def _epoch_order(n: int, seed: int, epoch: int) -> tuple[int, ...]:
    order = list(range(n))
    random.Random(f"grpo-order-{seed}-{epoch}").shuffle(order)
    return tuple(order)


def step_prompt_indices(n: int, per_step: int, seed: int, step: int) -> list[int]:
    """Prompts of step ``step`` (0-based): consecutive slices through seeded per-epoch shuffles."""
    start = step * per_step
    return [_epoch_order(n, seed, (start + k) // n)[(start + k) % n] for k in range(per_step)]


# --------------------------------------------------------------------------------------------
# Rewards, the held-out eval's scoring, samples.jsonl
# --------------------------------------------------------------------------------------------


REWARD_COLUMNS = ("id", "question", "answer", "reasoning", "steps", "meta")  # what each reward receives


def score_rewards(
    reward_fns: list[Any],
    weights: list[float],
    prompts: list[str],
    completions: list[str],
    records: list[dict],
) -> tuple[list[float], dict[str, list[float]]]:
    """``(total per completion, {reward name: raw values})``; totals are the weighted sums."""
    columns = {k: [r.get(k) for r in records] for k in REWARD_COLUMNS}
    per: dict[str, list[float]] = {}
    for fn in reward_fns:
        values = fn(prompts, completions, **columns)
        if len(values) != len(completions):
            raise InputError(f"reward {fn.__name__}: {len(values)} values for {len(completions)} completions")
        values = [float(v) for v in values]
        if not all(math.isfinite(v) for v in values):
            raise InputError(f"reward {fn.__name__}: returned a non-finite value {values}")
        per[fn.__name__] = values
    totals = [
        sum(w * per[fn.__name__][i] for fn, w in zip(reward_fns, weights, strict=True))
        for i in range(len(completions))
    ]
    return totals, per


def score_heldout(
    prompts: list[Prompt], outs: list[dict], reward_fns: list[Any], cfg: GRPOConfig, out: Path
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Held-out metrics of greedy completions ``outs`` (one per prompt, as ``evals.generate``
    returns them): mean total reward (and per reward), format / strict accuracy; writes the
    predictions to ``out`` and returns ``(metrics, samples)``."""
    from evals.score import score_predictions

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


def announce_start(
    say: Any,
    cfg: GRPOConfig,
    run: RunDir,
    train_report: dict[str, Any],
    start: str,
    total_steps: int,
    loss: str,
    resumed: tuple[str, int] | None,
) -> None:
    """The start lines both GRPO trainers print (data, what trains, the loss) and, when resuming
    from ``resumed = (checkpoint, step)``, the cut of metrics and samples back to that step."""
    P, G = cfg.generation.prompts_per_step, cfg.generation.num_generations
    say(
        f"{train_report['file']}: {train_report['records']} records, {train_report['used']} prompts used; "
        f"over max_prompt_tokens={cfg.data.max_prompt_tokens}: {train_report['overflow_count']} (dropped)"
    )
    say(
        f"start: {start}; {total_steps} steps of {P} prompts x {G} samples "
        f"(max_new_tokens={cfg.generation.max_new_tokens}), loss {loss}, beta {cfg.grpo.beta}, "
        f"mu {cfg.grpo.num_iterations}"
    )
    if resumed is not None:
        checkpoint, step = resumed
        run.truncate_metrics(step)
        truncate_samples(run.path, step)
        say(f"resumed from {checkpoint} (step {step})")
    elif cfg.resume:
        say(f"resume=true but {run.checkpoints} holds no complete checkpoint: starting from step 0")


def append_samples(run: RunDir, step: int, kind: str, samples: list[dict[str, Any]]) -> None:
    with (run.path / "samples.jsonl").open("a", encoding="utf-8") as fh:
        for s in samples:
            fh.write(dumps({"step": step, "kind": kind, **s}) + "\n")


def truncate_samples(run_path: Path, last_step: int) -> None:
    path = run_path / "samples.jsonl"
    if not path.exists():
        return
    keep = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line).get("step", 0) <= last_step:
                keep.append(line)
        except json.JSONDecodeError:
            continue  # a torn last line from a killed run
    with atomic_open(path) as fh:
        fh.write("".join(k + "\n" for k in keep))


GRPO_PLOTS = {
    "reward": ["reward", "eval_reward"],
    "kl": ["kl"],
    "loss": ["loss"],
    "completion_len": ["completion_len_mean", "eval_completion_len_mean"],
    "lr": ["lr"],
}


def run_summary(run: RunDir, total_steps: int, final_eval: dict[str, Any]) -> dict[str, Any]:
    """The summary.json figures both GRPO trainers read back from their metrics.jsonl."""
    metrics = read_metrics(run.path)
    steps = [r for r in metrics if "reward" in r]
    evals = {r["step"]: r for r in metrics if "eval_reward" in r}

    def rate(tokens: str, seconds: str) -> float | None:
        t, s = sum(r.get(tokens, 0) for r in steps), sum(r.get(seconds, 0) for r in steps)
        return round(t / s, 2) if s and t else None

    def eval_view(r: dict[str, Any] | None) -> dict[str, Any] | None:
        return {k: v for k, v in r.items() if k.startswith("eval_")} if r else None

    return {
        "heldout_change": heldout_change(run.eval, min(evals, default=0), total_steps),
        "train_reward_first": steps[0]["reward"] if steps else None,
        "train_reward_last": steps[-1]["reward"] if steps else None,
        "eval_before": eval_view(evals.get(0)),
        "eval_after": eval_view(evals.get(total_steps)) or eval_view(final_eval),
        "gen_tokens_per_s": rate("gen_tokens", "gen_time_s"),
        "train_tokens_per_s": rate("train_tokens", "train_time_s"),
        "step_seconds_mean": round(sum(r.get("step_time_s", 0) for r in steps) / len(steps), 2)
        if steps
        else None,
    }


def heldout_change(eval_dir: Path, first: int, last: int) -> dict[str, Any] | None:
    """The paired per-prompt test of the held-out reward between the evals at steps ``first``
    and ``last`` (their predictions files), or None when either file is missing."""
    from evals.stats import paired_change

    paths = [eval_dir / f"predictions-step-{s:06d}.jsonl" for s in (first, last)]
    if first == last or not all(p.exists() for p in paths):
        return None
    before, after = ({r["id"]: float(r["reward"]) for _, r in iter_jsonl(p)} for p in paths)
    return {"from_step": first, "to_step": last, **paired_change(before, after)}


def done_line(summary: dict[str, Any]) -> str:
    """The run's last line: where it is and how the held-out reward moved (with its paired test)."""
    before, after = summary["eval_before"], summary["eval_after"]
    line = f"done: {summary['run_dir']}"
    if before and after:
        line += f"; held-out reward {before['eval_reward']:.4f} -> {after['eval_reward']:.4f}"
    c = summary.get("heldout_change")
    if c and c["n"]:
        lo, hi = c["ci95"]
        line += (
            f" (paired over {c['n']} prompts: change {c['mean_change']:+.3f} [{lo:+.3f}, {hi:+.3f}], "
            f"{c['up']} up / {c['down']} down, permutation p = {c['permutation_p']:.3g}, "
            f"sign test p = {c['sign_test_p']:.3g})"
        )
    return line


def record_heldout(
    run: RunDir,
    logger: Any,
    step: int,
    out: dict[str, Any],
    samples: list[dict],
    train_samples: list[dict],
    keep: int,
) -> str:
    """Log a held-out eval and its sample completions (eval and the last training step's); its line."""
    logger.log(step, **out)
    append_samples(run, step, "eval", samples[:keep])
    append_samples(run, step, "train", train_samples[:keep])
    return (
        f"step {step} held-out ({out['eval_n']} prompts, greedy): reward {out['eval_reward']:.4f}, "
        f"format {out['eval_format_accuracy']:.3f}, strict {out['eval_strict_accuracy']:.3f}, "
        f"truncated {out['eval_truncated']:.2f}"
    )
