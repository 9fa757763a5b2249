"""Supervised fine-tuning on trace records: LoRA (PEFT) or full, packed, completion-only loss.

    python -m trainers_torch.sft --config configs/sft_gemma3_270m_cpu.yaml key=value ...

Read top to bottom: config (``common/sft_config.py``) → data (``common/sft_data.py``,
shared with the JAX trainer) (tokenize, overflow check, packing) → model (LoRA or
full, optional freezing) → the loss (decoder body, then the LM head in chunks on completion
positions only) → the training loop (grad accumulation, clipping, warmup + cosine,
held-out eval, atomic checkpoints, resume) → export (PEFT adapter in ``final/``, merged HF
safetensors in ``merged/``).

Packing: several examples share one row of at most ``data.pack_tokens`` tokens; position ids
restart at 0 for each example and no attention mask is passed, so transformers builds a
block-diagonal causal mask from the position ids (``find_packed_sequence_indices`` in
``masking_utils``; for Gemma 3 it is combined with the sliding window of the sliding layers).
``tests/test_sft_loss.py`` checks packed == unpacked loss with sdpa and eager attention.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from common import sft_data
from common.config import config_from_cli, load_config
from common.errors import InputError, cli
from common.jsonl import write_json
from common.prompts import end_of_turn, load_tokenizer
from common.runs import MetricsLogger, RunDir, read_metrics, resume_hash, seed_everything, write_plots
from common.sft_config import (  # noqa: F401  (re-exported: the recipe's config lives beside both trainers)
    CheckpointConfig,
    DataConfig,
    EvalConfig,
    LoraConfig,
    ModelConfig,
    OptimConfig,
    SFTConfig,
    TrainConfig,
    lr_factor,
)
from common.sft_data import (
    IGNORE,
    DataPlan,
    Example,
    overflow_line,
    pack_rows,
    tokenize_records,
)
from evals.heldout import heldout_records
from trainers_torch.checkpoint import (
    latest_checkpoint,
    load_checkpoint,
    remove_partial,
    save_checkpoint,
)
from trainers_torch.model import attention_for, check_model_dir, default_device, torch_dtype

# --------------------------------------------------------------------------------------------
# Config: common/sft_config.py (the same YAML keys drive trainers_jax.sft)
# --------------------------------------------------------------------------------------------


def say(msg: str) -> None:
    """One line to stdout, above any progress bar."""
    tqdm.write(msg, file=sys.stdout)
    sys.stdout.flush()


# --------------------------------------------------------------------------------------------
# Data: records → token ids → packed rows (common/sft_data.py, shared with the JAX trainer)
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# Model: LoRA or full fine-tuning, optional freezing
# --------------------------------------------------------------------------------------------


def causal_lm(model: Any) -> Any:
    """The underlying ``*ForCausalLM`` of a PEFT model (itself otherwise)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def decoder_layers(lm: Any) -> torch.nn.ModuleList:
    layers = getattr(lm.get_decoder(), "layers", None)
    if not isinstance(layers, torch.nn.ModuleList):
        raise InputError(
            f"{type(lm).__name__}: no decoder .layers list; this trainer needs a decoder-only LM"
        )
    return layers


def linear_module_names(lm: Any) -> list[str]:
    """Names (last component) of every ``nn.Linear`` inside the decoder blocks."""
    names = {
        n.rsplit(".", 1)[-1] for n, m in decoder_layers(lm).named_modules() if isinstance(m, torch.nn.Linear)
    }
    return sorted(names)


def apply_lora(lm: Any, cfg: SFTConfig) -> Any:
    """Wrap ``lm`` with LoRA adapters (PEFT) on the decoder's linear layers; the embedding stays frozen."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    available = linear_module_names(lm)
    targets = cfg.lora.target_modules or available
    unknown = sorted(set(targets) - set(available))
    if unknown:
        raise InputError(
            f"lora.target_modules: {unknown} not linear layers of the decoder; available: {available}"
        )
    layers = None
    n_layers = len(decoder_layers(lm))
    if cfg.train.trainable_layers is not None:
        k = min(cfg.train.trainable_layers, n_layers)
        layers = list(range(n_layers - k, n_layers))
    peft_cfg = PeftLoraConfig(
        r=cfg.lora.rank,
        lora_alpha=cfg.lora.alpha,
        lora_dropout=cfg.lora.dropout,
        target_modules=list(targets),
        layers_to_transform=layers,
        layers_pattern="layers" if layers is not None else None,
        bias="none",
        task_type="CAUSAL_LM",
    )
    return get_peft_model(lm, peft_cfg)


def freeze_for_full(lm: Any, cfg: TrainConfig) -> None:
    """Full fine-tuning: everything trains, or only the last N blocks + final norm (+ lm_head)."""
    if cfg.trainable_layers is None:
        for p in lm.parameters():
            p.requires_grad_(True)
        return
    for p in lm.parameters():
        p.requires_grad_(False)
    layers = decoder_layers(lm)
    for block in list(layers)[-cfg.trainable_layers :]:
        for p in block.parameters():
            p.requires_grad_(True)
    norm = getattr(lm.get_decoder(), "norm", None)
    if norm is not None:
        for p in norm.parameters():
            p.requires_grad_(True)
    if cfg.train_lm_head:
        for p in lm.get_output_embeddings().parameters():
            p.requires_grad_(True)


def resolve_device(name: str) -> str:
    if name == "auto":
        return default_device()
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError("model.device=cuda but torch sees no CUDA device")
    return name


def build_model(cfg: SFTConfig) -> Any:
    """The model ready to train: LoRA-wrapped or with the chosen parameters unfrozen."""
    from transformers import AutoModelForCausalLM

    path = check_model_dir(cfg.model.path)
    attention = attention_for(json.loads((path / "config.json").read_text()), cfg.model.attn_implementation)
    lm = AutoModelForCausalLM.from_pretrained(
        str(path), dtype=torch_dtype(cfg.model.dtype), attn_implementation=attention
    )
    lm.to(resolve_device(cfg.model.device))
    lm.config.use_cache = False
    if cfg.train.gradient_checkpointing:
        lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if cfg.train.method == "lora":
        for p in lm.parameters():
            p.requires_grad_(False)
        model = apply_lora(lm, cfg)
        if cfg.model.init_adapter:
            load_adapter_weights(model, Path(cfg.model.init_adapter))
    else:
        if cfg.model.init_adapter:
            raise InputError(
                "model.init_adapter applies to train.method=lora; for full, point model.path at a merged/ dir"
            )
        freeze_for_full(lm, cfg.train)
        model = lm
    return model


def load_adapter_weights(model: Any, adapter_dir: Path) -> None:
    """Copy a saved PEFT adapter's weights into ``model`` (same rank and targets)."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    weights = adapter_dir / "adapter_model.safetensors"
    if not weights.is_file():
        raise InputError(f"{adapter_dir}: not a PEFT adapter dir (adapter_model.safetensors missing)")
    try:
        result = set_peft_model_state_dict(model, load_file(str(weights)))
    except RuntimeError as err:  # shape mismatch: another rank
        raise InputError(f"{weights}: does not fit this LoRA config ({str(err).splitlines()[0]})") from None
    missing = [k for k in result.missing_keys if "lora_" in k]
    if result.unexpected_keys or missing:
        raise InputError(
            f"{weights}: adapter does not match this LoRA config "
            f"(unexpected {list(result.unexpected_keys)[:3]}, missing {missing[:3]})"
        )


def parameter_counts(model: Any) -> dict[str, int]:
    seen, total, trainable = set(), 0, 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        trainable += p.numel() if p.requires_grad else 0
    return {"total": total, "trainable": trainable}


# --------------------------------------------------------------------------------------------
# The loss: decoder body, then the LM head in chunks on completion positions only
# --------------------------------------------------------------------------------------------


def _head_logits(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, softcap: float | None):
    """float32 logits of one chunk, and tanh(z / cap) when soft-capping (for the gradient)."""
    z = (h @ weight.t()).float()
    if bias is not None:
        z += bias.float()
    if not softcap:
        return z, None
    t = z.div_(softcap).tanh_()
    return t * softcap, t


class _LinearCrossEntropy(torch.autograd.Function):
    """Summed cross-entropy of ``hidden @ weight.T`` against ``targets``, chunk by chunk.

    The gradients are computed during the forward pass, one chunk of logits at a time, so
    no [N, vocab] tensor is ever kept; backward only scales them.
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, chunk, softcap):  # type: ignore[override]
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        grad_h = torch.zeros_like(hidden) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
        grad_b = torch.zeros(bias.shape, dtype=torch.float32, device=bias.device) if need_b else None
        for s in range(0, hidden.shape[0], chunk):
            h, y = hidden[s : s + chunk], targets[s : s + chunk]
            logits, t = _head_logits(h, weight, bias, softcap)
            lse = torch.logsumexp(logits, dim=-1)
            total += (lse - logits.gather(1, y[:, None]).squeeze(1)).sum()
            g = logits.sub_(lse[:, None]).exp_()  # softmax, reusing the logits buffer
            g[torch.arange(y.shape[0], device=y.device), y] -= 1.0
            if t is not None:
                g.mul_(1.0 - t * t)  # d(cap * tanh(z / cap)) / dz
            if grad_h is not None:
                grad_h[s : s + chunk] = g.to(weight.dtype) @ weight
            if grad_w is not None:
                grad_w.addmm_(g.t(), h.float())
            if grad_b is not None:
                grad_b += g.sum(0)
        ctx.save_for_backward(grad_h, grad_w, grad_b)
        ctx.dtypes = (weight.dtype, None if bias is None else bias.dtype)
        return total

    @staticmethod
    def backward(ctx, grad_total):  # type: ignore[override]
        grad_h, grad_w, grad_b = ctx.saved_tensors
        w_dtype, b_dtype = ctx.dtypes
        out_h = None if grad_h is None else grad_h * grad_total.to(grad_h.dtype)
        out_w = None if grad_w is None else (grad_w * grad_total).to(w_dtype)
        out_b = None if grad_b is None else (grad_b * grad_total).to(b_dtype)
        return out_h, out_w, out_b, None, None, None


def lm_head_loss_sum(
    hidden: torch.Tensor, head: torch.nn.Linear, targets: torch.Tensor, chunk: int, softcap: float | None
) -> torch.Tensor:
    """Sum over rows of ``-log softmax(head(hidden))[target]``; hidden [N, H], targets [N]."""
    bias = getattr(head, "bias", None)
    if torch.is_grad_enabled() and (hidden.requires_grad or head.weight.requires_grad):
        return _LinearCrossEntropy.apply(hidden, head.weight, bias, targets, chunk, softcap)
    total = torch.zeros((), dtype=torch.float32, device=hidden.device)
    for s in range(0, hidden.shape[0], chunk):
        logits, _ = _head_logits(hidden[s : s + chunk], head.weight, bias, softcap)
        y = targets[s : s + chunk]
        total += (torch.logsumexp(logits, -1) - logits.gather(1, y[:, None]).squeeze(1)).sum()
    return total


class _LinearLogProbs(torch.autograd.Function):
    """Per-row ``log softmax(hidden @ weight.T / temperature)[target]``, chunk by chunk, never
    keeping [N, vocab] (soft-capping, when the model has it, comes before the temperature).

    When only ``hidden`` needs a gradient (LoRA: the LM head is frozen), the forward pass keeps
    d logp / d hidden ([N, H], one row per token) and backward only scales it. When the head
    weight trains too, backward recomputes each chunk's logits (one extra matmul per chunk).
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, chunk, softcap, inv_temp):  # type: ignore[override]
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        keep_jacobian = need_h and not (need_w or need_b)
        out = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)
        jac = torch.empty_like(hidden) if keep_jacobian else None
        for s in range(0, hidden.shape[0], chunk):
            h, y = hidden[s : s + chunk], targets[s : s + chunk]
            logits, t = _head_logits(h, weight, bias, softcap)
            if inv_temp != 1.0:
                logits.mul_(inv_temp)
            lse = torch.logsumexp(logits, dim=-1)
            out[s : s + chunk] = logits.gather(1, y[:, None]).squeeze(1) - lse
            if jac is not None:
                g = _dlogp_dlogits(logits, lse, y, t, inv_temp)
                jac[s : s + chunk] = g.to(weight.dtype) @ weight
        ctx.chunk, ctx.softcap, ctx.inv_temp, ctx.keep_jacobian = chunk, softcap, inv_temp, keep_jacobian
        if keep_jacobian:
            ctx.save_for_backward(jac)
        elif need_h or need_w or need_b:
            ctx.save_for_backward(hidden, weight, bias, targets)
        return out

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        if ctx.keep_jacobian:
            (jac,) = ctx.saved_tensors
            return jac * grad_out[:, None].to(jac.dtype), None, None, None, None, None, None
        hidden, weight, bias, targets = ctx.saved_tensors
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        grad_h = torch.zeros_like(hidden) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
        grad_b = torch.zeros(bias.shape, dtype=torch.float32, device=bias.device) if need_b else None
        for s in range(0, hidden.shape[0], ctx.chunk):
            h, y = hidden[s : s + ctx.chunk], targets[s : s + ctx.chunk]
            logits, t = _head_logits(h, weight, bias, ctx.softcap)
            if ctx.inv_temp != 1.0:
                logits.mul_(ctx.inv_temp)
            lse = torch.logsumexp(logits, dim=-1)
            g = _dlogp_dlogits(logits, lse, y, t, ctx.inv_temp)
            g.mul_(grad_out[s : s + ctx.chunk, None].float())
            if grad_h is not None:
                grad_h[s : s + ctx.chunk] = g.to(weight.dtype) @ weight
            if grad_w is not None:
                grad_w.addmm_(g.t(), h.float())
            if grad_b is not None:
                grad_b += g.sum(0)
        out_w = None if grad_w is None else grad_w.to(weight.dtype)
        out_b = None if grad_b is None else grad_b.to(bias.dtype)
        return grad_h, out_w, out_b, None, None, None, None


def _dlogp_dlogits(
    scaled: torch.Tensor, lse: torch.Tensor, y: torch.Tensor, t: torch.Tensor | None, inv_temp: float
) -> torch.Tensor:
    """d log softmax(scaled)[y] / d raw logits, in place of ``scaled`` (onehot - softmax, chained
    through the temperature and the soft-cap)."""
    g = scaled.sub_(lse[:, None]).exp_().neg_()
    g[torch.arange(y.shape[0], device=y.device), y] += 1.0
    if inv_temp != 1.0:
        g.mul_(inv_temp)
    if t is not None:
        g.mul_(1.0 - t * t)
    return g


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
    for s in range(0, hidden.shape[0], chunk):
        logits, _ = _head_logits(hidden[s : s + chunk], head.weight, bias, softcap)
        if inv_temp != 1.0:
            logits.mul_(inv_temp)
        y = targets[s : s + chunk]
        out[s : s + chunk] = logits.gather(1, y[:, None]).squeeze(1) - torch.logsumexp(logits, -1)
    return out


def completion_states(model: Any, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, Any, float | None]:
    """``(hidden, targets, lm_head, softcap)`` at the positions of a packed batch that predict a
    completion token, in row order (each row's examples in packing order, tokens in order)."""
    lm = causal_lm(model)
    device = next(lm.parameters()).device
    hidden = lm.get_decoder()(
        input_ids=batch.input_ids.to(device),
        position_ids=batch.position_ids.to(device),
        attention_mask=None,  # packed: the block-diagonal mask comes from the position ids
        use_cache=False,
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


@torch.no_grad()
def heldout_loss(model: Any, examples: list[Example], cfg: SFTConfig, pad_id: int) -> float:
    """Mean completion-token loss on held-out examples (packed in file order)."""
    was_training = model.training
    model.eval()
    rows = pack_rows([len(e) for e in examples], list(range(len(examples))), cfg.data.pack_tokens)
    total, n = 0.0, 0
    for i in range(0, len(rows), cfg.train.micro_batch_rows):
        batch = collate(examples, rows[i : i + cfg.train.micro_batch_rows], pad_id)
        total += completion_loss_sum(model, batch, cfg.train.loss_chunk_tokens).item()
        n += batch.n_targets
    model.train(was_training)
    return total / max(1, n)


# --------------------------------------------------------------------------------------------
# Optimizer and schedule
# --------------------------------------------------------------------------------------------


def build_optimizer(model: Any, cfg: OptimConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise InputError("no trainable parameters (check train.method / train.trainable_layers)")
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    groups = [g for g in groups if g["params"]]
    if cfg.name == "adamw":
        if len(cfg.betas) != 2:
            raise InputError(f"optim.betas: expected two numbers, got {cfg.betas}")
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.betas[0], cfg.betas[1]))
    return torch.optim.Adafactor(groups, lr=cfg.lr)


# --------------------------------------------------------------------------------------------
# Generation eval (through evals/ once the eval harness is available), plots, export
# --------------------------------------------------------------------------------------------


def generation_eval(
    model: Any, tok: Any, records: list[dict[str, Any]], cfg: SFTConfig, out: Path
) -> dict[str, Any]:
    """``evals.heldout.generation_eval`` with the model in eval mode and its KV cache on."""
    from evals import heldout

    was_training = model.training
    model.eval()
    lm = causal_lm(model)
    lm.config.use_cache = True
    try:
        return heldout.generation_eval(model, tok, records, cfg, out)
    finally:
        lm.config.use_cache = False
        model.train(was_training)


def _write_dir(target: Path, fill: Callable[[Path], None]) -> None:
    """Fill a temp dir beside ``target``, then swap it in: no half-written export is ever visible."""
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    fill(tmp)
    if target.exists():
        shutil.rmtree(target)
    os.rename(tmp, target)


def export(model: Any, tok: Any, cfg: SFTConfig, run: RunDir) -> dict[str, str]:
    """``final/``: the PEFT adapter (LoRA) or the full model; ``merged/``: HF safetensors + tokenizer.

    The merged model's generation config also stops at the end-of-turn token the targets end with.
    """
    final, merged = run.path / "final", run.path / "merged"
    eot_id = tok.convert_tokens_to_ids(end_of_turn(tok))

    def save_hf(lm: Any, d: Path) -> None:
        lm.config.use_cache = True
        eos = lm.generation_config.eos_token_id
        eos = list(eos) if isinstance(eos, list | tuple) else [eos] if eos is not None else []
        if isinstance(eot_id, int) and eot_id not in eos:
            lm.generation_config.eos_token_id = [*eos, eot_id]
        lm.save_pretrained(d, safe_serialization=True)
        tok.save_pretrained(d)

    if cfg.train.method == "lora":

        def save_adapter(d: Path) -> None:
            model.save_pretrained(d)
            tok.save_pretrained(d)

        _write_dir(final, save_adapter)
        merged_lm = model.merge_and_unload()
        _write_dir(merged, lambda d: save_hf(merged_lm, d))
    else:
        _write_dir(merged, lambda d: save_hf(model, d))

        def link_copy(d: Path) -> None:  # final/ = merged/ for a full fine-tune (hard links, no extra disk)
            d.mkdir()
            for f in merged.iterdir():
                try:
                    os.link(f, d / f.name)
                except OSError:
                    shutil.copy2(f, d / f.name)

        _write_dir(final, link_copy)
    return {"final": str(final), "merged": str(merged)}


# --------------------------------------------------------------------------------------------
# The training loop
# --------------------------------------------------------------------------------------------


def prepare_run_dir(cfg: SFTConfig) -> tuple[Path, Path | None]:
    """``(run_path, checkpoint to resume from or None)``; refuses to clobber an existing run."""
    run_path = Path(cfg.output_dir) / cfg.run_name
    ckpts = run_path / "checkpoints"
    latest = latest_checkpoint(ckpts)
    has_run = latest is not None or (run_path / "final").exists()
    if cfg.resume:
        return run_path, latest
    if has_run and not cfg.overwrite:
        raise InputError(
            f"{run_path}: already holds a run (checkpoints or final/); pass resume=true to continue it, "
            "overwrite=true to start over, or another run_name"
        )
    return run_path, None


def train(cfg: SFTConfig) -> dict[str, Any]:
    """Run one SFT job end to end; return its summary (also written to ``summary.json``)."""
    t_start = time.perf_counter()
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    run_path, resume_from = prepare_run_dir(cfg)

    # Everything that can fail on bad input happens before the run dir is touched.
    tok = load_tokenizer(check_model_dir(cfg.model.path))
    train_ex, _, train_report = tokenize_records(
        cfg.data.train, tok, cfg.data, cfg.data.train_limit, cfg.seed
    )
    valid_ex: list[Example] = []
    valid_records: list[dict[str, Any]] = []
    valid_report = None
    if cfg.data.valid:
        valid_ex, _, valid_report = tokenize_records(cfg.data.valid, tok, cfg.data, cfg.data.valid_limit)
        valid_records = heldout_records(cfg)
    seed_everything(cfg.seed)  # LoRA init and dropout follow the seed
    model = build_model(cfg)
    rows_per_step = cfg.train.micro_batch_rows * cfg.train.grad_accum
    plan = DataPlan(train_ex, cfg.data.pack_tokens, rows_per_step, cfg.seed)
    total_steps = plan.total_steps(cfg.train.epochs, cfg.train.max_steps)
    optimizer = build_optimizer(model, cfg.optim)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, total_steps, cfg.optim))
    counts = parameter_counts(model)
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
    start_step, tokens_seen = 0, 0
    if resume_from is not None:  # restore weights, optimizer, schedule and RNG before writing anything
        state = load_checkpoint(resume_from, model, optimizer, scheduler)
        if state.get("config_hash") != resume_hash(cfg):
            raise InputError(
                f"{resume_from}: made with another config than this one (resume needs the same config; "
                f"the checkpoint's is {run_path / 'config.yaml'})"
            )
        start_step, tokens_seen = int(state["step"]), int(state["tokens_seen"])

    if resume_from is None and cfg.overwrite:
        RunDir(run_path).clear()
    data_files = {"train": cfg.data.train, **({"valid": cfg.data.valid} if cfg.data.valid else {})}
    run = RunDir.start(
        run_path,
        cfg,
        data_files=data_files,
        model_dir=cfg.model.path,
        device=resolve_device(cfg.model.device),
        extra={
            "trainer": "trainers_torch.sft",
            "data_report": {"train": train_report, "valid": valid_report},
            "parameters": counts,
            "total_steps": total_steps,
            "rows_per_epoch": len(plan.epoch_rows(0)),
        },
    )
    removed = remove_partial(run.checkpoints)
    if removed:
        say(f"removed unfinished checkpoint writes: {', '.join(removed)}")
    say(overflow_line(train_report))
    if valid_report:
        say(overflow_line(valid_report))
    say(
        f"model {cfg.model.path} ({cfg.train.method}): {counts['trainable']:,} of {counts['total']:,} parameters "
        f"train; {len(train_ex)} examples → {len(plan.epoch_rows(0))} packed rows/epoch "
        f"(pack_tokens={cfg.data.pack_tokens}); {total_steps} steps of {rows_per_step} rows"
    )

    if resume_from is not None:
        run.truncate_metrics(start_step)
        say(f"resumed from {resume_from} (step {start_step})")
    elif cfg.resume:
        say(f"resume=true but {run.checkpoints} holds no complete checkpoint: starting from step 0")

    def save_adapter(d: Path) -> None:
        model.save_pretrained(d)

    def checkpoint(step: int) -> None:
        epoch, row = plan.position(step * rows_per_step)
        path = save_checkpoint(
            run.checkpoints,
            step,
            model,
            optimizer,
            scheduler,
            {
                "epoch": epoch,
                "row_in_epoch": row,
                "rows_seen": step * rows_per_step,
                "tokens_seen": tokens_seen,
                "config_hash": resume_hash(cfg),
            },
            save_adapter=save_adapter if cfg.train.method == "lora" else None,
            keep_last=cfg.checkpoint.keep_last,
        )
        say(f"checkpoint saved: {path}")

    def evaluate(step: int, final: bool) -> dict[str, Any]:
        out: dict[str, Any] = {}
        with torch.random.fork_rng(devices=[]):  # evals never move the (CPU) training RNG
            if valid_ex:
                out["valid_loss"] = heldout_loss(model, valid_ex, cfg, pad_id)
            if cfg.eval.generate_n > 0 and valid_records and (final or cfg.eval.generate_during):
                scores = generation_eval(
                    model, tok, valid_records, cfg, run.eval / f"predictions-step-{step:06d}.jsonl"
                )
                out.update({f"gen_{k}": v for k, v in scores.items()})
        if out:
            logger.log(step, **out)
            say(
                f"step {step}: "
                + ", ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in out.items())
            )
        return out

    logger = MetricsLogger(run.path)
    model.train()
    last: dict[str, Any] = {}
    bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True, desc=cfg.run_name)
    for step in range(start_step, total_steps):
        t0 = time.perf_counter()
        rows = plan.step_rows(step)
        micro = [collate(train_ex, rows[i : i + cfg.train.micro_batch_rows], pad_id)
                 for i in range(0, len(rows), cfg.train.micro_batch_rows)]  # fmt: skip
        n_targets = sum(b.n_targets for b in micro)
        loss_sum = 0.0
        for b in micro:
            part = completion_loss_sum(model, b, cfg.train.loss_chunk_tokens)
            (part / n_targets).backward()
            loss_sum += part.item()
        params = [p for p in model.parameters() if p.requires_grad]
        max_norm = cfg.optim.max_grad_norm if cfg.optim.max_grad_norm > 0 else float("inf")
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
        lr = scheduler.get_last_lr()[0]
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        n_tokens = sum(b.n_tokens for b in micro)
        tokens_seen += n_tokens
        dt = time.perf_counter() - t0
        last = {
            "loss": loss_sum / n_targets,
            "lr": lr,
            "grad_norm": grad_norm,
            "tokens_per_s": n_tokens / dt,
            "tokens": n_tokens,
            "completion_tokens": n_targets,
            "examples": sum(b.n_examples for b in micro),
            "tokens_seen": tokens_seen,
            "epoch": round(plan.epoch_float((step + 1) * rows_per_step), 4),
            "step_time_s": round(dt, 4),
        }
        logger.log(step + 1, **last)
        bar.update(1)
        bar.set_postfix(loss=f"{last['loss']:.4f}", lr=f"{lr:.2e}", tok_s=f"{last['tokens_per_s']:.0f}")
        done = step + 1 == total_steps
        if cfg.eval.every_steps > 0 and (step + 1) % cfg.eval.every_steps == 0 and not done:
            evaluate(step + 1, final=False)
            write_plots(run)
        if done or (cfg.checkpoint.every_steps > 0 and (step + 1) % cfg.checkpoint.every_steps == 0):
            checkpoint(step + 1)
    bar.close()
    final_eval = evaluate(total_steps, final=True)
    logger.close()
    write_plots(run)
    exported = export(model, tok, cfg, run) if cfg.export else {}
    metrics = read_metrics(run.path)
    train_records = [r for r in metrics if "loss" in r]
    examples_seen = sum(r.get("examples", 0) for r in train_records)
    step_seconds = sum(r.get("step_time_s", 0.0) for r in train_records)
    summary = {
        "run_dir": str(run.path),
        "steps": total_steps,
        "final_loss": train_records[-1]["loss"] if train_records else None,
        "valid_loss": final_eval.get("valid_loss"),
        "final_eval": final_eval,
        "examples": len(train_ex),
        "examples_seen": examples_seen,
        "tokens_seen": tokens_seen,
        "train_seconds": round(step_seconds, 2),  # optimizer steps only (no eval/checkpoints), all attempts
        "samples_per_s": round(examples_seen / step_seconds, 3) if step_seconds > 0 else None,
        "tokens_per_s": round(tokens_seen / step_seconds, 1) if step_seconds > 0 else None,
        "wall_seconds_this_attempt": round(time.perf_counter() - t_start, 2),
        "resumed_from_step": start_step if resume_from is not None else None,
        **exported,
    }
    write_json(run.path / "summary.json", summary)
    run.finish(summary=summary)
    say(
        f"done: {run.path} (final loss {summary['final_loss']:.4f}"
        + (f", valid loss {summary['valid_loss']:.4f})" if summary["valid_loss"] is not None else ")")
    )
    return summary


def load_sft_config(path: str | None, overrides: list[str]) -> SFTConfig:
    return load_config(SFTConfig, path, overrides)


@cli
def main(argv: list[str] | None = None) -> int:
    train(config_from_cli(SFTConfig, argv, "python -m trainers_torch.sft", __doc__))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
