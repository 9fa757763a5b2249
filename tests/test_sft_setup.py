"""SFT set-up: parameter selection (LoRA targets, freezing), overflow accounting, config errors."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from common.errors import InputError
from common.prompts import load_tokenizer
from common.records import allot
from common.sft_config import DataConfig, OptimConfig, load_sft_config, lr_factor
from common.sft_data import DataPlan, pack_rows, tokenize_records
from tests.sft_data import arithmetic_records, write_records
from trainers_torch.model import SharedLoraDropout, build_model, fuse_lora_forward
from trainers_torch.sft import main

ROOT = Path(__file__).resolve().parents[1]
LINEAR = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def trainable_names(model):
    return {n for n, p in model.named_parameters() if p.requires_grad}


def cfg_for(tiny, *overrides):
    return load_sft_config(None, [f"model.path={tiny}", *overrides])


def model_for(args):
    cfg = cfg_for(*args)
    return build_model(cfg.model, cfg.lora, cfg.train)


def test_lora_defaults_to_every_decoder_linear_not_the_embedding(tiny_gemma3):
    model = model_for((tiny_gemma3, "lora.rank=4"))
    names = trainable_names(model)
    assert names and all(".lora_A." in n or ".lora_B." in n for n in names)
    covered = {(n.split(".layers.")[1].split(".")[0], n.split(".lora_")[0].rsplit(".", 1)[-1]) for n in names}
    assert covered == {(str(i), m) for i in range(2) for m in LINEAR}
    assert not any("embed" in n or "lm_head" in n for n in names)
    lm = model.get_base_model()
    assert lm.lm_head.weight is lm.model.embed_tokens.weight and not lm.lm_head.weight.requires_grad


def test_lora_target_subset_and_last_layers(tiny_gemma3):
    model = model_for((tiny_gemma3, "lora.target_modules=[q_proj,v_proj]", "train.trainable_layers=1"))
    names = trainable_names(model)
    assert names and all(".layers.1." in n for n in names)
    assert {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in names} == {"q_proj", "v_proj"}
    with pytest.raises(InputError, match="lm_head"):
        model_for((tiny_gemma3, "lora.target_modules=[lm_head]"))


def test_shared_lora_dropout_rate_scale_and_sharing():
    drop = SharedLoraDropout(0.05)
    assert drop.p_eff == 3277 / 65536
    torch.manual_seed(0)
    x = torch.ones(400, 1000)
    y = drop(x)
    dropped = float((y == 0).float().mean())
    assert abs(dropped - drop.p_eff) < 0.0015  # 400k draws: 4.4 standard deviations
    assert torch.allclose(y[y != 0], torch.full_like(y[y != 0], 1 / (1 - drop.p_eff)))
    # the same input object: the same mask, drawn once (q/k/v read one tensor)
    assert torch.equal(drop(x), y) and drop.keep(x)[0] is drop.keep(x)[0]
    x.mul_(2)  # changed in place: a new mask
    z = drop(x)
    assert z is not y and not torch.equal(z == 0, y == 0)
    other = torch.ones(400, 1000)
    assert not torch.equal(drop(other) == 0, z == 0)
    torch.manual_seed(0)
    assert torch.equal(SharedLoraDropout(0.05)(torch.ones(400, 1000)), y)  # torch's seed replays it
    kept, scale = drop.keep(other)  # what the fused LoRA forward takes: unscaled, and the scale
    assert scale == 1 / (1 - drop.p_eff) and torch.equal(kept * scale, drop(other))
    assert torch.equal(kept == 0, drop(other) == 0) and set(kept.unique().tolist()) == {0.0, 1.0}
    drop.eval()
    assert drop(other) is other and drop.keep(other) == (other, 1.0)
    assert SharedLoraDropout(0.0).train()(other) is other


def test_lora_adapters_share_one_dropout(tiny_gemma3):
    model = model_for((tiny_gemma3, "lora.rank=4", "lora.dropout=0.1"))
    drops = {id(m.lora_dropout["default"]) for m in model.modules() if hasattr(m, "lora_dropout")}
    assert len(drops) == 1
    shared = next(m.lora_dropout["default"] for m in model.modules() if hasattr(m, "lora_dropout"))
    assert isinstance(shared, SharedLoraDropout) and shared.p == 0.1
    seen = []
    keep = shared.keep
    shared.keep = lambda x: (seen.append(x), keep(x))[1]  # the fused forward asks for the mask here
    model.train()
    ids = torch.tensor([[2, 5, 7, 9, 11]])
    model(input_ids=ids)
    per_layer = len(seen) // 2  # q, k, v, o, gate, up, down in each of the 2 layers
    assert per_layer == 7 and seen[0] is seen[1] is seen[2] and seen[4] is seen[5]
    assert len({id(t) for t in seen[:7]}) == 4  # four distinct inputs: one mask each


def test_fused_lora_forward_matches_peft(tiny_gemma3):
    """The fused forward gives PEFT's outputs and gradients; off, merged or disabled it is PEFT's."""
    ids = torch.tensor([[2, 5, 7, 9, 11, 3], [4, 4, 8, 1, 6, 2]])

    def run(fused: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        torch.manual_seed(0)
        model = model_for((tiny_gemma3, "lora.rank=4", "lora.dropout=0.0"))
        for n, p in model.named_parameters():  # B starts at zero: make the adapters matter
            if "lora_B" in n:
                p.data.normal_(0, 0.5)
        if not fused:
            for m in model.modules():
                m.__dict__.pop("forward", None)  # back to the class's (PEFT's) forward
        model.train()
        logits = model(input_ids=ids).logits
        logits.square().mean().backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
        return logits.detach(), grads

    fused_logits, fused_grads = run(True)
    peft_logits, peft_grads = run(False)
    torch.testing.assert_close(fused_logits, peft_logits, rtol=1e-5, atol=1e-5)
    assert fused_grads.keys() == peft_grads.keys() and len(fused_grads) == 28
    for name, grad in fused_grads.items():
        torch.testing.assert_close(grad, peft_grads[name], rtol=1e-4, atol=1e-6, msg=name)

    model = model_for((tiny_gemma3, "lora.rank=4"))
    assert fuse_lora_forward(model) == 14  # 7 linears x 2 layers (again: idempotent)
    b_weights = [p for n, p in model.named_parameters() if "lora_B" in n]
    model.eval()
    with torch.no_grad():
        for p in b_weights:
            p.normal_(0, 0.5)
        on = model(input_ids=ids).logits
        with model.disable_adapter():  # adapters off: the base model's logits
            off = model(input_ids=ids).logits
        model.merge_adapter()
        merged = model(input_ids=ids).logits
        model.unmerge_adapter()
        for p in b_weights:
            p.zero_()
        zero = model(input_ids=ids).logits
    assert not torch.allclose(on, off, atol=1e-3)
    torch.testing.assert_close(off, zero, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(merged, on, rtol=1e-4, atol=1e-4)


def test_fused_lora_forward_runs_a_bfloat16_base_with_float32_adapters(tiny_gemma3, monkeypatch):
    """A bfloat16 base keeps PEFT's float32 adapters (and so float32 AdamW state); the fused
    forward takes them without falling back to PEFT's forward (float32 copies of every input),
    and its outputs and gradients are as close to the float32 model's as PEFT's own are."""
    from peft.tuners.lora.layer import Linear as LoraLinear

    ids = torch.tensor([[2, 5, 7, 9, 11, 3], [4, 4, 8, 1, 6, 2]])
    peft_forward = LoraLinear.forward
    fallbacks = []

    def counting(self, x, *args, **kwargs):
        fallbacks.append(x.dtype)
        return peft_forward(self, x, *args, **kwargs)

    monkeypatch.setattr(LoraLinear, "forward", counting)

    def run(fused: bool, dtype: str) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        model = model_for((tiny_gemma3, "lora.rank=4", "lora.dropout=0.0", f"model.dtype={dtype}"))
        adapters = dict(sorted((n, p) for n, p in model.named_parameters() if p.requires_grad))
        assert adapters and all(p.dtype == torch.float32 for p in adapters.values())
        g = torch.Generator().manual_seed(1)  # the same adapter weights whatever the base's dtype
        for p in adapters.values():
            p.data.copy_(torch.randn(p.shape, generator=g) * 0.5)
        if not fused:
            for m in model.modules():
                m.__dict__.pop("forward", None)
        model.train()
        logits = model(input_ids=ids).logits
        assert logits.dtype == (torch.bfloat16 if dtype == "bfloat16" else torch.float32)
        logits.float().square().mean().backward()
        return logits.detach().float(), {n: p.grad.clone() for n, p in adapters.items()}

    ref_logits, ref_grads = run(False, "float32")  # PEFT's own forward, float32 throughout
    fallbacks.clear()
    fused_logits, fused_grads = run(True, "bfloat16")
    assert fallbacks == []  # every adapted layer took the fused path
    peft_logits, peft_grads = run(False, "bfloat16")
    assert len(fallbacks) == 14 and set(fallbacks) == {torch.bfloat16}

    def error(x: torch.Tensor, ref: torch.Tensor) -> float:
        return float((x - ref).norm() / ref.norm())

    assert 0 < error(peft_logits, ref_logits) < 0.05
    assert error(fused_logits, ref_logits) <= 1.5 * error(peft_logits, ref_logits)
    assert fused_grads.keys() == peft_grads.keys() == ref_grads.keys()
    for name, grad in fused_grads.items():
        assert grad.dtype == torch.float32
        peft_err = error(peft_grads[name], ref_grads[name])
        assert 0 < peft_err < 0.5, name  # bfloat16's rounding, not a wrong gradient
        assert error(grad, ref_grads[name]) <= 1.5 * peft_err + 0.01, name


def test_full_finetune_freezing_last_layers(tiny_gemma3):
    model = model_for((tiny_gemma3, "train.method=full", "train.trainable_layers=1"))
    names = trainable_names(model)
    assert any(n.startswith("model.layers.1.") for n in names)
    assert not any(n.startswith("model.layers.0.") for n in names)
    assert "model.norm.weight" in names
    assert "model.embed_tokens.weight" in names  # = lm_head.weight (tied)
    model = model_for(
        (tiny_gemma3, "train.method=full", "train.trainable_layers=1", "train.train_lm_head=false")
    )
    assert "model.embed_tokens.weight" not in trainable_names(model)
    model = model_for((tiny_gemma3, "train.method=full"))
    assert trainable_names(model) == {n for n, _ in model.named_parameters()}


def test_overflow_is_counted_dropped_or_fails(tiny_gemma3, tmp_path):
    tok = load_tokenizer(tiny_gemma3)
    recs = arithmetic_records(10, seed=1)
    recs[3]["question"] += " Please be careful." * 20  # two records far over the limit
    recs[7]["question"] += " Think again." * 30
    path = write_records(tmp_path / "train.jsonl", recs)
    lengths = [len(e) for e in tokenize_records(path, tok, DataConfig(max_len=2000, pack_tokens=2000))[0]]
    max_len = max(lengths[i] for i in range(10) if i not in (3, 7))
    ex, kept, report = tokenize_records(
        path, tok, DataConfig(max_len=max_len, pack_tokens=2000, on_overflow="drop")
    )
    assert len(ex) == len(kept) == 8 and [r["id"] for r in kept] == [e.id for e in ex]
    assert report["overflow_count"] == 2 and report["overflow_share"] == 0.2
    assert report["overflow_longest"] == {"id": "t-0007", "tokens": lengths[7]}
    assert report["overflow_ids"] == ["t-0003", "t-0007"]
    with pytest.raises(InputError) as err:
        tokenize_records(path, tok, DataConfig(max_len=max_len, pack_tokens=2000, on_overflow="fail"))
    assert f"{path}:4: id 't-0003'" in str(err.value) and f"{lengths[3]} tokens" in str(err.value)


def test_packing_is_greedy_in_order_and_seeded(tiny_gemma3):
    assert pack_rows([3, 4, 5, 2, 6], [0, 1, 2, 3, 4], 8) == [[0, 1], [2, 3], [4]]
    from common.sft_data import Example

    ex = [Example(str(i), i, [0] * (10 + i), 3) for i in range(20)]
    a, b = DataPlan(ex, 40, 2, seed=1), DataPlan(ex, 40, 2, seed=1)
    assert [a.step_rows(k) for k in range(12)] == [b.step_rows(k) for k in range(12)]
    assert a.epoch_rows(0) != DataPlan(ex, 40, 2, seed=2).epoch_rows(0)
    assert a.epoch_rows(0) != a.epoch_rows(1)  # reshuffled each epoch
    assert sorted(i for row in a.epoch_rows(0) for i in row) == list(range(20))
    total = a.total_steps(epochs=2.0, max_steps=None)
    assert total == -(-(len(a.epoch_rows(0)) + len(a.epoch_rows(1))) // 2)


def run_main(args, capsys):
    with pytest.raises(SystemExit) as exc:
        main(args)
    return exc.value.code, capsys.readouterr().err.strip()


def test_config_errors_exit_2_with_one_line(tiny_gemma3, tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"model:\n  path: {tiny_gemma3}\ntrian:\n  epochs: 1\n")
    code, err = run_main(["--config", str(cfg)], capsys)
    assert code == 2 and "unknown key 'trian'" in err and "train" in err and len(err.splitlines()) == 1
    code, err = run_main(["--config", str(cfg).replace("c.yaml", "none.yaml")], capsys)
    assert code == 2 and "config file not found" in err
    good = tmp_path / "g.yaml"
    good.write_text(f"output_dir: {tmp_path / 'runs'}\nmodel:\n  path: {tiny_gemma3}\n")  # not ./runs
    code, err = run_main(["--config", str(good), "train.epochs=many"], capsys)
    assert code == 2 and "train.epochs" in err
    code, err = run_main(["--config", str(good), "data.max_len=512", "data.pack_tokens=256"], capsys)
    assert code == 2 and "pack_tokens" in err
    code, err = run_main(["--config", str(good), "model.path=/nonexistent"], capsys)
    assert code == 2 and "config.json missing" in err


def test_bad_data_line_and_overflow_fail_write_nothing(tiny_gemma3, tmp_path, capsys):
    recs = arithmetic_records(4)
    path = write_records(tmp_path / "train.jsonl", recs)
    path.write_text(path.read_text() + '{"id": "x", "question": 3}\n')
    out = tmp_path / "runs"
    args = [
        "--config",
        "/dev/null",
        f"model.path={tiny_gemma3}",
        f"data.train={path}",
        "data.valid=null",
        f"output_dir={out}",
    ]
    code, err = run_main(args, capsys)
    assert code == 2 and err.splitlines()[-1].startswith(f"error: {path}:5:") and "question" in err
    write_records(path, recs)
    code, err = run_main([*args, "data.max_len=50", "data.pack_tokens=50"], capsys)
    assert code == 2 and f"{path}:1: id 't-0000'" in err and "data.max_len=50" in err
    assert not out.exists()  # nothing half-written


def test_cli_exit_status_is_2(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("optim:\n  name: sgd\n")
    proc = subprocess.run(
        [sys.executable, "-m", "trainers_torch.sft", "--config", str(cfg)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"error: {cfg}: optim.name: 'sgd' is not one of 'adamw', 'adafactor'"
    ]


def test_default_configs_load():
    for name in ("sft_gemma3_270m_cpu.yaml", "sft_gemma3_1b_gpu.yaml"):
        cfg = load_sft_config(ROOT / "configs" / name, [])
        assert cfg.data.pack_tokens >= cfg.data.max_len
    cpu = load_sft_config(ROOT / "configs" / "sft_gemma3_270m_cpu.yaml", [])
    assert cpu.run_name == "sft-gemma3-270m-cpu" and cpu.model.dtype == "float32"
    json.dumps(cpu.__dict__, default=str)


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "configs").glob("*smollm2*.yaml")))
def test_smollm2_configs_load_on_both_backends(name):
    from trainers_jax.config import load_grpo_config as jax_grpo
    from trainers_jax.config import load_sft_config as jax_sft

    path = ROOT / "configs" / name
    if name.startswith("grpo_"):
        from common.grpo_config import load_grpo_config

        cfgs = [load_grpo_config(path, []), jax_grpo(path, [])]
    else:
        cfgs = [load_sft_config(path, []), jax_sft(path, [])]
    for cfg in cfgs:
        assert cfg.model.path == "models/smollm2-135m" and cfg.run_name == path.stem.replace("_", "-")


def test_training_mix_samples_each_file(tiny_gemma3, tmp_path):
    from common.sft_config import MixPart, SFTConfig
    from common.sft_data import tokenize_train
    from common.sft_records import data_files

    tok = load_tokenizer(tiny_gemma3)
    first = write_records(tmp_path / "a.jsonl", arithmetic_records(12, seed=1, prefix="a"))
    second = write_records(tmp_path / "b.jsonl", arithmetic_records(9, seed=2, prefix="b"))
    cfg = DataConfig(
        train=str(first), train_limit=5, mix=[MixPart(str(second), n=3)], max_len=2000, pack_tokens=2000
    )
    ex, report = tokenize_train(cfg, tok, seed=0)
    assert [e.id[0] for e in ex] == ["a"] * 5 + ["b"] * 3
    assert (report["records"], report["used"], len(report["parts"])) == (21, 8, 2)
    assert report["file"] == f"{first} + {second}"
    again, _ = tokenize_train(cfg, tok, seed=0)
    assert [e.id for e in again] == [e.id for e in ex]  # seeded
    files = data_files(SFTConfig(data=cfg))
    assert files == {"train": str(first), "mix1": str(second), "valid": cfg.valid}
    alone, alone_report = tokenize_train(
        DataConfig(train=str(first), max_len=2000, pack_tokens=2000), tok, seed=0
    )
    assert len(alone) == 12 and "parts" not in alone_report


def test_yaml_trace_configs_load():
    from common.config import load_config
    from common.grpo_config import GRPOConfig

    cfg = load_sft_config(ROOT / "configs" / "sft_yaml_traces_270m_cpu.yaml", [])
    assert cfg.data.trace_format == "yaml" and cfg.data.mix and cfg.train.trainable_layers
    grpo = load_config(GRPOConfig, ROOT / "configs" / "grpo_yaml_traces_270m_cpu.yaml")
    assert grpo.rewards.names[0] == "yaml_trace" and grpo.init.sft_run == f"runs/{cfg.run_name}"
    assert grpo.train.trainable_layers == cfg.train.trainable_layers and grpo.lora.rank == cfg.lora.rank
    # the recipe's per-expert draw fits in the train split that configs/data/yaml_traces.yaml builds
    built = yaml.safe_load((ROOT / "configs" / "data" / "yaml_traces.yaml").read_text())["yaml_traces"]
    have = allot(built["sizes"]["train"], built["shares"])
    assert cfg.data.train_limit and cfg.data.train_shares and set(cfg.data.train_shares) <= set(have)
    want = allot(cfg.data.train_limit, cfg.data.train_shares)
    assert all(0 < want[e] <= have[e] for e in want), (want, have)


def test_yaml_format_prompt_asks_for_the_trace_and_target_holds_it(tiny_gemma3, tmp_path):
    from common.sft_data import tokenize_train
    from scripts.dataset.traces.generate import TraceGenConfig, generate

    splits, _, _ = generate(TraceGenConfig(sizes={"train": 6}), seed=0)
    path = write_records(tmp_path / "yt.jsonl", splits["train"])
    tok = load_tokenizer(tiny_gemma3)
    (ex, *_), _ = tokenize_train(
        DataConfig(train=str(path), trace_format="yaml", max_len=4000, pack_tokens=4000), tok, 0
    )
    rec = next(r for r in splits["train"] if r["id"] == ex.id)
    prompt = tok.decode(ex.ids[: ex.n_prompt]).replace(" ", "")
    target = tok.decode(ex.ids[ex.n_prompt :]).replace(" ", "")
    assert "YAMLtrace" in prompt and "<reasoning>" in prompt
    want = f"<reasoning>{rec['reasoning']}</reasoning><answer>{rec['answer']}</answer><end_of_turn>"
    assert target == want.replace(" ", "")
    assert rec["reasoning"].startswith(("expert: ", "- expert: "))


def test_dtype_auto_resolves_by_what_the_machine_multiplies_natively(monkeypatch):
    import common.sft_config as sc

    for native, accelerator, want in [
        (False, False, "float32"),
        (True, False, "bfloat16"),
        (False, True, "bfloat16"),
    ]:
        monkeypatch.setattr(sc, "native_bf16", lambda native=native: native)
        m = sc.ModelConfig(dtype="auto")
        m.resolve_dtype(accelerator=accelerator)
        assert m.dtype == want, (native, accelerator)
        for named in ("float32", "bfloat16"):  # a named dtype is never changed
            m = sc.ModelConfig(dtype=named)
            m.resolve_dtype(accelerator=accelerator)
            assert m.dtype == named


@pytest.mark.parametrize("native", [False, True])
def test_trainer_resolves_dtype_auto_and_records_the_choice(tiny_gemma3, tmp_path, monkeypatch, native):
    """``model.dtype=auto`` trains in the resolved dtype and the run's config.yaml names it, so
    a resume or an export reads a concrete dtype."""
    import common.sft_config as sc
    from trainers_torch.sft import train

    monkeypatch.setattr(sc, "native_bf16", lambda: native)
    data = write_records(tmp_path / "train.jsonl", arithmetic_records(4, seed=0))
    cfg = load_sft_config(None, [
        f"model.path={tiny_gemma3}", "model.dtype=auto", f"data.train={data}", "data.valid=null",
        f"output_dir={tmp_path / 'runs'}", "run_name=auto", "train.max_steps=1", "lora.rank=4",
        "lora.alpha=8", "eval.generate_n=0", "checkpoint.every_steps=0",
    ])  # fmt: skip
    train(cfg)
    want = "bfloat16" if native else "float32"
    saved = yaml.safe_load((tmp_path / "runs" / "auto" / "config.yaml").read_text())
    assert cfg.model.dtype == want and saved["model"]["dtype"] == want


def test_lr_factor_warms_up_then_holds_or_decays_to_the_floor():
    constant = OptimConfig(warmup_steps=4, schedule="constant")
    assert [lr_factor(s, 20, constant) for s in range(7)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0, 1.0]
    assert lr_factor(19, 20, constant) == 1.0
    cosine = OptimConfig(warmup_steps=4, schedule="cosine", min_lr_ratio=0.1)
    assert [lr_factor(s, 20, cosine) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    decay = [lr_factor(s, 20, cosine) for s in range(4, 21)]
    assert decay[0] == 1.0 and all(a > b for a, b in itertools.pairwise(decay))
    assert decay[-1] == pytest.approx(0.1)
    assert lr_factor(30, 20, cosine) == pytest.approx(0.1)  # held at the floor after the end
    assert lr_factor(0, 20, OptimConfig(warmup_steps=0)) == 1.0  # no warmup: the full rate at once
