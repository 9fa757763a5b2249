"""GRPO on Tunix (Flax NNX): Tunix's ``GRPOLearner`` + ``RLCluster`` with a qwix LoRA policy,
scored by the shared rewards, on the same YAML as ``trainers_torch.grpo``.

    python -m trainers_jax.grpo --config configs/grpo_gemma3_270m_cpu.yaml key=value ... [mesh.fsdp=2]

Read top to bottom: config (``trainers_jax/config.py``: ``common/grpo_config.py`` plus ``mesh``; keys JAX cannot
honour are rejected or announced) → start (the base model, or an SFT run's ``merged/`` export)
→ policy (Tunix Gemma 3 or 2 + a fresh qwix LoRA whose B is zero-initialised, so the step-0 policy
*is* the starting model) → the Tunix cluster (vanilla rollout sharing the actor's weights, the
actor trainer with our optax optimizer and schedule) → one step per ``GRPOLearner.train`` call
on the step's P prompts (the same seeded order as torch) → held-out greedy eval at step 0,
every ``eval.every`` steps and at the end → Orbax checkpoints + resume → ``merged/`` HF
safetensors that ``evals`` and ``trainers_torch`` load.

What Tunix does here: sampling (``Sampler`` through ``RLCluster.generate``: temperature, top-k,
top-p, stop at eos / end of turn), the rewards' call (weighted sum), group advantages, the
trainer that runs ``num_iterations`` updates per batch with our loss.
What is ours: the prompts and their order, the reward functions (``common.rewards``, each
wrapped to apply its weight and keep its raw values for the metrics), the loss
(``trainers_jax/policy_loss.py``: Tunix's clipped-ratio loss with optional k3 KL to the
reference, its metrics and gradients, with the LM head in ``train.loss_chunk_tokens``-row
chunks on the completion positions only), the rollout engine (``trainers_jax/sampling.py``: Tunix's
sampler with one prefill per prompt for its G samples, a plain-temperature draw by a
two-level Gumbel-max, the same distribution with its own random stream, and on Gemma 3 decode
steps on weights laid out once per rollout, ``trainers_jax/decode_step.py``), the step loop around
the learner, metrics names (``metrics.jsonl`` as torch writes it), eval, checkpoints, export.

How our config maps onto Tunix 0.1.7, and where the semantics differ from torch:
- ``grpo.loss_type``: ``grpo`` → ``loss_agg_mode=sequence-mean-token-mean`` (mean over
  completions of each one's token mean), ``dr_grpo`` → ``sequence-mean-token-scale`` (each
  completion's token sum / max_new_tokens, mean over completions), ``dapo`` → ``token-mean``
  (sum over all completion tokens / their count). These are torch's three formulas.
- ``grpo.epsilon`` / ``epsilon_high``: Tunix's ratio clip ``[1 - epsilon, 1 + epsilon_high]``
  (``epsilon_high`` is read from the config object, which ``GRPOConfig`` has no field for: it is
  set as an attribute). Tunix also clips the log-ratio to ±20 before ``exp`` (torch does not).
- ``grpo.beta``: Tunix's ``kl_loss_mode=low_var_kl`` is torch's k3 estimator; the reference
  is the starting model (a second copy of its weights; with beta = 0 none is loaded or run).
- ``grpo.scale_rewards``: ``group`` → Tunix's ``grpo`` advantages ((r - mean) / (std + 1e-6),
  std with n - 1; torch adds 1e-4), ``none`` → ``drgrpo`` (r - mean). Flat groups get 0 in both.
- ``init.sft_mode: continue`` cannot continue a PEFT adapter here: the run's ``merged/`` export
  is loaded and a fresh LoRA added (announced). The step-0 policy is the same model; the KL
  reference is then the SFT model rather than the base (moot with beta = 0).
- Completions are Tunix's sampler output, which ends *before* the stop token: the end-of-turn
  token is neither counted in the lengths nor trained on (torch does both), a completion of
  exactly ``max_new_tokens`` tokens counts as truncated, and an empty completion (a stop
  token first) drops out of Tunix's mean over completions.
- ``tunix.micro_batch_prompts`` (JAX only, default 1) splits each step's update and log-prob
  passes into pieces of that many prompts (all their completions), accumulating gradients
  (Tunix's ``train_micro_batch_size``): the loss's token mean is then per piece, averaged over
  the pieces, where torch averages over all the step's tokens; equal when the pieces hold as
  many completion tokens.
- ``tunix.pad_multiple`` (JAX only, default 32): Tunix pads each prompt to the run's longest
  and each completion to ``max_new_tokens`` (torch packs its update). The update gets the step
  cut to its own longest prompt and completion, rounded up to that multiple
  (``trim_padding``): only padding goes, and each new width compiles the update once.
  ``dr_grpo`` keeps the completion width, which its loss divides by. ``train_padded_tokens``
  in ``metrics.jsonl`` counts the positions the update computes, padding included.
- ``gen_time_s`` is Tunix's generate-and-score phase (sampling, rewards, advantages, old /
  reference log-probs); ``train_time_s`` the rest of the step.
- torch-only keys (announced when set away from their defaults): ``train.micro_batch_rows``,
  ``pack_tokens``, ``gradient_checkpointing``, ``threads``,
  ``generation.batch_size``, ``model.attn_implementation``, ``model.device`` (JAX places on
  ``mesh``); ``lora.dropout`` is not applied.
  Rejected: ``train.method=full`` and ``model.init_adapter`` (LoRA on an HF dir only).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import nnx
from tqdm import tqdm

from common.config import config_from_cli
from common.errors import InputError, cli
from common.grpo_config import GRPOConfig
from common.grpo_prompts import (
    REWARD_COLUMNS,
    Prompt,
    data_files,
    load_prompt_sets,
    step_prompt_indices,
)
from common.grpo_records import GRPO_PLOTS, announce_start, done_line, record_heldout, run_summary
from common.prompts import end_of_turn
from common.rewards import build_rewards
from common.runs import (
    MetricsLogger,
    RunDir,
    check_resume,
    plot_metrics,
    read_metrics,
    resume_hash,
    say,
)
from common.sft_config import lr_factor
from evals.heldout import heldout_change, score_heldout
from trainers_jax.checkpoint import checkpoint_manager, prepare_run_dir, restore_checkpoint, save_checkpoint
from trainers_jax.config import JaxGRPOConfig
from trainers_jax.export import export_merged
from trainers_jax.lora import apply_lora, parameter_counts
from trainers_jax.model import check_window, load_model, make_mesh, use_compilation_cache
from trainers_jax.optim import optax_transform
from trainers_jax.policy_loss import POLICY_LOSS
from trainers_jax.sampling import Rollout

# --------------------------------------------------------------------------------------------
# Config (trainers_jax/config.py): how the shared keys map onto Tunix, what JAX cannot do
# --------------------------------------------------------------------------------------------


LOSS_AGG = {"grpo": "sequence-mean-token-mean", "dr_grpo": "sequence-mean-token-scale", "dapo": "token-mean"}
ADVANTAGES = {"group": "grpo", "none": "drgrpo"}
TORCH_ONLY = {  # key → its default: set to anything else, the JAX trainer says it is not applied
    "train.micro_batch_rows": 1,
    "train.pack_tokens": 1024,
    "train.gradient_checkpointing": False,
    "train.threads": None,
    "generation.batch_size": 0,
    "model.attn_implementation": "sdpa",
    "model.device": "auto",
}


def jax_notes(cfg: JaxGRPOConfig) -> list[str]:
    """Reject what the JAX trainer cannot do; return the differences it announces at start-up."""
    if cfg.train.method != "lora":
        raise InputError("train.method=full is not supported by trainers_jax.grpo (LoRA only)")
    if cfg.model.init_adapter:
        raise InputError(
            "model.init_adapter is not supported by trainers_jax.grpo; use init.sft_run (its merged/ export)"
        )
    P, micro = cfg.generation.prompts_per_step, cfg.tunix.micro_batch_prompts
    if P % micro:
        raise InputError(
            f"tunix.micro_batch_prompts={micro} must divide generation.prompts_per_step={P} (Tunix splits the step evenly)"
        )
    notes = []
    for key, default in TORCH_ONLY.items():
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if value != default:
            notes.append(f"{key}={value} is torch-only; not applied by trainers_jax.grpo")
    if cfg.lora.dropout > 0:
        notes.append(f"lora.dropout={cfg.lora.dropout} is not applied (deterministic LoRA)")
    lost = cfg.model.lost_updates_note(cfg.train.method, adapters_in_float32=False)
    if lost:
        notes.append(lost)
    if cfg.init.sft_run and cfg.init.sft_mode == "continue":
        notes.append(
            "init.sft_mode=continue: JAX starts a fresh LoRA on the SFT run's merged/ export "
            "(same step-0 policy; the KL reference is the SFT model)"
        )
    return notes


# --------------------------------------------------------------------------------------------
# Start: the base model or an SFT run's merged/ export; the policy is it + a fresh LoRA
# --------------------------------------------------------------------------------------------


def resolve_start(cfg: GRPOConfig) -> tuple[str, dict[str, Any]]:
    """``(HF dir the policy starts from, description)``: ``model.path`` or ``<init.sft_run>/merged``."""
    if cfg.init.sft_run is None:
        return cfg.model.path, {"from": "model.path", "model": cfg.model.path}
    run = Path(cfg.init.sft_run)
    merged = run / "merged"
    if not (merged / "config.json").is_file():
        raise InputError(
            f"init.sft_run {run}: no merged/ HF export ({merged}/config.json); has the SFT run "
            "(trainers_torch.sft or trainers_jax.sft, export=true) finished?"
        )
    return str(merged), {"from": "sft_run", "sft_run": str(run), "mode": "merged", "model": str(merged)}


# --------------------------------------------------------------------------------------------
# Rewards: the shared functions, weighted for Tunix, their raw values kept for the metrics
# --------------------------------------------------------------------------------------------


class RewardRecorder:
    """Wraps the shared rewards for Tunix: each returns ``weight * value``; the last call's
    completions and raw values stay here for ``metrics.jsonl`` and ``samples.jsonl``."""

    def __init__(self, fns: list[Any], weights: list[float]):
        self.raw: dict[str, list[float]] = {}
        self.completions: list[str] = []
        self.columns: dict[str, list[Any]] = {}
        self.fns = [self._wrap(fn, w) for fn, w in zip(fns, weights, strict=True)]

    def _wrap(self, fn: Any, weight: float) -> Any:
        def reward(prompts: list[str], completions: list[str], **columns: Any) -> list[float]:
            cols = {k: [json.loads(x) for x in columns[k]] for k in REWARD_COLUMNS if k in columns}
            values = [float(v) for v in fn(prompts, completions, **cols)]
            if len(values) != len(completions) or not all(np.isfinite(values)):
                raise InputError(
                    f"reward {fn.__name__}: {len(values)} values for {len(completions)} completions"
                )
            self.raw[fn.__name__] = values
            self.completions, self.columns = list(completions), cols
            return [weight * v for v in values]

        reward.__name__ = reward.__qualname__ = fn.__name__
        return reward


def padded_width(need: int, multiple: int, full: int) -> int:
    """``need`` tokens (at least 1) rounded up to ``multiple``, at most ``full`` (0: ``full``)."""
    return min(full, -(-max(1, need) // multiple) * multiple) if multiple > 0 else full


def trim_padding(example: Any, multiple: int, completions: bool = True) -> Any:
    """Tunix's ``TrainExample`` (prompts left-padded to the run's longest, completions
    right-padded to ``max_new_tokens``) cut to the step's longest prompt and completion, each
    rounded up to ``multiple`` tokens and never wider than before. Only columns of padding go:
    Tunix's loss takes positions and attention from the masks, so the loss and its gradients
    do not change. ``completions=False`` keeps the completion width (the ``dr_grpo`` loss divides
    by it); ``multiple`` 0 and packed examples (segment ids) are returned as they are."""
    if multiple <= 0 or getattr(example, "segment_ids", None) is not None:
        return example
    p_used = np.flatnonzero(np.asarray(example.prompt_mask).any(axis=0))
    p_full = example.prompt_ids.shape[1]
    p_keep = padded_width(p_full - int(p_used[0]) if p_used.size else 0, multiple, p_full)
    c_used = np.flatnonzero(np.asarray(example.completion_mask).any(axis=0))
    c_full = example.completion_ids.shape[1]
    c_keep = (
        padded_width(int(c_used[-1]) + 1 if c_used.size else 0, multiple, c_full) if completions else c_full
    )
    cut = {"prompt_ids": example.prompt_ids[:, p_full - p_keep :],
           "prompt_mask": example.prompt_mask[:, p_full - p_keep :]}  # fmt: skip
    for name in ("completion_ids", "completion_mask", "ref_per_token_logps", "old_per_token_logps",
                 "sampler_is_weights"):  # fmt: skip
        value = getattr(example, name, None)
        if value is not None:
            cut[name] = value[:, :c_keep]
    return example.replace(**cut)


def recording_learner(base: type, pad_multiple: int = 0, trim_completions: bool = True) -> type:
    """``GRPOLearner`` that keeps each step's completion lengths, advantages and timing, and
    hands its update the step cut to its own widths (``trim_padding``)."""

    class Recording(base):
        def _generate_and_compute_advantage(self, training_input: Any, mode: Any = None) -> Any:
            from tunix.rl import rl_cluster as rlc

            t0 = time.perf_counter()
            example = super()._generate_and_compute_advantage(training_input, mode or rlc.Mode.TRAIN)
            example = trim_padding(example, pad_multiple, trim_completions)
            self.last = {
                "lengths": np.asarray(example.completion_mask).sum(axis=-1).astype(int).tolist(),
                "prompt_tokens": np.asarray(example.prompt_mask).sum(axis=-1).astype(int).tolist(),
                "advantages": np.asarray(example.advantages).astype(float).tolist(),
                "update_width": int(example.prompt_ids.shape[1] + example.completion_ids.shape[1]),
                "gen_time_s": time.perf_counter() - t0,
            }
            return example

    return Recording


# --------------------------------------------------------------------------------------------
# The Tunix cluster and learner
# --------------------------------------------------------------------------------------------


def rollout_config(cfg: GRPOConfig, tok: Any, prompt_len: int, seed: int | None = None) -> Any:
    from tunix.rl.rollout import base_rollout

    gen = cfg.generation
    eot = tok.convert_tokens_to_ids(end_of_turn(tok))
    stops = [t for t in (eot, tok.eos_token_id) if isinstance(t, int) and t != tok.unk_token_id]
    return base_rollout.RolloutConfig(
        max_tokens_to_generate=gen.max_new_tokens,
        max_prompt_length=prompt_len,
        kv_cache_size=prompt_len + gen.max_new_tokens + 8,
        temperature=gen.temperature,
        top_k=gen.top_k or None,
        top_p=gen.top_p,
        eos_tokens=list(dict.fromkeys(stops)),
        seed=seed,
    )


def build_learner(
    cfg: JaxGRPOConfig,
    actor: Any,
    reference: Any,
    tok: Any,
    mesh: Any,
    prompt_len: int,
    rewards: RewardRecorder,
) -> Any:
    """``RLCluster`` (actor, rollout and reference on one mesh) + ``GRPOLearner`` for ``cfg``."""
    from tunix.rl import rl_cluster as rlc
    from tunix.rl.grpo import grpo_learner

    g = cfg.grpo
    updates = cfg.train.max_steps * g.num_iterations
    P, micro = cfg.generation.prompts_per_step, cfg.tunix.micro_batch_prompts
    training = rlc.RLTrainingConfig(
        actor_optimizer=optax_transform(cfg.optim, updates),
        eval_every_n_steps=10**9,  # held-out eval is ours (greedy, shared rewards)
        max_steps=updates,
        mini_batch_size=P,  # one optimizer update per step (and iteration)
        train_micro_batch_size=micro,  # gradients accumulated over P / micro pieces
        compute_logps_micro_batch_size=micro,
        rollout_micro_batch_size=P,  # sampling stays one batch of P x G
    )
    cluster = rlc.RLCluster(
        actor=actor,
        reference=reference,
        tokenizer=tok,
        cluster_config=rlc.ClusterConfig(
            role_to_mesh={rlc.Role.ACTOR: mesh, rlc.Role.REFERENCE: mesh, rlc.Role.ROLLOUT: mesh},
            rollout_engine=Rollout.with_lora_scale(cfg.lora.alpha / cfg.lora.rank),  # sampling.py
            offload_to_cpu=False,
            training_config=training,
            rollout_config={rlc.Mode.TRAIN: rollout_config(cfg, tok, prompt_len)},
        ),
    )
    algo = grpo_learner.GRPOConfig(
        num_generations=cfg.generation.num_generations,
        num_iterations=g.num_iterations,
        beta=g.beta,
        epsilon=g.epsilon,
        loss_agg_mode=LOSS_AGG[g.loss_type],
        advantage_estimator=ADVANTAGES[g.scale_rewards],
        kl_loss_mode="low_var_kl",
        policy_loss_fn=POLICY_LOSS,  # Tunix's loss with the LM head in chunks on completion positions
    )
    algo.epsilon_high = g.epsilon if g.epsilon_high is None else g.epsilon_high  # read by the loss
    algo.loss_chunk_tokens = cfg.train.loss_chunk_tokens  # completion rows per head chunk
    # dr_grpo's loss divides by the completion width: only its prompts are cut
    learner_cls = recording_learner(
        grpo_learner.GRPOLearner, cfg.tunix.pad_multiple, g.loss_type != "dr_grpo"
    )
    return learner_cls(rl_cluster=cluster, algo_config=algo, reward_fns=rewards.fns)


def run_step(
    learner: Any, cfg: GRPOConfig, tok: Any, prompts: list[Prompt], step: int, prompt_len: int
) -> None:
    """One generation batch (P prompts x G samples) and its ``num_iterations`` updates."""
    from tunix.rl import rl_cluster as rlc

    cluster = learner.rl_cluster  # each step's samples follow (seed, step): resumable
    cluster.cluster_config.rollout_config[rlc.Mode.TRAIN] = rollout_config(
        cfg, tok, prompt_len, seed=cfg.seed * 1_000_000 + step
    )
    batch = {"prompts": np.array([p.text for p in prompts])}
    for k in REWARD_COLUMNS:  # JSON text through Tunix's batch; the rewards get the record's values back
        batch[k] = np.array([json.dumps(p.record.get(k)) for p in prompts])
    learner.train([batch])


def step_metrics(
    learner: Any, rewards: RewardRecorder, cfg: GRPOConfig, history_len: int
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The step's ``metrics.jsonl`` fields (torch's names) and its per-completion samples."""
    G = cfg.generation.num_generations
    last = learner.last
    weights = cfg.rewards.weight_list()
    names = list(rewards.raw)
    totals = np.array([sum(w * rewards.raw[n][i] for n, w in zip(names, weights, strict=True))
                       for i in range(len(rewards.completions))])  # fmt: skip
    m: dict[str, Any] = {"reward": float(totals.mean()), "reward_std": float(totals.std(ddof=1))}
    for n in names:
        v = np.asarray(rewards.raw[n])
        m[f"reward_{n}"] = float(v.mean())
        m[f"reward_{n}_std"] = float(v.std(ddof=1))
    groups = totals.reshape(-1, G)
    lengths = last["lengths"]
    m["zero_std_groups"] = float((groups.max(axis=1) == groups.min(axis=1)).mean())
    m["completion_len_mean"] = float(np.mean(lengths))
    m["completion_len_max"] = int(max(lengths))
    m["truncated"] = float(np.mean([n >= cfg.generation.max_new_tokens for n in lengths]))
    logger = learner.rl_cluster._rl_metrics_logger  # the actor trainer's loss / grad norm / lr history

    def recent(name: str) -> list[float]:
        if not logger.metric_exists("actor", name, "train"):
            return []
        return [float(x) for x in np.asarray(logger.get_metric_history("actor", name, "train"))[history_len:]]

    losses, clips, norms = recent("loss"), recent("pg_clipfrac"), recent("grad_norm")
    m["loss"] = float(np.mean(losses)) if losses else None
    m["clip_fraction"] = float(np.mean(clips)) if clips else None
    m["grad_norm"] = norms[-1] if norms else None
    if cfg.grpo.beta > 0:
        kls = recent("kl")
        m["kl"] = float(np.mean(kls)) if kls else None
    m["trained_sequences"] = int(sum(a != 0.0 for a in last["advantages"]))
    train_tokens = int(sum(lengths) + sum(last["prompt_tokens"])) * cfg.grpo.num_iterations
    m["train_tokens"] = train_tokens
    m["train_padded_tokens"] = len(lengths) * last["update_width"] * cfg.grpo.num_iterations
    m["gen_tokens"] = int(sum(lengths))
    m["gen_time_s"] = round(last["gen_time_s"], 4)
    m["gen_tokens_per_s"] = sum(lengths) / last["gen_time_s"] if last["gen_time_s"] > 0 else 0.0
    samples = [
        {
            "id": rewards.columns.get("id", [""] * len(totals))[k],
            "question": rewards.columns.get("question", [""] * len(totals))[k],
            "completion": rewards.completions[k],
            "stop_reason": "max_new_tokens" if lengths[k] >= cfg.generation.max_new_tokens else "stop",
            "reward": float(totals[k]),
            "rewards": {n: rewards.raw[n][k] for n in names},
            "advantage": last["advantages"][k],
        }
        for k in range(len(totals))
    ]
    return m, samples


def history_length(learner: Any) -> int:
    logger = learner.rl_cluster._rl_metrics_logger
    if not logger.metric_exists("actor", "loss", "train"):
        return 0
    return len(logger.get_metric_history("actor", "loss", "train"))


# --------------------------------------------------------------------------------------------
# Held-out eval: greedy completions on fixed prompts (Tunix sampler via evals.generate)
# --------------------------------------------------------------------------------------------


def evaluate(
    model: Any, tok: Any, prompts: list[Prompt], reward_fns: list[Any], cfg: GRPOConfig, run: RunDir,
    logger: MetricsLogger, step: int, train_samples: list[dict[str, Any]], mesh: Any,
) -> dict[str, Any]:  # fmt: skip
    """Greedy completions of the held-out prompts (Tunix sampler), scored (mean total reward and
    per reward, format / strict accuracy), logged with sample completions; the ``eval_*`` metrics."""
    if not prompts:
        return {}
    from evals.generate import DecodeSettings, generate_completions

    settings = DecodeSettings(max_new_tokens=cfg.eval.max_new_tokens or cfg.generation.max_new_tokens)
    batch = min(cfg.eval.batch_size, len(prompts))  # the JAX sampler pads every batch to its size
    with mesh:
        outs = generate_completions(model, tok, [p.text for p in prompts], settings, batch)
    path = run.eval / f"predictions-step-{step:06d}.jsonl"
    out, samples = score_heldout(prompts, outs, reward_fns, cfg, path)
    say(record_heldout(run, logger, step, out, samples, train_samples, cfg.eval.samples))
    return out


# --------------------------------------------------------------------------------------------
# The recipe: config → prompts → policy + Tunix learner → (resume) → loop with evals → export
# --------------------------------------------------------------------------------------------


def train(cfg: JaxGRPOConfig) -> dict[str, Any]:
    """Run one GRPO job end to end; return its summary (also written to ``summary.json``)."""
    t_start = time.perf_counter()
    cfg.model.resolve_dtype(accelerator=jax.default_backend() != "cpu")
    run_path = prepare_run_dir(cfg)

    # Everything that can fail on bad input happens before the run dir is touched.
    notes = jax_notes(cfg)
    start_path, start_info = resolve_start(cfg)
    reward_fns = build_rewards(cfg.rewards.names, cfg.rewards.params)
    xla_cache = use_compilation_cache()  # a rerun or resume loads its compiled programs
    mesh = make_mesh(cfg.mesh.fsdp, cfg.mesh.tp)
    base, tok = load_model(start_path, cfg.model.dtype, mesh)
    train_prompts, eval_prompts, reports = load_prompt_sets(cfg, tok)
    with mesh:
        actor = apply_lora(
            base, cfg.lora, cfg.train.trainable_layers, cfg.seed
        )  # B = 0: the step-0 policy is the start model
    reference = None
    if cfg.grpo.beta > 0:
        reference, _ = load_model(start_path, cfg.model.dtype, mesh)
    recorder = RewardRecorder(reward_fns, cfg.rewards.weight_list())
    prompt_len = max(r["prompt_tokens_max"] for r in reports.values() if r)  # fixed: compiles once
    check_window(
        base, rollout_config(cfg, tok, prompt_len).kv_cache_size, "data.max_prompt_tokens + generation"
    )
    with mesh:
        learner = build_learner(cfg, actor, reference, tok, mesh, prompt_len, recorder)
    trainer = learner.rl_cluster.actor_trainer
    model, optimizer, wrt = trainer.model, trainer.optimizer, nnx.LoRAParam
    counts = parameter_counts(model, wrt)
    P = cfg.generation.prompts_per_step
    total_steps = cfg.train.max_steps

    mgr = checkpoint_manager(run_path / "checkpoints", cfg.checkpoint.keep_last)
    start_step = 0
    latest = mgr.latest_step() if cfg.resume else None
    if latest is not None:  # restore before writing anything
        with mesh:
            meta = restore_checkpoint(mgr, latest, model, optimizer, wrt)
        check_resume(meta, cfg, f"{run_path}/checkpoints/{latest}")
        start_step = int(meta["step"])
    if cfg.overwrite and latest is None:
        RunDir(run_path).clear()
        for name in ("samples.jsonl", "summary.json"):
            (run_path / name).unlink(missing_ok=True)
    run = RunDir.start(
        run_path,
        cfg,
        data_files=data_files(cfg, eval_prompts),
        model_dir=start_path,
        device=f"{jax.devices()[0].platform} x{len(mesh.devices.flat)} (fsdp={cfg.mesh.fsdp}, tp={cfg.mesh.tp})",
        extra={
            "trainer": "trainers_jax.grpo",
            "xla_cache": xla_cache,
            "init": start_info,
            "data_report": reports,
            "parameters": counts,
            "total_steps": total_steps,
            "optimizer_updates": total_steps * cfg.grpo.num_iterations,
            "reference": "the starting model (a second copy)" if cfg.grpo.beta > 0 else "none (beta=0)",
            "tunix": {
                "loss_agg_mode": LOSS_AGG[cfg.grpo.loss_type],
                "advantage_estimator": ADVANTAGES[cfg.grpo.scale_rewards],
            },
            "notes": notes,
        },
    )
    for note in notes:
        say(f"note: {note}")
    announce_start(
        say,
        cfg,
        run,
        reports["train"],
        f"{start_info}; lora (JAX/Tunix): {counts['trainable']:,} of {counts['total']:,} parameters train",
        total_steps,
        f"{cfg.grpo.loss_type} ({LOSS_AGG[cfg.grpo.loss_type]})",
        (f"{run.checkpoints}/{latest}", start_step) if latest is not None else None,
    )

    logger = MetricsLogger(run.path)
    last_train_samples: list[dict[str, Any]] = []

    evals_done = {r["step"] for r in read_metrics(run.path) if "eval_reward" in r}
    if start_step == 0 and 0 not in evals_done:
        evaluate(model, tok, eval_prompts, reward_fns, cfg, run, logger, 0, [], mesh)
    bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True, desc=cfg.run_name)
    for step in range(start_step, total_steps):
        t0 = time.perf_counter()
        idx = step_prompt_indices(len(train_prompts), P, cfg.seed, step)
        seen = history_length(learner)
        lr = cfg.optim.lr * _lr_factor(cfg, step * cfg.grpo.num_iterations)
        with mesh:
            run_step(learner, cfg, tok, [train_prompts[i] for i in idx], step, prompt_len)
        metrics, samples = step_metrics(learner, recorder, cfg, seen)
        last_train_samples = samples
        dt = time.perf_counter() - t0
        metrics["lr"] = lr
        metrics["train_time_s"] = round(dt - metrics["gen_time_s"], 4)
        metrics["train_tokens_per_s"] = metrics["train_tokens"] / max(1e-9, dt - metrics["gen_time_s"])
        metrics["epoch"] = round((step + 1) * P / len(train_prompts), 4)
        metrics["step_time_s"] = round(dt, 4)
        logger.log(step + 1, **metrics)
        bar.update(1)
        bar.set_postfix(reward=f"{metrics['reward']:.3f}", len=f"{metrics['completion_len_mean']:.0f}")
        done = step + 1 == total_steps
        if cfg.eval.every > 0 and (step + 1) % cfg.eval.every == 0 and not done:
            evaluate(
                model, tok, eval_prompts, reward_fns, cfg, run, logger, step + 1, last_train_samples, mesh
            )
            plot_metrics(run, GRPO_PLOTS, markers={"eval_reward", "eval_completion_len_mean"})
        if done or (cfg.checkpoint.every_steps > 0 and (step + 1) % cfg.checkpoint.every_steps == 0):
            meta = {"step": step + 1, "prompts_seen": (step + 1) * P, "config_hash": resume_hash(cfg)}
            with mesh:
                save_checkpoint(mgr, step + 1, model, optimizer, wrt, meta)
            say(f"checkpoint saved: {run.checkpoints}/{step + 1}")
    bar.close()
    mgr.close()
    final_eval = {}
    if total_steps not in evals_done:
        final_eval = evaluate(
            model, tok, eval_prompts, reward_fns, cfg, run, logger, total_steps, last_train_samples, mesh
        )
    logger.close()
    plot_metrics(run, GRPO_PLOTS, markers={"eval_reward", "eval_completion_len_mean"})
    exported = {}
    if cfg.export:
        exported["merged"] = str(export_merged(model, tok, start_path, run.path / "merged", cfg.lora.alpha))
    summary = {
        "run_dir": str(run.path),
        "trainer": "trainers_jax.grpo",
        "steps": total_steps,
        "init": start_info,
        **run_summary(run, total_steps, final_eval, heldout_change(run, total_steps)),
        "wall_seconds_this_attempt": round(time.perf_counter() - t_start, 2),
        "resumed_from_step": start_step if latest is not None else None,
        **exported,
    }
    return run.complete(summary, done_line(summary))


def _lr_factor(cfg: GRPOConfig, update: int) -> float:
    return lr_factor(update, cfg.train.max_steps * cfg.grpo.num_iterations, cfg.optim)


@cli
def main(argv: list[str] | None = None) -> int:
    train(config_from_cli(JaxGRPOConfig, argv, "python -m trainers_jax.grpo", __doc__))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
