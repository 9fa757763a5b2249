"""The final checkpoint in the Orbax layout Tunix's Gemma 3 code loads (``make package WITH_MODEL=1``).

``tunix.models.gemma3.params.create_model_from_checkpoint(path, model_config)`` restores an
Orbax checkpoint laid out as Google's released Gemma 3 checkpoints are (``transformer/embedder``,
``transformer/layer_<i>/attn/q_einsum``, ``.../mlp/gating_einsum``, ...) and maps it onto its NNX
model. ``export_orbax`` writes that layout from a run's HF export (``merged/``, either backend):
Tunix's own safetensors loader reads it (``trainers_jax.model.load_model``), the NNX params are
mapped back to the released names (the inverse of Tunix's ``map_from_upstream_checkpoint``), and
Orbax saves them without OCDBT, one zarr directory per array, so the files and their bytes follow
from the weights alone. Orbax's two bookkeeping files are made reproducible too: the commit
marker (which names the local directory) is left out, and the metadata's timestamps are set to
the package's fixed time. Gemma 2 (Tunix's ``models.gemma``, another loader) is refused.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from common.errors import InputError

CHECKPOINT = "checkpoint"  # the Orbax directory inside the exported model folder
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt")
DROPPED = (
    "commit_success.txt",
    "weights.sha256",
)  # the commit marker names the local path; the cache is ours


def _flat(tree: dict[Any, Any], prefix: tuple[Any, ...] = ()) -> list[tuple[tuple[Any, ...], Any]]:
    out = []
    for key, value in tree.items():
        if isinstance(value, dict):
            out += _flat(value, (*prefix, key))
        else:
            out.append(((*prefix, key), value))
    return out


def upstream_params(state: dict[Any, Any]) -> dict[str, dict[str, np.ndarray]]:
    """Tunix Gemma 3 NNX params (``nnx.to_pure_dict``) under the names of the released checkpoints."""
    out: dict[str, dict[str, np.ndarray]] = {}
    for key, value in _flat(state):
        value = np.asarray(value)
        if key[0] in ("embedder", "final_norm"):
            out.setdefault(f"transformer/{key[0]}", {})[key[-1]] = value
            continue
        if key[0] != "layers":
            raise InputError(f"model param {'/'.join(map(str, key))}: not part of a Gemma 3 text model")
        layer, module, name = key[1], key[2:-1], key[-1]
        prefix = f"transformer/layer_{layer}"
        if module == ("mlp", "gate_proj"):
            continue  # stacked with up_proj below
        if module == ("mlp", "up_proj"):
            gate = np.asarray(state["layers"][layer]["mlp"]["gate_proj"]["kernel"])
            out[f"{prefix}/mlp/gating_einsum"] = {"w": np.stack([gate.T, value.T])}
        elif module == ("mlp", "down_proj"):
            out[f"{prefix}/mlp/linear"] = {"w": value}
        else:
            out.setdefault(f"{prefix}/{'/'.join(module)}", {})[name] = value
    return out


def export_orbax(hf_dir: str | Path, out: str | Path, timestamp: int, dtype: str = "float32") -> Path:
    """Write ``out/checkpoint`` (Orbax, the released Gemma 3 layout) plus the HF dir's config and tokenizer.

    ``timestamp`` (seconds) replaces the save time Orbax records. Returns ``out``.
    """
    import orbax.checkpoint as ocp
    from flax import nnx

    from trainers_jax.model import is_gemma2, load_model, tunix_config

    hf_dir, out = Path(hf_dir), Path(out)
    if is_gemma2(tunix_config(hf_dir, dtype)):
        raise InputError(
            f"{hf_dir}: a Gemma 2 model; the Orbax export covers Gemma 3 (tunix.models.gemma3) only"
        )
    model, _ = load_model(hf_dir, dtype)
    params = upstream_params(nnx.to_pure_dict(nnx.state(model, nnx.Param)))
    del model
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    checkpointer = ocp.Checkpointer(ocp.StandardCheckpointHandler(use_ocdbt=False))
    try:
        checkpointer.save((out / CHECKPOINT).resolve(), args=ocp.args.StandardSave(params))
    finally:
        checkpointer.close()
    for name in DROPPED:
        (out / CHECKPOINT / name).unlink(missing_ok=True)
    meta_path = out / CHECKPOINT / "_CHECKPOINT_METADATA"
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        for key in ("init_timestamp_nsecs", "commit_timestamp_nsecs"):
            if key in meta:
                meta[key] = timestamp * 10**9
        meta_path.write_text(json.dumps(meta))
    for f in sorted(hf_dir.iterdir()):
        if f.is_file() and f.suffix not in WEIGHT_SUFFIXES and f.name not in DROPPED:
            shutil.copyfile(f, out / f.name)
    return out


def load_exported(model_dir: str | Path, dtype: str = "float32") -> Any:
    """The exported checkpoint loaded back with Tunix's Gemma 3 code (the way the competition loads it)."""
    import jax.numpy as jnp
    from tunix.models.gemma3 import params

    from trainers_jax.model import tunix_config

    model_dir = Path(model_dir)
    return params.create_model_from_checkpoint(
        str((model_dir / CHECKPOINT).resolve()), tunix_config(model_dir, dtype), dtype=getattr(jnp, dtype)
    )
