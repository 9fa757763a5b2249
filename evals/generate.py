"""Batched decoding of eval prompts into ``predictions.jsonl``, written as it goes.

    python -m evals.generate --config configs/eval/gsm8k_cpu.yaml key=value ...

Loads the model ``model.path`` names (``evals/load.py``: a base HF model, an adapter, a run dir
or an Orbax checkpoint) and decodes on torch (our KV-cache decode loop with continuous batching:
finished rows leave the batch and waiting prompts take their places; ``evals/kv_cache.py``) or
JAX (Tunix ``Sampler``). Samples ``data.n`` items with ``seed``, builds each prompt with the
shared chat format, and appends one record per item as soon as it finishes (JAX: its batch):
``{id, prompt, completion, prompt_tokens, completion_tokens, stop_reason, model, decoding}``.
A crashed run resumes without redoing finished ids. A model that does not load, or whose
completions are all empty, is an error (exit 2): nothing downstream may score that.

The library entry point, ``generate_completions(model, tokenizer, prompts, settings)``, is
what trainers call for their held-out generation evals.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from common.config import load_config, split_cli, to_dict
from common.errors import InputError, cli
from common.jsonl import JsonlAppender, iter_jsonl
from common.prompts import chat_prompt, end_of_turn, format_prompt, load_tokenizer
from common.runs import library_versions, now_iso, seed_everything, sha256_file
from evals.load import load_for_eval, model_provenance, resolve_model, tokenizer_dir

StopReason = Literal["end_of_turn", "eos", "max_new_tokens"]
SHARED_PREFIX_MIN = 16  # shared prompt tokens worth a prefix cache (evals.generate._torch_decode)
PROMPT_STYLES = ("text", "yaml", "plain")  # trace instruction (text / yaml) or the bare question


@dataclass
class DecodeSettings:
    """How to decode. ``temperature == 0`` is greedy (``top_k``/``top_p`` then unused)."""

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_k: int = 0  # 0 = no top-k filtering
    top_p: float = 1.0
    seed: int = 0  # sampling RNG; greedy ignores it
    stop_at_end_of_turn: bool = True  # also stop on the chat end-of-turn token, not only on eos
    # YAML traces: the answer after </reasoning> is the solver's value of the trace when it
    # executes, else the model's own (evals/solver_answer.py); the model's text is kept too.
    solver_answer: bool = False

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 = off), got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


@dataclass
class ModelSpec:
    path: str = "models/gemma-3-270m"  # HF dir, PEFT adapter, merged export, runs/<name>, Orbax checkpoint
    base: str | None = None  # base model for an adapter / Orbax checkpoint, overriding what its run names
    backend: Literal["torch", "jax"] = "torch"
    dtype: str = "float32"
    device: str = "auto"  # torch only: auto = cuda when available, else cpu
    prefer: Literal["merged", "adapter"] = "merged"  # a run dir holding both final/ and merged/


@dataclass
class DataSpec:
    path: str = "data/built/gsm8k/test.jsonl"
    n: int = 500  # items sampled with `seed`; 0 = all
    prompt: Literal["text", "yaml", "plain"] = "text"

    def __post_init__(self) -> None:
        if self.n < 0:
            raise ValueError(f"data.n must be >= 0 (0 = all), got {self.n}")


@dataclass
class GenerateConfig:
    model: ModelSpec = field(default_factory=ModelSpec)
    data: DataSpec = field(default_factory=DataSpec)
    decode: DecodeSettings = field(default_factory=DecodeSettings)
    batch_size: int = 16
    seed: int = 0  # picks the item sample (the same seed gives the same items for every model)
    out: str = "runs/eval/predictions.jsonl"
    # How run_eval / compare score the predictions: auto (from the items) or yaml_trace
    # (also execute the YAML trace in <reasoning>; evals/SCORING.md). Generation ignores it.
    suite: Literal["auto", "yaml_trace"] = "auto"

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")


# ----------------------------------------------------------------------------- generation


def _is_torch_model(model: Any) -> bool:
    return any(c.__module__.startswith("torch.") for c in type(model).__mro__)


def stop_token_ids(tokenizer: Any, settings: DecodeSettings) -> dict[int, StopReason]:
    """Token id -> the stop reason it stands for (eos always; end-of-turn when asked)."""
    stops: dict[int, StopReason] = {}
    if settings.stop_at_end_of_turn:
        eot = tokenizer.convert_tokens_to_ids(end_of_turn(tokenizer))
        if isinstance(eot, int) and eot != tokenizer.unk_token_id:
            stops[eot] = "end_of_turn"
    if tokenizer.eos_token_id is not None:
        stops.setdefault(tokenizer.eos_token_id, "eos")
    return stops


def _finish(
    tokenizer: Any,
    generated: list[int],
    stops: dict[int, StopReason],
    prompt_tokens: int,
    return_ids: bool = False,
) -> dict:
    """Cut ``generated`` at its first stop token and describe it (with its token ids if asked)."""
    reason: StopReason = "max_new_tokens"
    end = len(generated)
    for i, tok in enumerate(generated):
        if tok in stops:
            reason, end = stops[tok], i
            break
    text = tokenizer.decode(generated[:end], skip_special_tokens=True)
    n = end + (reason != "max_new_tokens")  # the stop token counts
    out = {"completion": text, "prompt_tokens": prompt_tokens, "completion_tokens": n, "stop_reason": reason}
    if return_ids:
        out["completion_ids"] = [int(t) for t in generated[:n]]
    return out


def _pick_tokens(logits: Any, settings: DecodeSettings, generator: Any) -> Any:
    """The next token per row: argmax when greedy, else a sample after temperature, top-k and
    top-p (nucleus: the smallest set of most likely tokens whose probability reaches ``top_p``)."""
    import torch

    from evals.sampling import sample_rows

    if settings.greedy:
        return logits.argmax(dim=-1)
    logits = logits.float() / settings.temperature
    if 0 < settings.top_k < logits.shape[-1]:
        kth = torch.topk(logits, settings.top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if settings.top_p < 1.0:
        sorted_probs, order = logits.softmax(dim=-1).sort(dim=-1, descending=True)
        mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs  # the most likely token always stays
        drop = torch.zeros_like(order, dtype=torch.bool).scatter(-1, order, mass_before >= settings.top_p)
        logits = logits.masked_fill(drop, float("-inf"))
    return sample_rows(logits.softmax(dim=-1), generator)


def _left_pad(mask: Any, length: int) -> Any:
    """An attention mask [B, T] cut to its last ``length`` columns or padded with zeros on the left."""
    import torch

    t = mask.shape[1]
    if t >= length:
        return mask[:, t - length :]
    return torch.cat([mask.new_zeros((mask.shape[0], length - t)), mask], dim=1)


class _Batch:
    """The running rows of the decode loop: their KV cache (``evals.kv_cache``: right-aligned,
    left padding masked), attention mask, the next token to feed and its position, and which
    prompt each row decodes (-1: its prompt is done; the row waits for a newcomer or to be dropped)."""

    def __init__(self, cache: Any, mask: Any, tokens: Any, positions: Any, rows: list[int]) -> None:
        self.cache, self.mask, self.tokens, self.positions, self.rows = cache, mask, tokens, positions, rows

    @property
    def live(self) -> int:
        """How many rows still decode a prompt."""
        return sum(r >= 0 for r in self.rows)

    def keep(self, keep: Any) -> None:
        """Only the rows at ``keep``; then the columns no row uses any more are dropped."""
        self.cache.batch_select_indices(keep)
        self.mask, self.tokens, self.positions = self.mask[keep], self.tokens[keep], self.positions[keep]
        self.rows = [self.rows[k] for k in keep.tolist()]
        self._trim()

    def compact(self) -> None:
        """Drop the rows whose prompt is done."""
        import torch

        live = [i for i, r in enumerate(self.rows) if r >= 0]
        if len(live) < len(self.rows):
            self.keep(torch.tensor(live, device=self.tokens.device))

    def fill(self, other: _Batch) -> None:
        """Add ``other``'s rows: into the places of rows that are done when there are enough of
        them (only the newcomers' keys and values are copied), else after the others (``join``)."""
        import torch

        from evals import kv_cache

        free = [i for i, r in enumerate(self.rows) if r < 0]
        if len(free) < len(other.rows):
            self.compact()
            self.join(other)
            return
        slots = torch.tensor(free[: len(other.rows)], device=self.tokens.device)
        length = max(self.mask.shape[1], other.mask.shape[1])
        kv_cache.place(self.cache, slots, other.cache)
        self.mask = _left_pad(self.mask, length)
        self.mask[slots] = _left_pad(other.mask, length)
        self.tokens[slots], self.positions[slots] = other.tokens, other.positions
        for i, r in zip(slots.tolist(), other.rows, strict=True):
            self.rows[i] = r
        self._trim()

    def join(self, other: _Batch) -> None:
        """Append ``other``'s rows, both caches left-padded to the longer one."""
        import torch

        from evals import kv_cache

        length = max(self.mask.shape[1], other.mask.shape[1])
        kv_cache.join(self.cache, other.cache)
        self.mask = torch.cat([_left_pad(self.mask, length), _left_pad(other.mask, length)])
        self.tokens = torch.cat([self.tokens, other.tokens])
        self.positions = torch.cat([self.positions, other.positions])
        self.rows += other.rows

    def _trim(self) -> None:
        """Drop the columns no row uses any more (a growing cache drops them for free)."""
        from evals import kv_cache

        first = int(self.mask.any(dim=0).int().argmax())  # the first column a row still uses
        if first > 0 and isinstance(self.cache.layers[0], kv_cache.GrowingLayer):
            self.mask = self.mask[:, first:]
            kv_cache.fit(self.cache, self.mask.shape[1])


def _torch_decode(
    model: Any,
    encode: Any,
    queue: list[int],
    settings: DecodeSettings,
    batch_size: int,
    stops: set[int],
    generator: Any,
    prefix_ids: Sequence[int] = (),
) -> Iterator[list[tuple[int, list[int]]]]:
    """Decode the prompts ``queue`` names with a KV cache, at most ``batch_size`` rows at a time;
    yield ``[(prompt, its tokens up to and including its stop), ...]`` as rows finish.

    Continuous batching: a row that stops leaves the batch and the next waiting prompts take
    the freed places (prefilled on their own, then their keys and values written into the freed
    rows of the cache, left-padded to a common length; the other rows are not moved), so the
    batch stays full until the queue runs dry (then finished rows are dropped from the cache):
    a run costs about the sum of its completions / ``batch_size`` steps, not each batch's
    longest one. Positions follow each row's own tokens (as transformers'
    ``generate`` does for left padding), so greedy tokens do not depend on the company a row keeps.
    Greedy decoding and plain sampling (temperature only) take their tokens from
    ``evals.bf16_head`` where that applies (a bfloat16 LM head checked in float32: float32's
    argmax, or a draw from float32's softmax; faster on CPUs with native bfloat16); decode steps
    of a grouped-query model attend without repeated keys and values (``evals.gqa_step``), and
    multiply weights packed once per run into oneDNN's layout (``evals.few_rows.Packs``); those
    of a Gemma 3 text model run without transformers' per-call work (``evals.gemma3_step``, the
    same hidden states bit for bit).
    ``encode(prompt indices)`` gives their left-padded ``input_ids`` and ``attention_mask``.

    ``prefix_ids``: tokens every prompt starts with (the instruction of a chat prompt), whose keys
    and values are computed once and copied into each new row's cache; a refill then runs only
    its rows' own tokens through the model (with a growing cache, when the refill's prompts fit
    in every sliding window, so no window cuts the copied prefix differently).
    """
    import torch
    from transformers import DynamicCache

    from evals import kv_cache
    from evals.bf16_head import Bf16Head
    from evals.few_rows import Packs, few_row_linears
    from evals.gemma3_step import Gemma3Step
    from evals.gqa_step import gqa_step_attention
    from trainers_torch.model import causal_lm

    waiting = list(reversed(queue))
    out: dict[int, list[int]] = {}
    batch: _Batch | None = None
    stop_ids: Any = None
    refill = True
    shared: Any = None  # the cache of ``prefix_ids`` (one row), built at the first refill
    packs = Packs()  # oneDNN's packed weights of the decode steps, for this run

    plain = settings.greedy or (settings.top_k == 0 and settings.top_p >= 1.0)
    head = Bf16Head.of(model) if plain else None  # a bfloat16 head where exact and faster
    decoder: Any = causal_lm(model).get_decoder() if head is not None else None  # the body, no head
    fast = Gemma3Step.of(model)  # Gemma 3's decode step without transformers' per-call work

    def step(b: _Batch, input_ids: Any, positions: Any) -> Any:
        if fast is not None and input_ids.shape[1] == 1 and kv_cache.is_growing(b.cache):
            hidden = fast(input_ids, b.mask, positions, b.cache, packs)
            logits = fast.logits(hidden, packs) if head is None else None
        else:
            inputs = {"input_ids": input_ids, "attention_mask": b.mask, "position_ids": positions}
            if head is not None:
                hidden = decoder(**inputs, past_key_values=b.cache, use_cache=True).last_hidden_state
            else:
                logits = model(**inputs, past_key_values=b.cache, use_cache=True, logits_to_keep=1).logits
        if head is None:
            assert logits is not None
            return _pick_tokens(logits[:, -1], settings, generator)
        last = hidden[:, -1]
        return head.argmax(last) if settings.greedy else head.sample(last, settings.temperature, generator)

    def finish(b: _Batch, tokens: Any) -> list[tuple[int, list[int]]]:
        """Record each row's new token; mark the rows that are done (-1); return them."""
        done = []
        stopped = torch.isin(tokens, stop_ids).tolist()
        for i, (r, t, stop) in enumerate(zip(b.rows, tokens.tolist(), stopped, strict=True)):
            if r < 0:
                continue
            out[r].append(t)
            if stop or len(out[r]) >= settings.max_new_tokens:
                done.append((r, out.pop(r)))
                b.rows[i] = -1
        b.tokens = tokens
        if not b.live:
            b.rows = []
        return done

    def prefill(take: list[int]) -> tuple[_Batch, Any]:
        """The prompts ``take`` through the model: a batch of them and each one's next token."""
        nonlocal stop_ids, refill, shared
        input_ids, mask = encode(take)
        if stop_ids is None:
            stop_ids = torch.tensor(sorted(stops), dtype=torch.long, device=input_ids.device)
        positions = (mask.long().cumsum(-1) - 1).clamp(min=0)
        cache = kv_cache.growing_cache(model.config)
        refill = refill and cache is not None  # other cache layers: rows only leave
        width, p = input_ids.shape[1], len(prefix_ids)
        window = kv_cache.window(cache) if cache is not None else None
        if cache is None or p == 0 or (window is not None and width > window):  # the whole prompts
            new = _Batch(cache or DynamicCache(config=model.config), mask, None, positions[:, -1], take)
            return new, step(new, input_ids, positions)
        if shared is None:
            shared = cache
            ids = torch.tensor([list(prefix_ids)], device=input_ids.device)
            model.get_decoder()(input_ids=ids, past_key_values=shared, use_cache=True)
        gaps = width - mask.sum(dim=1)  # each row's left padding
        own = torch.arange(width - p, device=mask.device) >= gaps[:, None]  # its tokens after the prefix
        step_mask = torch.cat([mask.new_ones((len(take), p)), own.to(mask.dtype)], dim=1)
        cache = kv_cache.repeat(shared, len(take), room=width - p + kv_cache.ROOM)
        new = _Batch(cache, step_mask, None, positions[:, -1], take)
        tokens = step(new, input_ids[:, p:], positions[:, p:])
        kv_cache.move_prefix(new.cache, p, gaps)  # [prefix | gap | own] -> [gap | prefix | own]
        new.mask = mask
        return new, tokens

    def advance() -> list[tuple[int, list[int]]]:
        """Refill the free places when prompts wait, else one decode step of the batch."""
        nonlocal batch
        live = batch.live if batch is not None else 0
        if waiting and live < batch_size and (refill or not live):
            take = [waiting.pop() for _ in range(min(batch_size - live, len(waiting)))]
            for r in take:
                out[r] = []
            new, tokens = prefill(take)
            done = finish(new, tokens)
            new.compact()
            if new.rows:
                if batch is None or not batch.rows:
                    batch = new
                else:
                    batch.fill(new)
            return done
        assert batch is not None
        batch.compact()  # no prompt waits for the rows that are done
        batch.mask = torch.cat([batch.mask, batch.mask.new_ones((len(batch.rows), 1))], dim=1)
        batch.positions = batch.positions + 1
        return finish(batch, step(batch, batch.tokens[:, None], batch.positions[:, None]))

    while waiting or (batch is not None and batch.rows):
        # not held while the caller runs between yields
        with torch.inference_mode(), few_row_linears(model, packs), gqa_step_attention(model):
            done = advance()
        if done:
            yield done


def _torch_batches(
    model: Any,
    tokenizer: Any,
    prompts: list[str],
    settings: DecodeSettings,
    batch_size: int,
    return_ids: bool = False,
) -> Iterator[list[tuple[int, dict]]]:
    import torch

    stops = stop_token_ids(tokenizer, settings)
    device = next(model.parameters()).device
    ids = [tokenizer(p).input_ids for p in prompts]
    lengths = [len(i) for i in ids]
    order = sorted(range(len(prompts)), key=lambda i: -lengths[i])  # little padding per batch

    def encode(idx: list[int]) -> tuple[Any, Any]:
        side, tokenizer.padding_side = tokenizer.padding_side, "left"  # the caller's setting is restored
        try:
            enc = tokenizer([prompts[i] for i in idx], return_tensors="pt", padding=True).to(device)
        finally:
            tokenizer.padding_side = side
        return enc.input_ids, enc.attention_mask

    generator = None
    if not settings.greedy:
        generator = torch.Generator(device=device).manual_seed(settings.seed * 1_000_003)
    prefix = shared_prefix(ids, SHARED_PREFIX_MIN)
    for done in _torch_decode(model, encode, order, settings, batch_size, set(stops), generator, prefix):
        yield [(i, _finish(tokenizer, new, stops, lengths[i], return_ids)) for i, new in done]


def shared_prefix(ids: list[list[int]], least: int) -> list[int]:
    """The tokens every one of several prompts starts with, leaving each at least one of its
    own; empty when fewer than ``least``."""
    if len(ids) < 2:
        return []
    n = min(len(i) for i in ids) - 1
    first = ids[0]
    for other in ids[1:]:
        n = next((k for k in range(n) if other[k] != first[k]), n)
    return list(first[:n]) if n >= least else []


def _next_pow2(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


def _jax_batches(
    model: Any,
    tokenizer: Any,
    prompts: list[str],
    settings: DecodeSettings,
    batch_size: int,
    return_ids: bool = False,
) -> Iterator[list[tuple[int, dict]]]:
    """Tunix's ``Sampler`` on an NNX model, its decode steps from ``trainers_jax.sampling.StepSampler``
    (Gemma 3 on weights laid out once per call); shapes fixed across batches so it compiles once."""
    import numpy as np
    from tunix.generate import sampler as tunix_sampler

    from trainers_jax.model import check_window
    from trainers_jax.sampling import StepSampler

    stops = stop_token_ids(tokenizer, settings)
    cfg = model.config
    probe = tunix_sampler.Sampler(
        model, tokenizer, tunix_sampler.CacheConfig(1, cfg.num_layers, cfg.num_kv_heads, cfg.head_dim)
    )
    lengths = [len(probe.tokenize(p)) for p in prompts]
    prompt_len = _next_pow2(max(lengths))
    cache = tunix_sampler.CacheConfig(
        cache_size=prompt_len + settings.max_new_tokens,
        num_layers=cfg.num_layers,
        num_kv_heads=cfg.num_kv_heads,
        head_dim=cfg.head_dim,
    )
    check_window(model, cache.cache_size, "longest prompt (rounded up to a power of 2) + max_new_tokens")
    sampler = StepSampler(model, tokenizer, cache)  # a LoRA model (no scale given) keeps Tunix's step
    # The sampler returns tokens up to (not including) the stop token; keep its final token
    # buffer to learn which stop token ended each row.
    captured: dict[str, Any] = {}
    decode = sampler._compiled_decode_fn

    def keep_buffer(*args: Any, **kwargs: Any) -> Any:
        state = decode(*args, **kwargs)
        captured["buffer"] = np.asarray(state.token_buffer)
        return state

    sampler._compiled_decode_fn = keep_buffer
    order = sorted(range(len(prompts)), key=lambda i: -lengths[i])
    sampling = {} if settings.greedy else {"top_p": settings.top_p, "top_k": settings.top_k or None}
    for b, start in enumerate(range(0, len(order), batch_size)):
        idx = order[start : start + batch_size]
        batch = [prompts[i] for i in idx]
        batch += [batch[-1]] * (batch_size - len(batch))  # same shape as the other batches
        out = sampler(
            batch,
            max_generation_steps=settings.max_new_tokens,
            max_prompt_length=prompt_len,
            eos_tokens=list(stops),
            temperature=settings.temperature,
            seed=settings.seed * 1_000_003 + b,
            **sampling,
        )
        buffer = captured.pop("buffer")
        results = []
        for k, i in enumerate(idx):
            row = out.tokens[k].tolist()
            after = buffer[k, prompt_len + len(row) : prompt_len + len(row) + 1].tolist()
            results.append((i, _finish(tokenizer, row + after, stops, lengths[i], return_ids)))
        yield results


def iter_completions(
    model: Any,
    tokenizer: Any,
    prompts: list[str],
    settings: DecodeSettings,
    batch_size: int = 16,
    progress: bool = True,
    return_ids: bool = False,
) -> Iterator[list[tuple[int, dict]]]:
    """Yield ``[(prompt_index, result), ...]`` one batch at a time (longest prompts first)."""
    from tqdm import tqdm

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    batches = _torch_batches if _is_torch_model(model) else _jax_batches
    with tqdm(
        total=len(prompts), unit="item", desc="generate", disable=not progress, dynamic_ncols=True
    ) as bar:
        if not prompts:
            return
        if settings.solver_answer and return_ids:
            raise ValueError(
                "decode.solver_answer rewrites completions: not for sampled token ids (return_ids)"
            )
        for results in batches(model, tokenizer, prompts, settings, batch_size, return_ids):
            bar.update(len(results))
            if settings.solver_answer:
                from evals.solver_answer import with_solver_answer

                for _, res in results:
                    res.update(with_solver_answer(res["completion"]))
            yield results


def generate_completions(
    model: Any,
    tokenizer: Any,
    prompts: list[str],
    settings: DecodeSettings,
    batch_size: int = 16,
    progress: bool = True,
    return_ids: bool = False,
) -> list[dict]:
    """Decode every prompt; per prompt ``{completion, prompt_tokens, completion_tokens, stop_reason}``.

    ``model`` is a torch HF causal LM (batched ``generate`` with left padding and KV cache)
    or a Tunix NNX model (Tunix ``Sampler``). Generation stops at eos and, unless
    ``settings.stop_at_end_of_turn`` is off, at the chat end-of-turn token; ``stop_reason``
    says which, or ``max_new_tokens`` for a cut-off completion. Completions are decoded
    without special tokens. Results come back in the order of ``prompts``. With ``return_ids``
    each result also holds ``completion_ids``: the sampled token ids, up to and including the
    stop token (``completion_tokens`` of them), for a trainer that scores its own samples (GRPO).
    """
    out: list[dict | None] = [None] * len(prompts)
    for results in iter_completions(model, tokenizer, prompts, settings, batch_size, progress, return_ids):
        for i, res in results:
            out[i] = res
    return out  # type: ignore[return-value]


# ----------------------------------------------------------------------------- data


def load_items(path: str | Path) -> list[dict]:
    """Eval items ``{id, question, ...}``; errors name ``file:line: field``."""
    if not Path(path).exists() and "data/built" in str(path):
        raise InputError(f"{path}: file not found (run `make data` to build the datasets)")
    items: list[dict] = []
    seen: dict[str, int] = {}
    for lineno, rec in iter_jsonl(path):
        where = f"{path}:{lineno}"
        if not isinstance(rec, dict):
            raise InputError(f"{where}: expected a JSON object")
        rid = rec.get("id")
        if isinstance(rid, bool) or not isinstance(rid, str | int) or rid == "":
            raise InputError(f"{where}: id: expected a non-empty string or integer, got {rid!r}")
        if not isinstance(rec.get("question"), str) or not rec["question"].strip():
            raise InputError(f"{where}: question: expected a non-empty string")
        if str(rid) in seen:
            raise InputError(f"{where}: id: duplicate {rid!r} (first at line {seen[str(rid)]})")
        if "checks" in rec:
            from evals.suites.prompts import check_suite_record

            check_suite_record(rec, where)
        seen[str(rid)] = lineno
        items.append(rec)
    if not items:
        raise InputError(f"{path}: no items")
    return items


def sample_items(items: list[dict], n: int, seed: int) -> list[dict]:
    """``n`` items (all when ``n`` is 0 or too large), in file order.

    The sample is the first ``n`` of one seeded permutation, so a larger ``n`` with the same
    seed extends a smaller one (and resumes can grow an eval).
    """
    if n == 0 or n >= len(items):
        return list(items)
    perm = list(range(len(items)))
    random.Random(seed).shuffle(perm)
    return [items[i] for i in sorted(perm[:n])]


def build_prompt(tokenizer: Any, question: str, style: str) -> str:
    """The model's chat prompt for a question: with the trace instruction (``text``, ``yaml``) or bare (``plain``)."""
    if style == "plain":
        return chat_prompt(tokenizer, question.strip())
    return format_prompt(tokenizer, question, style)


# ----------------------------------------------------------------------------- the script


def decoding_record(decode: DecodeSettings) -> dict[str, Any]:
    """The decoding settings a prediction record carries (and a resume or a cache must match).

    ``solver_answer`` came after records were first written: it is named only when on, so the
    predictions of earlier runs stay resumable and cached under the same settings.
    """
    settings = to_dict(decode)
    if not settings.get("solver_answer"):
        settings.pop("solver_answer", None)
    return settings


def _check_resumable(
    existing: list[Any], out: Path, model: dict[str, Any], decoding: dict, prompts: dict[str, str]
) -> set[str]:
    """Ids an earlier attempt finished with these weights, backend, decoding and prompts; else an error."""
    done = set()
    for k, rec in enumerate(existing, 1):
        where = f"{out}: record {k}"
        if not isinstance(rec, dict) or "id" not in rec:
            raise InputError(f"{where}: not a prediction record")
        rid = str(rec["id"])
        theirs = rec.get("model") or {}
        if theirs.get("fingerprint") != model["fingerprint"]:
            raise InputError(
                f"{where}: written by other weights (model.fingerprint differs); use a new out path"
            )
        for key in ("backend", "dtype"):
            if theirs.get(key) != model[key]:
                raise InputError(f"{where}: written with model.{key}={theirs.get(key)!r}; use a new out path")
        if rec.get("decoding") != decoding:
            raise InputError(
                f"{where}: written with other decoding settings {rec.get('decoding')}; use a new out path"
            )
        if rid not in prompts:
            raise InputError(
                f"{where}: id {rid!r} is not in this item sample (data/n/seed changed?); use a new out path"
            )
        if rec.get("prompt") != prompts[rid]:
            raise InputError(f"{where}: id {rid!r} was generated from another prompt; use a new out path")
        done.add(rid)
    return done


def _complete_records(path: Path) -> list[Any]:
    """The complete records of an earlier attempt (a torn last line is ignored here, cut on append)."""
    if not path.exists():
        return []
    data = path.read_bytes()
    records = []
    for lineno, line in enumerate(data[: data.rfind(b"\n") + 1].splitlines(), 1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except ValueError:
                raise InputError(
                    f"{path}:{lineno}: invalid JSON in an earlier attempt's predictions"
                ) from None
    return records


def run(cfg: GenerateConfig, progress: bool = True) -> dict[str, Any]:
    """Generate predictions for ``cfg``; returns a summary (counts, stop reasons, items/s, provenance)."""
    seed_everything(cfg.seed)
    items = sample_items(load_items(cfg.data.path), cfg.data.n, cfg.seed)
    ref = resolve_model(cfg.model.path, cfg.model.base, cfg.model.prefer)
    provenance = model_provenance(ref, cfg.model.backend, cfg.model.dtype)
    tokenizer = load_tokenizer(tokenizer_dir(ref))
    decoding = decoding_record(cfg.decode)
    prompts = {str(it["id"]): build_prompt(tokenizer, it["question"], cfg.data.prompt) for it in items}
    out = Path(cfg.out)
    data_sha = sha256_file(cfg.data.path)
    done = _check_resumable(_complete_records(out), out, provenance, decoding, prompts)
    todo = [it for it in items if str(it["id"]) not in done]
    if done:
        print(f"resuming {out}: {len(done)} of {len(items)} items already done", file=sys.stderr)
    t0 = time.perf_counter()
    model = None
    if todo:  # loaded before the output is touched: a model that fails to load leaves nothing behind
        model, tokenizer = load_for_eval(ref, cfg.model.backend, cfg.model.dtype, cfg.model.device)
    load_s = time.perf_counter() - t0

    with JsonlAppender(out) as sink:
        todo_prompts = [prompts[str(it["id"])] for it in todo]
        t0 = time.perf_counter()
        for results in iter_completions(model, tokenizer, todo_prompts, cfg.decode, cfg.batch_size, progress):
            for i, res in results:
                it = todo[i]
                sink.append(
                    {
                        "id": it["id"],
                        "prompt": todo_prompts[i],
                        **res,
                        "model": provenance,
                        "decoding": decoding,
                        "dataset": {"path": cfg.data.path, "sha256": data_sha},
                        "time": now_iso(),
                    }
                )
        gen_s = time.perf_counter() - t0
    records = [r for _, r in iter_jsonl(out)]

    empty = sum(1 for r in records if not r["completion"].strip())
    if records and empty == len(records):
        raise InputError(
            f"{out}: all {len(records)} completions are empty; the model produced nothing, refusing to go on"
        )
    stops = Counter(r["stop_reason"] for r in records)
    summary = {
        "out": str(out),
        "n_items": len(items),
        "n_generated_now": len(todo),
        "n_resumed": len(done),
        "empty_completions": empty,
        "stop_reasons": dict(stops),
        "truncated_fraction": stops["max_new_tokens"] / len(records) if records else 0.0,
        "mean_completion_tokens": sum(r["completion_tokens"] for r in records) / max(1, len(records)),
        "load_seconds": round(load_s, 2),
        "generate_seconds": round(gen_s, 2),
        "items_per_second": round(len(todo) / gen_s, 4) if todo and gen_s > 0 else None,
        "model": provenance,
        "decoding": decoding,
        "batch_size": cfg.batch_size,
        "seed": cfg.seed,
        "libraries": library_versions(),
    }
    return summary


def print_summary(summary: dict[str, Any]) -> None:
    rate = summary["items_per_second"]
    print(
        f"{summary['out']}: {summary['n_items']} items ({summary['n_generated_now']} generated now, "
        f"{summary['n_resumed']} resumed), stop reasons {summary['stop_reasons']}, "
        f"mean completion tokens {summary['mean_completion_tokens']:.1f}, "
        f"{'n/a' if rate is None else f'{rate:.3f}'} items/s"
    )
    if summary["empty_completions"]:
        print(f"warning: {summary['empty_completions']} empty completions", file=sys.stderr)
    if summary["truncated_fraction"] > 0.1:
        print(
            f"warning: {summary['truncated_fraction']:.0%} of completions hit max_new_tokens="
            f"{summary['decoding']['max_new_tokens']} (cut off, likely scored wrong)",
            file=sys.stderr,
        )


@cli
def main(argv: list[str] | None = None) -> dict[str, Any]:
    flags, overrides = split_cli(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", help="YAML config (GenerateConfig); key=value overrides follow")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(flags)
    cfg = load_config(GenerateConfig, args.config, overrides)
    summary = run(cfg, progress=not args.no_progress)
    print_summary(summary)
    return summary


if __name__ == "__main__":
    main()
