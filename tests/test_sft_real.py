"""A few LoRA steps on the real Gemma 3 270M lower the loss on a fixed example (through the trainer's own loss)."""

from __future__ import annotations

import pytest
import torch

from common.prompts import load_tokenizer
from common.sft_config import load_sft_config
from common.sft_data import tokenize_records
from tests.sft_data import gsm8k_records, write_records
from trainers_torch.data import collate
from trainers_torch.losses import completion_loss_sum
from trainers_torch.model import build_model
from trainers_torch.optim import build_optimizer

pytestmark = pytest.mark.real_model


def test_few_lora_steps_lower_the_loss_on_a_fixed_example(real_model, tmp_path):
    cfg = load_sft_config(
        None,
        [
            f"model.path={real_model}",
            "lora.rank=8",
            "lora.dropout=0.0",
            "optim.lr=2.0e-3",
            "data.max_len=320",
            "data.on_overflow=drop",
            "data.pack_tokens=640",
        ],
    )
    recs = sorted(gsm8k_records("train", 40), key=lambda r: len(r["question"]) + len(r["reasoning"]))[:1]
    tok = load_tokenizer(real_model)
    examples, _, report = tokenize_records(write_records(tmp_path / "one.jsonl", recs), tok, cfg.data)
    assert len(examples) == 1 and report["tokens"] < 200
    torch.manual_seed(0)
    model = build_model(cfg.model, cfg.lora, cfg.train)
    optimizer = build_optimizer(model, cfg.optim)
    batch = collate(examples, [[0]], tok.pad_token_id)
    losses = []
    for _ in range(3):
        loss = completion_loss_sum(model, batch, cfg.train.loss_chunk_tokens) / batch.n_targets
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    assert 0.3 < losses[0] < 5.0  # a pretrained model on GSM8K text, not a random one
    assert losses[-1] < 0.85 * losses[0], losses
