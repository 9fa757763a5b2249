"""GRPO model set-up: the LoRA reference is the base (adapter disabled), an SFT run's adapter is
what training continues from, merged/ starts a fresh adapter, full fine-tuning gets a frozen copy."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from common.errors import InputError
from common.grpo_config import load_grpo_config
from common.runs import weights_sha256
from common.sft_data import Example
from trainers_torch.data import collate
from trainers_torch.grpo import build_policy, build_reference, reference_logprobs, resolve_start
from trainers_torch.losses import completion_logprobs

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def batch():
    torch.manual_seed(0)
    examples = [
        Example(str(k), k, torch.randint(6, 100, (n,)).tolist(), n - 4) for k, n in enumerate((12, 17))
    ]
    return collate(examples, [[0], [1]], pad_id=0)


def base_logprobs(model_dir, b):
    from transformers import AutoModelForCausalLM

    lm = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    with torch.no_grad():
        return completion_logprobs(lm, b, chunk=8)


def policy(cfg):
    start = resolve_start(cfg)
    model = build_policy(cfg, start).eval()
    return model, start


def perturb_lora(model, seed=1):
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.5)


@pytest.fixture(scope="module")
def sft_run(tiny_gemma3, tmp_path_factory):
    """A finished SFT run as trainers_torch.sft leaves it: config.yaml, manifest, final/, merged/."""
    run = tmp_path_factory.mktemp("sft-runs") / "sft-tiny"
    cfg = load_grpo_config(None, [f"model.path={tiny_gemma3}", "lora.rank=4", "lora.alpha=8"])
    model, _ = policy(cfg)
    perturb_lora(model)
    run.mkdir()
    model.save_pretrained(run / "final")
    (run / "config.yaml").write_text(
        f"model: {{path: {tiny_gemma3}}}\nlora: {{rank: 4, alpha: 8.0, dropout: 0.05, target_modules: null}}\n"
        "train: {method: lora, trainable_layers: null}\n"
    )
    manifest = {"model": {"path": str(tiny_gemma3), "weights_sha256": weights_sha256(tiny_gemma3)}}
    (run / "run_manifest.json").write_text(json.dumps(manifest))
    merged = model.merge_and_unload()
    merged.save_pretrained(run / "merged")
    for f in ("tokenizer.json", "tokenizer_config.json"):
        if (tiny_gemma3 / f).exists():
            shutil.copy(tiny_gemma3 / f, run / "merged" / f)
    return run


def test_lora_reference_is_the_base_model_with_the_adapter_disabled(tiny_gemma3):
    cfg = load_grpo_config(None, [f"model.path={tiny_gemma3}", "lora.rank=4", "grpo.beta=0.1"])
    model, start = policy(cfg)
    assert build_reference(cfg, start) is None  # no second copy for LoRA
    perturb_lora(model)
    b = batch()
    base = base_logprobs(tiny_gemma3, b)
    ref = reference_logprobs(model, None, b, chunk=8, temperature=1.0)
    torch.testing.assert_close(ref, base, rtol=0, atol=1e-6)
    with torch.no_grad():
        live = completion_logprobs(model, b, chunk=8)
    assert (live - base).abs().max() > 1e-2  # the adapter is back on after the reference pass


def test_continuing_an_sft_run_trains_its_adapter_against_the_base(sft_run, tiny_gemma3):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    cfg = load_grpo_config(
        None, [f"model.path={tiny_gemma3}", f"init.sft_run={sft_run}", "lora.rank=4", "lora.alpha=8"]
    )
    model, start = policy(cfg)
    assert start.init_adapter == str(sft_run / "final") and start.info["mode"] == "continue"
    assert all(p.requires_grad == ("lora_" in n) for n, p in model.named_parameters())
    b = batch()
    sft = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(str(tiny_gemma3)), str(sft_run / "final")
    )
    with torch.no_grad():
        torch.testing.assert_close(completion_logprobs(model, b, 8), completion_logprobs(sft.eval(), b, 8))
    ref = reference_logprobs(model, None, b, chunk=8, temperature=1.0)
    torch.testing.assert_close(ref, base_logprobs(tiny_gemma3, b), rtol=0, atol=1e-6)


def test_merged_mode_starts_a_fresh_adapter_on_the_sft_model(sft_run, tiny_gemma3):
    cfg = load_grpo_config(
        None, [f"model.path={tiny_gemma3}", f"init.sft_run={sft_run}", "init.sft_mode=merged"]
    )
    model, start = policy(cfg)
    assert start.model_path == str(sft_run / "merged") and start.init_adapter is None
    b = batch()
    merged = base_logprobs(sft_run / "merged", b)
    with torch.no_grad():
        torch.testing.assert_close(completion_logprobs(model, b, 8), merged, rtol=0, atol=1e-5)
    torch.testing.assert_close(reference_logprobs(model, None, b, 8, 1.0), merged, rtol=0, atol=1e-5)


def test_full_finetune_reference_is_a_frozen_copy(tiny_gemma3):
    cfg = load_grpo_config(None, [f"model.path={tiny_gemma3}", "train.method=full", "grpo.beta=0.05"])
    model, start = policy(cfg)
    ref = build_reference(cfg, start)
    assert ref is not None and ref is not model and not any(p.requires_grad for p in ref.parameters())
    b = batch()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01)  # the policy moves; the reference must not
    torch.testing.assert_close(reference_logprobs(model, ref, b, 8, 1.0), base_logprobs(tiny_gemma3, b))
    assert (
        build_reference(load_grpo_config(None, [f"model.path={tiny_gemma3}", "train.method=full"]), start)
        is None
    )


def test_sft_run_errors_name_the_fix(sft_run, tiny_gemma3, tmp_path):
    with pytest.raises(InputError, match=r"lora.rank=16 here but 4 .*set lora.rank=4"):
        resolve_start(
            load_grpo_config(None, [f"model.path={tiny_gemma3}", f"init.sft_run={sft_run}", "lora.alpha=8"])
        )
    other = tmp_path / "other-base"
    shutil.copytree(tiny_gemma3, other)
    from safetensors.torch import load_file, save_file

    f = next(other.glob("*.safetensors"))
    weights = load_file(str(f))
    next(iter(weights.values())).add_(1.0)
    save_file(weights, str(f), metadata={"format": "pt"})
    (other / "weights.sha256").unlink(missing_ok=True)
    args = [f"model.path={other}", f"init.sft_run={sft_run}", "lora.rank=4", "lora.alpha=8"]
    with pytest.raises(InputError, match="other base weights"):
        resolve_start(load_grpo_config(None, args))
    empty = tmp_path / "unfinished"
    empty.mkdir()
    with pytest.raises(InputError, match="make train"):
        resolve_start(load_grpo_config(None, [f"model.path={tiny_gemma3}", f"init.sft_run={empty}"]))
    with pytest.raises(InputError, match="not both"):
        resolve_start(
            load_grpo_config(None, [f"init.sft_run={sft_run}", f"model.init_adapter={sft_run}/final"])
        )
