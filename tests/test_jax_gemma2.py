"""Gemma 2 on the JAX side (trainers_jax.model on Tunix's ``tunix.models.gemma``), against
transformers' ``Gemma2ForCausalLM`` on tiny random models: logits with both soft-caps and a
window shorter than the sequence, config fields Tunix cannot represent refused, a LoRA SFT run
whose ``merged/`` export and Orbax checkpoint give the same logits and greedy tokens on both
backends. (The real Gemma 2 2B is not tested: its weights are not available here.)"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from common.errors import InputError
from evals import generate as gen
from evals import load
from tests.reference_decode import QUESTIONS, completion_ids
from tests.tiny_runs import jax_sft_run

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = gen.DecodeSettings(max_new_tokens=12)


def _hf_logits(path: Path, ids: np.ndarray, mask: np.ndarray, **overrides: object) -> np.ndarray:
    from transformers import AutoModelForCausalLM

    lm = AutoModelForCausalLM.from_pretrained(
        str(path), dtype=torch.float32, attn_implementation="eager", **overrides
    ).eval()
    with torch.no_grad():
        out = lm(torch.from_numpy(ids).long(), attention_mask=torch.from_numpy(mask).long())
    return out.logits.numpy()


def test_logits_match_transformers_with_softcaps_and_sliding_window(tiny_gemma2, one_torch_thread):
    from trainers_jax.model import forward_logits, load_model

    model, _ = load_model(tiny_gemma2)
    assert model.config.sliding_window_size == 16 and model.config.final_logit_softcap == 2.0
    ids = np.random.default_rng(0).integers(3, 106, size=(2, 48)).astype(np.int32)
    mask = np.ones_like(ids, dtype=bool)
    mask[1, :9] = False  # left padding: 39 real tokens, still more than the window
    got = np.asarray(forward_logits(model, ids, mask))
    want = _hf_logits(tiny_gemma2, ids, mask)
    assert np.abs(got[0] - want[0]).max() < 1e-5, np.abs(got[0] - want[0]).max()
    assert np.abs(got[1, 9:] - want[1, 9:]).max() < 1e-5, np.abs(got[1, 9:] - want[1, 9:]).max()
    # every feature the comparison is meant to cover changes the logits
    for change in (
        {"final_logit_softcapping": None},
        {"attn_logit_softcapping": None},
        {"sliding_window": 64},
    ):
        other = _hf_logits(tiny_gemma2, ids[:1], mask[:1], **change)
        assert np.abs(other[0] - want[0]).max() > 1e-3, change


@pytest.mark.parametrize(
    "field,value",
    [
        ("query_pre_attn_scalar", 24),
        ("rope_parameters", {"rope_type": "default", "rope_theta": 500000.0}),
        ("hidden_activation", "gelu"),
        ("rms_norm_eps", 1e-5),
        ("attention_bias", True),
        ("layer_types", ["sliding_attention", "chunked_attention"]),
        ("tie_word_embeddings", False),
    ],
)
def test_unsupported_config_field_is_refused_naming_it(tiny_gemma2, tmp_path, field, value):
    from trainers_jax.model import tunix_config

    cfg = json.loads((tiny_gemma2 / "config.json").read_text())
    cfg[field] = value
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(InputError) as err:
        tunix_config(tmp_path)
    name = "rope_theta" if field == "rope_parameters" else field
    assert "config.json" in str(err.value) and name in str(err.value), err.value


def test_unsupported_config_exits_2_from_the_trainer(tiny_gemma2, tmp_path, capsys):
    import trainers_jax.sft as J

    cfg = json.loads((tiny_gemma2 / "config.json").read_text())
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({**cfg, "query_pre_attn_scalar": 24}))
    with pytest.raises(SystemExit) as err:
        J.main([f"model.path={model}", f"output_dir={tmp_path}", "data.train=unused.jsonl"])
    assert err.value.code == 2
    msg = capsys.readouterr().err
    assert "config.json" in msg and "query_pre_attn_scalar" in msg, msg


def test_sampler_longer_than_the_window_is_refused(tiny_gemma2):
    model, tok = load.load_for_eval(load.resolve_model(str(tiny_gemma2)), "jax")
    prompts = [gen.build_prompt(tok, q, "text") for q in QUESTIONS]
    with pytest.raises(InputError, match="sliding_window"):
        gen.generate_completions(model, tok, prompts, SETTINGS, batch_size=4, progress=False)


@pytest.fixture(scope="module")
def gemma2_run(tmp_path_factory) -> Path:
    """Two LoRA steps of trainers_jax.sft on a Gemma 2 whose window (512) is shorter than the
    1024-token packed rows but fits generation's cache; an Orbax checkpoint and merged/ at the end."""
    from tests.tiny import build_gemma2

    tmp = tmp_path_factory.mktemp("gemma2-run")
    base = build_gemma2(tmp / "base", sliding_window=512)
    return jax_sft_run(base, tmp, checkpoint_every=2)


def test_merged_export_loads_in_transformers_with_the_jax_logits(gemma2_run, one_torch_thread):
    from trainers_jax.checkpoint import load_checkpoint_for_eval
    from trainers_jax.model import forward_logits

    merged = gemma2_run / "merged"
    cfg = json.loads((merged / "config.json").read_text())
    assert cfg["model_type"] == "gemma2" and cfg["architectures"] == ["Gemma2ForCausalLM"]
    model, tok, _ = load_checkpoint_for_eval(gemma2_run / "checkpoints" / "2", None, None)
    ids = np.asarray([tok("12 and 5, times 3?").input_ids * 2], dtype=np.int32)
    mask = np.ones_like(ids, dtype=bool)
    want = np.asarray(forward_logits(model, ids, mask))
    got = _hf_logits(merged, ids, mask)
    assert np.abs(got - want).max() < 1e-5, np.abs(got - want).max()
    base = _hf_logits(gemma2_run.parent / "base", ids, mask)
    assert np.abs(base - want).max() > 1e-3  # the trained LoRA weights are in the export


def test_greedy_tokens_equal_on_jax_and_torch(gemma2_run, one_torch_thread):
    # (a random model this small repeats one token whatever the prompt; the logits tests above
    # are the fine-grained check, this one runs the two samplers end to end)
    torch_merged = completion_ids(gemma2_run / "merged", "torch", 12)
    assert completion_ids(gemma2_run.parent / "base", "torch", 12) != torch_merged  # the LoRA weights act
    assert completion_ids(gemma2_run / "merged", "jax", 12) == torch_merged
    assert completion_ids(gemma2_run / "checkpoints", "jax", 12) == torch_merged  # Orbax: Tunix + qwix LoRA
    assert completion_ids(gemma2_run / "checkpoints", "torch", 12) == torch_merged  # Orbax merged in memory


def test_grpo_step_runs_on_gemma2(gemma2_run, tmp_path):
    """One GRPO step (Tunix's learner, rollout and KL reference) from the Gemma 2 SFT export."""
    from common.runs import read_metrics
    from tests import grpo_helpers
    from trainers_jax.grpo import main

    config = grpo_helpers.write_setup(
        tmp_path,
        gemma2_run / "merged",
        """\
            generation: {prompts_per_step: 2, num_generations: 4, max_new_tokens: 2, temperature: 1.0}
            grpo: {loss_type: dapo, beta: 0.04}
            rewards: {names: [digit_count]}
            lora: {rank: 4, alpha: 8, dropout: 0.0}
            train: {max_steps: 1}
            optim: {lr: 1.0e-2, warmup_steps: 0}
            eval: {n: 2, samples: 2, batch_size: 2, max_new_tokens: 4}
            checkpoint: {every_steps: 1, keep_last: 1}
        """,
    )
    grpo_helpers.register()
    try:
        assert main(["--config", str(config), "run_name=g"]) == 0
    finally:
        grpo_helpers.unregister()
    run = tmp_path / "runs" / "g"
    step = next(m for m in read_metrics(run) if "reward" in m)
    assert np.isfinite(step["loss"]) and "kl" in step and step["completion_len_mean"] > 0, step
    merged = json.loads((run / "merged" / "config.json").read_text())
    assert merged["model_type"] == "gemma2" and merged["final_logit_softcapping"] == 2.0
