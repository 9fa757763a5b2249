"""Both loaders on a tiny random Gemma 3: same logits, clear errors on bad model dirs."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from common.errors import InputError
from common.prompts import format_prompt, load_tokenizer


def batch(model_dir):
    tok = load_tokenizer(model_dir)
    texts = [format_prompt(tok, "What is 2 + 3?"), format_prompt(tok, "Add seven and eleven, then halve it.")]
    enc = tok(texts, return_tensors="np", padding=True)
    return enc["input_ids"], enc["attention_mask"].astype(bool)


def test_tiny_torch_and_jax_logits_agree(tiny_gemma3):
    import jax.numpy as jnp
    import torch

    from trainers_jax.model import forward_logits
    from trainers_jax.model import load_model as load_jax
    from trainers_torch.model import load_model as load_torch

    ids, mask = batch(tiny_gemma3)
    assert not mask.all(), "batch should be left-padded"
    tm, _ = load_torch(tiny_gemma3)
    m = torch.tensor(mask.astype(np.int64))
    with torch.no_grad():
        pt = tm(
            input_ids=torch.tensor(ids), attention_mask=m, position_ids=(m.cumsum(-1) - 1).clamp(min=0)
        ).logits
    jm, _ = load_jax(tiny_gemma3)
    jx = np.asarray(forward_logits(jm, jnp.asarray(ids), jnp.asarray(mask)))
    diff = np.abs(pt.numpy() - jx)[mask]
    assert diff.max() < 1e-4, diff.max()
    assert np.abs(pt.numpy()[mask]).max() > 0.1  # the comparison is not between two zero tensors


def test_tunix_config_maps_hf_fields(tiny_gemma3):
    from tunix.models.gemma3.model import QueryPreAttentionNormalisation

    from trainers_jax.model import tunix_config

    cfg = tunix_config(tiny_gemma3)
    assert (cfg.num_layers, cfg.embed_dim, cfg.hidden_dim, cfg.num_heads, cfg.head_dim, cfg.num_kv_heads) == (
        2, 64, 128, 2, 32, 1,
    )  # fmt: skip
    assert cfg.sliding_window_size == 16 and cfg.num_embed == 128
    assert cfg.query_pre_attn_norm is QueryPreAttentionNormalisation.BY_ONE_OVER_SQRT_HEAD_DIM


def test_bad_model_dirs_raise_input_errors(tmp_path, tiny_gemma3):
    from trainers_jax.model import tunix_config
    from trainers_torch.model import load_model

    with pytest.raises(InputError, match="config.json missing"):
        load_model(tmp_path)
    broken = tmp_path / "llama"
    shutil.copytree(tiny_gemma3, broken)
    cfg = json.loads((broken / "config.json").read_text())
    (broken / "config.json").write_text(json.dumps({**cfg, "model_type": "mystery"}))
    with pytest.raises(InputError, match="model_type 'mystery' has no JAX loader; supported: gemma3_text"):
        tunix_config(broken)
    (broken / "config.json").write_text(json.dumps({**cfg, "layer_types": ["full_attention"] * 2}))
    with pytest.raises(InputError, match="layer_types"):
        tunix_config(broken)
    for f in broken.glob("*.safetensors"):
        f.unlink()
    with pytest.raises(InputError, match="no \\*.safetensors"):
        load_model(broken)


def test_mesh_needs_enough_devices():
    import jax

    from trainers_jax.model import make_mesh

    assert make_mesh(1, 1).shape == {"fsdp": 1, "tp": 1}
    with pytest.raises(InputError, match="needs"):
        make_mesh(len(jax.devices()) + 1, 1)


def test_attention_soft_capping_models_load_eager_everywhere(tiny_gemma2, tiny_gemma3):
    """Gemma 2 soft-caps attention logits, which sdpa silently drops: its loaders pick eager."""
    from common.sft_config import ModelConfig, SFTConfig
    from trainers_torch.model import attention_for, build_model, load_model

    assert attention_for({"attn_logit_softcapping": 50.0}, "sdpa") == "eager"
    assert attention_for({"text_config": {"attn_logit_softcapping": 50.0}}) == "eager"
    assert attention_for({"attn_logit_softcapping": None}, "sdpa") == "sdpa"
    assert load_model(tiny_gemma2)[0].config._attn_implementation == "eager"
    assert load_model(tiny_gemma3)[0].config._attn_implementation != "eager"  # transformers' default
    cfg = SFTConfig(model=ModelConfig(path=str(tiny_gemma2), attn_implementation="sdpa"))
    assert build_model(cfg.model, cfg.lora, cfg.train).config._attn_implementation == "eager"


def test_the_compilation_cache_keeps_jaxs_own_dir_ours_or_none(tmp_path):
    """``use_compilation_cache`` (in a fresh process: JAX's config is global): ``off`` turns it
    off, ``SHOWWORK_XLA_CACHE`` names the directory compiled programs are then written to, and a
    directory JAX already has is kept."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    code = """
import os, sys
import jax
from trainers_jax.model import use_compilation_cache
assert use_compilation_cache() is None
os.environ["SHOWWORK_XLA_CACHE"] = sys.argv[1]
assert use_compilation_cache() == sys.argv[1]
jax.jit(lambda x: x * 2 + 1)(jax.numpy.ones(3)).block_until_ready()
os.environ["SHOWWORK_XLA_CACHE"] = "elsewhere"
assert use_compilation_cache() == sys.argv[1]
"""
    env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
    env |= {"SHOWWORK_XLA_CACHE": "off", "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
    root = Path(__file__).resolve().parents[1]
    cache = tmp_path / "xla"
    subprocess.run([sys.executable, "-c", code, str(cache)], cwd=root, env=env, check=True, timeout=300)
    assert any(cache.iterdir())  # the jitted function's program
