"""Supervised fine-tuning on Tunix (Flax NNX): LoRA (qwix) or full, packed, completion-only loss.

    python -m trainers_jax.sft --config configs/sft_gemma3_270m_cpu.yaml key=value ... [mesh.fsdp=2]

The JAX twin of ``trainers_torch.sft``: the same YAML keys (``common/sft_config.py``) plus
``mesh: {fsdp, tp}``, the same data rows in the same order (``common/sft_data.py``), the same
loss, schedule and ``metrics.jsonl`` fields, so reports and plots read both.

Read top to bottom: config → model (Tunix Gemma 3 or 2 from HF safetensors on the mesh, qwix
LoRA or full, optional freezing) → the loss (decoder body, block-diagonal causal mask from
the segment ids, LM head in chunks on completion positions only) → optimizer (optax) → the
training loop (grad accumulation, clipping, warmup + cosine, held-out loss, Orbax
checkpoints, resume) → export (merged HF safetensors in ``merged/``).

Why not Tunix's ``PeftTrainer``: its loop averages per-micro-batch mean losses under
gradient accumulation and owns the data iteration, metrics names and checkpoint layout. The
torch recipe's semantics are a mean over *all* completion tokens of the optimizer step
(micro-batches weighted by their target counts), rows chosen by ``DataPlan`` as a pure
function of ``(seed, step)``, and the shared ``metrics.jsonl`` fields. Expressing those
through PeftTrainer's hooks would hide more than it saves, so the step below is a short nnx
loop; it still uses Tunix's model code and loader, qwix for LoRA and Orbax for checkpoints.

Differences from torch that the frameworks force (and say so at start-up):
- LoRA targets: Tunix fuses k and v (``kv_einsum``, or q/k/v in ``qkv_einsum`` when there
  are as many kv heads as heads), so ``k_proj``/``v_proj`` pick the fused module.
- ``lora.dropout`` is not applied (qwix's LoRA dropout needs an rng stream inside the module
  call; the trainer runs deterministic). ``optim.name: adafactor`` is optax's Adafactor, not
  torch's; ``model.attn_implementation`` and ``train.threads`` are torch-only.

The held-out generation check (``eval.generate_n`` greedy completions, ``gen_*`` metrics and
``eval/predictions-step-*.jsonl``) is ``evals.heldout``, the torch trainer's own, on the LoRA
model as trained through Tunix's sampler.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from tqdm import tqdm

from common import sft_data
from common.config import config_from_cli, load_config
from common.errors import InputError, cli
from common.jsonl import write_json
from common.prompts import end_of_turn
from common.runs import MetricsLogger, RunDir, read_metrics, resume_hash, write_plots
from common.sft_config import OptimConfig, SFTConfig, TrainConfig, lr_factor
from common.sft_data import IGNORE, DataPlan, Example, overflow_line, pack_rows, tokenize_records
from evals.heldout import generation_eval, heldout_records
from trainers_jax.model import is_gemma2, load_model, make_mesh, model_positions

# --------------------------------------------------------------------------------------------
# Config: the torch recipe's keys (common/sft_config.py) plus the device mesh
# --------------------------------------------------------------------------------------------


@dataclass
class MeshConfig:
    fsdp: int = 1  # parameters and batch sharded over this many devices
    tp: int = 1  # tensor parallelism

    def __post_init__(self) -> None:
        if self.fsdp < 1 or self.tp < 1:
            raise ValueError("mesh.fsdp and mesh.tp must be >= 1")


@dataclass
class JaxSFTConfig(SFTConfig):
    mesh: MeshConfig = field(default_factory=MeshConfig)


def say(msg: str) -> None:
    tqdm.write(msg, file=sys.stdout)
    sys.stdout.flush()


# --------------------------------------------------------------------------------------------
# Model: Tunix Gemma 3 / Gemma 2, LoRA (qwix) or full fine-tuning, optional freezing
# --------------------------------------------------------------------------------------------

# torch (HF) linear layer → the Tunix module that holds it
TUNIX_MODULE = {
    "q_proj": "q_einsum",
    "k_proj": "kv_einsum",
    "v_proj": "kv_einsum",
    "o_proj": "attn_vec_einsum",
    "gate_proj": "gate_proj",
    "up_proj": "up_proj",
    "down_proj": "down_proj",
}


def trainable_layer_ids(n_layers: int, train: TrainConfig) -> list[int]:
    k = n_layers if train.trainable_layers is None else min(train.trainable_layers, n_layers)
    return list(range(n_layers - k, n_layers))


def lora_module_path(model: Any, cfg: SFTConfig) -> str:
    """The qwix ``module_path`` regex for ``lora.target_modules`` in the trainable layers."""
    targets = cfg.lora.target_modules or sorted(TUNIX_MODULE)
    unknown = sorted(set(targets) - set(TUNIX_MODULE))
    if unknown:
        raise InputError(
            f"lora.target_modules: {unknown} not linear layers of the decoder; available: {sorted(TUNIX_MODULE)}"
        )
    fused = model.config.num_heads == model.config.num_kv_heads
    modules = {
        ("qkv_einsum" if fused and t in ("q_proj", "k_proj", "v_proj") else TUNIX_MODULE[t]) for t in targets
    }
    layers = "|".join(str(i) for i in trainable_layer_ids(model.config.num_layers, cfg.train))
    return rf"layers/({layers})/(attn|mlp)/({'|'.join(sorted(modules))})"


def apply_lora(model: Any, cfg: SFTConfig) -> Any:
    import qwix

    provider = qwix.LoraProvider(
        module_path=lora_module_path(model, cfg), rank=cfg.lora.rank, alpha=cfg.lora.alpha
    )
    return qwix.apply_lora_to_model(
        model, provider, rngs=nnx.Rngs(cfg.seed), **model.get_model_input()
    )  # seeded init


def trainable_filter(cfg: SFTConfig, n_layers: int) -> Any:
    """The nnx filter of the parameters that train (and are checkpointed)."""
    if cfg.train.method == "lora":
        return nnx.LoRAParam
    if cfg.train.trainable_layers is None:
        return nnx.Param
    layers = set(trainable_layer_ids(n_layers, cfg.train))

    def chosen(path: tuple[Any, ...], value: Any) -> bool:
        if not isinstance(value, nnx.Param):
            return False
        head = path[0]
        if head == "layers":
            return int(path[1]) in layers
        return head == "final_norm" or (head == "embedder" and cfg.train.train_lm_head)

    return chosen


def build_model(cfg: SFTConfig, mesh: jax.sharding.Mesh) -> tuple[Any, Any]:
    """``(model, tokenizer)`` ready to train."""
    if cfg.model.init_adapter:
        raise InputError(
            "model.init_adapter is not supported by trainers_jax.sft yet; point model.path at a merged/ dir"
        )
    model, tok = load_model(cfg.model.path, cfg.model.dtype, mesh)
    if cfg.train.method == "lora":
        with mesh:
            model = apply_lora(model, cfg)
    return model, tok


def parameter_counts(model: Any, wrt: Any) -> dict[str, int]:
    def count(state: Any) -> int:
        return int(sum(np.prod(x.shape) for x in jax.tree.leaves(state)))

    return {
        "total": count(nnx.state(model, nnx.Param)) + count(nnx.state(model, nnx.LoRAParam)),
        "trainable": count(nnx.state(model, wrt)),
    }


# --------------------------------------------------------------------------------------------
# The loss: decoder body, then the tied LM head in chunks on completion positions only
# --------------------------------------------------------------------------------------------


def packed_attention_mask(segment_ids: jax.Array) -> jax.Array:
    """[B, L, L] causal mask that keeps attention inside each packed example (segment 0 = padding)."""
    seg_q, seg_k = segment_ids[:, :, None], segment_ids[:, None, :]
    n = segment_ids.shape[1]
    causal = jnp.tril(jnp.ones((n, n), dtype=jnp.bool_))[None]
    return (seg_q == seg_k) & (seg_k != 0) & causal


def hidden_states(model: Any, tokens: jax.Array, positions: jax.Array, segment_ids: jax.Array) -> jax.Array:
    """Final-norm hidden states [B, L, D] of Tunix's Gemma 3 or 2 (``output_hidden_states`` sows them).

    The model is called as a whole (qwix's LoRA intercepts the model's ``__call__``, so the
    submodules cannot be run one by one); the [B, L, V] logits it also returns are unused,
    and XLA drops them from the jitted step.
    """
    positions = model_positions(model, positions)  # Gemma 2: its sliding window needs raw indices
    model(tokens, positions, None, packed_attention_mask(segment_ids), output_hidden_states=True)
    (h,) = nnx.pop(model, nnx.Intermediate)["all_hidden_states"]
    return h


def head_loss_sum(
    hidden: jax.Array,
    embedding: jax.Array,
    targets: jax.Array,
    valid: jax.Array,
    chunk: int,
    softcap: float | None = None,
) -> jax.Array:
    """Sum of ``-log softmax(z)[target]`` over valid rows, ``chunk`` rows at a time, where
    ``z = hidden @ E.T`` in float32, soft-capped to ``softcap * tanh(z / softcap)`` when the model
    has a final-logit cap (Gemma 2), as torch's ``lm_head_loss_sum`` does.

    Each chunk's logits are recomputed in the backward pass (``jax.checkpoint``), so at most
    [chunk, V] logits live at once.
    """

    @jax.checkpoint
    def one(h: jax.Array, y: jax.Array, v: jax.Array) -> jax.Array:
        logits = jnp.dot(h, embedding.T).astype(jnp.float32)
        if softcap:
            logits = jnp.tanh(logits / softcap) * softcap
        lse = jax.nn.logsumexp(logits, axis=-1)
        picked = jnp.take_along_axis(logits, y[:, None], axis=-1)[:, 0]
        return jnp.sum(jnp.where(v, lse - picked, 0.0))

    n = hidden.shape[0] // chunk
    xs = (hidden.reshape(n, chunk, -1), targets.reshape(n, chunk), valid.reshape(n, chunk))
    total, _ = jax.lax.scan(lambda acc, x: (acc + one(*x), None), jnp.zeros((), jnp.float32), xs)
    return total


def completion_loss_sum(model: Any, arrays: dict[str, jax.Array], chunk: int) -> jax.Array:
    """Summed token loss over the completion tokens of one micro-batch (divide by its n_targets)."""
    h = hidden_states(model, arrays["input_ids"], arrays["position_ids"], arrays["segment_ids"])
    picked = h.reshape(-1, h.shape[-1])[arrays["target_index"]]
    softcap = getattr(model.config, "final_logit_softcap", None)  # Gemma 2's; Gemma 3 has none
    return head_loss_sum(
        picked,
        model.embedder.input_embedding[...],
        arrays["target_ids"],
        arrays["target_valid"],
        chunk,
        softcap,
    )


def device_arrays(batch: sft_data.Batch, chunk: int, width: int | None = None) -> dict[str, np.ndarray]:
    """A numpy batch → fixed-shape arrays: rows padded to ``width``, target positions gathered.

    The target list is padded to a multiple of ``chunk`` (``target_valid`` marks the real
    ones), so a step compiles once per (width, target bucket).
    """
    n = batch.input_ids.shape[1]
    width = max(width or n, n)

    def pad(a: np.ndarray, value: int) -> np.ndarray:
        return np.pad(a, ((0, 0), (0, width - n)), constant_values=value)

    targets = pad(batch.targets, IGNORE).reshape(-1)
    index = np.flatnonzero(targets != IGNORE).astype(np.int32)
    slots = max(chunk, math.ceil(len(index) / chunk) * chunk)
    return {
        "input_ids": pad(batch.input_ids, 0),
        "position_ids": pad(batch.position_ids, 0),
        "segment_ids": pad(batch.segment_ids, 0),
        "target_index": np.pad(index, (0, slots - len(index))),
        "target_ids": np.pad(targets[index], (0, slots - len(index))).astype(np.int32),
        "target_valid": np.arange(slots) < len(index),
    }


@nnx.jit(static_argnames=("chunk",))
def eval_loss_sum(model: Any, arrays: dict[str, jax.Array], chunk: int) -> jax.Array:
    return completion_loss_sum(model, arrays, chunk)


def heldout_loss(model: Any, examples: list[Example], cfg: SFTConfig, pad_id: int) -> float:
    """Mean completion-token loss on held-out examples (packed in file order), as in torch."""
    rows = pack_rows([len(e) for e in examples], list(range(len(examples))), cfg.data.pack_tokens)
    total, n = 0.0, 0
    for i in range(0, len(rows), cfg.train.micro_batch_rows):
        batch = sft_data.collate(examples, rows[i : i + cfg.train.micro_batch_rows], pad_id)
        arrays = device_arrays(batch, cfg.train.loss_chunk_tokens, cfg.data.pack_tokens)
        total += float(eval_loss_sum(model, arrays, cfg.train.loss_chunk_tokens))
        n += batch.n_targets
    return total / max(1, n)


# --------------------------------------------------------------------------------------------
# Optimizer and the training step
# --------------------------------------------------------------------------------------------


def optax_transform(o: OptimConfig, total_steps: int) -> optax.GradientTransformation:
    """optax AdamW/Adafactor with the torch recipe's schedule, decay on matrices only, clipping."""
    table = jnp.asarray([o.lr * lr_factor(s, total_steps, o) for s in range(total_steps + 1)], jnp.float32)

    def schedule(count: jax.Array) -> jax.Array:
        return table[jnp.minimum(count, total_steps)]

    def decay_mask(params: Any) -> Any:
        return jax.tree.map(lambda p: p.ndim >= 2, params)

    if o.name == "adamw":
        if len(o.betas) != 2:
            raise InputError(f"optim.betas: expected two numbers, got {o.betas}")
        tx = optax.adamw(
            schedule, b1=o.betas[0], b2=o.betas[1], eps=1e-8, weight_decay=o.weight_decay, mask=decay_mask
        )
    else:
        tx = optax.adafactor(schedule, weight_decay_rate=o.weight_decay or None, weight_decay_mask=decay_mask)
    if o.max_grad_norm > 0:
        tx = optax.chain(optax.clip_by_global_norm(o.max_grad_norm), tx)
    return tx


def build_optimizer(model: Any, cfg: SFTConfig, wrt: Any, total_steps: int) -> nnx.Optimizer:
    """The optimizer of the trainable parameters (``optax_transform``)."""
    return nnx.Optimizer(model, optax_transform(cfg.optim, total_steps), wrt=wrt)


@nnx.jit(static_argnames=("chunk", "wrt"))
def micro_grads(model: Any, arrays: dict[str, jax.Array], chunk: int, wrt: Any) -> tuple[jax.Array, Any]:
    """Summed completion loss of one micro-batch and its gradient w.r.t. the trainable params."""
    diff = nnx.DiffState(0, wrt)
    return nnx.value_and_grad(lambda m: completion_loss_sum(m, arrays, chunk), argnums=diff)(model)


@nnx.jit
def apply_grads(model: Any, optimizer: nnx.Optimizer, grads: Any, n_targets: jax.Array) -> jax.Array:
    """Mean over the step's completion tokens, clip (inside the optax chain), update; returns the norm."""
    grads = jax.tree.map(lambda g: g / n_targets, grads)
    optimizer.update(model, grads)
    return optax.global_norm(grads)


def train_step(
    model: Any, optimizer: nnx.Optimizer, micro: list[dict[str, Any]], n_targets: int, chunk: int, wrt: Any
) -> tuple[float, float]:
    """One optimizer step over the micro-batches; returns ``(mean loss, grad norm before clipping)``."""
    loss_sum, total = 0.0, None
    for arrays in micro:
        part, grads = micro_grads(model, arrays, chunk, wrt)
        total = grads if total is None else jax.tree.map(jnp.add, total, grads)
        loss_sum += float(part)
    norm = apply_grads(model, optimizer, total, jnp.float32(n_targets))
    return loss_sum / n_targets, float(norm)


# --------------------------------------------------------------------------------------------
# Checkpoints (Orbax) and export (merged HF safetensors)
# --------------------------------------------------------------------------------------------


def checkpoint_manager(path: Path, keep_last: int) -> Any:
    import orbax.checkpoint as ocp

    options = ocp.CheckpointManagerOptions(max_to_keep=max(1, keep_last), create=True)
    return ocp.CheckpointManager(path.resolve(), options=options)


def save_checkpoint(
    mgr: Any, step: int, model: Any, optimizer: nnx.Optimizer, wrt: Any, meta: dict[str, Any]
) -> None:
    """Orbax writes into a temp dir and renames it when complete: a killed save leaves no step."""
    import orbax.checkpoint as ocp

    mgr.save(
        step,
        args=ocp.args.Composite(
            params=ocp.args.StandardSave(nnx.state(model, wrt)),
            optimizer=ocp.args.StandardSave(nnx.state(optimizer, nnx.optimizer.OptState)),
            meta=ocp.args.JsonSave(meta),
        ),
    )
    mgr.wait_until_finished()


def restore_checkpoint(mgr: Any, step: int, model: Any, optimizer: nnx.Optimizer, wrt: Any) -> dict[str, Any]:
    import orbax.checkpoint as ocp

    restored = mgr.restore(
        step,
        args=ocp.args.Composite(
            params=ocp.args.StandardRestore(nnx.state(model, wrt)),
            optimizer=ocp.args.StandardRestore(nnx.state(optimizer, nnx.optimizer.OptState)),
            meta=ocp.args.JsonRestore(),
        ),
    )
    nnx.update(model, restored["params"])
    nnx.update(optimizer, restored["optimizer"])
    return dict(restored["meta"])


def load_checkpoint_for_eval(
    step_dir: str | Path, base: str | None = None, dtype: str | None = None
) -> tuple[Any, Any, JaxSFTConfig]:
    """``(model, tokenizer, run config)`` from one checkpoint step dir of a ``trainers_jax.sft`` run.

    The run is ``step_dir``'s grandparent (``runs/<name>/checkpoints/<step>``); its
    ``config.yaml`` gives the base model (``base`` overrides it), the dtype (``dtype``
    overrides it) and the LoRA settings. The model is built as the trainer builds it, on a
    one-device mesh, and only the checkpoint's ``params`` item is read (not the optimizer).
    A checkpoint that does not restore onto that model is an ``InputError`` naming it.
    """
    import orbax.checkpoint as ocp

    step_dir = Path(step_dir)
    cfg_path = step_dir.parent.parent / "config.yaml"
    if not cfg_path.is_file():
        raise InputError(f"{step_dir}: Orbax checkpoint without its run's {cfg_path}")
    overrides = [f"model.path={base}"] if base else []
    cfg = load_config(JaxSFTConfig, cfg_path, [*overrides, *([f"model.dtype={dtype}"] if dtype else [])])
    mesh = make_mesh(1, 1)
    model, tok = build_model(cfg, mesh)
    wrt = trainable_filter(cfg, model.config.num_layers)
    checkpointer = ocp.Checkpointer(ocp.CompositeCheckpointHandler())
    try:
        with mesh:
            restored = checkpointer.restore(
                step_dir.resolve(),
                args=ocp.args.Composite(params=ocp.args.StandardRestore(nnx.state(model, wrt))),
            )
    except Exception as err:  # orbax / tensorstore raise many types for a damaged or mismatched checkpoint
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise InputError(
            f"{step_dir}: could not restore the Orbax checkpoint's params: {first[:300]}"
        ) from None
    finally:
        checkpointer.close()
    nnx.update(model, restored["params"])
    return model, tok, cfg


def merged_weights(model: Any, lora_alpha: float | None) -> dict[str, np.ndarray]:
    """Tunix param path → value, with every qwix LoRA pair folded into its base weight."""
    lora_merge = {  # module → einsum of (lora_a, lora_b) into the base weight's layout
        "q_einsum": "dr,rnh->ndh",
        "kv_einsum": "dr,rckh->ckdh",
        "qkv_einsum": "dr,rcnh->cndh",
        "attn_vec_einsum": "nhr,rd->nhd",
    }

    def flat(kind: Any) -> dict[str, np.ndarray]:
        return {
            ".".join(map(str, p)): np.asarray(v[...]) for p, v in nnx.to_flat_state(nnx.state(model, kind))
        }

    weights, loras = flat(nnx.Param), flat(nnx.LoRAParam)
    for key, a in loras.items():
        if not key.endswith("_lora_a"):
            continue
        if lora_alpha is None:
            raise ValueError("the model has LoRA parameters: pass lora_alpha")
        base = key[: -len("_lora_a")]
        module = base.split(".")[-2]
        delta = np.einsum(lora_merge.get(module, "ir,ro->io"), a, loras[base + "_lora_b"])
        weights[base] = weights[base] + (lora_alpha / a.shape[-1]) * delta
    return weights


def hf_state_dict(model: Any, lora_alpha: float | None = None) -> dict[str, np.ndarray]:
    """HF ``Gemma3ForCausalLM`` / ``Gemma2ForCausalLM`` tensors (``model.*`` names, tied head)
    from the Tunix model.

    The inverse of ``tunix.models.gemma3`` / ``tunix.models.gemma`` ``params_safetensors``'s key
    mapping (the two differ only in Gemma 3's q/k norms and the post-attention norm's name); Tunix's own
    ``safetensors_saver`` needs the original files and a per-model layer extractor, this is
    the same few transposes written out.
    """
    c = model.config
    w = merged_weights(model, lora_alpha)
    out = {
        "model.embed_tokens.weight": w["embedder.input_embedding"],
        "model.norm.weight": w["final_norm.scale"],
    }

    def proj(x: np.ndarray) -> np.ndarray:  # Tunix [heads, D, H] → HF [heads * H, D]
        return np.transpose(x, (0, 2, 1)).reshape(-1, x.shape[1])

    for i in range(c.num_layers):
        p, q = f"layers.{i}", f"model.layers.{i}"
        if f"{p}.attn.qkv_einsum.w" in w:
            qw, kw, vw = w[f"{p}.attn.qkv_einsum.w"]
        else:
            qw = w[f"{p}.attn.q_einsum.w"]
            kw, vw = w[f"{p}.attn.kv_einsum.w"]
        out[f"{q}.self_attn.q_proj.weight"] = proj(qw)
        out[f"{q}.self_attn.k_proj.weight"] = proj(kw)
        out[f"{q}.self_attn.v_proj.weight"] = proj(vw)
        o = w[f"{p}.attn.attn_vec_einsum.w"]  # [N, H, D]
        out[f"{q}.self_attn.o_proj.weight"] = o.reshape(-1, o.shape[-1]).T
        if f"{p}.attn._query_norm.scale" in w:  # Gemma 3's q/k norms (Gemma 2 has none)
            out[f"{q}.self_attn.q_norm.weight"] = w[f"{p}.attn._query_norm.scale"]
            out[f"{q}.self_attn.k_norm.weight"] = w[f"{p}.attn._key_norm.scale"]
        for name in ("gate_proj", "up_proj", "down_proj"):
            out[f"{q}.mlp.{name}.weight"] = w[f"{p}.mlp.{name}.kernel"].T
        out[f"{q}.input_layernorm.weight"] = w[f"{p}.pre_attention_norm.scale"]
        post_attn = "post_attn_norm" if is_gemma2(model) else "post_attention_norm"
        out[f"{q}.post_attention_layernorm.weight"] = w[f"{p}.{post_attn}.scale"]
        out[f"{q}.pre_feedforward_layernorm.weight"] = w[f"{p}.pre_ffw_norm.scale"]
        out[f"{q}.post_feedforward_layernorm.weight"] = w[f"{p}.post_ffw_norm.scale"]
    return {k: np.ascontiguousarray(v) for k, v in out.items()}


def write_dir(target: Path, fill: Any) -> None:
    """Fill a temp dir beside ``target``, then swap it in: no half-written export is ever visible."""
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    fill(tmp)
    if target.exists():
        shutil.rmtree(target)
    os.rename(tmp, target)


def hf_export_config(source_dir: str | Path) -> dict[str, Any]:
    """The HF ``config.json`` of a merged export of a model trained from ``source_dir``."""
    hf_cfg = json.loads((Path(source_dir) / "config.json").read_text())
    cfg = dict(hf_cfg.get("text_config", hf_cfg)) if hf_cfg.get("model_type") == "gemma3" else dict(hf_cfg)
    gemma2 = cfg.get("model_type") == "gemma2"
    cfg.update(
        {
            "architectures": ["Gemma2ForCausalLM" if gemma2 else "Gemma3ForCausalLM"],
            "model_type": "gemma2" if gemma2 else "gemma3_text",
            "tie_word_embeddings": True,
            "use_cache": True,
        }
    )
    return cfg


def export_merged(
    model: Any, tok: Any, source_dir: str | Path, target: Path, lora_alpha: float | None
) -> Path:
    """``merged/``: float32 HF safetensors + config + tokenizer, loadable by transformers and ``trainers_torch``.

    The generation config also stops at the end-of-turn token the targets end with.
    """
    from safetensors.numpy import save_file

    src = Path(source_dir)
    cfg = hf_export_config(src)
    tensors = hf_state_dict(model, lora_alpha)
    eot_id = tok.convert_tokens_to_ids(end_of_turn(tok))

    def fill(d: Path) -> None:
        save_file(
            {k: v.astype(np.float32) for k, v in tensors.items()},
            str(d / "model.safetensors"),
            metadata={"format": "pt"},
        )
        (d / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
        gen = (
            json.loads((src / "generation_config.json").read_text())
            if (src / "generation_config.json").exists()
            else {}
        )
        eos = gen.get("eos_token_id", cfg.get("eos_token_id"))
        eos = list(eos) if isinstance(eos, list) else [eos] if eos is not None else []
        if isinstance(eot_id, int) and eot_id not in eos:
            eos.append(eot_id)
        gen["eos_token_id"] = eos
        (d / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")
        tok.save_pretrained(d)

    write_dir(target, fill)
    return target


# --------------------------------------------------------------------------------------------
# The training loop
# --------------------------------------------------------------------------------------------


def train(cfg: JaxSFTConfig) -> dict[str, Any]:
    """Run one SFT job end to end; return its summary (also written to ``summary.json``)."""
    t_start = time.perf_counter()
    run_path = Path(cfg.output_dir) / cfg.run_name
    has_run = any((run_path / "checkpoints").glob("[0-9]*")) or (run_path / "merged").exists()
    if has_run and not cfg.resume and not cfg.overwrite:
        raise InputError(
            f"{run_path}: already holds a run (checkpoints or merged/); pass resume=true to continue it, "
            "overwrite=true to start over, or another run_name"
        )

    # Everything that can fail on bad input happens before the run dir is touched.
    mesh = make_mesh(cfg.mesh.fsdp, cfg.mesh.tp)
    model, tok = build_model(cfg, mesh)
    train_ex, _, train_report = tokenize_records(
        cfg.data.train, tok, cfg.data, cfg.data.train_limit, cfg.seed
    )
    valid_ex: list[Example] = []
    valid_report = None
    if cfg.data.valid:
        valid_ex, _, valid_report = tokenize_records(cfg.data.valid, tok, cfg.data, cfg.data.valid_limit)
    valid_records = heldout_records(cfg)
    rows_per_step = cfg.train.micro_batch_rows * cfg.train.grad_accum
    plan = DataPlan(train_ex, cfg.data.pack_tokens, rows_per_step, cfg.seed)
    total_steps = plan.total_steps(cfg.train.epochs, cfg.train.max_steps)
    wrt = trainable_filter(cfg, model.config.num_layers)
    with mesh:
        optimizer = build_optimizer(model, cfg, wrt, total_steps)
    counts = parameter_counts(model, wrt)
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
    chunk = cfg.train.loss_chunk_tokens
    lora_alpha = cfg.lora.alpha if cfg.train.method == "lora" else None

    if cfg.overwrite and not cfg.resume:
        RunDir(run_path).clear()
    data_files = {"train": cfg.data.train, **({"valid": cfg.data.valid} if cfg.data.valid else {})}
    notes = []
    if cfg.train.method == "lora" and cfg.lora.dropout > 0:
        notes.append(
            f"lora.dropout={cfg.lora.dropout} is not applied by the JAX trainer (deterministic LoRA)"
        )
    run = RunDir.start(
        run_path,
        cfg,
        data_files=data_files,
        model_dir=cfg.model.path,
        device=f"{jax.devices()[0].platform} x{len(mesh.devices.flat)} (fsdp={cfg.mesh.fsdp}, tp={cfg.mesh.tp})",
        extra={
            "trainer": "trainers_jax.sft",
            "data_report": {"train": train_report, "valid": valid_report},
            "parameters": counts,
            "total_steps": total_steps,
            "rows_per_epoch": len(plan.epoch_rows(0)),
            "notes": notes,
        },
    )
    for note in notes:
        say(f"note: {note}")
    say(overflow_line(train_report))
    if valid_report:
        say(overflow_line(valid_report))
    say(
        f"model {cfg.model.path} ({cfg.train.method}, JAX): {counts['trainable']:,} of {counts['total']:,} parameters "
        f"train; {len(train_ex)} examples → {len(plan.epoch_rows(0))} packed rows/epoch "
        f"(pack_tokens={cfg.data.pack_tokens}); {total_steps} steps of {rows_per_step} rows"
    )

    mgr = checkpoint_manager(run.checkpoints, cfg.checkpoint.keep_last)
    start_step, tokens_seen = 0, 0
    latest = mgr.latest_step() if cfg.resume else None
    if latest is not None:
        with mesh:
            meta = restore_checkpoint(mgr, latest, model, optimizer, wrt)
        if meta.get("config_hash") != resume_hash(cfg):
            raise InputError(
                f"{run.checkpoints}/{latest}: made with a different config than {run_path}/config.yaml now holds; resume needs the same config"
            )
        start_step, tokens_seen = int(meta["step"]), int(meta["tokens_seen"])
        run.truncate_metrics(start_step)
        say(f"resumed from {run.checkpoints}/{latest} (step {start_step})")
    elif cfg.resume:
        say(f"resume=true but {run.checkpoints} holds no complete checkpoint: starting from step 0")

    def checkpoint(step: int) -> None:
        epoch, row = plan.position(step * rows_per_step)
        meta = {"step": step, "epoch": epoch, "row_in_epoch": row, "rows_seen": step * rows_per_step,
                "tokens_seen": tokens_seen, "config_hash": resume_hash(cfg)}  # fmt: skip
        with mesh:
            save_checkpoint(mgr, step, model, optimizer, wrt, meta)
        say(f"checkpoint saved: {run.checkpoints}/{step}")

    def evaluate(step: int, final: bool) -> dict[str, Any]:
        out: dict[str, Any] = {}
        with mesh:
            if valid_ex:
                out["valid_loss"] = heldout_loss(model, valid_ex, cfg, pad_id)
            if valid_records and (final or cfg.eval.generate_during):
                path = run.eval / f"predictions-step-{step:06d}.jsonl"
                scores = generation_eval(model, tok, valid_records, cfg, path)
                out.update({f"gen_{k}": v for k, v in scores.items()})
        if out:
            logger.log(step, **out)
            say(
                f"step {step}: "
                + ", ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in out.items())
            )
        return out

    logger = MetricsLogger(run.path)
    bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True, desc=cfg.run_name)
    for step in range(start_step, total_steps):
        t0 = time.perf_counter()
        rows = plan.step_rows(step)
        batches = [sft_data.collate(train_ex, rows[i : i + cfg.train.micro_batch_rows], pad_id)
                   for i in range(0, len(rows), cfg.train.micro_batch_rows)]  # fmt: skip
        n_targets = sum(b.n_targets for b in batches)
        lr = cfg.optim.lr * lr_factor(step, total_steps, cfg.optim)
        with mesh:
            micro = [device_arrays(b, chunk, cfg.data.pack_tokens) for b in batches]
            loss, grad_norm = train_step(model, optimizer, micro, n_targets, chunk, wrt)
        n_tokens = sum(b.n_tokens for b in batches)
        tokens_seen += n_tokens
        dt = time.perf_counter() - t0
        last = {
            "loss": loss,
            "lr": lr,
            "grad_norm": grad_norm,
            "tokens_per_s": n_tokens / dt,
            "tokens": n_tokens,
            "completion_tokens": n_targets,
            "examples": sum(b.n_examples for b in batches),
            "tokens_seen": tokens_seen,
            "epoch": round(plan.epoch_float((step + 1) * rows_per_step), 4),
            "step_time_s": round(dt, 4),
        }
        logger.log(step + 1, **last)
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", tok_s=f"{last['tokens_per_s']:.0f}")
        done = step + 1 == total_steps
        if cfg.eval.every_steps > 0 and (step + 1) % cfg.eval.every_steps == 0 and not done:
            evaluate(step + 1, final=False)
        if done or (cfg.checkpoint.every_steps > 0 and (step + 1) % cfg.checkpoint.every_steps == 0):
            checkpoint(step + 1)
    bar.close()
    mgr.close()
    final_eval = evaluate(total_steps, final=True)
    logger.close()
    write_plots(run)
    exported = {}
    if cfg.export:
        exported["merged"] = str(export_merged(model, tok, cfg.model.path, run.path / "merged", lora_alpha))
    metrics = read_metrics(run.path)
    train_records = [r for r in metrics if "loss" in r]
    examples_seen = sum(r.get("examples", 0) for r in train_records)
    step_seconds = sum(r.get("step_time_s", 0.0) for r in train_records)
    summary = {
        "run_dir": str(run.path),
        "trainer": "trainers_jax.sft",
        "steps": total_steps,
        "final_loss": train_records[-1]["loss"] if train_records else None,
        "valid_loss": final_eval.get("valid_loss"),
        "final_eval": final_eval,
        "examples": len(train_ex),
        "examples_seen": examples_seen,
        "tokens_seen": tokens_seen,
        "train_seconds": round(step_seconds, 2),
        "samples_per_s": round(examples_seen / step_seconds, 3) if step_seconds > 0 else None,
        "tokens_per_s": round(tokens_seen / step_seconds, 1) if step_seconds > 0 else None,
        "wall_seconds_this_attempt": round(time.perf_counter() - t_start, 2),
        "resumed_from_step": start_step if latest is not None else None,
        **exported,
    }
    write_json(run.path / "summary.json", summary)
    run.finish(summary=summary)
    say(f"done: {run.path} (final loss {summary['final_loss']:.4f})")
    return summary


def load_sft_config(path: str | None, overrides: list[str]) -> JaxSFTConfig:
    return load_config(JaxSFTConfig, path, overrides)


@cli
def main(argv: list[str] | None = None) -> int:
    train(config_from_cli(JaxSFTConfig, argv, "python -m trainers_jax.sft", __doc__))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
