"""The torch optimizer: AdamW (weight decay on matrices only) or Adafactor, over the
trainable parameters, with the shared warmup + cosine schedule (``common.sft_config.lr_factor``)."""

from __future__ import annotations

from typing import Any

import torch

from common.errors import InputError
from common.sft_config import OptimConfig, lr_factor


def is_lora_b(name: str) -> bool:
    """Whether a parameter name is a PEFT LoRA B matrix (``...lora_B.<adapter>.weight``)."""
    return ".lora_B." in name


def build_optimizer(model: Any, cfg: OptimConfig) -> torch.optim.Optimizer:
    """Groups: matrices with weight decay, the rest without, LoRA B matrices at ``lr *
    lora_b_lr_ratio`` (LoRA+); the scheduler scales every group's lr by the same factor."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    params = [p for _, p in named]
    if not params:
        raise InputError("no trainable parameters (check train.method / train.trainable_layers)")
    split_b = cfg.lora_b_lr_ratio != 1.0  # B in its own group only when its rate differs
    decay = [p for n, p in named if p.ndim >= 2 and not (split_b and is_lora_b(n))]
    lora_b = [p for n, p in named if split_b and is_lora_b(n)]
    no_decay = [p for p in params if p.ndim < 2]
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": lora_b, "weight_decay": cfg.weight_decay, "lr": cfg.lr * cfg.lora_b_lr_ratio},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    groups = [g for g in groups if g["params"]]
    cfg.check_lora_b(any(is_lora_b(n) for n, _ in named))
    if cfg.name == "adamw":
        if len(cfg.betas) != 2:
            raise InputError(f"optim.betas: expected two numbers, got {cfg.betas}")
        # fused: one kernel per parameter for the whole update (full fine-tuning of the 270M model
        # spent ~8% of its step in the per-op update); the same AdamW arithmetic
        fused = all(
            p.device.type in ("cpu", "cuda") and p.dtype in (torch.float32, torch.bfloat16) for p in params
        )
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.betas[0], cfg.betas[1]), fused=fused)
    return torch.optim.Adafactor(groups, lr=cfg.lr)


def build_scheduler(optimizer: torch.optim.Optimizer, total_steps: int, cfg: OptimConfig) -> Any:
    """``LambdaLR`` over ``total_steps`` optimizer updates with the shared schedule."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, total_steps, cfg))
