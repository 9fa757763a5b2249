"""GRPO trainer on the tiny Gemma 3: a reward for a token raises its probability; the run's
files; kill -9 + resume equals the uninterrupted run; config errors exit 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from common.grpo_config import load_grpo_config
from common.prompts import format_prompt, load_tokenizer
from common.rewards import REWARDS
from common.runs import read_metrics
from tests import grpo_helpers
from tests.tiny_runs import kill_at_checkpoint
from trainers_torch.grpo import main, train

ROOT = Path(__file__).resolve().parents[1]
STEPS = 4


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module", autouse=True)
def test_reward():
    grpo_helpers.register()
    yield
    grpo_helpers.unregister()


@pytest.fixture(scope="module")
def setup(tiny_gemma3, tmp_path_factory):
    root = tmp_path_factory.mktemp("grpo")
    config = grpo_helpers.write_setup(
        root,
        tiny_gemma3,
        f"""\
            generation: {{prompts_per_step: 2, num_generations: 4, max_new_tokens: 6}}
            grpo: {{loss_type: dapo, beta: 0.1, num_iterations: 2, epsilon_high: 0.28}}
            rewards: {{names: [digit_count, format_approx], weights: [1.0, 0.5]}}
            lora: {{rank: 4, alpha: 8}}
            train: {{max_steps: {STEPS}, threads: 1, pack_tokens: 600}}
            optim: {{lr: 2.0e-2, warmup_steps: 1}}
            eval: {{every: 2, n: 2, samples: 2}}
            checkpoint: {{every_steps: 2, keep_last: 2}}
        """,
    )
    return root, config


@pytest.fixture(scope="module")
def uninterrupted(setup):
    _, config = setup
    return train(load_grpo_config(config, ["run_name=straight"]))


def first_token_probs(
    model_dir: Path, adapter: Path | None, prompts: list[str], temperature: float
) -> torch.Tensor:
    """The next-token distribution (at ``temperature``) after each prompt, averaged over the prompts."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    tok = load_tokenizer(model_dir)
    lm = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    if adapter is not None:
        lm = PeftModel.from_pretrained(lm, str(adapter))
    lm.eval()
    with torch.no_grad():
        probs = [
            torch.softmax(lm(input_ids=torch.tensor([tok(p).input_ids])).logits[0, -1] / temperature, -1)
            for p in prompts
        ]
    return torch.stack(probs).mean(0)


def test_a_reward_for_one_token_raises_its_probability(setup, tiny_gemma3, monkeypatch):
    root, config = setup
    token = "s"  # ~1/90 at temperature 1 on the tiny model; ~1/10 at 0.1, so most groups of 32 hold a few

    def likes_token(prompts, completions, cfg, **_):
        return [float(c == token) for c in completions]

    monkeypatch.setitem(REWARDS, "likes_token", likes_token)
    args = ["run_name=likes", "rewards.names=[likes_token]", "rewards.weights=null", "train.max_steps=1", "generation.prompts_per_step=4",
            "generation.num_generations=32", "generation.max_new_tokens=1", "generation.temperature=0.1",
            "grpo.beta=0.0", "grpo.num_iterations=1", "eval.n=0", "optim.lr=1.0e-2"]  # fmt: skip
    summary = train(load_grpo_config(config, args))
    metrics = [r for r in read_metrics(summary["run_dir"]) if "reward" in r]
    assert len(metrics) == 1 and 0 < metrics[0]["reward"] < 1 and metrics[0]["zero_std_groups"] < 1
    tok = load_tokenizer(tiny_gemma3)
    records = [json.loads(line) for line in (root / "train.jsonl").read_text().splitlines()]
    prompts = [format_prompt(tok, r["question"]) for r in records]
    # the policy GRPO optimises samples at temperature 0.1; its log-probs are taken at 0.1 too
    before = first_token_probs(tiny_gemma3, None, prompts, 0.1)
    after = first_token_probs(tiny_gemma3, Path(summary["final"]), prompts, 0.1)
    tid = tok.convert_tokens_to_ids(token)
    assert after[tid] > 2 * before[tid], (before[tid], after[tid])
    assert int((after - before).argmax()) == tid  # no other token gained as much probability


def test_run_files_metrics_samples_plots_and_exports(uninterrupted):
    run = Path(uninterrupted["run_dir"])
    metrics = read_metrics(run)
    steps = [r for r in metrics if "reward" in r]
    assert [r["step"] for r in steps] == list(range(1, STEPS + 1))
    want = {"reward", "reward_std", "reward_digit_count", "reward_format_approx_std", "zero_std_groups",
            "completion_len_mean", "completion_len_max", "truncated", "kl", "clip_fraction", "loss", "lr",
            "grad_norm", "gen_tokens_per_s", "train_tokens_per_s", "step_time_s"}  # fmt: skip
    assert want <= set(steps[0])
    assert all(r["completion_len_max"] <= 6 and 0 <= r["truncated"] <= 1 for r in steps)
    evals = [r for r in metrics if "eval_reward" in r]
    assert [r["step"] for r in evals] == [0, 2, STEPS]
    assert {"eval_format_accuracy", "eval_strict_accuracy", "eval_n"} <= set(evals[0])
    assert uninterrupted["eval_before"]["eval_reward"] == evals[0]["eval_reward"]
    change = uninterrupted["heldout_change"]  # paired from the step-0 and final predictions files
    assert (change["from_step"], change["to_step"], change["n"]) == (0, STEPS, 2)
    assert change["mean_change"] == pytest.approx(evals[-1]["eval_reward"] - evals[0]["eval_reward"])
    assert change["up"] + change["down"] + change["same"] == 2 and 0 < change["permutation_p"] <= 1
    samples = [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()]
    assert {(s["step"], s["kind"]) for s in samples} == {
        (0, "eval"),
        (2, "eval"),
        (2, "train"),
        (4, "eval"),
        (4, "train"),
    }
    assert all("reward" in s and "rewards" in s and "completion" in s for s in samples)
    preds = [
        json.loads(line) for line in (run / "eval" / "predictions-step-000000.jsonl").read_text().splitlines()
    ]
    assert len(preds) == 2 and {"id", "prompt", "completion", "reward", "stop_reason"} <= set(preds[0])
    for name in ("reward", "kl", "loss"):
        assert (run / "plots" / f"{name}.png").stat().st_size > 0
    assert (run / "final" / "adapter_model.safetensors").is_file()
    assert (run / "merged" / "config.json").is_file()
    manifest = json.loads((run / "run_manifest.json").read_text())
    assert manifest["trainer"] == "trainers_torch.grpo" and "adapter disabled" in manifest["reference"]


def test_kill_9_then_resume_matches_uninterrupted(setup, uninterrupted):
    root, config = setup
    run_dir = root / "runs" / "killed"
    cmd = [sys.executable, "-c", grpo_helpers.CLI, "--config", str(config), "run_name=killed"]
    saved = kill_at_checkpoint(
        cmd, ROOT, root / "killed.err", "step-000002"
    )  # right after its first checkpoint
    assert saved is not None and not (run_dir / "final").exists()

    resumed = train(load_grpo_config(config, ["run_name=killed", "resume=true"]))
    assert resumed["resumed_from_step"] == 2
    a = {r["step"]: r for r in read_metrics(run_dir) if "reward" in r}
    b = {r["step"]: r for r in read_metrics(uninterrupted["run_dir"]) if "reward" in r}
    assert sorted(a) == sorted(b) == list(range(1, STEPS + 1))  # no step logged twice or missing
    assert any(r["kl"] > 0 for r in b.values()) and any(r["loss"] != 0 for r in b.values())  # it learned
    for k in a:
        for key in ("reward", "loss", "kl", "clip_fraction", "completion_len_mean"):
            assert a[k][key] == pytest.approx(b[k][key], abs=1e-5), (k, key)
    ea = [r["eval_reward"] for r in read_metrics(run_dir) if "eval_reward" in r]
    eb = [r["eval_reward"] for r in read_metrics(uninterrupted["run_dir"]) if "eval_reward" in r]
    assert ea == pytest.approx(eb)
    from safetensors.torch import load_file

    wa = load_file(str(run_dir / "final" / "adapter_model.safetensors"))
    wb = load_file(str(Path(uninterrupted["final"]) / "adapter_model.safetensors"))
    assert max(float((wa[k] - wb[k]).abs().max()) for k in wa) <= 1e-6


def test_resume_with_another_config_fails_before_touching_the_run(setup, uninterrupted):
    from common.errors import InputError

    _, config = setup
    run = Path(uninterrupted["run_dir"])
    before = (run / "config.yaml").read_text(), (run / "run_manifest.json").read_text()
    with pytest.raises(InputError, match="another config"):
        train(load_grpo_config(config, ["run_name=straight", "resume=true", "optim.lr=1.0e-3"]))
    assert ((run / "config.yaml").read_text(), (run / "run_manifest.json").read_text()) == before


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["grpo.loss=dapo"], "unknown key 'grpo.loss'"),
        (["grpo.loss_type=ppo"], "grpo.loss_type"),
        (["generation.num_generations=1"], "num_generations must be >= 2"),
        (["rewards.names=[format_exact,nope]"], "unknown reward 'nope'"),
        (["rewards.weights=[1.0]"], "rewards.weights: 1 weights for 2 rewards"),
        (["grpo.epsilon=1.5"], "grpo.epsilon must be in (0, 1)"),
        (["init.sft_run=/nonexistent/sft-run"], "make train"),
    ],
)
def test_config_errors_exit_2(setup, capsys, args, message):
    _, config = setup
    with pytest.raises(SystemExit) as exc:
        main(["--config", str(config), "run_name=bad", *args])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1
    assert not (config.parent / "runs" / "bad").exists()  # nothing half-written


def test_make_train_grpo_without_the_sft_run_says_make_train(tmp_path):
    out = subprocess.run(
        ["make", "-s", "train-grpo", f"SFT_RUN={tmp_path / 'no-such-run'}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2 and "run `make train` first" in out.stderr
