"""Run dirs for eval tests, laid out as the trainers write them (final/ adapter, merged/ export),
and a trainer killed mid-run."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path


def build_trained_run(tiny_dir: Path, run: Path, seed: int = 1) -> Path:
    """``run/`` with config.yaml (naming the base), final/ (a LoRA adapter that changes the outputs)
    and merged/ (the same weights merged into an HF export with its tokenizer)."""
    import torch
    from peft import LoraConfig, get_peft_model

    from trainers_torch.model import load_model

    run.mkdir(parents=True)
    (run / "config.yaml").write_text(f"model:\n  path: {tiny_dir}\n")
    model, tok = load_model(tiny_dir)
    torch.manual_seed(seed)  # before the adapters: PEFT draws their A matrices from the global generator
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)  # a trained adapter changes the outputs
    peft_model.save_pretrained(run / "final")
    cfg = json.loads((run / "final" / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = "google/gemma-3-270m"  # a hub id: not loadable offline
    (run / "final" / "adapter_config.json").write_text(json.dumps(cfg))
    merged = peft_model.merge_and_unload()
    merged.save_pretrained(run / "merged")
    tok.save_pretrained(run / "merged")
    return run


def kill_at_checkpoint(cmd: list[str], cwd: Path, stderr: Path, step_dir: str) -> str:
    """Run a trainer ``cmd`` and SIGKILL it right after it prints ``checkpoint saved: …<step_dir>``;
    returns that line (the run must not have ended first)."""
    with stderr.open("w") as err:
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=err, text=True)
        saved = None
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("checkpoint saved:") and line.rstrip().endswith(step_dir):
                proc.send_signal(signal.SIGKILL)
                saved = line
                break
        proc.stdout.close()
        assert proc.wait(timeout=60) == -signal.SIGKILL, "the run ended before it could be killed"
    assert saved is not None
    return saved


def jax_sft_run(model: Path, tmp: Path, checkpoint_every: int) -> Path:
    """Two LoRA steps of ``trainers_jax.sft`` on ``model`` (8 arithmetic records), Orbax
    checkpoints every ``checkpoint_every`` steps and ``merged/`` at the end: ``tmp/r``."""
    import trainers_jax.sft as J
    from tests.sft_data import arithmetic_records, write_records

    root = Path(__file__).resolve().parents[1]
    data = write_records(tmp / "train.jsonl", arithmetic_records(8))
    args = ["--config", str(root / "configs/sft_gemma3_270m_cpu.yaml"), f"model.path={model}",
            f"data.train={data}", "data.valid=null", "data.train_limit=null", "data.max_len=400",
            f"output_dir={tmp}", "run_name=r", "train.max_steps=2", f"checkpoint.every_steps={checkpoint_every}",
            "eval.every_steps=0", "train.loss_chunk_tokens=64", "optim.lr=5e-3", "lora.rank=4"]  # fmt: skip
    assert J.main(args) == 0
    return tmp / "r"
