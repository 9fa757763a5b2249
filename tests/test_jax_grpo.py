"""JAX GRPO (trainers_jax.grpo, Tunix's GRPOLearner) on the tiny Gemma 3: a run's files and
metrics, resume, the merged export in transformers, a reward that moves the policy, and the
config shared with trainers_torch.grpo."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from common.prompts import format_prompt, load_tokenizer
from common.rewards import REWARDS
from common.runs import read_metrics
from tests import grpo_helpers

ROOT = Path(__file__).resolve().parents[1]


TOKEN = "s"  # rare at temperature 1 on the tiny model, common enough at 0.1 for groups of 16 to differ


SEEN: list[dict] = []  # the columns each reward call received


def likes_token(prompts, completions, cfg, **columns):
    """1 for a completion that is exactly TOKEN, else 0."""
    SEEN.append(columns)
    return [float(c == TOKEN) for c in completions]


@pytest.fixture(scope="module", autouse=True)
def jax_compile_cache(tmp_path_factory):
    """The runs here compile the same programs (a resume, the evals): cache them on disk."""
    import jax

    old = jax.config.jax_compilation_cache_dir
    jax.config.update("jax_compilation_cache_dir", str(tmp_path_factory.mktemp("xla-cache")))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    yield
    jax.config.update("jax_compilation_cache_dir", old)


@pytest.fixture(scope="module")
def setup(tiny_gemma3, tmp_path_factory):
    root = tmp_path_factory.mktemp("jax-grpo")
    config = grpo_helpers.write_setup(
        root,
        tiny_gemma3,
        """\
            generation: {prompts_per_step: 4, num_generations: 16, max_new_tokens: 1, temperature: 0.1}
            grpo: {loss_type: dapo, beta: 0.0, epsilon_high: 0.28}
            rewards: {names: [likes_token]}
            lora: {rank: 4, alpha: 8, dropout: 0.0}
            train: {max_steps: 2}
            optim: {lr: 1.0e-2, warmup_steps: 0}
            eval: {n: 2, samples: 2, batch_size: 2, max_new_tokens: 4}
            checkpoint: {every_steps: 1, keep_last: 2}
        """,
        seed=4,  # a seed whose 2 x 64 samples are all one token (checked where that matters)
    )
    return root, config


@pytest.fixture(scope="module")
def run(setup):
    from trainers_jax.grpo import main

    root, config = setup
    REWARDS["likes_token"] = likes_token
    try:
        assert main(["--config", str(config), "run_name=r"]) == 0
        yield root / "runs" / "r"
    finally:
        REWARDS.pop("likes_token", None)


def test_two_steps_write_metrics_samples_checkpoints_and_a_merged_export(setup, run):
    from trainers_jax.grpo import main

    root, config = setup
    metrics = read_metrics(run)
    steps = [m for m in metrics if "reward" in m]
    assert [m["step"] for m in steps] == [1, 2]
    want = {"reward", "reward_std", "reward_likes_token", "reward_likes_token_std", "zero_std_groups",
            "completion_len_mean", "completion_len_max", "truncated", "loss", "clip_fraction", "grad_norm", "lr",
            "trained_sequences", "gen_tokens", "gen_time_s", "gen_tokens_per_s", "train_time_s", "epoch",
            "step_time_s"}  # fmt: skip
    assert want <= set(steps[0]), want - set(steps[0])
    assert all(0 < m["completion_len_mean"] <= 1 for m in steps) and steps[0]["lr"] == 1e-2
    assert any(0 < m["reward"] < 1 and m["trained_sequences"] > 0 and m["grad_norm"] > 0 for m in steps)
    evals = {m["step"]: m for m in metrics if "eval_reward" in m}
    assert sorted(evals) == [0, 2] and evals[0]["eval_n"] == 2 and "eval_format_accuracy" in evals[0]
    assert sorted(p.name for p in (run / "checkpoints").iterdir() if p.name.isdigit()) == ["1", "2"]
    samples = [json.loads(x) for x in (run / "samples.jsonl").read_text().splitlines()]
    assert {(s["step"], s["kind"]) for s in samples} >= {(0, "eval"), (2, "eval"), (2, "train")}
    manifest = json.loads((run / "run_manifest.json").read_text())
    assert manifest["trainer"] == "trainers_jax.grpo" and manifest["status"] == "completed"
    assert (run / "merged" / "model.safetensors").is_file()

    with pytest.raises(SystemExit) as err:  # an unknown key: exit 2, nothing written
        main(["--config", str(config), "run_name=bad", "grpo.no_such_key=1"])
    assert err.value.code == 2
    assert not (root / "runs" / "bad").exists()


def test_micro_batches_accumulate_to_the_whole_step_update(setup, run, tiny_gemma3):
    """The fixture's run splits each step into 4 one-prompt pieces (the default
    tunix.micro_batch_prompts=1); in one piece of 4 the same samples must give the same update:
    every completion is one token, so the per-piece token means average to the step's."""
    from safetensors.numpy import load_file

    from trainers_jax.grpo import main

    _, config = setup
    REWARDS["likes_token"] = likes_token
    try:
        assert main(["--config", str(config), "run_name=whole", "tunix.micro_batch_prompts=4"]) == 0
    finally:
        REWARDS.pop("likes_token", None)
    whole = run.parent / "whole"
    pieces, one = ([m for m in read_metrics(r) if "reward" in m] for r in (run, whole))
    assert [m["reward"] for m in pieces] == [m["reward"] for m in one]  # the same samples
    assert all(m["completion_len_mean"] == 1.0 for m in one)
    assert [m["loss"] for m in pieces] == pytest.approx([m["loss"] for m in one], rel=1e-4, abs=1e-6)
    a, b = (load_file(str(r / "merged" / "model.safetensors")) for r in (run, whole))
    base = load_file(str(next(tiny_gemma3.glob("*.safetensors"))))
    for name in a:
        assert np.allclose(a[name], b[name], rtol=1e-4, atol=1e-6), name
    assert any(not np.allclose(a[n], base[n], rtol=1e-4, atol=1e-6) for n in a if n in base)  # it did train


def test_the_update_cut_to_each_steps_widths_trains_as_the_padded_one(setup, tiny_gemma3):
    """Beside a held-out prompt of 285 tokens (the training prompts have 224 to 233), Tunix pads
    every step's prompts to that one. Cut to each step's longest prompt rounded up to the
    default tunix.pad_multiple=32 (256 of 285 positions), the same samples give the same losses
    and merged weights as the padded update (pad_multiple=0), from fewer computed positions."""
    from safetensors.numpy import load_file

    from tests.sft_data import arithmetic_records, write_records
    from trainers_jax.grpo import main

    root, config = setup
    valid = arithmetic_records(4, seed=1, prefix="v")
    valid[0]["question"] += " " + "x" * 60  # the tiny tokenizer reads characters
    long_valid = write_records(root / "long-valid.jsonl", valid)
    REWARDS["likes_token"] = likes_token
    seen = len(SEEN)
    try:
        for name, multiple in (("cut", 32), ("padded", 0)):
            args = [f"run_name={name}", f"data.valid={long_valid}", f"tunix.pad_multiple={multiple}"]
            assert main(["--config", str(config), *args]) == 0
    finally:
        REWARDS.pop("likes_token", None)
        del SEEN[seen:]  # the columns test reads the fixture's records only
    runs = root / "runs"
    cut, full = ([m for m in read_metrics(runs / r) if "reward" in m] for r in ("cut", "padded"))
    assert [m["reward"] for m in cut] == [m["reward"] for m in full]  # the same samples
    assert [m["train_tokens"] for m in cut] == [m["train_tokens"] for m in full]
    rows = 4 * 16
    assert [m["train_padded_tokens"] for m in cut] == [rows * (256 + 1)] * 2  # prompt + 1 completion token
    assert [m["train_padded_tokens"] for m in full] == [rows * (285 + 1)] * 2
    assert [m["loss"] for m in cut] == pytest.approx([m["loss"] for m in full], rel=1e-4, abs=1e-6)
    a, b = (load_file(str(runs / r / "merged" / "model.safetensors")) for r in ("cut", "padded"))
    for name in a:
        assert np.allclose(a[name], b[name], rtol=1e-4, atol=1e-6), name
    base = load_file(str(next(tiny_gemma3.glob("*.safetensors"))))
    assert any(not np.allclose(a[n], base[n], rtol=1e-4, atol=1e-6) for n in a if n in base)  # it did train


def first_token_probs(model_dir: Path, prompts: list[str], temperature: float) -> object:
    """The next-token distribution (at ``temperature``) after each prompt, averaged, from transformers."""
    import torch
    from transformers import AutoModelForCausalLM

    tok = load_tokenizer(model_dir)
    lm = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    with torch.no_grad():
        probs = [
            torch.softmax(lm(input_ids=torch.tensor([tok(p).input_ids])).logits[0, -1] / temperature, -1)
            for p in prompts
        ]
    return torch.stack(probs).mean(0)


def test_rewards_receive_the_records_columns_as_torch_passes_them(setup, run):
    """meta (a dict), steps (a list) and the text columns arrive as the records hold them."""
    root, _ = setup
    lines = [
        *(root / "train.jsonl").read_text().splitlines(),
        *(root / "valid.jsonl").read_text().splitlines(),
    ]
    records = {r["id"]: r for r in map(json.loads, lines)}  # training steps and the held-out eval
    assert any(str(i).startswith("t-") for cols in SEEN for i in cols["id"])
    for cols in SEEN:
        assert set(cols) == {"id", "question", "answer", "reasoning", "steps", "meta"}
        for k, rid in enumerate(cols["id"]):
            for key in ("question", "answer", "reasoning", "steps", "meta"):
                assert cols[key][k] == records[rid][key]
        assert isinstance(cols["meta"][0], dict) and cols["meta"][0]["category"] == "arithmetic"


def test_a_reward_for_one_token_raises_its_probability_in_the_merged_export(setup, run, tiny_gemma3):
    root, _ = setup
    tok = load_tokenizer(tiny_gemma3)
    records = [json.loads(line) for line in (root / "train.jsonl").read_text().splitlines()]
    prompts = [format_prompt(tok, r["question"]) for r in records]
    before = first_token_probs(tiny_gemma3, prompts, 0.1)  # the policy samples, and is scored, at 0.1
    after = first_token_probs(run / "merged", prompts, 0.1)  # transformers loads the JAX export
    tid = tok.convert_tokens_to_ids(TOKEN)
    assert after[tid] > 2 * before[tid], (before[tid], after[tid])
    assert int((after - before).argmax()) == tid  # no other token gained as much probability


def test_resume_redoes_the_lost_step_from_the_same_state(setup, run):
    from trainers_jax.config import load_grpo_config
    from trainers_jax.grpo import train

    _, config = setup
    steps = [m for m in read_metrics(run) if "reward" in m]
    shutil.rmtree(run / "checkpoints" / "2")  # as if killed after the step-1 checkpoint
    REWARDS["likes_token"] = likes_token
    try:
        summary = train(load_grpo_config(config, ["run_name=r", "resume=true"]))
    finally:
        REWARDS.pop("likes_token", None)
    assert summary["resumed_from_step"] == 1
    again = [m for m in read_metrics(run) if "reward" in m]
    assert [m["step"] for m in again] == [1, 2]
    for key in ("reward", "loss", "grad_norm", "completion_len_mean"):
        assert again[-1][key] == pytest.approx(steps[-1][key], rel=1e-4, abs=1e-6), key


def test_torch_and_jax_read_the_yaml_into_the_same_values():
    import trainers_jax.grpo as J
    import trainers_torch.grpo as T
    from common import grpo_config
    from trainers_jax.config import load_grpo_config

    path = ROOT / "configs/grpo_gemma3_270m_cpu.yaml"
    overrides = ["grpo.beta=0.04", "generation.top_k=20"]
    jax_cfg = load_grpo_config(path, overrides)
    torch_cfg = grpo_config.load_grpo_config(path, overrides)
    assert T.GRPOConfig is grpo_config.GRPOConfig and isinstance(jax_cfg, T.GRPOConfig)
    shared = {f.name for f in dataclasses.fields(torch_cfg)}
    assert {f.name for f in dataclasses.fields(jax_cfg)} - shared == {"mesh", "tunix"}
    as_dict = dataclasses.asdict(jax_cfg)
    assert {k: as_dict[k] for k in shared} == dataclasses.asdict(torch_cfg)
    assert jax_cfg.grpo.beta == 0.04 and jax_cfg.generation.top_k == 20 and jax_cfg.grpo.epsilon_high == 0.28
    assert J.LOSS_AGG[jax_cfg.grpo.loss_type] == "token-mean"  # dapo


def test_bfloat16_adapters_are_announced():
    """Tunix's LoRA adapters take the base's dtype: on a bfloat16 model the JAX GRPO trainer
    announces that small updates are lost (torch keeps its adapters in float32 and does not)."""
    import trainers_jax.grpo as J
    from trainers_jax.config import load_grpo_config

    path = ROOT / "configs/grpo_gemma3_270m_cpu.yaml"
    for dtype in ("float32", "bfloat16"):
        notes = J.jax_notes(load_grpo_config(path, [f"model.dtype={dtype}"]))
        assert any("the LoRA adapters are bfloat16" in n for n in notes) == (dtype == "bfloat16")
