"""Torch vs JAX (Tunix) parity: the same tokens through both loaders of the same HF dir.

    python -m scripts.parity --model models/gemma-3-270m

Loads the directory with transformers and with Tunix, runs the same left-padded batch of
chat prompts through both, and compares logits on the real (non-pad) positions. Then the SFT
completion loss of one packed row of the same prompts with worked answers, through each
trainer's own loss: torch attends example by example, JAX within the band of
``trainers_jax/attention.py`` (Gemma 3) or over the whole row with a block-diagonal mask.
The last line printed is the max absolute logit difference; exit status 1 when it exceeds
``--tol`` (default 1e-3, meaningful in float32) or the losses differ by more than
``--loss-tol`` (relative; default 1e-4 in float32, 1e-2 in bfloat16).
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import numpy as np

from common import sft_data
from common.errors import cli
from common.prompts import format_prompt

PROMPTS = (
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
    "How many clips did Natalia sell altogether in April and May?",
    "What is 17 times 23?",
    "A train travels 60 km in 45 minutes. What is its speed in km/h?",
)
WORKED = (  # (reasoning, answer) for each prompt: the targets of the packed row
    ("Natalia sold 48 / 2 = 24 clips in May.\nAltogether she sold 48 + 24 = 72 clips.", "72"),
    ("17 * 23 = 17 * 20 + 17 * 3 = 340 + 51 = 391.", "391"),
    ("45 minutes is 45 / 60 = 0.75 hours.\nIts speed is 60 / 0.75 = 80 km/h.", "80"),
)
CHUNK = 64  # the loss's target chunk (both trainers)


def packed_row(tok: Any) -> tuple[list[sft_data.Example], int, int]:
    """The prompts with their worked answers as SFT examples packed into one row, the row's
    width (a multiple of 64) and its longest example (the band's span)."""
    records = [(i + 1, {"id": f"parity-{i}", "question": q, "reasoning": r, "answer": a})
               for i, (q, (r, a)) in enumerate(zip(PROMPTS, WORKED, strict=True))]  # fmt: skip
    examples = sft_data.encode_examples(tok, records, "text")
    lengths = [len(e) for e in examples]
    return examples, -(-sum(lengths) // 64) * 64, max(lengths)


def torch_side(
    model_dir: str, texts: list[str], dtype: str, examples: list[sft_data.Example], pad_id: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Logits, token ids and mask of the prompts, and the packed row's mean completion loss
    (``trainers_torch.losses``), from the transformers model."""
    import torch

    from trainers_torch.data import collate
    from trainers_torch.losses import completion_loss_sum
    from trainers_torch.model import load_model

    model, tok = load_model(model_dir, dtype=dtype)
    batch = tok(texts, return_tensors="pt", padding=True)
    mask = batch["attention_mask"]
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    row = collate(examples, [list(range(len(examples)))], pad_id)
    with torch.no_grad():
        out = model(input_ids=batch["input_ids"], attention_mask=mask, position_ids=positions)
        loss = completion_loss_sum(model, row, CHUNK).item() / row.n_targets
    return out.logits.float().numpy(), batch["input_ids"].numpy(), mask.numpy().astype(bool), loss


def jax_side(
    model_dir: str, ids: np.ndarray, mask: np.ndarray, dtype: str, examples: list[sft_data.Example],
    pad_id: int, width: int, span: int,
) -> tuple[np.ndarray, float, bool]:  # fmt: skip
    """The same from the Tunix model (``trainers_jax.losses``), and whether the loss ran banded."""
    import jax.numpy as jnp

    from trainers_jax.attention import takes_band_mask
    from trainers_jax.losses import device_arrays, eval_loss_sum
    from trainers_jax.model import forward_logits, load_model

    model, _ = load_model(model_dir, dtype=dtype)
    logits = forward_logits(model, jnp.asarray(ids), jnp.asarray(mask))
    row = sft_data.collate(examples, [list(range(len(examples)))], pad_id)
    arrays = device_arrays(row, CHUNK, width, span)
    loss = float(eval_loss_sum(model, arrays, CHUNK)) / row.n_targets
    return np.asarray(logits, dtype=np.float32), loss, "band_mask" in arrays and takes_band_mask(model)


@cli
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="models/gemma-3-270m")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--tol", type=float, default=1e-3)
    ap.add_argument("--loss-tol", type=float, default=None, help="relative (default 1e-4, bfloat16 1e-2)")
    args = ap.parse_args(argv)
    loss_tol = args.loss_tol if args.loss_tol is not None else (1e-4 if args.dtype == "float32" else 1e-2)

    from common.prompts import load_tokenizer

    tok = load_tokenizer(args.model)
    texts = [format_prompt(tok, q) for q in PROMPTS]
    examples, width, span = packed_row(tok)
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
    t0 = time.time()
    pt, ids, mask, loss_t = torch_side(args.model, texts, args.dtype, examples, pad_id)
    t1 = time.time()
    jx, loss_j, banded = jax_side(args.model, ids, mask, args.dtype, examples, pad_id, width, span)
    t2 = time.time()
    diff = np.abs(pt - jx)[mask]
    same_argmax = float((pt.argmax(-1) == jx.argmax(-1))[mask].mean())
    print(
        f"batch {ids.shape[0]}x{ids.shape[1]} tokens ({int(mask.sum())} real), vocab {pt.shape[-1]}, {args.dtype}"
    )
    print(f"torch {t1 - t0:.1f} s (load + forward + loss), jax {t2 - t1:.1f} s (load + forward + loss)")
    print(
        f"mean |diff| {diff.mean():.3e}, argmax agreement {same_argmax:.4f}, logit scale {np.abs(pt[mask]).max():.1f}"
    )
    loss_diff = abs(loss_j - loss_t) / loss_t
    attention = f"within a band of {span} tokens" if banded else "over the whole row"
    print(
        f"packed row of {len(examples)} examples in {width} tokens: SFT loss torch {loss_t:.6f}, "
        f"jax {loss_j:.6f} (attention {attention}), relative diff {loss_diff:.2e}"
    )
    worst = float(diff.max())
    print(f"max_abs_logit_diff {worst:.3e}")
    return 0 if worst <= args.tol and loss_diff <= loss_tol else 1


if __name__ == "__main__":
    sys.exit(main())
