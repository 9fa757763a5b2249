"""Llama (SmolLM2's architecture) on both backends, on tiny random models with a ChatML
tokenizer: the JAX side (Tunix's Llama 3 through ``trainers_jax/llama.py``) gives transformers'
logits with RoPE at the config's theta, tied or untied; config fields Tunix cannot represent are
refused naming them; one SFT step and one GRPO step run on each backend, and the JAX run's
``merged/`` export and Orbax checkpoint give the same logits and greedy tokens as transformers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from common.errors import InputError
from common.prompts import format_prompt, load_tokenizer
from common.runs import read_metrics
from tests import grpo_helpers
from tests.reference_decode import completion_ids
from tests.tiny_runs import jax_sft_run

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def prompt_batch(model_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    tok = load_tokenizer(model_dir)
    texts = [format_prompt(tok, "What is 2 + 3?"), format_prompt(tok, "Add seven and eleven, then halve it.")]
    enc = tok(texts, return_tensors="np", padding=True)
    return enc["input_ids"], enc["attention_mask"].astype(bool)


def hf_logits(path: Path, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    from transformers import AutoModelForCausalLM

    lm = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()
    m = torch.from_numpy(mask.astype(np.int64))
    with torch.no_grad():
        out = lm(torch.from_numpy(ids).long(), attention_mask=m, position_ids=(m.cumsum(-1) - 1).clamp(min=0))
    return out.logits.numpy()


# Llama 3.1+'s RoPE: with head_dim 16 and theta 1e5 the wavelengths run from 6 to 149k
# positions, so these bounds (512 and 2048) keep, blend and stretch some of them each.
LLAMA3_ROPE = {"rope_type": "llama3", "rope_theta": 100_000.0, "factor": 32.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 2048}  # fmt: skip


@pytest.fixture(scope="module")
def tiny_llama_untied(tmp_path_factory) -> Path:
    from tests.tiny import build_llama

    return build_llama(tmp_path_factory.mktemp("llama-untied"), tied=False)


@pytest.fixture(scope="module")
def tiny_llama3_rope(tmp_path_factory) -> Path:
    from tests.tiny import build_llama

    return build_llama(tmp_path_factory.mktemp("llama3-rope"), rope_parameters=LLAMA3_ROPE)


def test_llama3_rope_scaling_matches_transformers(tiny_llama3_rope, tiny_llama):
    from trainers_jax.model import forward_logits, load_model

    model, _ = load_model(tiny_llama3_rope)
    assert model.config.rope_scaling == (32.0, 1.0, 4.0, 2048.0)
    ids, mask = prompt_batch(tiny_llama3_rope)
    want = hf_logits(tiny_llama3_rope, ids, mask)
    got = np.asarray(forward_logits(model, ids, mask))
    assert np.abs(got - want)[mask].max() < 1e-5, np.abs(got - want)[mask].max()
    unscaled = hf_logits(tiny_llama, ids, mask)  # the same weights (seed 0) without the scaling
    assert np.abs(unscaled - want)[mask].max() > 1e-3


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_llama_untied"])
def test_logits_match_transformers_at_the_configs_rope_theta(fixture, request):
    from tunix.models.llama3 import model as llama3

    from trainers_jax import llama
    from trainers_jax.model import forward_logits, load_model, tunix_config

    path = request.getfixturevalue(fixture)
    ids, mask = prompt_batch(path)
    assert not mask.all(), "the batch should be left-padded"
    want = hf_logits(path, ids, mask)
    model, _ = load_model(path)
    assert isinstance(model, llama.Llama) and model.config.rope_theta == 100_000.0
    got = np.asarray(forward_logits(model, ids, mask))
    assert np.abs(got - want)[mask].max() < 1e-5, np.abs(got - want)[mask].max()
    assert np.abs(want[mask]).max() > 0.1
    # Tunix's own class applies RoPE at its default theta (1e6), not the config's: other logits
    plain = llama.safetensors_loader.load_and_create_model(
        str(path), llama3.Llama3, tunix_config(path), llama.llama3_params._get_key_and_transform_mapping
    )
    assert np.abs(np.asarray(forward_logits(plain, ids, mask)) - want)[mask].max() > 1e-3


def test_tunix_config_maps_hf_fields(tiny_llama, tiny_llama_untied):
    from trainers_jax.model import family_of, tunix_config

    cfg = tunix_config(tiny_llama)
    assert family_of(cfg).name == "llama"
    assert (cfg.num_layers, cfg.vocab_size, cfg.embed_dim, cfg.hidden_dim) == (2, 128, 64, 128)
    assert (cfg.num_heads, cfg.head_dim, cfg.num_kv_heads) == (4, 16, 2)
    assert (cfg.rope_theta, cfg.norm_eps, cfg.weight_tying) == (100_000.0, 1e-5, True)
    assert tunix_config(tiny_llama_untied).weight_tying is False


@pytest.mark.parametrize(
    "change,named",
    [
        ({"hidden_act": "gelu"}, "hidden_act"),
        ({"attention_bias": True}, "attention_bias"),
        ({"mlp_bias": True}, "mlp_bias"),
        ({"attention_dropout": 0.1}, "attention_dropout"),
        ({"rope_parameters": {"rope_type": "yarn", "rope_theta": 500000.0, "factor": 4.0}}, "yarn"),
        ({"rope_parameters": None, "rope_scaling": {"type": "linear", "factor": 2.0}}, "rope_scaling"),
        ({"num_key_value_heads": 3}, "num_key_value_heads"),
        ({"model_type": "qwen2"}, "qwen2"),
        ({"model_type": "mistral"}, "mistral"),
    ],
)
def test_unsupported_config_field_is_refused_naming_it(tiny_llama, tmp_path, change, named):
    from trainers_jax.model import tunix_config

    cfg = json.loads((tiny_llama / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**cfg, **change}))
    with pytest.raises(InputError) as err:
        tunix_config(tmp_path)
    assert "config.json" in str(err.value) and named in str(err.value), err.value


# ------------------------------------------------------------------------------ SFT, both backends


def test_one_torch_sft_step_trains_to_the_end_of_turn_and_exports(tiny_llama, tmp_path):
    import trainers_torch.sft as T
    from tests.sft_data import arithmetic_records, write_records

    data = write_records(tmp_path / "train.jsonl", arithmetic_records(6))
    args = ["--config", str(ROOT / "configs/sft_smollm2_135m_cpu.yaml"), f"model.path={tiny_llama}",
            f"data.train={data}", "data.valid=null", "data.train_limit=null", "data.max_len=400",
            f"output_dir={tmp_path}", "run_name=t", "train.max_steps=1", "train.threads=1",
            "eval.generate_n=0", "lora.rank=4", "train.loss_chunk_tokens=64"]  # fmt: skip
    assert T.main(args) == 0
    run = tmp_path / "t"
    step = next(m for m in read_metrics(run) if "loss" in m)
    assert np.isfinite(step["loss"]) and step["grad_norm"] > 0, step
    tok = load_tokenizer(run / "merged")
    gen = json.loads((run / "merged" / "generation_config.json").read_text())
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    assert im_end in np.atleast_1d(gen["eos_token_id"]).tolist()  # merged/ stops at the end of turn


@pytest.fixture(scope="module")
def llama_run(tmp_path_factory) -> Path:
    """Two LoRA steps of trainers_jax.sft on an untied Llama, an Orbax checkpoint and merged/."""
    from tests.tiny import build_llama

    tmp = tmp_path_factory.mktemp("llama-run")
    return jax_sft_run(build_llama(tmp / "base", tied=False), tmp, checkpoint_every=2)


def test_jax_merged_export_loads_in_transformers_with_the_jax_logits(llama_run):
    from trainers_jax.checkpoint import load_checkpoint_for_eval
    from trainers_jax.model import forward_logits

    cfg = json.loads((llama_run / "merged" / "config.json").read_text())
    assert cfg["model_type"] == "llama" and cfg["architectures"] == ["LlamaForCausalLM"]
    assert cfg["tie_word_embeddings"] is False and cfg["rope_parameters"]["rope_theta"] == 100_000.0
    model, _, _ = load_checkpoint_for_eval(llama_run / "checkpoints" / "2", None, None)
    ids, mask = prompt_batch(llama_run / "merged")
    want = np.asarray(forward_logits(model, ids, mask))
    got = hf_logits(llama_run / "merged", ids, mask)
    assert np.abs(got - want)[mask].max() < 1e-5, np.abs(got - want)[mask].max()
    base = hf_logits(llama_run.parent / "base", ids, mask)
    assert np.abs(base - want)[mask].max() > 1e-3  # the trained LoRA weights are in the export


def test_greedy_tokens_equal_on_jax_and_torch(llama_run):
    torch_merged = completion_ids(llama_run / "merged", "torch", 12)
    assert completion_ids(llama_run.parent / "base", "torch", 12) != torch_merged  # the LoRA weights act
    assert completion_ids(llama_run / "merged", "jax", 12) == torch_merged
    assert completion_ids(llama_run / "checkpoints", "jax", 12) == torch_merged  # Orbax: Tunix + qwix LoRA
    assert completion_ids(llama_run / "checkpoints", "torch", 12) == torch_merged  # Orbax merged in memory


# ------------------------------------------------------------------------------ GRPO, both backends

GRPO_SECTIONS = """\
    generation: {prompts_per_step: 2, num_generations: 4, max_new_tokens: 4, temperature: 1.0}
    grpo: {loss_type: dapo, beta: 0.04}
    rewards: {names: [digit_count]}
    lora: {rank: 4, alpha: 8, dropout: 0.0}
    train: {max_steps: 1, threads: 1}
    optim: {lr: 1.0e-2, warmup_steps: 0}
    eval: {n: 2, samples: 2, batch_size: 2, max_new_tokens: 4}
    checkpoint: {every_steps: 1, keep_last: 1}
"""


@pytest.mark.parametrize("backend", ["torch", "jax"])
def test_one_grpo_step(backend, tiny_llama, tmp_path):
    """One GRPO step from the base Llama (torch: our loop; JAX: Tunix's learner, rollout and KL reference)."""
    if backend == "torch":
        from trainers_torch.grpo import main
    else:
        from trainers_jax.grpo import main

    config = grpo_helpers.write_setup(tmp_path, tiny_llama, GRPO_SECTIONS)
    grpo_helpers.register()
    try:
        assert main(["--config", str(config), "run_name=g", "init.sft_run=null"]) == 0
    finally:
        grpo_helpers.unregister()
    run = tmp_path / "runs" / "g"
    step = next(m for m in read_metrics(run) if "reward" in m)
    assert np.isfinite(step["loss"]) and "kl" in step and step["completion_len_mean"] > 0, step
    merged = json.loads((run / "merged" / "config.json").read_text())
    assert merged["model_type"] == "llama"
