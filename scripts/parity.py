"""Torch vs JAX (Tunix) parity: one token batch through both loaders of the same HF dir.

    python -m scripts.parity --model models/gemma-3-270m

Loads the directory with transformers and with Tunix, runs the same left-padded batch of
chat prompts through both, and compares logits on the real (non-pad) positions. The last
line printed is the max absolute logit difference; exit status 1 when it exceeds
``--tol`` (default 1e-3, meaningful in float32).
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from common.errors import cli
from common.prompts import format_prompt

PROMPTS = (
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
    "How many clips did Natalia sell altogether in April and May?",
    "What is 17 times 23?",
    "A train travels 60 km in 45 minutes. What is its speed in km/h?",
)


def torch_logits(model_dir: str, texts: list[str], dtype: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Logits, token ids and mask from the transformers model."""
    import torch

    from trainers_torch.model import load_model

    model, tok = load_model(model_dir, dtype=dtype)
    batch = tok(texts, return_tensors="pt", padding=True)
    mask = batch["attention_mask"]
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        out = model(input_ids=batch["input_ids"], attention_mask=mask, position_ids=positions)
    return out.logits.float().numpy(), batch["input_ids"].numpy(), mask.numpy().astype(bool)


def jax_logits(model_dir: str, ids: np.ndarray, mask: np.ndarray, dtype: str) -> np.ndarray:
    import jax.numpy as jnp

    from trainers_jax.model import forward_logits, load_model

    model, _ = load_model(model_dir, dtype=dtype)
    logits = forward_logits(model, jnp.asarray(ids), jnp.asarray(mask))
    return np.asarray(logits, dtype=np.float32)


@cli
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="models/gemma-3-270m")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--tol", type=float, default=1e-3)
    args = ap.parse_args(argv)

    from common.prompts import load_tokenizer

    tok = load_tokenizer(args.model)
    texts = [format_prompt(tok, q) for q in PROMPTS]
    t0 = time.time()
    pt, ids, mask = torch_logits(args.model, texts, args.dtype)
    t1 = time.time()
    jx = jax_logits(args.model, ids, mask, args.dtype)
    t2 = time.time()
    diff = np.abs(pt - jx)[mask]
    same_argmax = float((pt.argmax(-1) == jx.argmax(-1))[mask].mean())
    print(
        f"batch {ids.shape[0]}x{ids.shape[1]} tokens ({int(mask.sum())} real), vocab {pt.shape[-1]}, {args.dtype}"
    )
    print(f"torch {t1 - t0:.1f} s (load + forward), jax {t2 - t1:.1f} s (load + forward)")
    print(
        f"mean |diff| {diff.mean():.3e}, argmax agreement {same_argmax:.4f}, logit scale {np.abs(pt[mask]).max():.1f}"
    )
    worst = float(diff.max())
    print(f"max_abs_logit_diff {worst:.3e}")
    return 0 if worst <= args.tol else 1


if __name__ == "__main__":
    sys.exit(main())
