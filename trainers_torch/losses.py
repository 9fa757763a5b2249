"""The torch losses: completion-only cross-entropy and per-token log-probs with the LM head
run in chunks on completion positions only (never [tokens, vocab] at once), and the GRPO
advantages and clipped-ratio loss.

The SFT loss and GRPO's log-probs go through the decoder body once, then the head: the
hidden states at positions that predict a completion token are gathered and multiplied by
the (tied) embedding chunk by chunk, with the gradient computed in the same pass
(``_LinearCrossEntropy``), so the 262,144-token head of Gemma 3 costs [chunk, vocab] of memory.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import torch

from common.grpo_config import LossConfig
from common.sft_data import IGNORE
from trainers_torch.data import Batch
from trainers_torch.model import causal_lm, tied_lookup

VOCAB_BLOCK = 2048
"""Vocabulary columns per block of the chunked head on a CPU: one chunk's [256, 2,048] float32
block (2 MiB) stays in cache through the elementwise passes that follow its product (row
maximum; shift, exponential and sum). Elsewhere the vocabulary is one block (a GPU would pay
~10 kernel launches per block)."""


class _Head:
    """One chunk's softmax over the vocabulary, held block by block of the vocabulary, with each
    row's logsumexp and target logit.

    Three passes over the blocks, the [chunk, vocab] buffer in the weight's dtype:
    1. each block's product (then bias, soft-cap and temperature), its row maximum kept into
       the running one;
    2. ``exp(z - m)`` in place, ``m`` the row's maximum over the whole vocabulary, summed into
       ``s`` (``lse = m + log s``); with soft-capping, times ``1 - tanh²`` once summed;
    3. (``grads``) for the rows whose target lies in a block, ``s·(1 - tanh²)`` off the target's
       entry (computed in float32); then one product per block back through the head, the rows
       scaled by ``1/s`` once on [rows, H] (``exp(z - lse) = exp(z - m)/s``).
    So each element's exponential is taken once, and no block is copied, against a logsumexp
    in the first pass and ``exp(z - lse)`` again in a copy of the block for the gradient. The
    loss and hidden gradient of a 262,144 × 640 float32 head (Gemma 3's shape), chunks of 256
    rows, 2 threads, idle, 3 alternated process pairs × 3 rounds: 414 rows 1,530-1,595 ms
    against 1,515-1,782 before; 460 rows 1,651-1,843 against 1,788-2,179.
    """

    def __init__(
        self,
        h: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        softcap: float | None,
        inv_temp: float,
        y: torch.Tensor,
        buf: torch.Tensor,
    ) -> None:
        rows, vocab = h.shape[0], weight.shape[0]
        self.h, self.weight, self.inv_temp, self.y = h, weight, inv_temp, y
        width = VOCAB_BLOCK if h.device.type == "cpu" else vocab
        self.bounds = [(s, min(s + width, vocab)) for s in range(0, vocab, width)]
        self.blocks: list[torch.Tensor] = []
        m = torch.full((rows,), -torch.inf, dtype=torch.float32, device=h.device)
        for s, e in self.bounds:
            z = buf[rows * s : rows * e].view(rows, e - s)
            torch.mm(h, weight[s:e].t(), out=z)
            zf = z.float()  # z itself when float32
            if bias is not None or softcap or inv_temp != 1.0:
                if bias is not None:
                    zf += bias[s:e].float()
                if softcap:
                    zf.div_(softcap).tanh_().mul_(softcap)
                if inv_temp != 1.0:
                    zf.mul_(inv_temp)
                if zf is not z:
                    z.copy_(zf)
            torch.maximum(m, zf.amax(-1), out=m)
            self.blocks.append(z)
        blk = torch.div(y, width, rounding_mode="floor")
        start = blk * width
        cols = (vocab - start).clamp(max=width)
        rows_idx = torch.arange(rows, device=h.device)
        self.picked = buf[rows * start + rows_idx * cols + (y - start)].float()
        self.block_of_target = blk
        cap = softcap * inv_temp if softcap else None
        # the target's entry of pass 3, exp(z - m) · (1 - tanh²), in float32 (a bfloat16 block
        # would round it before the subtraction that leaves 1 - p for a confident row)
        self.target_exp = (self.picked - m).exp()
        if cap is not None:
            self.target_slope: torch.Tensor | None = 1.0 - (self.picked / cap) ** 2
            self.target_exp *= self.target_slope
        else:
            self.target_slope = None
        self.sums = torch.zeros(rows, dtype=torch.float32, device=h.device)
        for z in self.blocks:
            zf = z.float()
            slope = None if cap is None else (zf / cap).square_().neg_().add_(1.0)
            zf.sub_(m[:, None]).exp_()
            self.sums += zf.sum(-1)
            if slope is not None:
                zf.mul_(slope)
            if zf is not z:
                z.copy_(zf)
        self.lse = m + self.sums.log()

    def _targets_in_blocks(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """For each block, the rows whose target lies in it and the target's column there."""
        order = torch.argsort(self.block_of_target)
        counts = torch.bincount(self.block_of_target, minlength=len(self.bounds)).tolist()
        out, at = [], 0
        for (s, _), n in zip(self.bounds, counts, strict=True):
            r = order[at : at + n]
            out.append((r, self.y[r] - s))
            at += n
        return out

    def grads(
        self,
        row_scale: torch.Tensor | float,
        grad_h: torch.Tensor | None,
        grad_w: torch.Tensor | None,
        grad_b: torch.Tensor | None,
    ) -> None:
        """``row_scale`` · d(logsumexp - target logit) / d(raw logits), pushed through the head:
        written into ``grad_h`` [rows, H] (summed in float32) and added into float32 ``grad_w``
        [vocab, H] and ``grad_b`` [vocab]. Uses up the blocks (once per ``_Head``)."""
        rows = self.h.shape[0]
        scale = torch.as_tensor(row_scale, dtype=torch.float32, device=self.h.device).expand(rows)
        scale = scale * self.inv_temp / self.sums  # exp(z - m) / s = softmax
        off = self.sums if self.target_slope is None else self.sums * self.target_slope
        h_scaled = None if grad_w is None else self.h.float() * scale[:, None]
        acc = None if grad_h is None else torch.zeros(self.h.shape, dtype=torch.float32, device=self.h.device)
        for (s, e), z, (r, c) in zip(self.bounds, self.blocks, self._targets_in_blocks(), strict=True):
            if r.numel():  # softmax - onehot, times s
                z[r, c] = (self.target_exp[r] - off[r]).to(z.dtype)
            if acc is not None:
                if self.weight.dtype == torch.float32:
                    acc.addmm_(z, self.weight[s:e])
                else:
                    acc += z @ self.weight[s:e]
            if grad_w is not None or grad_b is not None:
                zf = z.float()
                if grad_w is not None and h_scaled is not None:
                    grad_w[s:e].addmm_(zf.t(), h_scaled)
                if grad_b is not None:
                    grad_b[s:e].addmv_(zf.t(), scale)
        self.blocks = []
        if grad_h is not None and acc is not None:
            grad_h.copy_(acc.mul_(scale[:, None]))


def _heads(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    softcap: float | None,
    inv_temp: float,
    targets: torch.Tensor,
    chunk: int,
) -> Iterator[tuple[slice, _Head]]:
    """Each chunk's rows and its ``_Head``, all sharing one flat logits buffer in the weight's
    dtype ([chunk, vocab] of memory, whatever the number of rows)."""
    n = hidden.shape[0]
    buf = torch.empty(min(chunk, n) * weight.shape[0], dtype=weight.dtype, device=weight.device)
    for s in range(0, n, chunk):
        rows = slice(s, s + chunk)
        yield rows, _Head(hidden[rows], weight, bias, softcap, inv_temp, targets[rows], buf)


class _LinearCrossEntropy(torch.autograd.Function):
    """Summed cross-entropy of ``hidden @ weight.T`` against ``targets``, chunk by chunk.

    The gradients are computed during the forward pass, one chunk of logits at a time, so
    no [N, vocab] tensor is ever kept; backward only scales them.
    """

    @staticmethod
    def forward(ctx: Any, *inputs: Any) -> torch.Tensor:
        hidden, weight, bias, targets, chunk, softcap = inputs
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        grad_h = torch.zeros_like(hidden) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
        grad_b = torch.zeros(bias.shape, dtype=torch.float32, device=bias.device) if need_b else None
        for rows, head in _heads(hidden, weight, bias, softcap, 1.0, targets, chunk):
            total += (head.lse - head.picked).sum()
            head.grads(1.0, None if grad_h is None else grad_h[rows], grad_w, grad_b)
        # kept on ctx, not saved: backward scales them in place (a [vocab, H] copy less) and drops them
        ctx.grads = (grad_h, grad_w, grad_b)
        ctx.dtypes = (weight.dtype, None if bias is None else bias.dtype)
        return total

    @staticmethod
    def backward(ctx: Any, grad_total: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        if ctx.grads is None:
            raise RuntimeError("the chunked cross-entropy's backward runs once (no retain_graph)")
        (grad_h, grad_w, grad_b), ctx.grads = ctx.grads, None
        w_dtype, b_dtype = ctx.dtypes
        out_h = None if grad_h is None else grad_h.mul_(grad_total.to(grad_h.dtype))
        out_w = None if grad_w is None else grad_w.mul_(grad_total).to(w_dtype)
        out_b = None if grad_b is None else grad_b.mul_(grad_total).to(b_dtype)
        return out_h, out_w, out_b, None, None, None


def lm_head_loss_sum(
    hidden: torch.Tensor, head: torch.nn.Linear, targets: torch.Tensor, chunk: int, softcap: float | None
) -> torch.Tensor:
    """Sum over rows of ``-log softmax(head(hidden))[target]``; hidden [N, H], targets [N]."""
    bias = getattr(head, "bias", None)
    if torch.is_grad_enabled() and (hidden.requires_grad or head.weight.requires_grad):
        return _LinearCrossEntropy.apply(hidden, head.weight, bias, targets, chunk, softcap)
    total = torch.zeros((), dtype=torch.float32, device=hidden.device)
    for _, part in _heads(hidden, head.weight, bias, softcap, 1.0, targets, chunk):
        total += (part.lse - part.picked).sum()
    return total


class _LinearLogProbs(torch.autograd.Function):
    """Per-row ``log softmax(hidden @ weight.T / temperature)[target]``, chunk by chunk, never
    keeping [N, vocab] (soft-capping, when the model has it, comes before the temperature).

    When only ``hidden`` needs a gradient (LoRA: the LM head is frozen), the forward pass keeps
    d logp / d hidden ([N, H], one row per token) and backward only scales it. When the head
    weight trains too, backward recomputes each chunk's logits (one extra matmul per chunk).
    """

    @staticmethod
    def forward(ctx: Any, *inputs: Any) -> torch.Tensor:
        hidden, weight, bias, targets, chunk, softcap, inv_temp = inputs
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        keep_jacobian = need_h and not (need_w or need_b)
        out = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)
        jac = torch.empty_like(hidden) if keep_jacobian else None
        for rows, head in _heads(hidden, weight, bias, softcap, inv_temp, targets, chunk):
            out[rows] = head.picked - head.lse
            if jac is not None:  # d logp / d hidden = -d(lse - picked) / d hidden
                head.grads(-1.0, jac[rows], None, None)
        ctx.chunk, ctx.softcap, ctx.inv_temp, ctx.keep_jacobian = chunk, softcap, inv_temp, keep_jacobian
        if keep_jacobian:
            ctx.save_for_backward(jac)
        elif need_h or need_w or need_b:
            ctx.save_for_backward(hidden, weight, bias, targets)
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        if ctx.keep_jacobian:
            (jac,) = ctx.saved_tensors
            return jac * grad_out[:, None].to(jac.dtype), None, None, None, None, None, None
        hidden, weight, bias, targets = ctx.saved_tensors
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        grad_h = torch.zeros_like(hidden) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
        grad_b = torch.zeros(bias.shape, dtype=torch.float32, device=bias.device) if need_b else None
        for rows, head in _heads(hidden, weight, bias, ctx.softcap, ctx.inv_temp, targets, ctx.chunk):
            head.grads(-grad_out[rows].float(), None if grad_h is None else grad_h[rows], grad_w, grad_b)
        out_w = None if grad_w is None else grad_w.to(weight.dtype)
        out_b = None if grad_b is None else grad_b.to(bias.dtype)
        return grad_h, out_w, out_b, None, None, None, None


def lm_head_logprobs(
    hidden: torch.Tensor,
    head: torch.nn.Linear,
    targets: torch.Tensor,
    chunk: int,
    softcap: float | None,
    temperature: float = 1.0,
) -> torch.Tensor:
    """float32 ``log softmax(head(hidden) / temperature)[target]`` per row; hidden [N, H] -> [N].

    Differentiable (GRPO's per-token log-probs); the full [N, vocab] logits never exist at once.
    """
    bias = getattr(head, "bias", None)
    inv_temp = 1.0 / temperature
    if torch.is_grad_enabled() and (hidden.requires_grad or head.weight.requires_grad):
        return _LinearLogProbs.apply(hidden, head.weight, bias, targets, chunk, softcap, inv_temp)
    out = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)
    for rows, part in _heads(hidden, head.weight, bias, softcap, inv_temp, targets, chunk):
        out[rows] = part.picked - part.lse
    return out


def packed_lengths(position_ids: torch.Tensor) -> list[list[int]]:
    """Each row's example lengths, from positions that restart at 0 for every example."""
    out = []
    for row in position_ids.tolist():
        starts = [i for i, p in enumerate(row) if p == 0] + [len(row)]
        out.append([b - a for a, b in itertools.pairwise(starts)])
    return out


def completion_states(model: Any, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, Any, float | None]:
    """``(hidden, targets, lm_head, softcap)`` at the positions of a packed batch that predict a
    completion token, in row order (each row's examples in packing order, tokens in order)."""
    lm = causal_lm(model)
    device = next(lm.parameters()).device
    input_ids = batch.input_ids.to(device)
    embeds = tied_lookup(lm, input_ids)  # full fine-tuning of a tied embedding: its rows in place
    hidden = lm.get_decoder()(
        input_ids=input_ids if embeds is None else None,
        inputs_embeds=embeds,
        position_ids=batch.position_ids.to(device),
        attention_mask=None,  # packed: the block-diagonal mask comes from the position ids
        use_cache=False,
        packed_lengths=packed_lengths(batch.position_ids),  # read by model.packed_sdpa (others ignore it)
    ).last_hidden_state
    targets = batch.targets.to(device)
    keep = targets != IGNORE
    softcap = getattr(lm.config, "final_logit_softcapping", None)
    return hidden[keep], targets[keep], lm.get_output_embeddings(), softcap


def completion_loss_sum(model: Any, batch: Batch, chunk: int) -> torch.Tensor:
    """Summed token loss over the completion tokens of a packed batch (divide by ``n_targets``)."""
    hidden, targets, head, softcap = completion_states(model, batch)
    return lm_head_loss_sum(hidden, head, targets, chunk, softcap)


def completion_logprobs(model: Any, batch: Batch, chunk: int, temperature: float = 1.0) -> torch.Tensor:
    """log p of every completion token of a packed batch ([n_targets], order of ``completion_states``)."""
    hidden, targets, head, softcap = completion_states(model, batch)
    return lm_head_logprobs(hidden, head, targets, chunk, softcap, temperature)


def group_advantages(
    rewards: torch.Tensor, group_size: int, scale: str = "group", eps: float = 1e-4
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(advantages [N], zero_variance [N / group_size])`` for rewards laid out group by group.

    A = r - mean(group), divided by (std(group) + eps) with ``scale="group"`` (std with n - 1,
    as TRL). Groups whose rewards are all equal get exactly 0.
    """
    r = rewards.reshape(-1, group_size).to(torch.float64)
    centred = r - r.mean(dim=1, keepdim=True)
    if scale == "group":
        centred = centred / (r.std(dim=1, keepdim=True) + eps)
    elif scale != "none":
        raise ValueError(f"scale_rewards must be 'group' or 'none', got {scale!r}")
    flat = r.amax(dim=1) == r.amin(dim=1)
    centred[flat] = 0.0
    return centred.reshape(-1).to(torch.float32), flat


def sequence_weights(lengths: list[int], loss_type: str, max_new_tokens: int) -> list[float]:
    """Per-token weight of each completion, so that loss = sum over tokens of weight * loss_t."""
    n, total = len(lengths), sum(lengths)
    if loss_type == "grpo":
        return [1.0 / (n * max(1, length)) for length in lengths]
    if loss_type == "dr_grpo":
        return [1.0 / (n * max_new_tokens)] * n
    if loss_type == "dapo":
        return [1.0 / max(1, total)] * n
    raise ValueError(f"unknown loss_type {loss_type!r}")


def token_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    weights: torch.Tensor,
    cfg: LossConfig,
    ref_logp: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The weighted clipped-ratio loss over flat completion tokens (all tensors [n_tokens]).

    Returns ``(loss, stats)``: stats hold token counts clipped below / above (ratio outside the
    range on the side where clipping stops the gradient) and the summed k3 KL (beta > 0).
    """
    low, high = cfg.clip_range
    ratio = torch.exp(logp - old_logp)
    per_token = -torch.minimum(ratio * advantages, ratio.clamp(low, high) * advantages)
    stats = {
        "clipped_low": ((ratio < low) & (advantages < 0)).sum().detach(),
        "clipped_high": ((ratio > high) & (advantages > 0)).sum().detach(),
    }
    if cfg.beta > 0:
        if ref_logp is None:
            raise ValueError("beta > 0 needs the reference log-probs")
        d = ref_logp - logp
        kl = torch.exp(d) - d - 1.0
        per_token = per_token + cfg.beta * kl
        stats["kl_sum"] = kl.sum().detach()
    return (per_token * weights).sum(), stats


def grpo_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    cfg: LossConfig,
    max_new_tokens: int,
    ref_logp: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The loss of a padded batch: logp / old_logp / ref_logp / mask [B, T], advantages [B].

    The same computation the trainer runs on packed micro-batches, for checking by hand.
    """
    keep = mask.bool()
    lengths = keep.sum(dim=1).tolist()
    w = torch.tensor(sequence_weights(lengths, cfg.loss_type, max_new_tokens), dtype=logp.dtype)
    adv_tok = advantages[:, None].expand_as(logp)[keep]
    w_tok = w[:, None].expand_as(logp)[keep]
    ref = ref_logp[keep] if ref_logp is not None else None
    loss, stats = token_loss(logp[keep], old_logp[keep], adv_tok, w_tok, cfg, ref)
    n = max(1, int(keep.sum()))
    out = {"clip_fraction": float(stats["clipped_low"] + stats["clipped_high"]) / n}
    if "kl_sum" in stats:
        out["kl"] = float(stats["kl_sum"]) / n
    return loss, out
