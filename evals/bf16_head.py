"""Next tokens from a bfloat16 LM head, checked in float32: greedy tokens equal float32's argmax,
sampled tokens follow float32's softmax.

A decode step on CPU spends most of its time in the LM head (262,144 × 640 on Gemma 3: 671 MB
of float32 weight read per step). Where the CPU has native bfloat16 dot products (AVX512_BF16
or AMX), ``Bf16Head`` multiplies a bfloat16 copy of the head instead (half the bytes, twice the
arithmetic rate) and settles what bfloat16 cannot tell apart from the float32 weight:

- ``argmax``: every token whose bfloat16 logit lies close enough to the top to be float32's
  maximum is scored again in float32, and the argmax of those is taken. Measured on a 2-core
  AMD EPYC (AVX512_BF16, 2 threads, idle; real decode hidden states of the SFT default run):
  32 rows 53 vs 91 ms for oneDNN's float32 head + argmax, 19 rows 44 vs 69, 8 rows 36 vs 51;
  2.4 candidates per row on average (at most 17). The bfloat16 copy is packed once into
  oneDNN's layout (``trainers_torch.kernels.onednn_pack``; the same values): the bfloat16
  product alone, on a 2-core Intel Xeon (AVX-512 with AVX512_BF16, 2 threads, idle), 8 rows
  47.5 → 29.9 ms, 17 rows 62.6 → 46.9, 32 rows 97.3 → 78.6 against ``F.linear``.
- ``sample`` (temperature T, no top-k / top-p): rejection sampling. A token i is proposed from
  softmax(bfloat16 logits / T) and accepted with probability exp((lᵢ − l̂ᵢ − e) / T), lᵢ its
  float32 logit (one dot product), l̂ᵢ the bfloat16 one, e the row's bound below (so the
  probability is at most 1). Accepted tokens follow softmax(l / T) exactly: the proposal
  weight exp(l̂ᵢ / T) times the acceptance is exp((lᵢ − e) / T), proportional to the target.
  Rows keep proposing until one is accepted (each round costs a uniform pair and one dot
  product per row, not the head), up to ``MAX_ROUNDS``; a row still open then draws from the
  full float32 head, which leaves the distribution exact. On the real Gemma 3 270M, e is about
  1.6 logits at T = 1, so about one proposal in five is accepted.

Why the bound holds: rounding ``x`` and ``w`` to bfloat16 (unit roundoff u = 2⁻⁸), the float32
accumulation of D products and the bfloat16 output move a logit by at most
(3u + D·2⁻²⁴ + O(u²))·Σ|xⱼwⱼ| ≤ 0.0118·‖x‖·‖w‖ (Cauchy–Schwarz); ``BOUND`` = 2⁻⁶ leaves a
margin, and e = ``BOUND``·‖x‖·maxᵢ‖wᵢ‖. So the float32 maximum's bfloat16 logit is at least
the bfloat16 top minus 2e, and every token above that line is an argmax candidate. The float32
scores are summed in their own order, so they equal the full float32 product's to rounding:
only logits tied to within float32 rounding may pick differently (as oneDNN's and the BLAS's
products already may). A greedy row with no candidate (a non-finite hidden state) or more than
``MAX_CANDIDATES`` takes the full float32 head.

Applies to decoder-then-head causal LMs only (``MODEL_TYPES``: their forward is the decoder's
last hidden state through the head, with nothing after it), also inside a PEFT wrapper whose
adapters leave the head alone, float32 on CPU, a plain bias-free ``nn.Linear`` head;
``Bf16Head.of`` returns None elsewhere and the caller takes the model's own logits.
"""

from __future__ import annotations

from typing import Any

import torch

from common.hardware import native_bf16
from evals.sampling import cumulative, draw, sample_rows
from trainers_torch.kernels import onednn_linear, onednn_pack
from trainers_torch.model import causal_lm

BOUND = 2.0**-6  # ≥ the bfloat16 head's error per unit of ‖x‖·‖w‖ (0.0118, see above)
MAX_CANDIDATES = 1024  # per greedy row; a flatter row takes the full float32 head
MAX_ROUNDS = 64  # proposals per sampled row; a row still open takes the full float32 head
BLOCK = 1024  # vocabulary columns per block of the candidate search
MODEL_TYPES = frozenset({"gemma", "gemma3_text", "llama", "mistral", "qwen2", "qwen3"})


class Bf16Head:
    """The next tokens of ``hidden · weightᵀ`` per row, by a bfloat16 product and a float32 check."""

    def __init__(self, weight: torch.Tensor) -> None:
        self.weight = weight.detach()
        low = self.weight.to(torch.bfloat16)
        packed = onednn_pack(low) if native_bf16() else None  # oneDNN's layout, made once
        self.low = low if packed is None else packed  # the bfloat16 head (packed: only for low_logits)
        self.max_norm = float(self.weight.norm(dim=1).max())

    def low_logits(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` [N, D] float32 -> the bfloat16 logits [N, V]."""
        if self.low.is_mkldnn:
            return onednn_linear(x.to(torch.bfloat16), self.low)
        return torch.nn.functional.linear(x.to(torch.bfloat16), self.low)

    @classmethod
    def of(cls, model: Any) -> Bf16Head | None:
        """The head for ``model`` (or the causal LM inside its PEFT wrapper), or None where it
        does not apply (see the module doc)."""
        from transformers import PreTrainedModel

        lm = causal_lm(model)
        head: Any = lm.get_output_embeddings() if isinstance(lm, PreTrainedModel) else None
        config = getattr(lm, "config", None)
        if (
            type(head) is not torch.nn.Linear
            or getattr(head, "bias", None) is not None  # (typed non-optional, may be None)
            or getattr(config, "model_type", None) not in MODEL_TYPES
            or getattr(config, "final_logit_softcapping", None) is not None
            or head.weight.dtype != torch.float32
            or head.weight.device.type != "cpu"
            or not native_bf16()
        ):
            return None
        return cls(head.weight)

    def _error(self, x: torch.Tensor) -> torch.Tensor:
        """Per row of ``x`` [N, D]: e, the most a bfloat16 logit can differ from float32's."""
        return BOUND * self.max_norm * x.norm(dim=1)

    def argmax(self, hidden: torch.Tensor) -> torch.Tensor:
        """``hidden`` [N, D] (or [N, 1, D]) float32 -> the token ids [N] float32's argmax picks."""
        x = hidden.reshape(-1, hidden.shape[-1])
        low = self.low_logits(x)
        line = low.amax(dim=1).float() - 2 * self._error(x)
        line = (line - line.abs() * 2.0**-7).to(torch.bfloat16)  # rounded down, never up
        rows, idx = _candidates(low, line)
        counts = torch.bincount(rows, minlength=x.shape[0])
        full = (counts == 0) | (counts > MAX_CANDIDATES)
        if bool(full.any()):
            keep = ~full[rows]
            rows, idx = rows[keep], idx[keep]
        score = (x[rows] * self.weight[idx]).sum(dim=1)
        best = score.new_full((x.shape[0],), float("-inf")).scatter_reduce(0, rows, score, "amax")
        top = score == best[rows]
        tokens = idx.new_full((x.shape[0],), self.weight.shape[0])
        tokens = tokens.scatter_reduce(0, rows[top], idx[top], "amin")  # the first of equal ones
        if bool(full.any()):
            tokens[full] = torch.nn.functional.linear(x[full], self.weight).argmax(dim=1)
        return tokens

    def sample(
        self, hidden: torch.Tensor, temperature: float, generator: torch.Generator | None
    ) -> torch.Tensor:
        """``hidden`` [N, D] (or [N, 1, D]) float32 -> token ids [N] drawn from
        softmax(hidden · weightᵀ / temperature) as float32 computes it (rejection sampling from
        the bfloat16 logits, see the module doc). A row that is not finite is an error."""
        x = hidden.reshape(-1, hidden.shape[-1])
        scaled = self.low_logits(x).float().div_(temperature)
        cdf = cumulative((scaled - scaled.amax(dim=1, keepdim=True)).exp_())
        slack = (self._error(x) / temperature).double()
        tokens = torch.full((x.shape[0],), -1, dtype=torch.long, device=x.device)
        for _ in range(MAX_ROUNDS):
            pick = draw(cdf, generator)  # every row draws each round: the draws do not depend on
            exact = (x * self.weight[pick]).sum(dim=1) / temperature  # which rows are done
            log_accept = (exact - scaled.gather(1, pick[:, None]).squeeze(1)).double() - slack
            u = torch.rand(x.shape[0], generator=generator, dtype=torch.float64, device=x.device)
            take = (tokens < 0) & (u < log_accept.exp())
            tokens[take] = pick[take]
            if bool((tokens >= 0).all()):
                return tokens
        open_rows = tokens < 0
        logits = torch.nn.functional.linear(x[open_rows], self.weight) / temperature
        tokens[open_rows] = sample_rows(logits.softmax(dim=-1), generator)
        return tokens


def _candidates(low: torch.Tensor, line: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(row, token) of every logit of ``low`` [N, V] at or above its row's ``line``, in row-major
    order, as ``(low >= line[:, None]).nonzero()`` gives them, found by blocks of ``BLOCK``
    tokens: only the few blocks whose maximum reaches the line are compared token by token
    (a third of the time of the whole comparison on Gemma 3's 262,144 tokens)."""
    n, vocab = low.shape
    whole = vocab // BLOCK * BLOCK
    tops = low[:, :whole].view(n, -1, BLOCK).amax(dim=2)
    if whole < vocab:
        tops = torch.cat([tops, low[:, whole:].amax(dim=1, keepdim=True)], dim=1)
    rows, blocks = (tops >= line[:, None]).nonzero(as_tuple=True)
    cols = blocks[:, None] * BLOCK + torch.arange(BLOCK, device=low.device)
    inside = cols < vocab  # the last block may be short
    cols.clamp_(max=vocab - 1)
    hit = (low[rows[:, None], cols] >= line[rows][:, None]) & inside
    k, j = hit.nonzero(as_tuple=True)
    return rows[k], cols[k, j]
