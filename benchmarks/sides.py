"""The sides of the benchmark suite, each run alone in a subprocess by ``harness.run_side``:

    python -m benchmarks.sides NAME --settings '{"steps": 3, ...}' --out result.json

Every side does ``warmup + steps`` steps of the same work as its peers (same model, data rows,
lengths and settings) and writes per-step times, real tokens, samples and model FLOPs
(``benchmarks.harness``) plus its peak resident memory. ``matmul`` measures the peak instead.
``grpo_jax`` warms up on its kept steps' own prompts instead (one untimed step per update
width). The JAX sides keep XLA's programs in the trainers' compilation cache
(``trainers_jax.model.use_compilation_cache``), so a later run's warm-up loads them.

SFT (the SFT default config's GSM8K rows, step k = the rows ``DataPlan`` gives step k):
``sft_lora_ours`` / ``sft_full_ours`` (``trainers_torch.sft.sft_step``), ``sft_lora_trl`` (TRL
``SFTTrainer``: LoRA on all linear layers, bfd packing into rows of the same length,
completion-only loss), ``sft_lora_hf`` / ``sft_full_hf`` (a plain transformers (+ PEFT) loop:
each step's examples right-padded into one batch, the model's own loss), ``sft_lora_jax``
(``trainers_jax.optim.train_step``) and ``sft_lora_tunix`` (Tunix ``PeftTrainer``, batches of
``pack_tokens // max_len`` examples padded to ``max_len``, its default loss).

GRPO (P GSM8K prompts x G samples of the base model, which never stops before
``max_new_tokens``, so every side generates the same number of tokens; a reward that differs
for any two completions, so every group has signal and every side does the whole update):
``grpo_ours`` (``trainers_torch.grpo.grpo_step``), ``grpo_trl`` (TRL ``GRPOTrainer``),
``grpo_jax`` (``trainers_jax.grpo``: Tunix ``GRPOLearner``).

Decoding (greedy, the eval config's GSM8K test items, the SFT default run's merged export):
``decode_ours`` (``evals.generate``) and ``decode_transformers`` (``model.generate`` on the
first, longest, ``decode_check_items`` items); both return their token ids for the check.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.harness import Settings, Shape, StepTimer, decode_flops, matmul_peak, train_flops
from common.jsonl import write_json

SIDES: dict[str, Callable[[Settings], dict[str, Any]]] = {}


def side(fn: Callable[[Settings], dict[str, Any]]) -> Callable[[Settings], dict[str, Any]]:
    SIDES[fn.__name__] = fn
    return fn


def set_threads(s: Settings) -> None:
    import torch

    torch.set_num_threads(s.threads)


# --------------------------------------------------------------------------------------------
# SFT: the data every side trains on
# --------------------------------------------------------------------------------------------


def sft_setup(s: Settings, method: str) -> tuple[Any, Any, Any, list[list[list[int]]]]:
    """``(cfg, tokenizer, train examples, rows of each step)`` for ``warmup + steps`` steps."""
    from common.config import load_config
    from common.prompts import load_tokenizer
    from common.sft_config import SFTConfig
    from common.sft_data import DataPlan
    from common.sft_records import load_sft_data

    overrides = [f"model.path={s.model}", f"model.dtype={s.dtype}", f"model.device={s.device}",
                 f"train.method={method}", "data.valid=null", *s.sft_overrides]  # fmt: skip
    cfg = load_config(SFTConfig, s.sft_config, overrides)
    tok = load_tokenizer(cfg.model.path)
    data = load_sft_data(cfg, tok)
    plan = DataPlan(
        data.train, cfg.data.pack_tokens, cfg.train.micro_batch_rows * cfg.train.grad_accum, cfg.seed
    )
    return cfg, tok, data.train, [plan.step_rows(k) for k in range(s.warmup + s.steps)]


def lengths_from_positions(position_ids: Any) -> list[int]:
    """Example lengths of packed rows whose positions restart at 0 for every example."""
    out: list[int] = []
    for row in position_ids.tolist():
        for p in row:
            if p == 0:
                out.append(0)
            out[-1] += 1
    return out


def _sft_ours(s: Settings, method: str) -> dict[str, Any]:
    import torch

    from trainers_torch.data import collate
    from trainers_torch.model import build_model, keep_freed_memory
    from trainers_torch.optim import build_optimizer, build_scheduler
    from trainers_torch.sft import sft_step

    set_threads(s)
    keep_freed_memory(s.device)  # as trainers_torch.sft.train does
    cfg, tok, examples, steps = sft_setup(s, method)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, cfg.lora, cfg.train)
    model.train()
    optimizer = build_optimizer(model, cfg.optim)
    scheduler = build_scheduler(optimizer, len(steps), cfg.optim)
    shape = Shape.from_model_dir(cfg.model.path)
    pad = tok.pad_token_id or 0
    timer = StepTimer(s.device)
    for rows in steps:
        timer.start()
        mb = cfg.train.micro_batch_rows
        micro = [collate(examples, rows[i : i + mb], pad) for i in range(0, len(rows), mb)]
        sft_step(model, optimizer, scheduler, micro, cfg)
        lengths = [len(examples[i]) for row in rows for i in row]
        n_targets = sum(b.n_targets for b in micro)
        timer.stop(sum(lengths), len(lengths), train_flops(shape, lengths, n_targets, method, cfg.lora.rank))
    return timer.result(s.warmup, notes={"rows_per_step": len(steps[0]), "pack_tokens": cfg.data.pack_tokens})


def _hf_model(s: Settings, cfg: Any, lora: bool) -> Any:
    """The model as a transformers user loads it (PEFT LoRA on all linear layers, or all trainable)."""
    from transformers import AutoModelForCausalLM

    from trainers_torch.model import torch_dtype

    model: Any = AutoModelForCausalLM.from_pretrained(
        cfg.model.path, dtype=torch_dtype(s.dtype), attn_implementation=cfg.model.attn_implementation
    )
    model.to(s.device)
    model.config.use_cache = False
    if lora:
        from peft import get_peft_model

        model = get_peft_model(model, peft_lora(cfg))
    return model


def peft_lora(cfg: Any) -> Any:
    from peft import LoraConfig

    return LoraConfig(
        r=cfg.lora.rank, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
        target_modules="all-linear", task_type="CAUSAL_LM",
    )  # fmt: skip


def _sft_hf(s: Settings, method: str) -> dict[str, Any]:
    import torch

    from common.sft_data import IGNORE

    set_threads(s)
    cfg, tok, examples, steps = sft_setup(s, method)
    torch.manual_seed(cfg.seed)
    model = _hf_model(s, cfg, method == "lora")
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.optim.lr)
    shape = Shape.from_model_dir(cfg.model.path)
    pad = tok.pad_token_id or 0
    timer = StepTimer(s.device)
    for rows in steps:
        timer.start()
        batch = [examples[i] for row in rows for i in row]
        width = max(len(e) for e in batch)
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        labels = torch.full((len(batch), width), IGNORE, dtype=torch.long)
        for r, e in enumerate(batch):
            ids[r, : len(e)] = torch.tensor(e.ids)
            mask[r, : len(e)] = 1
            labels[r, e.n_prompt : len(e)] = torch.tensor(e.ids[e.n_prompt :])
        out = model(input_ids=ids.to(s.device), attention_mask=mask.to(s.device), labels=labels.to(s.device))
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.optim.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        lengths = [len(e) for e in batch]
        n_targets = sum(len(e) - e.n_prompt for e in batch)
        timer.stop(sum(lengths), len(batch), train_flops(shape, lengths, n_targets, method, cfg.lora.rank))
    return timer.result(
        s.warmup, notes={"padded_tokens_per_step": "examples of the step padded to the longest"}
    )


for _method in ("lora", "full"):  # sft_lora_ours, sft_full_ours, sft_lora_hf, sft_full_hf
    SIDES[f"sft_{_method}_ours"] = functools.partial(_sft_ours, method=_method)
    SIDES[f"sft_{_method}_hf"] = functools.partial(_sft_hf, method=_method)


@side
def sft_lora_trl(s: Settings) -> dict[str, Any]:
    """TRL ``SFTTrainer`` on the same examples (token ids as ours: prompt + completion with its
    completion mask), LoRA on all linear layers, bfd packing into rows of ``pack_tokens``."""
    import tempfile

    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import SFTConfig as TrlSFTConfig
    from trl import SFTTrainer

    set_threads(s)
    cfg, tok, examples, steps = sft_setup(s, "lora")
    used = sorted({i for rows in steps for row in rows for i in row})
    ds = Dataset.from_list(
        [
            {
                "input_ids": examples[i].ids,
                "completion_mask": [0] * examples[i].n_prompt
                + [1] * (len(examples[i]) - examples[i].n_prompt),
            }
            for i in used
        ]
    )
    shape = Shape.from_model_dir(cfg.model.path)
    timer = StepTimer(s.device)
    pending: list[tuple[int, int, float]] = []

    class Timed(SFTTrainer):
        def training_step(self, model: Any, inputs: dict[str, Any], num_items_in_batch: Any = None) -> Any:
            lengths = lengths_from_positions(inputs["position_ids"])
            n_targets = int((inputs["labels"][:, 1:] != -100).sum())
            pending.append(
                (sum(lengths), len(lengths), train_flops(shape, lengths, n_targets, "lora", cfg.lora.rank))
            )
            return super().training_step(model, inputs, num_items_in_batch)

    class Clock(TrainerCallback):
        def on_step_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            timer.start()

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            tokens, samples, flops = pending.pop()
            timer.stop(tokens, samples, flops)

    torch.manual_seed(cfg.seed)
    model = _hf_model(s, cfg, lora=False)
    with tempfile.TemporaryDirectory() as out:
        args = TrlSFTConfig(
            output_dir=out, max_steps=len(steps), per_device_train_batch_size=1, gradient_accumulation_steps=1,
            learning_rate=cfg.optim.lr, lr_scheduler_type="cosine", warmup_steps=cfg.optim.warmup_steps,
            max_grad_norm=cfg.optim.max_grad_norm, packing=True, packing_strategy="bfd",
            max_length=cfg.data.pack_tokens, completion_only_loss=True, gradient_checkpointing=False,
            bf16=s.dtype == "bfloat16", fp16=False, use_cpu=s.device == "cpu", report_to="none",
            save_strategy="no", logging_steps=1, seed=cfg.seed, dataloader_num_workers=0,
        )  # fmt: skip
        trainer = Timed(model=model, args=args, train_dataset=ds, processing_class=tok, peft_config=peft_lora(cfg),
                        callbacks=[Clock()])  # fmt: skip
        trainer.train()
    return timer.result(s.warmup, notes={"packing": "bfd", "max_length": cfg.data.pack_tokens})


# --------------------------------------------------------------------------------------------
# SFT on JAX: our step and Tunix's PeftTrainer
# --------------------------------------------------------------------------------------------


def _jax_sft_setup(s: Settings, ours: bool) -> tuple[Any, Any, Any, list[list[list[int]]], Any, Any]:
    """The JAX sides' config, data and LoRA model: ours through our LoRA layers
    (``FlatLoraProvider``), Tunix's peer through qwix's own ``LoraProvider``."""
    from trainers_jax.config import JaxSFTConfig
    from trainers_jax.lora import build_model
    from trainers_jax.model import make_mesh, use_compilation_cache

    cfg, tok, examples, steps = sft_setup(s, "lora")
    jcfg = JaxSFTConfig(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)})
    use_compilation_cache()  # as the trainers: the warm-up loads what an earlier run compiled
    mesh = make_mesh(1, 1)
    model, _ = build_model(jcfg, mesh, flat_lora=ours)
    return jcfg, tok, examples, steps, model, mesh


@side
def sft_lora_jax(s: Settings) -> dict[str, Any]:
    """Our JAX step. Its shapes vary with the step's completion tokens (the loss's target
    buckets, ``device_arrays``); a bucket first met after the warm-up steps is compiled (one
    gradient, discarded) before its step's clock starts, as a training run compiles each
    bucket once in its first steps. The notes count those compilations."""
    import jax

    from common import sft_data
    from trainers_jax.lora import trainable_filter
    from trainers_jax.losses import device_arrays
    from trainers_jax.optim import build_optimizer, micro_grads, train_step

    cfg, tok, examples, steps, model, mesh = _jax_sft_setup(s, ours=True)
    shape = Shape.from_model_dir(cfg.model.path)
    wrt = trainable_filter(cfg.train, model.config.num_layers)
    chunk, pad, mb = cfg.train.loss_chunk_tokens, tok.pad_token_id or 0, cfg.train.micro_batch_rows
    timer = StepTimer()

    def collated(rows: list[list[int]]) -> tuple[list[Any], list[dict[str, Any]]]:
        batches = [sft_data.collate(examples, rows[i : i + mb], pad) for i in range(0, len(rows), mb)]
        return batches, [device_arrays(b, chunk, cfg.data.pack_tokens, cfg.data.max_len) for b in batches]

    def signature(arrays: dict[str, Any]) -> tuple[Any, ...]:
        return tuple(sorted((k, v.shape) for k, v in arrays.items()))

    compiled, compiled_untimed = set[tuple[Any, ...]](), 0
    with mesh:
        optimizer = build_optimizer(model, cfg, wrt, len(steps))
        for k, rows in enumerate(steps):
            for arrays in collated(rows)[1]:
                if k >= s.warmup and signature(arrays) not in compiled:
                    jax.block_until_ready(micro_grads(model, arrays, chunk, wrt))
                    compiled_untimed += 1
                compiled.add(signature(arrays))
            timer.start()
            batches, micro = collated(rows)
            n_targets = sum(b.n_targets for b in batches)
            train_step(model, optimizer, micro, n_targets, chunk, wrt)
            lengths = [len(examples[i]) for row in rows for i in row]
            timer.stop(
                sum(lengths), len(lengths), train_flops(shape, lengths, n_targets, "lora", cfg.lora.rank)
            )
    return timer.result(
        s.warmup, notes={"shapes_compiled": len(compiled), "compiled_outside_kept_steps": compiled_untimed}
    )


@side
def sft_lora_tunix(s: Settings) -> dict[str, Any]:
    """Tunix ``PeftTrainer`` with its default loss on the same examples in the same order,
    batches of ``pack_tokens // max_len`` examples right-padded to ``max_len`` (fixed shapes:
    one compilation), the model's own positions and causal mask from the padding."""
    import numpy as np
    import optax
    from tunix.sft import hooks, peft_trainer
    from tunix.sft import utils as sft_utils

    cfg, tok, examples, steps, model, mesh = _jax_sft_setup(s, ours=False)
    shape = Shape.from_model_dir(cfg.model.path)
    per_batch = max(1, cfg.data.pack_tokens // cfg.data.max_len)
    order = [i for rows in steps for row in rows for i in row]
    pad = tok.pad_token_id or 0
    batches, stats = [], []
    for k in range(len(steps)):
        chosen = [examples[order[(k * per_batch + j) % len(order)]] for j in range(per_batch)]
        ids = np.full((per_batch, cfg.data.max_len), pad, dtype=np.int32)
        mask = np.zeros((per_batch, cfg.data.max_len), dtype=np.int32)
        for r, e in enumerate(chosen):
            ids[r, : len(e)] = e.ids
            mask[r, e.n_prompt : len(e)] = 1
        batches.append(peft_trainer.TrainingInput(input_tokens=ids, input_mask=mask))
        lengths = [len(e) for e in chosen]
        n_targets = sum(len(e) - e.n_prompt for e in chosen) - len(chosen)  # the first one is not predicted
        stats.append(
            (sum(lengths), len(chosen), train_flops(shape, lengths, n_targets, "lora", cfg.lora.rank))
        )
    timer = StepTimer()

    class Clock(hooks.TrainingHooks):
        def on_train_start(self, train_ctx: Any) -> None:
            timer.start()

        def on_train_end(self, train_ctx: Any) -> None: ...

        def on_train_step_start(self, train_ctx: Any) -> None: ...

        def on_train_step_end(self, train_ctx: Any, train_step: int, train_loss: Any, *a: Any) -> None:
            float(train_loss)  # wait for the step
            timer.stop(*stats[len(timer.step_s)])
            timer.start()

        def on_eval_step_start(self, train_ctx: Any) -> None: ...

        def on_eval_step_end(self, train_ctx: Any, eval_loss: Any) -> None: ...

    def model_input(x: peft_trainer.TrainingInput) -> dict[str, Any]:
        real = x.input_tokens != pad
        return {
            "input_tokens": x.input_tokens, "input_mask": x.input_mask,
            "positions": sft_utils.build_positions_from_mask(real),
            "attention_mask": sft_utils.make_causal_attn_mask(real),
        }  # fmt: skip

    o = cfg.optim
    tx = optax.chain(
        optax.clip_by_global_norm(o.max_grad_norm), optax.adamw(o.lr, weight_decay=o.weight_decay)
    )
    config = peft_trainer.TrainingConfig(
        eval_every_n_steps=10**9, max_steps=len(steps), max_inflight_computations=1
    )
    with mesh:
        trainer = peft_trainer.PeftTrainer(model, tx, config).with_gen_model_input_fn(model_input)
        trainer.with_training_hooks(Clock())
        trainer.train(batches)
    return timer.result(s.warmup, notes={"batch": f"{per_batch} x {cfg.data.max_len} padded"})


# --------------------------------------------------------------------------------------------
# GRPO: generation + update on the same prompts, group size and lengths
# --------------------------------------------------------------------------------------------


def hash_reward(prompts: Any, completions: list[str], **_: Any) -> list[float]:
    """A reward in [0, 1) that differs for any two different completions (a hash of the text):
    every group has reward variance, so every side trains on every completion."""
    return [int(hashlib.sha256(c.encode()).hexdigest()[:8], 16) / 2**32 for c in completions]


def grpo_cfg(s: Settings, jax_side: bool = False) -> Any:
    from common.config import load_config
    from common.grpo_config import GRPOConfig

    overrides = [
        f"model.path={s.model}", f"model.dtype={s.dtype}", "init.sft_run=null",
        f"data.train={s.grpo_prompt_file}", "data.valid=null", f"generation.prompts_per_step={s.grpo_prompts}",
        f"generation.num_generations={s.grpo_generations}", f"generation.max_new_tokens={s.grpo_max_new_tokens}",
        f"train.max_steps={s.warmup + s.steps}", "eval.n=0",
    ]  # fmt: skip
    cls: Any = GRPOConfig
    if jax_side:
        from trainers_jax.config import JaxGRPOConfig

        cls = JaxGRPOConfig
    else:
        overrides.append(f"model.device={s.device}")
    cfg = load_config(cls, "configs/grpo_gemma3_270m_cpu.yaml", overrides)
    cfg.rewards.weights = [1.0]  # the one reward: hash_reward
    return cfg


def grpo_prompts(s: Settings, cfg: Any, tok: Any) -> list[Any]:
    from common.grpo_prompts import load_prompts

    prompts, _ = load_prompts(cfg.data.train, tok, cfg.data, limit=s.grpo_prompts * (s.warmup + s.steps))
    return prompts


def grpo_flops(shape: Shape, prompt_lengths: list[int], completion_lengths: list[int], rank: int) -> float:
    """Generation (``decode_flops``) + the LoRA update on prompt + completion, loss on the completion."""
    seqs = [p + c for p, c in zip(prompt_lengths, completion_lengths, strict=True)]
    gen = decode_flops(shape, prompt_lengths, completion_lengths)
    return gen + train_flops(shape, seqs, sum(completion_lengths), "lora", rank)


@side
def grpo_ours(s: Settings) -> dict[str, Any]:
    import torch

    from common.prompts import load_tokenizer
    from trainers_torch.grpo import grpo_step
    from trainers_torch.model import build_model
    from trainers_torch.optim import build_optimizer, build_scheduler

    set_threads(s)
    cfg = grpo_cfg(s)
    tok = load_tokenizer(cfg.model.path)
    prompts = grpo_prompts(s, cfg, tok)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, cfg.lora, cfg.train)
    optimizer = build_optimizer(model, cfg.optim)
    scheduler = build_scheduler(optimizer, cfg.train.max_steps, cfg.optim)
    shape = Shape.from_model_dir(cfg.model.path)
    P, G = s.grpo_prompts, s.grpo_generations
    timer, gen_s, lengths_seen = StepTimer(s.device), [], []
    model.train()
    for k in range(cfg.train.max_steps):
        step_prompts = prompts[k * P : (k + 1) * P]
        timer.start()
        metrics, samples = grpo_step(
            model, tok, optimizer, scheduler, step_prompts, [hash_reward], cfg, k, tok.pad_token_id or 0
        )
        p_len = [len(p.ids) for p in step_prompts for _ in range(G)]
        c_len = [r["completion_tokens"] for r in samples]
        timer.stop(sum(c_len), P * G, grpo_flops(shape, p_len, c_len, cfg.lora.rank))
        gen_s.append(metrics["gen_time_s"])
        lengths_seen += c_len
    return timer.result(
        s.warmup, gen_s=gen_s[s.warmup :], completion_len_mean=sum(lengths_seen) / len(lengths_seen)
    )


@side
def grpo_trl(s: Settings) -> dict[str, Any]:
    """TRL ``GRPOTrainer``: the same prompts (one step's P prompts x G samples per generation
    batch), sampling, lengths, loss (``dapo``, clip-higher, beta 0) and LoRA, no vLLM."""
    import tempfile

    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig as TrlGRPOConfig
    from trl import GRPOTrainer

    from common.prompts import load_tokenizer

    set_threads(s)
    cfg = grpo_cfg(s)
    tok = load_tokenizer(cfg.model.path)
    prompts = grpo_prompts(s, cfg, tok)
    shape = Shape.from_model_dir(cfg.model.path)
    P, G = s.grpo_prompts, s.grpo_generations
    timer, pending, gen_s = StepTimer(s.device), [], []

    class Timed(GRPOTrainer):
        def _generate_and_score_completions(self, inputs: Any) -> Any:
            import time

            t0 = time.perf_counter()
            out = super()._generate_and_score_completions(inputs)
            gen_s.append(time.perf_counter() - t0)
            p_len = out["prompt_mask"].sum(1).tolist()
            c_len = out["completion_mask"].sum(1).tolist()
            pending.append((sum(c_len), len(c_len), grpo_flops(shape, p_len, c_len, cfg.lora.rank)))
            return out

    class Clock(TrainerCallback):
        def on_step_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            timer.start()

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            timer.stop(*pending.pop())

    ds = Dataset.from_list([{"prompt": p.text} for p in prompts])
    torch.manual_seed(cfg.seed)
    model = _hf_model(s, cfg, lora=False)
    g = cfg.grpo
    with tempfile.TemporaryDirectory() as out:
        args = TrlGRPOConfig(
            output_dir=out, max_steps=cfg.train.max_steps, per_device_train_batch_size=P * G,
            gradient_accumulation_steps=1, num_generations=G, max_completion_length=s.grpo_max_new_tokens,
            temperature=cfg.generation.temperature, top_p=cfg.generation.top_p, top_k=cfg.generation.top_k,
            loss_type=g.loss_type, epsilon=g.epsilon, epsilon_high=g.epsilon_high or g.epsilon, beta=g.beta,
            num_iterations=g.num_iterations, learning_rate=cfg.optim.lr, max_grad_norm=cfg.optim.max_grad_norm,
            gradient_checkpointing=False, bf16=s.dtype == "bfloat16", fp16=False, use_cpu=s.device == "cpu",
            report_to="none", save_strategy="no", logging_steps=1, seed=cfg.seed, shuffle_dataset=False,
        )  # fmt: skip
        lora = peft_lora(cfg)
        lora.lora_dropout = cfg.lora.dropout
        rewards: list[Any] = [hash_reward]
        trainer = Timed(model=model, reward_funcs=rewards, args=args, train_dataset=ds,
                        processing_class=tok, peft_config=lora, callbacks=[Clock()])  # fmt: skip
        trainer.train()
    return timer.result(s.warmup, gen_s=gen_s[s.warmup :])


@side
def grpo_jax(s: Settings) -> dict[str, Any]:
    """``trainers_jax.grpo``'s step (Tunix ``GRPOLearner``, vanilla rollout) on the same work.

    The update is cut to each step's own prompt width (``tunix.pad_multiple``), and each new
    width compiles it once: the warm-up runs each kept step's prompts once, untimed, before the
    step whose width is new, so no kept step compiles (the other sides warm up on the first
    prompts). The notes list the kept steps' widths."""
    from trainers_jax.grpo import RewardRecorder, build_learner, padded_width, rollout_config, run_step
    from trainers_jax.lora import apply_lora
    from trainers_jax.model import load_model, make_mesh, use_compilation_cache

    cfg = grpo_cfg(s, jax_side=True)
    use_compilation_cache()
    mesh = make_mesh(1, 1)
    base, tok = load_model(cfg.model.path, cfg.model.dtype, mesh)
    prompts = grpo_prompts(s, cfg, tok)
    P = s.grpo_prompts
    prompt_len = max(len(p.ids) for p in prompts)

    def width(k: int) -> int:
        longest = max(len(p.ids) for p in prompts[k * P : (k + 1) * P])
        return padded_width(longest, cfg.tunix.pad_multiple, prompt_len)

    plan: list[tuple[int, bool]] = []  # (step, timed)
    seen: set[int] = set()
    for k in range(s.warmup, s.warmup + s.steps):
        if s.warmup and width(k) not in seen:
            seen.add(width(k))
            plan.append((k, False))
        plan.append((k, True))
    cfg.train.max_steps = len(plan)  # the schedule's length: every step runs an update
    with mesh:
        actor = apply_lora(base, cfg.lora, cfg.train.trainable_layers, cfg.seed)
    recorder = RewardRecorder([hash_reward], [1.0])
    rollout_config(cfg, tok, prompt_len)
    with mesh:
        learner = build_learner(cfg, actor, None, tok, mesh, prompt_len, recorder)
    shape = Shape.from_model_dir(cfg.model.path)
    timer, warm, gen_s, widths = StepTimer(), StepTimer(), [], []
    for k, timed in plan:
        clock = timer if timed else warm
        clock.start()
        with mesh:
            run_step(learner, cfg, tok, prompts[k * P : (k + 1) * P], k, prompt_len)
        last = learner.last
        c_len, p_len = last["lengths"], last["prompt_tokens"]
        clock.stop(sum(c_len), len(c_len), grpo_flops(shape, p_len, c_len, cfg.lora.rank))
        if timed:
            gen_s.append(last["gen_time_s"])
            widths.append(last["update_width"])
    notes = {"update_widths": widths, "padded_to": prompt_len + s.grpo_max_new_tokens,
             "warmup": "each kept step's prompts once, before the first step of its width"}  # fmt: skip
    return timer.result(0, gen_s=gen_s, warmup_s=warm.step_s, notes=notes)


# --------------------------------------------------------------------------------------------
# Decoding: greedy eval items, ours vs transformers' generate
# --------------------------------------------------------------------------------------------


def decode_setup(s: Settings) -> tuple[Any, Any, list[str], Any]:
    from common.config import load_config
    from evals import generate as gen
    from evals import load

    cfg = load_config(
        gen.GenerateConfig, s.decode_config, [f"decode.max_new_tokens={s.decode_max_new_tokens}"]
    )
    ref = load.resolve_model(s.decode_model, None, "merged")
    model, tok = load.load_for_eval(ref, "torch", s.dtype, s.device)
    items = gen.sample_items(gen.load_items(s.decode_data or cfg.data.path), s.decode_items, cfg.seed)
    prompts = [gen.build_prompt(tok, it["question"], cfg.data.prompt) for it in items]
    lengths = [len(tok(p).input_ids) for p in prompts]
    prompts = [prompts[i] for i in sorted(range(len(prompts)), key=lambda i: -lengths[i])]  # longest first
    return model, tok, prompts, cfg.decode


def _decode(
    s: Settings, prompts: list[str], run: Callable[[list[str]], list[dict]], model: Any
) -> dict[str, Any]:
    import torch

    set_threads(s)
    shape = Shape.from_model_dir(model.name_or_path)
    run(prompts[:2])  # warm-up: first allocations
    timer = StepTimer(s.device)
    timer.start()
    with torch.inference_mode():
        outs = run(prompts)
    c_len = [o["completion_tokens"] for o in outs]
    p_len = [o["prompt_tokens"] for o in outs]
    timer.stop(sum(c_len), len(outs), decode_flops(shape, p_len, c_len))
    return timer.result(0, completion_ids=[o["completion_ids"] for o in outs],
                        notes={"items": len(outs), "completion_tokens_mean": sum(c_len) / len(c_len),
                               "completion_tokens_max": max(c_len)})  # fmt: skip


@side
def decode_ours(s: Settings) -> dict[str, Any]:
    from evals import generate as gen

    model, tok, prompts, settings = decode_setup(s)

    def run(batch: list[str]) -> list[dict]:
        return gen.generate_completions(
            model, tok, batch, settings, s.decode_batch, progress=False, return_ids=True
        )

    return _decode(s, prompts, run, model)


@side
def decode_transformers(s: Settings) -> dict[str, Any]:
    from tests.reference_decode import transformers_generate

    model, tok, prompts, settings = decode_setup(s)

    def run(batch: list[str]) -> list[dict]:
        out: list[dict] = []
        for i in range(0, len(batch), s.decode_batch):
            out += transformers_generate(model, tok, batch[i : i + s.decode_batch], settings, return_ids=True)
        return out

    return _decode(s, prompts[: s.decode_check_items], run, model)


@side
def matmul(s: Settings) -> dict[str, Any]:
    set_threads(s)
    return matmul_peak(s.device, s.dtype)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("side", choices=sorted(SIDES))
    parser.add_argument("--settings", default="{}", help="JSON of benchmarks.harness.Settings fields")
    parser.add_argument("--out", required=True)
    parser.add_argument("--profile", metavar="DIR", help="run under the profiler; its tables go to DIR")
    args = parser.parse_args(argv)
    settings = Settings(**json.loads(args.settings))
    if args.profile:
        from benchmarks.profiling import profile_side

        result = profile_side(args.side, SIDES[args.side], settings, Path(args.profile))
    else:
        result = SIDES[args.side](settings)
    write_json(Path(args.out), result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
