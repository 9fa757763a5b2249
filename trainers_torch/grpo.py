"""GRPO on trace records: sample G completions per prompt, score them with the shared rewards,
and raise the log-probability of the completions that beat their group (LoRA or full).

    python -m trainers_torch.grpo --config configs/grpo_gemma3_270m_cpu.yaml key=value ...

Read top to bottom: config → prompts (record file, tokenised, seeded order) → model (the base,
or an SFT run's adapter / merged export; the reference) → one step:

1. generate: P prompts x G samples, batched KV-cache decoding through ``evals.generate``
   (temperature, top-k, top-p, stop at end of turn), keeping the sampled token ids;
2. rewards: the reward functions of ``common.rewards`` named in the config, weighted, summed;
3. advantages: reward minus its group's mean, divided by the group's std (``scale_rewards:
   group``) or not (``none``); a group whose rewards are all equal gets 0;
4. loss, per completion token t of completion i (advantage A_i, r = exp(logp - logp_old)):

       loss_t = -min(r * A_i, clip(r, 1 - epsilon, 1 + epsilon_high) * A_i) + beta * kl_t
       kl_t   = exp(ref_t - logp_t) - (ref_t - logp_t) - 1      (k3: >= 0, 0 where equal)

   summed over the N = P * G completions with |o_i| tokens, T tokens in all, as
   ``grpo``: mean_i(sum_t loss_t / |o_i|); ``dr_grpo``: sum loss_t / (N * max_new_tokens)
   (= each group's sum over G * max_new_tokens, averaged over groups); ``dapo``: sum loss_t / T.
   ``num_iterations`` (mu) optimizer updates reuse each generation batch; logp_old is the
   generation-time policy (with mu = 1 it is logp itself, detached: r = 1). The reference is
   the model with its LoRA adapter disabled (no second copy) or, for full fine-tuning, a
   frozen copy; with beta = 0 it is never run.

→ held-out eval (greedy, fixed items; shared rewards and ``evals.score``) at step 0, every
``eval.every`` steps and at the end → atomic checkpoints and resume → ``final/`` + ``merged/``.

Log-probs are those of the sampling distribution (logits / temperature, as the sampler saw
them; top-k / top-p truncation is not corrected for). The LM head runs in chunks on completion
positions only (``losses.lm_head_logprobs``), never on [batch, length, vocab] at once. With
beta = 0, completions with advantage 0 contribute exactly zero gradient and are left out of
the training forward pass (the optimizer still steps, so the result is unchanged).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from common.config import config_from_cli, read_yaml
from common.errors import InputError, cli
from common.grpo_config import GRPOConfig
from common.grpo_prompts import (
    Prompt,
    data_files,
    load_prompt_sets,
    score_rewards,
    step_prompt_indices,
)
from common.grpo_records import GRPO_PLOTS, announce_start, done_line, record_heldout, run_summary
from common.prompts import load_tokenizer
from common.rewards import build_rewards
from common.runs import (
    MetricsLogger,
    RunDir,
    check_resume,
    plot_metrics,
    read_metrics,
    resume_hash,
    say,
    seed_everything,
    weights_sha256,
)
from common.sft_data import Example, pack_rows
from evals.heldout import heldout_change, score_heldout
from trainers_torch.checkpoint import load_checkpoint, prepare_run_dir, remove_partial, save_checkpoint
from trainers_torch.data import collate
from trainers_torch.export import export
from trainers_torch.losses import completion_logprobs, group_advantages, sequence_weights, token_loss
from trainers_torch.model import (
    attention_for,
    build_model,
    causal_lm,
    check_model_dir,
    generation_mode,
    parameter_counts,
    resolve_device,
    torch_dtype,
)
from trainers_torch.optim import build_optimizer, build_scheduler

# --------------------------------------------------------------------------------------------
# Model: where training starts, the policy, the reference
# --------------------------------------------------------------------------------------------


@dataclass
class Start:
    model_path: str  # the HF dir the policy (and reference) weights come from
    init_adapter: str | None  # a PEFT adapter to keep training, or None for a fresh one
    info: dict[str, Any]


def _sft_shape(sft_cfg: dict[str, Any]) -> dict[str, Any]:
    lora = sft_cfg.get("lora") or {}
    train = sft_cfg.get("train") or {}
    return {
        "lora.rank": lora.get("rank", 16),
        "lora.alpha": float(lora.get("alpha", 32.0)),
        "lora.target_modules": lora.get("target_modules"),
        "train.trainable_layers": train.get("trainable_layers"),
    }


def resolve_start(cfg: GRPOConfig) -> Start:
    """Where the policy starts: ``model.path``, or the SFT run named by ``init.sft_run``."""
    if cfg.init.sft_run is None:
        return Start(cfg.model.path, cfg.model.init_adapter, {"from": "model.path"})
    if cfg.model.init_adapter:
        raise InputError("set init.sft_run or model.init_adapter, not both")
    run = Path(cfg.init.sft_run)
    if not run.is_dir():
        raise InputError(
            f"init.sft_run {run}: no such run directory; train it first (`make train` for the default SFT run)"
        )
    sft_cfg = read_yaml(run / "config.yaml") if (run / "config.yaml").is_file() else {}
    if cfg.train.method == "lora" and cfg.init.sft_mode == "continue":
        final = run / "final"
        if not (final / "adapter_model.safetensors").is_file():
            raise InputError(
                f"{final}: no PEFT adapter (adapter_model.safetensors); has the SFT run finished (`make train`)? "
                "A full fine-tune has no adapter: use init.sft_mode=merged"
            )
        ours = {
            "lora.rank": cfg.lora.rank,
            "lora.alpha": float(cfg.lora.alpha),
            "lora.target_modules": cfg.lora.target_modules,
            "train.trainable_layers": cfg.train.trainable_layers,
        }
        theirs = _sft_shape(sft_cfg)
        diff = [k for k in ours if ours[k] != theirs[k]]
        if diff:
            k = diff[0]
            raise InputError(
                f"{k}={ours[k]} here but {theirs[k]} in {run / 'config.yaml'}: continuing an SFT adapter "
                f"needs its shape (set {k}={theirs[k]}, or init.sft_mode=merged for a fresh adapter)"
            )
        manifest = run / "run_manifest.json"
        sft_sha = (
            (json.loads(manifest.read_text()).get("model") or {}).get("weights_sha256")
            if manifest.is_file()
            else None
        )
        ours_sha = weights_sha256(check_model_dir(cfg.model.path))
        if sft_sha is not None and sft_sha != ours_sha:
            raise InputError(
                f"{final}: trained on other base weights (sha256 {sft_sha[:12]}… in {manifest}) than "
                f"model.path={cfg.model.path} ({(ours_sha or '?')[:12]}…); point model.path at its base model"
            )
        info = {"from": "sft_run", "sft_run": str(run), "mode": "continue", "adapter": str(final)}
        return Start(cfg.model.path, str(final), info)
    merged = run / "merged"
    if not (merged / "config.json").is_file():
        raise InputError(f"{merged}: no merged HF export; has the SFT run finished (`make train`)?")
    return Start(
        str(merged), None, {"from": "sft_run", "sft_run": str(run), "mode": "merged", "model": str(merged)}
    )


def build_policy(cfg: GRPOConfig, start: Start) -> Any:
    """The model that trains: ``start``'s weights (and adapter), LoRA or full as configured."""
    model_cfg = dataclasses.replace(cfg.model, path=start.model_path, init_adapter=start.init_adapter)
    return build_model(model_cfg, cfg.lora, cfg.train)


def build_reference(cfg: GRPOConfig, start: Start) -> Any:
    """A frozen copy of the starting model (full fine-tuning with beta > 0); LoRA needs none."""
    if cfg.grpo.beta == 0 or cfg.train.method == "lora":
        return None
    from transformers import AutoModelForCausalLM

    path = check_model_dir(start.model_path)
    ref: Any = AutoModelForCausalLM.from_pretrained(
        str(path),
        dtype=torch_dtype(cfg.model.dtype),
        attn_implementation=attention_for(
            json.loads((path / "config.json").read_text()), cfg.model.attn_implementation
        ),
    )
    ref.to(resolve_device(cfg.model.device)).eval()
    ref.config.use_cache = False
    for p in ref.parameters():
        p.requires_grad_(False)
    return ref


def reference_kind(cfg: GRPOConfig, reference: Any) -> str:
    if cfg.grpo.beta == 0:
        return "none (beta=0: no reference forward)"
    if reference is not None:
        return "frozen copy of the starting model"
    return "the policy with its LoRA adapter disabled"


@torch.no_grad()
def reference_logprobs(
    model: Any, reference: Any, batch: Any, chunk: int, temperature: float
) -> torch.Tensor:
    """log p under the reference: the frozen copy, or the policy with its LoRA adapter disabled."""
    if reference is not None:
        return completion_logprobs(reference, batch, chunk, temperature)
    with model.disable_adapter():
        return completion_logprobs(model, batch, chunk, temperature)


# --------------------------------------------------------------------------------------------
# One GRPO step: generate, score, advantages (losses.py), mu policy updates
# --------------------------------------------------------------------------------------------


def generate(
    model: Any, tok: Any, texts: list[str], settings: Any, batch_size: int, progress: bool
) -> list[dict]:
    from evals.generate import generate_completions

    with generation_mode(model):
        return generate_completions(
            model, tok, texts, settings, batch_size=batch_size, progress=progress, return_ids=True
        )


@dataclass
class MicroBatch:
    batch: Any  # sft.Batch
    adv: torch.Tensor  # [n_tokens]
    weights: torch.Tensor  # [n_tokens]
    old_logp: torch.Tensor | None = None
    ref_logp: torch.Tensor | None = None


def policy_update(
    model: Any,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    examples: list[Example],
    advantages: list[float],
    cfg: GRPOConfig,
    pad_id: int,
    reference: Any = None,
) -> dict[str, Any]:
    """``grpo.num_iterations`` optimizer updates on one generation batch; returns the step's stats.

    ``examples[i]`` is prompt + completion i (its completion tokens are the loss positions).
    """
    g = cfg.grpo
    temp = cfg.generation.temperature
    chunk = cfg.train.loss_chunk_tokens
    device = next(causal_lm(model).parameters()).device
    lengths = [len(e) - e.n_prompt for e in examples]
    weights = sequence_weights(lengths, g.loss_type, cfg.generation.max_new_tokens)
    # with beta = 0, a zero-advantage completion adds exactly nothing to the loss or gradient
    trained = [i for i, a in enumerate(advantages) if a != 0.0 or g.beta > 0]
    rows = pack_rows([len(e) for e in examples], trained, cfg.train.pack_tokens) if trained else []
    micro: list[MicroBatch] = []
    t0 = time.perf_counter()
    for k in range(0, len(rows), cfg.train.micro_batch_rows):
        part = rows[k : k + cfg.train.micro_batch_rows]
        order = [i for row in part for i in row]
        reps = torch.tensor([lengths[i] for i in order])
        mb = MicroBatch(
            batch=collate(examples, part, pad_id),
            adv=torch.tensor([advantages[i] for i in order]).repeat_interleave(reps).to(device),
            weights=torch.tensor([weights[i] for i in order]).repeat_interleave(reps).to(device),
        )
        if g.num_iterations > 1:  # the generation-time policy, before any update
            with torch.no_grad():
                mb.old_logp = completion_logprobs(model, mb.batch, chunk, temp)
        if g.beta > 0:
            mb.ref_logp = reference_logprobs(model, reference, mb.batch, chunk, temp)
        micro.append(mb)
    params = [p for p in model.parameters() if p.requires_grad]
    max_norm = cfg.optim.max_grad_norm if cfg.optim.max_grad_norm > 0 else float("inf")
    n_tokens = sum(lengths)
    losses, clip_fracs, clip_lows, clip_highs, kls, norms, lrs = [], [], [], [], [], [], []
    for _ in range(g.num_iterations):
        loss_sum, low, high, kl = 0.0, 0, 0, 0.0
        for mb in micro:
            logp = completion_logprobs(model, mb.batch, chunk, temp)
            old = logp.detach() if mb.old_logp is None else mb.old_logp
            loss, stats = token_loss(logp, old, mb.adv, mb.weights, g, mb.ref_logp)
            loss.backward()
            loss_sum += float(loss.detach())
            low += int(stats["clipped_low"])
            high += int(stats["clipped_high"])
            kl += float(stats.get("kl_sum", 0.0))
        for p in params:  # a batch without signal still steps the optimizer, as the full loss would
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        norms.append(float(torch.nn.utils.clip_grad_norm_(params, max_norm)))
        lrs.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss_sum)
        clip_lows.append(low / n_tokens)
        clip_highs.append(high / n_tokens)
        clip_fracs.append((low + high) / n_tokens)
        kls.append(kl / n_tokens)
    dt = time.perf_counter() - t0
    train_tokens = sum(len(examples[i]) for i in trained) * g.num_iterations
    out: dict[str, Any] = {
        "loss": sum(losses) / len(losses),
        "clip_fraction": sum(clip_fracs) / len(clip_fracs),
        "clip_low": sum(clip_lows) / len(clip_lows),
        "clip_high": sum(clip_highs) / len(clip_highs),
        "grad_norm": norms[-1],
        "lr": lrs[0],
        "trained_sequences": len(trained),
        "train_tokens": train_tokens,
        "train_time_s": round(dt, 4),
        "train_tokens_per_s": train_tokens / dt if dt > 0 and train_tokens else 0.0,
    }
    if g.beta > 0:
        out["kl"] = sum(kls) / len(kls)
    return out


def grpo_step(
    model: Any,
    tok: Any,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    prompts: list[Prompt],
    reward_fns: list[Any],
    cfg: GRPOConfig,
    step: int,
    pad_id: int,
    reference: Any = None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """One GRPO step on ``prompts``: ``(metrics, per-completion records)``."""
    from evals.generate import DecodeSettings

    gen = cfg.generation
    G = gen.num_generations
    settings = DecodeSettings(
        max_new_tokens=gen.max_new_tokens,
        temperature=gen.temperature,
        top_k=gen.top_k,
        top_p=gen.top_p,
        seed=cfg.seed * 1_000_000 + step,  # each step's samples follow (seed, step): resumable
    )
    texts = [p.text for p in prompts for _ in range(G)]
    records = [p.record for p in prompts for _ in range(G)]
    t0 = time.perf_counter()
    outs = generate(model, tok, texts, settings, gen.batch_size or len(texts), progress=False)
    gen_s = time.perf_counter() - t0
    completions = [o["completion"] for o in outs]
    totals, per = score_rewards(reward_fns, cfg.rewards.weight_list(), texts, completions, records)
    adv, flat = group_advantages(torch.tensor(totals), G, cfg.grpo.scale_rewards)
    examples = [
        Example(str(k), k, prompts[k // G].ids + o["completion_ids"], len(prompts[k // G].ids))
        for k, o in enumerate(outs)
    ]
    stats = policy_update(model, optimizer, scheduler, examples, adv.tolist(), cfg, pad_id, reference)
    lengths = [o["completion_tokens"] for o in outs]
    t = torch.tensor(totals)
    metrics: dict[str, Any] = {"reward": float(t.mean()), "reward_std": float(t.std()) if len(t) > 1 else 0.0}
    for name, values in per.items():
        v = torch.tensor(values)
        metrics[f"reward_{name}"] = float(v.mean())
        metrics[f"reward_{name}_std"] = float(v.std()) if len(v) > 1 else 0.0
    metrics.update(
        {
            "zero_std_groups": float(flat.float().mean()),
            "completion_len_mean": sum(lengths) / len(lengths),
            "completion_len_max": max(lengths),
            "truncated": sum(o["stop_reason"] == "max_new_tokens" for o in outs) / len(outs),
            **stats,
            "gen_tokens": sum(lengths),
            "gen_time_s": round(gen_s, 4),
            "gen_tokens_per_s": sum(lengths) / gen_s if gen_s > 0 else 0.0,
        }
    )
    samples = [
        {
            "id": records[k]["id"],
            "question": records[k]["question"],
            "completion": completions[k],
            "stop_reason": outs[k]["stop_reason"],
            "completion_tokens": lengths[k],
            "reward": totals[k],
            "rewards": {name: per[name][k] for name in per},
            "advantage": float(adv[k]),
        }
        for k in range(len(outs))
    ]
    return metrics, samples


# --------------------------------------------------------------------------------------------
# Held-out eval: greedy completions on fixed prompts, shared rewards and scorer
# --------------------------------------------------------------------------------------------


def evaluate(
    model: Any, tok: Any, prompts: list[Prompt], reward_fns: list[Any], cfg: GRPOConfig, run: RunDir,
    logger: MetricsLogger, step: int, train_samples: list[dict[str, Any]],
) -> dict[str, Any]:  # fmt: skip
    """Greedy completions of the held-out prompts, scored (mean total reward and per reward,
    format / strict accuracy), logged with sample completions; returns the ``eval_*`` metrics."""
    if not prompts:
        return {}
    from evals.generate import DecodeSettings

    settings = DecodeSettings(max_new_tokens=cfg.eval.max_new_tokens or cfg.generation.max_new_tokens)
    outs = generate(model, tok, [p.text for p in prompts], settings, cfg.eval.batch_size, progress=True)
    path = run.eval / f"predictions-step-{step:06d}.jsonl"
    out, samples = score_heldout(prompts, outs, reward_fns, cfg, path)
    say(record_heldout(run, logger, step, out, samples, train_samples, cfg.eval.samples))
    return out


def checkpoint(run: RunDir, step: int, model: Any, optimizer: Any, scheduler: Any, cfg: GRPOConfig) -> None:
    meta = {"prompts_seen": step * cfg.generation.prompts_per_step, "config_hash": resume_hash(cfg)}
    lora = cfg.train.method == "lora"
    path = save_checkpoint(
        run.checkpoints, step, model, optimizer, scheduler, meta,
        save_adapter=model.save_pretrained if lora else None, keep_last=cfg.checkpoint.keep_last,
    )  # fmt: skip
    say(f"checkpoint saved: {path}")


# --------------------------------------------------------------------------------------------
# The recipe: config → prompts → policy → (resume) → loop with held-out evals → export
# --------------------------------------------------------------------------------------------


def warn_if_cpu_busy(cfg: GRPOConfig) -> None:
    """Say so when other jobs already load every core and torch would still run several threads:
    decoding is many small ops, and oversubscribed threads make it many times slower."""
    if resolve_device(cfg.model.device) != "cpu" or torch.get_num_threads() < 2:
        return
    try:
        load = os.getloadavg()[0]
    except OSError:
        return
    cores = os.cpu_count() or 1
    if load >= cores:
        say(
            f"warning: load average {load:.1f} on {cores} cores before this job starts, and torch will "
            f"use {torch.get_num_threads()} threads; on a shared CPU train.threads=1 is usually much faster"
        )


def train(cfg: GRPOConfig) -> dict[str, Any]:
    """Run one GRPO job end to end; return its summary (also written to ``summary.json``)."""
    t_start = time.perf_counter()
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    warn_if_cpu_busy(cfg)
    device = resolve_device(cfg.model.device)
    cfg.model.resolve_dtype(accelerator=device != "cpu")
    run_path, resume_from = prepare_run_dir(cfg)

    # Everything that can fail on bad input happens before the run dir is touched.
    start = resolve_start(cfg)
    reward_fns = build_rewards(cfg.rewards.names, cfg.rewards.params)
    tok = load_tokenizer(check_model_dir(start.model_path))
    train_prompts, eval_prompts, reports = load_prompt_sets(cfg, tok)
    seed_everything(cfg.seed)  # LoRA init follows the seed
    model = build_policy(cfg, start)
    reference = build_reference(cfg, start)
    total_steps = cfg.train.max_steps
    updates = total_steps * cfg.grpo.num_iterations
    optimizer = build_optimizer(model, cfg.optim)
    scheduler = build_scheduler(optimizer, updates, cfg.optim)
    counts = parameter_counts(model)
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
    P = cfg.generation.prompts_per_step
    start_step = 0
    if resume_from is not None:  # restore weights, optimizer, schedule and RNG before writing anything
        state = load_checkpoint(resume_from, model, optimizer, scheduler)
        check_resume(state, cfg, resume_from)
        start_step = int(state["step"])

    if resume_from is None and cfg.overwrite:
        RunDir(run_path).clear()
        for name in ("samples.jsonl", "summary.json"):
            (run_path / name).unlink(missing_ok=True)
    run = RunDir.start(
        run_path,
        cfg,
        data_files=data_files(cfg, eval_prompts),
        model_dir=start.model_path,
        device=device,
        extra={
            "trainer": "trainers_torch.grpo",
            "init": start.info,
            "data_report": reports,
            "parameters": counts,
            "total_steps": total_steps,
            "optimizer_updates": updates,
            "reference": reference_kind(cfg, reference),
        },
    )
    removed = remove_partial(run.checkpoints)
    if removed:
        say(f"removed unfinished checkpoint writes: {', '.join(removed)}")
    announce_start(
        say,
        cfg,
        run,
        reports["train"],
        f"{start.info}; {cfg.train.method}: {counts['trainable']:,} of {counts['total']:,} parameters train",
        total_steps,
        cfg.grpo.loss_type,
        (str(resume_from), start_step) if resume_from is not None else None,
    )

    logger = MetricsLogger(run.path)
    last_train_samples: list[dict[str, Any]] = []

    evals_done = {r["step"] for r in read_metrics(run.path) if "eval_reward" in r}
    if start_step == 0 and 0 not in evals_done:
        evaluate(model, tok, eval_prompts, reward_fns, cfg, run, logger, 0, [])
    model.train()
    bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True, desc=cfg.run_name)
    for step in range(start_step, total_steps):
        t0 = time.perf_counter()
        idx = step_prompt_indices(len(train_prompts), P, cfg.seed, step)
        metrics, samples = grpo_step(
            model,
            tok,
            optimizer,
            scheduler,
            [train_prompts[i] for i in idx],
            reward_fns,
            cfg,
            step,
            pad_id,
            reference,
        )
        last_train_samples = samples
        metrics["epoch"] = round((step + 1) * P / len(train_prompts), 4)
        metrics["step_time_s"] = round(time.perf_counter() - t0, 4)
        logger.log(step + 1, **metrics)
        bar.update(1)
        bar.set_postfix(
            reward=f"{metrics['reward']:.3f}", len=f"{metrics['completion_len_mean']:.0f}",
            gen_tok_s=f"{metrics['gen_tokens_per_s']:.0f}", train_tok_s=f"{metrics['train_tokens_per_s']:.0f}",
        )  # fmt: skip
        done = step + 1 == total_steps
        if cfg.eval.every > 0 and (step + 1) % cfg.eval.every == 0 and not done:
            evaluate(model, tok, eval_prompts, reward_fns, cfg, run, logger, step + 1, last_train_samples)
            plot_metrics(run, GRPO_PLOTS, markers={"eval_reward", "eval_completion_len_mean"})
        if done or (cfg.checkpoint.every_steps > 0 and (step + 1) % cfg.checkpoint.every_steps == 0):
            checkpoint(run, step + 1, model, optimizer, scheduler, cfg)
    bar.close()
    final_eval = {}
    if total_steps not in evals_done:
        final_eval = evaluate(
            model, tok, eval_prompts, reward_fns, cfg, run, logger, total_steps, last_train_samples
        )
    logger.close()
    plot_metrics(run, GRPO_PLOTS, markers={"eval_reward", "eval_completion_len_mean"})
    exported = export(model, tok, cfg.train.method, run.path) if cfg.export else {}
    summary = {
        "run_dir": str(run.path),
        "steps": total_steps,
        "init": start.info,
        **run_summary(run, total_steps, final_eval, heldout_change(run, total_steps)),
        "wall_seconds_this_attempt": round(time.perf_counter() - t_start, 2),
        "resumed_from_step": start_step if resume_from is not None else None,
        **exported,
    }
    return run.complete(summary, done_line(summary))


@cli
def main(argv: list[str] | None = None) -> int:
    train(config_from_cli(GRPOConfig, argv, "python -m trainers_torch.grpo", __doc__))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
