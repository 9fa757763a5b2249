"""The JAX recipes' configs: the shared YAML (``common/sft_config.py``, ``common/grpo_config.py``)
plus what only the JAX side has, the device mesh and Tunix's batch split."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from common.config import load_config
from common.grpo_config import GRPOConfig
from common.sft_config import SFTConfig


@dataclass
class MeshConfig:
    fsdp: int = 1  # parameters and batch sharded over this many devices
    tp: int = 1  # tensor parallelism

    def __post_init__(self) -> None:
        if self.fsdp < 1 or self.tp < 1:
            raise ValueError("mesh.fsdp and mesh.tp must be >= 1")


@dataclass
class JaxSFTConfig(SFTConfig):
    mesh: MeshConfig = field(default_factory=MeshConfig)


@dataclass
class TunixBatchConfig:
    """How Tunix splits a step's ``generation.prompts_per_step`` prompts for memory, and how wide
    the update's rows are (JAX only)."""

    # prompts (each with its num_generations completions) per forward/backward in the update and
    # in the log-prob passes; gradients accumulate over the step. The update's LM head runs in
    # train.loss_chunk_tokens-row chunks (policy_loss.py); Tunix's own loss kept [completions,
    # prompt + completion tokens, 262,144] float32 logits, 29 GB for the 270M CPU default's
    # 4 x 4 completions in one piece.
    micro_batch_prompts: int = 1
    # the update's rows are cut to the step's own longest prompt and completion, each rounded up
    # to this many tokens: Tunix pads every prompt to the run's longest and every completion to
    # generation.max_new_tokens. Each new width compiles the update once; 0 keeps Tunix's widths.
    pad_multiple: int = 32

    def __post_init__(self) -> None:
        if self.micro_batch_prompts < 1:
            raise ValueError("tunix.micro_batch_prompts must be >= 1")
        if self.pad_multiple < 0:
            raise ValueError("tunix.pad_multiple must be >= 0 (0: no cut)")


@dataclass
class JaxGRPOConfig(GRPOConfig):
    mesh: MeshConfig = field(default_factory=MeshConfig)
    tunix: TunixBatchConfig = field(default_factory=TunixBatchConfig)


def load_sft_config(path: str | Path | None, overrides: list[str]) -> JaxSFTConfig:
    return load_config(JaxSFTConfig, path, overrides)


def load_grpo_config(path: str | Path | None, overrides: list[str]) -> JaxGRPOConfig:
    return load_config(JaxGRPOConfig, path, overrides)
