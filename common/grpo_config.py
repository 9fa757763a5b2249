"""The GRPO recipe's config, shared by ``trainers_torch.grpo`` and ``trainers_jax.grpo``.

Both trainers read the same YAML files (``configs/grpo_*.yaml``) into these dataclasses, so
every key means the same thing on either side (a key one framework cannot honour is rejected
or announced by that trainer). The pieces of the recipe both share beside the config:
``common/grpo_prompts.py`` (prompts, their per-step order, reward scoring) and
``common/grpo_records.py`` (start lines, ``samples.jsonl``, the run summary).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from common.config import load_config
from common.rewards import DEFAULT_REWARDS, REWARDS, RewardConfig
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
