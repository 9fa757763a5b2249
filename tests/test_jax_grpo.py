"""JAX GRPO (trainers_jax.grpo, Tunix's GRPOLearner) on the tiny Gemma 3: a run's files and
metrics, resume, the merged export in transformers, a reward that moves the policy, and the
config shared with trainers_torch.grpo."""

from __future__ import annotations

import dataclasses
import json
import shutil
import textwrap
from pathlib import Path

import pytest

from common.prompts import format_prompt, load_tokenizer
from common.rewards import REWARDS
from common.runs import read_metrics
from tests import grpo_helpers
from tests.sft_data import arithmetic_records, write_records

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module", autouse=True)
def test_reward():
    grpo_helpers.register()
    yield
    grpo_helpers.unregister()


@pytest.fixture(scope="module")
def setup(tiny_gemma3, tmp_path_factory):
    root = tmp_path_factory.mktemp("jax-grpo")
    train_file = write_records(root / "train.jsonl", arithmetic_records(12, seed=0))
    valid_file = write_records(root / "valid.jsonl", arithmetic_records(4, seed=1, prefix="v"))
    config = root / "grpo.yaml"
    config.write_text(
        textwrap.dedent(
            f"""\
            output_dir: {root / "runs"}
            seed: 3
            model: {{path: {tiny_gemma3}}}
            data: {{train: {train_file}, valid: {valid_file}, max_prompt_tokens: 400}}
            generation: {{prompts_per_step: 2, num_generations: 4, max_new_tokens: 6}}
            grpo: {{loss_type: dapo, beta: 0.0, epsilon_high: 0.28}}
            rewards: {{names: [digit_count, format_approx], weights: [1.0, 0.5]}}
            lora: {{rank: 4, alpha: 8, dropout: 0.0}}
            train: {{max_steps: 2}}
            optim: {{lr: 2.0e-2, warmup_steps: 0}}
            eval: {{n: 2, samples: 2, batch_size: 2}}
            checkpoint: {{every_steps: 1, keep_last: 2}}
            """
        )
    )
    return root, config


def test_two_steps_write_metrics_samples_checkpoints_and_a_merged_export(setup, tiny_gemma3):
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM

    from trainers_jax.grpo import load_grpo_config, main, train

    root, config = setup
    assert main(["--config", str(config), "run_name=r"]) == 0
    run = root / "runs" / "r"
    metrics = read_metrics(run)
    steps = [m for m in metrics if "reward" in m]
    assert [m["step"] for m in steps] == [1, 2]
    want = {"reward", "reward_std", "reward_digit_count", "reward_digit_count_std", "reward_format_approx",
            "zero_std_groups", "completion_len_mean", "completion_len_max", "truncated", "loss", "clip_fraction",
            "grad_norm", "lr", "trained_sequences", "gen_tokens", "gen_time_s", "gen_tokens_per_s",
            "train_time_s", "epoch", "step_time_s"}  # fmt: skip
    assert want <= set(steps[0]), want - set(steps[0])
    assert all(0 < m["completion_len_mean"] <= 6 for m in steps)
    assert any(m["trained_sequences"] > 0 and m["grad_norm"] > 0 for m in steps)
    evals = {m["step"]: m for m in metrics if "eval_reward" in m}
    assert sorted(evals) == [0, 2] and evals[0]["eval_n"] == 2
    assert sorted(p.name for p in (run / "checkpoints").iterdir() if p.name.isdigit()) == ["1", "2"]
    samples = [json.loads(x) for x in (run / "samples.jsonl").read_text().splitlines()]
    assert {(s["step"], s["kind"]) for s in samples} >= {(0, "eval"), (2, "eval"), (2, "train")}
    manifest = json.loads((run / "run_manifest.json").read_text())
    assert manifest["trainer"] == "trainers_jax.grpo" and manifest["status"] == "completed"

    # resume: as if killed after the step-1 checkpoint; step 2 is redone from the same state and samples
    shutil.rmtree(run / "checkpoints" / "2")
    summary = train(load_grpo_config(config, ["run_name=r", "resume=true"]))
    assert summary["resumed_from_step"] == 1
    again = [m for m in read_metrics(run) if "reward" in m]
    assert [m["step"] for m in again] == [1, 2]
    assert again[-1]["reward"] == pytest.approx(steps[-1]["reward"], abs=1e-6)
    assert again[-1]["loss"] == pytest.approx(steps[-1]["loss"], abs=1e-5)

    hf = AutoModelForCausalLM.from_pretrained(str(run / "merged"), dtype=torch.float32).eval()
    tok = load_tokenizer(run / "merged")
    ids = torch.tensor([tok("3 plus 4").input_ids])
    with torch.no_grad():
        assert np.isfinite(hf(ids).logits.numpy()).all()

    with pytest.raises(SystemExit) as err:  # an unknown key: exit 2, naming it
        main(["--config", str(config), "run_name=bad", "grpo.no_such_key=1"])
    assert err.value.code == 2
    assert not (root / "runs" / "bad").exists()


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


def test_a_reward_for_one_token_raises_its_probability(setup, tiny_gemma3, monkeypatch):
    from trainers_jax.grpo import load_grpo_config, train

    root, config = setup
    token = "s"  # rare at temperature 1 on the tiny model, common enough at 0.1 for groups of 16 to differ

    def likes_token(prompts, completions, cfg, **_):
        return [float(c == token) for c in completions]

    monkeypatch.setitem(REWARDS, "likes_token", likes_token)
    args = ["run_name=likes", "rewards.names=[likes_token]", "rewards.weights=null", "train.max_steps=2",
            "generation.prompts_per_step=4", "generation.num_generations=16", "generation.max_new_tokens=1",
            "generation.temperature=0.1", "eval.n=0", "optim.lr=1.0e-2", "checkpoint.every_steps=0"]  # fmt: skip
    summary = train(load_grpo_config(config, args))
    metrics = [r for r in read_metrics(summary["run_dir"]) if "reward" in r]
    assert any(0 < m["reward"] < 1 for m in metrics), metrics
    tok = load_tokenizer(tiny_gemma3)
    records = [json.loads(line) for line in (root / "train.jsonl").read_text().splitlines()]
    prompts = [format_prompt(tok, r["question"]) for r in records]
    before = first_token_probs(tiny_gemma3, prompts, 0.1)
    after = first_token_probs(Path(summary["merged"]), prompts, 0.1)
    tid = tok.convert_tokens_to_ids(token)
    assert after[tid] > 2 * before[tid], (before[tid], after[tid])
    assert int((after - before).argmax()) == tid  # no other token gained as much probability


def test_torch_and_jax_read_the_yaml_into_the_same_values():
    import trainers_jax.grpo as J
    import trainers_torch.grpo as T
    from common import grpo_config

    path = ROOT / "configs/grpo_gemma3_270m_cpu.yaml"
    overrides = ["grpo.beta=0.04", "generation.top_k=20"]
    jax_cfg = J.load_grpo_config(path, overrides)
    torch_cfg = grpo_config.load_grpo_config(path, overrides)
    assert T.GRPOConfig is grpo_config.GRPOConfig and isinstance(jax_cfg, T.GRPOConfig)
    shared = {f.name for f in dataclasses.fields(torch_cfg)}
    assert {f.name for f in dataclasses.fields(jax_cfg)} - shared == {"mesh"}
    as_dict = dataclasses.asdict(jax_cfg)
    assert {k: as_dict[k] for k in shared} == dataclasses.asdict(torch_cfg)
    assert jax_cfg.grpo.beta == 0.04 and jax_cfg.generation.top_k == 20 and jax_cfg.grpo.epsilon_high == 0.28
    assert J.LOSS_AGG[jax_cfg.grpo.loss_type] == "token-mean"  # dapo
