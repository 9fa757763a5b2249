"""Checkpoints: kill -9 + resume gives the uninterrupted result; saves are atomic; exports load back."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from common.runs import read_metrics
from common.sft_config import load_sft_config
from tests.sft_data import arithmetic_records, write_records
from tests.tiny_runs import kill_at_checkpoint
from trainers_torch.checkpoint import complete_checkpoints, latest_checkpoint, remove_partial
from trainers_torch.sft import train

ROOT = Path(__file__).resolve().parents[1]
STEPS = 12


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def setup(tiny_gemma3, tmp_path_factory):
    root = tmp_path_factory.mktemp("sft-resume")
    train_file = write_records(root / "train.jsonl", arithmetic_records(30, seed=0))
    valid_file = write_records(root / "valid.jsonl", arithmetic_records(6, seed=1, prefix="v"))
    config = root / "sft.yaml"
    config.write_text(
        textwrap.dedent(
            f"""\
            output_dir: {root / "runs"}
            seed: 7
            model: {{path: {tiny_gemma3}}}
            data: {{train: {train_file}, valid: {valid_file}, max_len: 400, pack_tokens: 700}}
            lora: {{rank: 4, alpha: 8, dropout: 0.1}}
            train: {{max_steps: {STEPS}, grad_accum: 2, threads: 1}}
            optim: {{lr: 3.0e-3, warmup_steps: 3}}
            eval: {{every_steps: 5, generate_n: 0}}
            checkpoint: {{every_steps: 3, keep_last: 2}}
            """
        )
    )
    return root, config


@pytest.fixture(scope="module")
def uninterrupted(setup):
    _, config = setup
    cfg = load_sft_config(config, ["run_name=straight"])
    summary = train(cfg)
    return cfg, summary


def losses(run_dir):
    return {r["step"]: r["loss"] for r in read_metrics(run_dir) if "loss" in r}


def test_kill_9_then_resume_matches_uninterrupted(setup, uninterrupted):
    root, config = setup
    _, straight = uninterrupted
    run_dir = root / "runs" / "killed"
    cmd = [sys.executable, "-m", "trainers_torch.sft", "--config", str(config), "run_name=killed"]
    saved = kill_at_checkpoint(
        cmd, ROOT, root / "killed.err", "step-000003"
    )  # right after its first checkpoint
    assert saved is not None
    assert not (run_dir / "final").exists()
    killed_at = max(losses(run_dir), default=0)
    assert 3 <= killed_at < STEPS

    resumed = subprocess.run([*cmd, "resume=true"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed from" in resumed.stdout
    summary = json.loads((run_dir / "summary.json").read_text())
    assert abs(summary["final_loss"] - straight["final_loss"]) <= 1e-4
    assert abs(summary["valid_loss"] - straight["valid_loss"]) <= 1e-4
    a, b = losses(run_dir), losses(root / "runs" / "straight")
    assert sorted(a) == sorted(b) == list(range(1, STEPS + 1))  # no step logged twice or missing
    assert max(abs(a[k] - b[k]) for k in a) <= 1e-4
    manifest = json.loads((run_dir / "run_manifest.json").read_text())
    assert manifest["status"] == "completed" and manifest["previous_attempts"][-1]["status"] == "running"


def test_resume_with_another_config_fails_and_writes_nothing(setup, uninterrupted):
    from common.errors import InputError

    root, config = setup
    run = root / "runs" / "straight"
    before = {
        p: p.read_bytes() for p in (run / "config.yaml", run / "run_manifest.json", run / "metrics.jsonl")
    }
    with pytest.raises(InputError, match="another config"):
        train(load_sft_config(config, ["run_name=straight", "resume=true", "optim.lr=0.5"]))
    assert all(p.read_bytes() == data for p, data in before.items())


def test_killed_save_leaves_nothing_resume_would_pick(setup, uninterrupted, tmp_path):
    root, _ = setup
    ckpts = root / "runs" / "straight" / "checkpoints"
    assert [s for s, _ in complete_checkpoints(ckpts)] == [9, STEPS]  # keep_last=2
    before = latest_checkpoint(ckpts)
    # a real SIGKILL while a checkpoint is being written (its optimizer state is slow to save)
    script = textwrap.dedent(
        f"""\
        import sys, time, torch
        sys.path.insert(0, {str(ROOT)!r})
        from pathlib import Path
        import trainers_torch.checkpoint as ck
        real_save = torch.save
        def slow_save(obj, path, *a, **k):
            if str(path).endswith("optimizer.pt"):
                print("saving", flush=True)
                time.sleep(60)
            return real_save(obj, path, *a, **k)
        ck.torch.save = slow_save
        model = torch.nn.Linear(2, 2)
        opt = torch.optim.AdamW(model.parameters())
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
        ck.save_checkpoint(Path({str(ckpts)!r}), 99, model, opt, sched, {{}})
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "saving"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    partial = [p.name for p in ckpts.iterdir() if p.name.startswith(".tmp-")]
    assert partial == [f".tmp-step-000099-{proc.pid}"]
    assert latest_checkpoint(ckpts) == before
    # a step dir without state.json (e.g. copied by hand, interrupted) is not complete either
    (ckpts / "step-000100").mkdir()
    (ckpts / "step-000100" / "trainable.safetensors").write_bytes(b"")
    assert latest_checkpoint(ckpts) == before
    (ckpts / "step-000100" / "trainable.safetensors").unlink()
    (ckpts / "step-000100").rmdir()
    assert remove_partial(ckpts) == partial and latest_checkpoint(ckpts) == before


def test_exports_load_back_with_the_adapters_logits(setup, uninterrupted, tiny_gemma3):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _, summary = uninterrupted
    final, merged = Path(summary["final"]), Path(summary["merged"])
    assert (final / "adapter_config.json").is_file() and (final / "adapter_model.safetensors").is_file()
    assert list(merged.glob("*.safetensors")) and (merged / "tokenizer.json").is_file()
    ids = torch.tensor([[2, 10, 20, 30, 40, 50, 60, 70]])
    base = AutoModelForCausalLM.from_pretrained(str(tiny_gemma3), dtype=torch.float32)
    adapter = PeftModel.from_pretrained(base, str(final)).eval()
    exported = AutoModelForCausalLM.from_pretrained(str(merged), dtype=torch.float32).eval()
    with torch.no_grad():
        want = adapter(input_ids=ids).logits
        got = exported(input_ids=ids).logits
        plain = (
            AutoModelForCausalLM.from_pretrained(str(tiny_gemma3), dtype=torch.float32)
            .eval()(input_ids=ids)
            .logits
        )
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert (got - plain).abs().max() > 1e-3  # the adapter really changed the model
    tok = AutoTokenizer.from_pretrained(str(merged))
    eot = tok.convert_tokens_to_ids("<end_of_turn>")
    assert eot in exported.generation_config.eos_token_id
    run = final.parent
    assert (run / "plots" / "loss.png").stat().st_size > 0 and (run / "plots" / "lr.png").stat().st_size > 0
    metrics = read_metrics(run)
    step = next(r for r in metrics if "loss" in r)
    assert {"loss", "lr", "grad_norm", "tokens_per_s", "tokens_seen", "epoch"} <= set(step)
    assert [r["step"] for r in metrics if "valid_loss" in r] == [5, 10, STEPS]


def test_full_finetune_run_exports_and_refuses_to_clobber(setup, tiny_gemma3):
    from transformers import AutoModelForCausalLM

    _, config = setup
    args = ["run_name=full", "train.method=full", "train.trainable_layers=1", "train.max_steps=2", "optim.name=adafactor",
            "eval.every_steps=0", "checkpoint.every_steps=0", "data.valid=null"]  # fmt: skip
    summary = train(load_sft_config(config, args))
    merged, final = Path(summary["merged"]), Path(summary["final"])
    assert sorted(p.name for p in final.iterdir()) == sorted(p.name for p in merged.iterdir())
    model = AutoModelForCausalLM.from_pretrained(str(merged), dtype=torch.float32)
    base = AutoModelForCausalLM.from_pretrained(str(tiny_gemma3), dtype=torch.float32)
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, dict(base.named_parameters())[n])}
    assert changed and all(
        n.startswith(("model.layers.1.", "model.norm", "model.embed_tokens", "lm_head")) for n in changed
    )
    from common.errors import InputError

    with pytest.raises(InputError, match="resume=true"):
        train(load_sft_config(config, args))
    t = time.time()
    again = train(load_sft_config(config, [*args, "resume=true"]))  # complete: nothing left to train
    assert again["final_loss"] == summary["final_loss"] and time.time() - t < 60
