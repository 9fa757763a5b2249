"""The SFT recipe's config, shared by ``trainers_torch.sft`` and ``trainers_jax.sft``.

Both trainers read the same YAML files (``configs/sft_*.yaml``) into these dataclasses, so
every key means the same thing on either side; keys only one framework uses say so in their
comment. ``lr_factor`` is the learning-rate schedule both follow step for step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from common.config import load_config
from common.errors import InputError
from common.hardware import native_bf16


@dataclass
class ModelConfig:
    path: str = "models/gemma-3-270m"
    # auto: bfloat16 on an accelerator or a CPU that multiplies it natively (AVX512_BF16, AMX),
    # float32 elsewhere; the trainers resolve it at start and the run's config.yaml records which
    dtype: Literal["float32", "bfloat16", "auto"] = "float32"
    attn_implementation: Literal["sdpa", "eager"] = "sdpa"  # torch only
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto: cuda when available, else cpu
    init_adapter: str | None = None  # start LoRA from this PEFT adapter dir (curriculum stages)

    def resolve_dtype(self, accelerator: bool) -> None:
        """Replace ``auto`` by the dtype this machine multiplies fastest (``accelerator``: the
        model runs on a GPU or TPU); a named dtype stays as it is."""
        if self.dtype == "auto":
            self.dtype = "bfloat16" if accelerator or native_bf16() else "float32"

    def lost_updates_note(self, method: str, adapters_in_float32: bool) -> str | None:
        """The warning for trained weights kept in a low-precision dtype (None when there are
        none): AdamW updates them in place with no float32 master copy, so an update under half
        the spacing of bfloat16 values near a weight rounds away. ``adapters_in_float32``: the
        backend keeps LoRA adapters in float32 over a low-precision base (torch/PEFT does; Tunix's
        adapters take the base's dtype)."""
        if self.dtype == "float32" or (method == "lora" and adapters_in_float32):
            return None
        what = "the LoRA adapters are" if method == "lora" else "the trained weights are"
        return (
            f"model.dtype={self.dtype} with train.method={method}: {what} {self.dtype} and the "
            f"optimizer updates them in place (no float32 master copy), so an update under half a "
            f"{self.dtype} step (2^-9 to 2^-8 of the weight) is lost; model.dtype=float32 keeps every update"
        )


@dataclass
class MixPart:
    """One more training file, sampled (seeded) to ``n`` of its records that fit (None: all)."""

    path: str
    n: int | None = None

    def __post_init__(self) -> None:
        if self.n is not None and self.n < 1:
            raise ValueError(f"data.mix: n must be >= 1 (or null for all), got {self.n}")


@dataclass
class DataConfig:
    train: str = "data/built/gsm8k/train.jsonl"
    valid: str | None = "data/built/gsm8k/valid.jsonl"
    train_limit: int | None = None  # train on a seeded sample of this many records
    # The sample's share of each meta.category (e.g. YAML-trace experts), drawn per category;
    # categories left out are not drawn. None: one sample over the whole file.
    train_shares: dict[str, float] | None = None
    # More training files added to `train`, each with its own sample size: e.g. synthetic YAML
    # traces in `train` and converted GSM8K traces in the mix.
    mix: list[MixPart] = field(default_factory=list)
    valid_limit: int = 200  # the first N valid records (loss + generation eval)
    # text: reasoning in words; yaml: the prompt asks for a YAML trace (lab notebook 002) and the
    # target is the record's trace in <reasoning> with the answer in <answer>.
    trace_format: Literal["text", "yaml"] = "text"
    max_len: int = 512  # prompt + target tokens; longer examples are dropped or fail
    on_overflow: Literal["drop", "fail"] = "fail"
    pack_tokens: int = 1024  # tokens per packed row

    def __post_init__(self) -> None:
        if self.pack_tokens < self.max_len:
            raise ValueError(
                f"data.pack_tokens ({self.pack_tokens}) must be >= data.max_len ({self.max_len})"
            )
        if self.max_len < 8:
            raise ValueError("data.max_len must be >= 8")
        if self.train_shares is not None:
            if self.train_limit is None:
                raise ValueError("data.train_shares needs data.train_limit (the sample it divides)")
            shares = self.train_shares.values()
            if any(not v >= 0 for v in shares) or not sum(shares) > 0:
                raise ValueError(
                    f"data.train_shares: shares must be >= 0 with a positive sum, got {self.train_shares}"
                )


@dataclass
class LoraConfig:
    rank: int = 16
    alpha: float = 32.0
    dropout: float = 0.05
    target_modules: list[str] | None = None  # None: every nn.Linear inside the decoder blocks

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise ValueError("lora.rank must be >= 1")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError("lora.dropout must be in [0, 1)")


@dataclass
class TrainConfig:
    method: Literal["lora", "full"] = "lora"
    # Train only the last N decoder blocks (full: those blocks + final norm + lm_head; LoRA:
    # adapters only in those blocks). None: all blocks.
    trainable_layers: int | None = None
    train_lm_head: bool = True  # full method with trainable_layers (tied: trains the embedding too)
    epochs: float = 1.0
    max_steps: int | None = None  # when set, exactly this many optimizer steps (epochs ignored)
    micro_batch_rows: int = 1  # packed rows per forward pass
    grad_accum: int = 1  # forward passes per optimizer step
    loss_chunk_tokens: int = 256  # completion positions per LM-head chunk
    gradient_checkpointing: bool = False
    threads: int | None = None  # torch CPU threads (None: torch's default); torch only

    def __post_init__(self) -> None:
        if self.max_steps is None and self.epochs <= 0:
            raise ValueError("train.epochs must be > 0 (or set train.max_steps)")
        for name in ("micro_batch_rows", "grad_accum", "loss_chunk_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"train.{name} must be >= 1")
        if self.trainable_layers is not None and self.trainable_layers < 1:
            raise ValueError("train.trainable_layers must be >= 1 (or null for all)")


@dataclass
class OptimConfig:
    name: Literal["adamw", "adafactor"] = "adamw"
    lr: float = 2e-4
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    warmup_steps: int = 10
    schedule: Literal["cosine", "constant"] = "cosine"
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    max_grad_norm: float = 1.0  # 0 disables clipping (the norm is still logged)
    # LoRA+ (Hayou et al., 2024): the LoRA B matrices learn at lr * lora_b_lr_ratio (1: plain LoRA)
    lora_b_lr_ratio: float = 1.0

    def __post_init__(self) -> None:
        if self.lora_b_lr_ratio <= 0:
            raise ValueError(f"optim.lora_b_lr_ratio must be > 0, got {self.lora_b_lr_ratio}")

    def check_lora_b(self, found: bool) -> None:
        """Refuse a LoRA+ ratio for a model without LoRA B matrices (both backends' check)."""
        if self.lora_b_lr_ratio != 1.0 and not found:
            raise InputError(
                f"optim.lora_b_lr_ratio={self.lora_b_lr_ratio}: the model has no LoRA B matrices (train.method: lora)"
            )


@dataclass
class EvalConfig:
    every_steps: int = 50  # held-out loss every N steps (0: only at the end)
    generate_n: int = 32  # valid items for the generation eval through evals/ (0: off)
    generate_during: bool = False  # also generate at intermediate evals, not only at the end
    max_new_tokens: int = 320
    batch_size: int = 16


@dataclass
class CheckpointConfig:
    every_steps: int = 50
    keep_last: int = 2


@dataclass
class SFTConfig:
    run_name: str = "sft-gemma3-270m-cpu"
    output_dir: str = "runs"
    seed: int = 0
    resume: bool = False  # continue from the newest complete checkpoint in runs/<run_name>/
    overwrite: bool = False  # start over in a run dir that already holds a run
    export: bool = True  # write final/ (adapter) and merged/ (HF safetensors) at the end
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)


def lr_factor(step: int, total: int, cfg: OptimConfig) -> float:
    """Linear warmup to 1, then constant or cosine down to ``min_lr_ratio``."""
    if cfg.warmup_steps > 0 and step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return 1.0
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps))
    return cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def load_sft_config(path: str | Path | None, overrides: list[str]) -> SFTConfig:
    return load_config(SFTConfig, path, overrides)
