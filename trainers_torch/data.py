"""Packed rows (``common.sft_data``) as torch tensors: what the SFT and GRPO losses take."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from common import sft_data
from common.sft_data import Example


@dataclass
class Batch:
    input_ids: torch.Tensor  # [B, L]
    position_ids: torch.Tensor  # [B, L], restarting at 0 for every example
    targets: torch.Tensor  # [B, L], the next token where it is a completion token, else -100
    n_tokens: int
    n_targets: int
    n_examples: int


def collate(examples: list[Example], rows: list[list[int]], pad_id: int) -> Batch:
    """Packed rows → tensors (the shared numpy collate, converted; segment ids are not needed here)."""
    b = sft_data.collate(examples, rows, pad_id)
    return Batch(
        input_ids=torch.from_numpy(b.input_ids).long(),
        position_ids=torch.from_numpy(b.position_ids).long(),
        targets=torch.from_numpy(b.targets).long(),
        n_tokens=b.n_tokens,
        n_targets=b.n_targets,
        n_examples=b.n_examples,
    )
