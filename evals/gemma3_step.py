"""The decode step of a transformers Gemma 3 text model, without transformers' per-call machinery.

A decode step of Gemma 3 270M runs 18 small layers on a few rows, so much of its time on CPU is
not the products but what surrounds them: the text model's output capture and argument merging,
building the full and sliding-window masks from the 2D padding mask through ``masking_utils``,
each layer's keyword plumbing and module calls, the attention registry lookup, and six
``Gemma3RMSNorm`` calls per layer that each rebuild ``1 + weight``. Measured on the real model
with the widths cut to a few dozen (the same 18 layers, so the products cost nothing): 24.8 of
the real model's 68.4 ms step (17 rows, 2 threads, a 2-core Intel Xeon with AVX-512).

``Gemma3Step`` runs the same step in one function: the model's own embedding, rotary tables and
final norm; each layer's norms with ``1 + weight`` made once; plain linear products through
``evals.few_rows.linear`` (what the decode loop's ``few_row_linears`` runs: oneDNN on the run's
packed weights), and any other projection (a PEFT LoRA layer, the trainers' fused one) through
its own forward; the attention function the model's implementation names (``evals.gqa_step``'s
in the decode loop, the trainers' ``packed_sdpa`` for the GRPO policy); the cache's own
``update``; and the two masks cut from the padding mask the way ``masking_utils`` makes sdpa's
for one query token (none where no column is padded and the window does not cut the cache).
Every operation is the one transformers runs, in its order, on the same values, so the hidden
states equal the model's bit for bit (``tests/test_gemma3_step.py``): the tokens do not change,
only the time around them. The real model's body step at 32 rows and 300 cached positions (2
threads, idle, the same Xeon): 93.2 → 85.6 ms; the decode benchmark's 100 items
(``benchmarks.sides decode_ours``): −9.2% wall.

``Gemma3Step.of(model)`` gives None for anything else (another family, a model in training
mode, an attention whose masks are not sdpa's, logit soft-capping inside attention,
bidirectional attention), and the decode loop keeps the model's own forward.
"""

from __future__ import annotations

from typing import Any

import torch

from evals.few_rows import Packs, linear
from trainers_torch.model import causal_lm

MODEL_TYPE = "gemma3_text"


class _Projection:
    """One projection of the step: a plain ``nn.Linear`` through ``evals.few_rows.linear`` (what
    the decode loop's ``few_row_linears`` runs for it), anything else (a PEFT LoRA layer, the
    trainers' fused one) through its own forward."""

    def __init__(self, module: Any) -> None:
        self.module = module
        self.plain = type(module) is torch.nn.Linear and "forward" not in module.__dict__

    def __call__(self, x: torch.Tensor, packs: Packs) -> torch.Tensor:
        return linear(self.module, x, packs) if self.plain else self.module(x)


class _Norm:
    """``Gemma3RMSNorm``, with its float32 ``1 + weight`` made once (for one decode run: the
    weights do not change while it lasts)."""

    def __init__(self, norm: Any) -> None:
        self.scale = 1.0 + norm.weight.detach().float()
        self.eps = norm.eps

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        f = x.float()  # (float32 input: itself, no copy)
        return (f * torch.rsqrt(f.pow(2).mean(-1, keepdim=True) + self.eps) * self.scale).type_as(x)


def _sdpa_masks(implementation: str | None) -> bool:
    """Whether transformers builds ``implementation``'s masks as for ``sdpa`` (the masks
    ``Gemma3Step`` cuts): sdpa, the decode loop's grouped-query sdpa, the trainers' packed_sdpa."""
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    return implementation is not None and ALL_MASK_ATTENTION_FUNCTIONS.get(implementation) is sdpa_mask


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class _Layer:
    def __init__(self, layer: Any) -> None:
        attn = layer.self_attn
        self.attn = attn
        self.index = attn.layer_idx
        self.kind = attn.layer_type
        self.window = attn.sliding_window
        self.head_dim = attn.head_dim
        self.scaling = attn.scaling
        self.q, self.k, self.v, self.o = (
            _Projection(getattr(attn, n)) for n in ("q_proj", "k_proj", "v_proj", "o_proj")
        )
        mlp = layer.mlp
        self.gate, self.up, self.down = (
            _Projection(getattr(mlp, n)) for n in ("gate_proj", "up_proj", "down_proj")
        )
        self.act = mlp.act_fn
        self.q_norm, self.k_norm = _Norm(attn.q_norm), _Norm(attn.k_norm)
        self.norms = [
            _Norm(getattr(layer, n))
            for n in (
                "input_layernorm",
                "post_attention_layernorm",
                "pre_feedforward_layernorm",
                "post_feedforward_layernorm",
            )
        ]


class Gemma3Step:
    """The decoder of a Gemma 3 text model for one new token per row, equal to its forward."""

    def __init__(self, lm: Any) -> None:
        body = lm.get_decoder()
        self.config = lm.config
        self.embed = body.embed_tokens
        self.rotary = body.rotary_emb
        self.final = body.norm
        self.layers = [_Layer(layer) for layer in body.layers[: self.config.num_hidden_layers]]
        self.window = self.config.sliding_window
        self.kinds = sorted({layer.kind for layer in self.layers})
        self.head = _Projection(lm.get_output_embeddings())
        self.softcap = self.config.final_logit_softcapping

    @classmethod
    def of(cls, model: Any) -> Gemma3Step | None:
        """The step for ``model`` (or the Gemma 3 inside its PEFT wrapper); None where it does
        not apply (see the module doc)."""
        lm = causal_lm(model)
        config = getattr(lm, "config", None)
        if (
            getattr(config, "model_type", None) != MODEL_TYPE
            or not _sdpa_masks(getattr(config, "_attn_implementation", None))
            or getattr(config, "attn_logit_softcapping", None) is not None
            or getattr(config, "use_bidirectional_attention", False)
            or lm.training
            or type(lm.get_decoder()).__name__ != "Gemma3TextModel"
        ):
            return None
        try:
            return cls(lm)
        except (TypeError, AttributeError):
            return None

    def _masks(self, mask: torch.Tensor, cache: Any) -> dict[str, torch.Tensor | None]:
        """The attention mask of each layer kind for one query token, as ``masking_utils``
        makes them for ``sdpa``: [rows, 1, 1, keys] booleans, or None where nothing is masked."""
        length = cache.get_seq_length()  # before this step's token is written
        padded = mask.bool()
        if padded.shape[-1] != length + 1:
            raise ValueError(f"mask covers {padded.shape[-1]} positions, the cache {length} + 1")
        full = bool(padded.all())
        out: dict[str, torch.Tensor | None] = {}
        for kind in self.kinds:
            if kind == "sliding_attention" and length >= self.window:
                keys = padded[:, length - self.window + 1 :]
                out[kind] = keys[:, None, None, :]
            else:
                out[kind] = None if full else padded[:, None, None, :]
        return out

    def __call__(
        self, input_ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache: Any, packs: Packs
    ) -> torch.Tensor:
        """``input_ids`` [rows, 1], ``mask`` [rows, cache + 1] (1 = attend), ``positions``
        [rows, 1], ``cache`` the rows' growing cache (written in place) -> the final hidden
        states [rows, 1, hidden]."""
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

        attend = ALL_ATTENTION_FUNCTIONS[self.config._attn_implementation]  # (evals.gqa_step's, in the loop)
        x = self.embed(input_ids)
        tables = {kind: [t.unsqueeze(1) for t in self.rotary(x, positions, kind)] for kind in self.kinds}
        masks = self._masks(mask, cache)
        rows = x.shape[0]
        for layer in self.layers:
            cos, sin = tables[layer.kind]
            n_in, n_attn, n_pre, n_post = layer.norms
            h = n_in(x)
            q = layer.q(h, packs).view(rows, 1, -1, layer.head_dim).transpose(1, 2)
            k = layer.k(h, packs).view(rows, 1, -1, layer.head_dim).transpose(1, 2)
            v = layer.v(h, packs).view(rows, 1, -1, layer.head_dim).transpose(1, 2)
            q, k = layer.q_norm(q), layer.k_norm(k)
            q = q * cos + _rotate_half(q) * sin
            k = k * cos + _rotate_half(k) * sin
            k, v = cache.layers[layer.index].update(k, v)
            a, _ = attend(layer.attn, q, k, v, masks[layer.kind], dropout=0.0, scaling=layer.scaling,
                          sliding_window=layer.window)  # fmt: skip
            a = layer.o(a.reshape(rows, 1, -1).contiguous(), packs)
            x = x + n_attn(a)
            h = n_pre(x)
            h = layer.down(layer.act(layer.gate(h, packs)) * layer.up(h, packs), packs)
            x = x + n_post(h)
        return self.final(x)

    def logits(self, hidden: torch.Tensor, packs: Packs) -> torch.Tensor:
        """The LM head (and the final soft-capping) on ``hidden`` [rows, 1, hidden]."""
        logits = self.head(hidden, packs)
        if self.softcap is not None:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits
