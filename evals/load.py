"""Which model an eval path names, and loading it for decoding, never with random weights.

``resolve_model`` works out what a path holds: a base HF model, a PEFT adapter dir, a merged
HF export, a run dir (``final/`` adapter or ``merged/`` export) or an Orbax checkpoint of a
``trainers_jax.sft`` run (a step dir, ``checkpoints/``, or a run dir without exports).
``load_for_eval`` loads it on torch (adapters merged in memory) or JAX (Tunix), through the
trainers' model and checkpoint library modules; ``model_provenance`` fingerprints what was
loaded for the predictions' records.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from common.errors import InputError
from common.prompts import load_tokenizer
from common.runs import sha256_file, weights_sha256


@dataclass
class ModelRef:
    """What ``model.path`` resolved to, before loading."""

    path: str  # as given
    kind: Literal["hf", "adapter", "orbax"]
    weights_dir: str  # the HF dir whose weights are loaded (the base, for an adapter or Orbax checkpoint)
    adapter_dir: str | None = None
    run_dir: str | None = None
    source: str = ""  # how it was found, in words
    checkpoint_dir: str | None = None  # an Orbax checkpoint's step dir (runs/<name>/checkpoints/<step>)


def _is_orbax_step(p: Path) -> bool:
    return (p / "_CHECKPOINT_METADATA").is_file() or (p / "params").is_dir()


def _orbax_steps(checkpoints: Path) -> list[Path]:
    """The finished step dirs (Orbax renames a save's temp dir to ``<step>`` when complete)."""
    if not checkpoints.is_dir():
        return []
    steps = [d for d in checkpoints.iterdir() if d.is_dir() and d.name.isdigit() and _is_orbax_step(d)]
    return sorted(steps, key=lambda d: int(d.name))


def _orbax_ref(path: str, step_dir: Path, base: str | None, how: str) -> ModelRef:
    """A step dir of a ``trainers_jax.sft`` run: checked, with the base model its run config names."""
    run_dir = step_dir.parent.parent
    for need in ("_CHECKPOINT_METADATA", "params/_METADATA"):
        if not (step_dir / need).is_file():
            raise InputError(f"{step_dir}: incomplete Orbax checkpoint ({need} missing)")
    if not (run_dir / "config.yaml").is_file():
        raise InputError(f"{step_dir}: Orbax checkpoint without its run's {run_dir / 'config.yaml'}")
    candidates = [(base, "model.base"), (run_base_model(run_dir), f"{run_dir}/config.yaml")]
    tried = []
    for cand, where in candidates:
        if not cand:
            continue
        if (Path(cand) / "config.json").is_file():
            return ModelRef(
                path,
                "orbax",
                cand,
                run_dir=str(run_dir),
                checkpoint_dir=str(step_dir),
                source=f"{how}: Orbax checkpoint step {step_dir.name}; base from {where}",
            )
        tried.append(f"{cand} ({where})")
    raise InputError(
        f"{step_dir}: Orbax checkpoint, but no local base model found; tried: {'; '.join(tried) or 'nothing named'}. "
        "Set model.base=<HF model dir>"
    )


def _find_orbax(p: Path, path: str, base: str | None) -> ModelRef | None:
    """``p`` as a step dir, a ``checkpoints/`` dir (newest step) or a run dir (its newest checkpoint)."""
    if _is_orbax_step(p):
        return _orbax_ref(path, p, base, "step dir")
    for ckpts, how in (
        (p, "checkpoints dir, newest step"),
        (p / "checkpoints", "run dir, newest checkpoint"),
    ):
        steps = _orbax_steps(ckpts)
        if steps:
            return _orbax_ref(path, steps[-1], base, how)
    return None


def run_base_model(run_dir: Path) -> str | None:
    """The base model a run started from, as its config.yaml or run_manifest.json records it."""
    import yaml

    cfg_path = run_dir / "config.yaml"
    if cfg_path.is_file():
        try:
            cfg = yaml.safe_load(cfg_path.read_text()) or {}
        except yaml.YAMLError:
            cfg = {}
        model = cfg.get("model") if isinstance(cfg, dict) else None
        for cand in (
            model.get("path") if isinstance(model, dict) else model,
            model.get("base") if isinstance(model, dict) else None,
            cfg.get("base_model") if isinstance(cfg, dict) else None,
        ):
            if isinstance(cand, str) and cand:
                return cand
    manifest = run_dir / "run_manifest.json"
    if manifest.is_file():
        try:
            model = json.loads(manifest.read_text()).get("model") or {}
        except ValueError:
            model = {}
        if isinstance(model, dict) and isinstance(model.get("path"), str):
            return model["path"]
    return None


def _adapter_base(adapter: Path, override: str | None, run_dir: Path | None) -> tuple[str, str]:
    tried = []
    candidates: list[tuple[str | None, str]] = [(override, "model.base")]
    try:
        named = json.loads((adapter / "adapter_config.json").read_text()).get("base_model_name_or_path")
    except ValueError as err:
        raise InputError(f"{adapter / 'adapter_config.json'}: invalid JSON: {err}") from None
    candidates.append((named, "adapter_config.json base_model_name_or_path"))
    run = run_dir if run_dir is not None else adapter.parent  # an adapter saved inside a run dir
    candidates.append((run_base_model(run), f"{run}/config.yaml or run_manifest.json"))
    for cand, where in candidates:
        if not cand:
            continue
        if (Path(cand) / "config.json").is_file():
            return cand, where
        tried.append(f"{cand} ({where})")
    raise InputError(
        f"{adapter}: PEFT adapter, but no local base model found; tried: {'; '.join(tried) or 'nothing named'}. "
        "Set model.base=<HF model dir>"
    )


def resolve_model(path: str, base: str | None = None, prefer: str = "merged") -> ModelRef:
    """Work out what ``path`` holds: an HF model, a PEFT adapter, a run dir with final/ / merged/,
    or an Orbax checkpoint (a step dir, a ``checkpoints/`` dir, or a JAX run dir without exports)."""
    p = Path(path)
    if not p.exists():
        hint = f" (run `make model MODEL={p.name}`)" if p.parent.name == "models" else ""
        raise InputError(f"model.path {p}: no such directory{hint}")
    if not p.is_dir():
        raise InputError(f"model.path {p}: not a directory")
    if (p / "adapter_config.json").is_file():
        base_dir, where = _adapter_base(p, base, None)
        return ModelRef(
            path, "adapter", base_dir, adapter_dir=str(p), source=f"PEFT adapter; base from {where}"
        )
    if (p / "config.json").is_file():
        return ModelRef(path, "hf", str(p), source="HF model directory")
    merged, final = p / "merged", p / "final"
    options = []
    if (merged / "config.json").is_file():
        options.append(ModelRef(path, "hf", str(merged), run_dir=str(p), source="run dir: merged/ HF export"))
    if (final / "adapter_config.json").is_file():
        base_dir, where = _adapter_base(final, base, p)
        options.append(
            ModelRef(
                path,
                "adapter",
                base_dir,
                adapter_dir=str(final),
                run_dir=str(p),
                source=f"run dir: final/ PEFT adapter; base from {where}",
            )
        )
    elif (final / "config.json").is_file():
        options.append(ModelRef(path, "hf", str(final), run_dir=str(p), source="run dir: final/ HF model"))
    if options:
        if prefer == "adapter":
            options.sort(key=lambda r: r.kind != "adapter")
        return options[0]
    orbax = _find_orbax(p, path, base)
    if orbax is not None:
        return orbax
    if (p / "run_manifest.json").is_file() or (p / "config.yaml").is_file():
        raise InputError(
            f"model.path {p}: a run dir without final/ (PEFT adapter or HF model) or merged/ (HF export); "
            "has training finished?"
        )
    raise InputError(
        f"model.path {p}: neither an HF model (config.json), a PEFT adapter, a run dir nor an Orbax checkpoint"
    )


def model_provenance(ref: ModelRef, backend: str, dtype: str) -> dict[str, Any]:
    """Path, kind and sha256 of everything loaded; ``fingerprint`` identifies the weights as a whole."""
    info: dict[str, Any] = {
        "path": ref.path,
        "kind": ref.kind,
        "source": ref.source,
        "weights_dir": ref.weights_dir,
        "weights_sha256": weights_sha256(ref.weights_dir),
        "adapter_dir": ref.adapter_dir,
        "adapter_sha256": None,
        "checkpoint_dir": ref.checkpoint_dir,
        "checkpoint_sha256": None,
        "backend": backend,
        "dtype": dtype,
    }
    if info["weights_sha256"] is None:
        raise InputError(f"{ref.weights_dir}: no *.safetensors weights")
    if ref.adapter_dir is not None:
        files = sorted(Path(ref.adapter_dir).glob("*.safetensors")) + sorted(
            Path(ref.adapter_dir).glob("*.bin")
        )
        if not files:
            raise InputError(f"{ref.adapter_dir}: PEFT adapter without adapter_model.safetensors")
        h = hashlib.sha256()
        for f in files:
            h.update(f.name.encode() + sha256_file(f).encode())
        info["adapter_sha256"] = h.hexdigest()
    fingerprint = f"{info['weights_sha256']}:{info['adapter_sha256']}"
    if ref.checkpoint_dir is not None:
        info["checkpoint_sha256"] = checkpoint_sha256(ref.checkpoint_dir)
        # the run config says how the checkpoint's params combine with the base (LoRA alpha, layers)
        run_cfg = sha256_file(Path(ref.run_dir or Path(ref.checkpoint_dir).parent.parent) / "config.yaml")
        fingerprint += f":{info['checkpoint_sha256']}:{run_cfg}"
    info["fingerprint"] = hashlib.sha256(fingerprint.encode()).hexdigest()
    return info


def checkpoint_sha256(step_dir: str | Path) -> str:
    """sha256 over an Orbax checkpoint's model params: every file under ``params/``, path and content.

    The optimizer state is left out (it does not change what the model generates); nothing is
    written into the run dir.
    """
    root = Path(step_dir) / "params"
    files = sorted(f for f in root.rglob("*") if f.is_file())
    if not files:
        raise InputError(f"{step_dir}: Orbax checkpoint without params files")
    h = hashlib.sha256()
    for f in files:
        h.update(f"{f.relative_to(root).as_posix()}\0{sha256_file(f)}\n".encode())
    return h.hexdigest()


def tokenizer_dir(ref: ModelRef) -> str:
    for d in (ref.adapter_dir, ref.weights_dir):
        if d and ((Path(d) / "tokenizer.json").is_file() or (Path(d) / "tokenizer_config.json").is_file()):
            return d
    return ref.weights_dir


def load_for_eval(
    ref: ModelRef, backend: str = "torch", dtype: str = "float32", device: str = "auto"
) -> tuple[Any, Any]:
    """``(model, tokenizer)``; any weight the checkpoint lacks is an error, never a random init."""
    tokenizer = load_tokenizer(tokenizer_dir(ref))
    if ref.kind == "orbax":
        return _load_orbax(ref, backend, dtype, device), tokenizer
    if backend == "jax":
        if ref.kind == "adapter":
            raise InputError(
                f"{ref.adapter_dir}: PEFT adapters load on the torch backend; use model.backend=torch "
                "or a merged HF export"
            )
        from trainers_jax.model import load_model as load_jax

        model, _ = load_jax(ref.weights_dir, dtype)
        return model, tokenizer

    from transformers import AutoModelForCausalLM

    from trainers_torch.model import attention_for, check_model_dir, default_device, torch_dtype

    check_model_dir(ref.weights_dir)
    try:
        cfg_path = Path(ref.weights_dir) / "config.json"
        hf_cfg = json.loads(cfg_path.read_text()) if cfg_path.is_file() else {}
        loaded: Any = AutoModelForCausalLM.from_pretrained(
            ref.weights_dir,
            dtype=torch_dtype(dtype),
            output_loading_info=True,
            attn_implementation=attention_for(hf_cfg),
        )
    except (OSError, ValueError) as err:
        raise InputError(f"{ref.weights_dir}: could not load the model: {err}") from None
    model, info = loaded  # (model, loading info) with output_loading_info=True
    bad = {k: v for k, v in info.items() if k in ("missing_keys", "mismatched_keys") and v}
    if bad:
        first = {k: sorted(map(str, v))[:3] for k, v in bad.items()}
        raise InputError(
            f"{ref.weights_dir}: checkpoint does not cover the model ({first}); refusing random weights"
        )
    if ref.adapter_dir is not None:
        from peft import PeftModel

        try:
            model = PeftModel.from_pretrained(model, ref.adapter_dir).merge_and_unload()
        except (OSError, ValueError, KeyError, RuntimeError) as err:
            raise InputError(f"{ref.adapter_dir}: could not apply the PEFT adapter: {err}") from None
    model.to(default_device() if device == "auto" else device).eval()
    return model, tokenizer


def _load_orbax(ref: ModelRef, backend: str, dtype: str, device: str) -> Any:
    """An Orbax checkpoint as the trainer built it (jax), or merged into a transformers model (torch)."""
    from trainers_jax.checkpoint import load_checkpoint_for_eval
    from trainers_jax.export import hf_export_config, hf_state_dict

    if ref.checkpoint_dir is None:
        raise ValueError("an orbax ModelRef needs checkpoint_dir")
    if backend == "jax":
        return load_checkpoint_for_eval(ref.checkpoint_dir, ref.weights_dir, dtype)[0]
    # merged in float32, as trainers_jax.sft's merged/ export is, then cast
    model, _, cfg = load_checkpoint_for_eval(ref.checkpoint_dir, ref.weights_dir, "float32")
    import numpy as np
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from trainers_torch.model import attention_for, default_device, torch_dtype

    tensors = hf_state_dict(model, cfg.lora.alpha if cfg.train.method == "lora" else None)
    hf_cfg = hf_export_config(ref.weights_dir, model)
    del model
    config = AutoConfig.for_model(**hf_cfg)
    lm = AutoModelForCausalLM.from_config(
        config, dtype=torch.float32, attn_implementation=attention_for(hf_cfg)
    )
    missing, unexpected = lm.load_state_dict(
        {k: torch.from_numpy(np.array(v, dtype=np.float32)) for k, v in tensors.items()}, strict=False
    )
    tied = {k for k in missing if k == "lm_head.weight"}
    if set(missing) - tied or unexpected:
        raise InputError(
            f"{ref.checkpoint_dir}: merged weights do not match the transformers model "
            f"(missing {sorted(set(missing) - tied)[:3]}, unexpected {sorted(unexpected)[:3]})"
        )
    lm.tie_weights()
    return lm.to(dtype=torch_dtype(dtype), device=default_device() if device == "auto" else device).eval()
