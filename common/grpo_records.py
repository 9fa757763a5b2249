"""What both GRPO trainers write and print beside ``metrics.jsonl``: the start lines,
``samples.jsonl`` (cut back on resume), the held-out eval's log line, the plots, and the
figures of ``summary.json``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from common.grpo_config import GRPOConfig
from common.jsonl import atomic_open, dumps
from common.runs import RunDir, read_metrics


def announce_start(
    say: Any,
    cfg: GRPOConfig,
    run: RunDir,
    train_report: dict[str, Any],
    start: str,
    total_steps: int,
    loss: str,
    resumed: tuple[str, int] | None,
) -> None:
    """The start lines both GRPO trainers print (data, what trains, the loss) and, when resuming
    from ``resumed = (checkpoint, step)``, the cut of metrics and samples back to that step."""
    P, G = cfg.generation.prompts_per_step, cfg.generation.num_generations
    say(
        f"{train_report['file']}: {train_report['records']} records, {train_report['used']} prompts used; "
        f"over max_prompt_tokens={cfg.data.max_prompt_tokens}: {train_report['overflow_count']} (dropped)"
    )
    say(
        f"start: {start}; {total_steps} steps of {P} prompts x {G} samples "
        f"(max_new_tokens={cfg.generation.max_new_tokens}), loss {loss}, beta {cfg.grpo.beta}, "
        f"mu {cfg.grpo.num_iterations}"
    )
    if resumed is not None:
        checkpoint, step = resumed
        run.truncate_metrics(step)
        truncate_samples(run.path, step)
        say(f"resumed from {checkpoint} (step {step})")
    elif cfg.resume:
        say(f"resume=true but {run.checkpoints} holds no complete checkpoint: starting from step 0")


def append_samples(run: RunDir, step: int, kind: str, samples: list[dict[str, Any]]) -> None:
    with (run.path / "samples.jsonl").open("a", encoding="utf-8") as fh:
        for s in samples:
            fh.write(dumps({"step": step, "kind": kind, **s}) + "\n")


def truncate_samples(run_path: Path, last_step: int) -> None:
    path = run_path / "samples.jsonl"
    if not path.exists():
        return
    keep = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line).get("step", 0) <= last_step:
                keep.append(line)
        except json.JSONDecodeError:
            continue  # a torn last line from a killed run
    with atomic_open(path) as fh:
        fh.write("".join(k + "\n" for k in keep))


GRPO_PLOTS = {
    "reward": ["reward", "eval_reward"],
    "kl": ["kl"],
    "loss": ["loss"],
    "completion_len": ["completion_len_mean", "eval_completion_len_mean"],
    "lr": ["lr"],
}


def run_summary(
    run: RunDir, total_steps: int, final_eval: dict[str, Any], change: dict[str, Any] | None
) -> dict[str, Any]:
    """The summary.json figures both GRPO trainers read back from their metrics.jsonl, with the
    paired held-out ``change`` (``evals.heldout.heldout_change``)."""
    metrics = read_metrics(run.path)
    steps = [r for r in metrics if "reward" in r]
    evals = {r["step"]: r for r in metrics if "eval_reward" in r}

    def rate(tokens: str, seconds: str) -> float | None:
        t, s = sum(r.get(tokens, 0) for r in steps), sum(r.get(seconds, 0) for r in steps)
        return round(t / s, 2) if s and t else None

    def eval_view(r: dict[str, Any] | None) -> dict[str, Any] | None:
        return {k: v for k, v in r.items() if k.startswith("eval_")} if r else None

    return {
        "heldout_change": change,
        "train_reward_first": steps[0]["reward"] if steps else None,
        "train_reward_last": steps[-1]["reward"] if steps else None,
        "eval_before": eval_view(evals.get(0)),
        "eval_after": eval_view(evals.get(total_steps)) or eval_view(final_eval),
        "gen_tokens_per_s": rate("gen_tokens", "gen_time_s"),
        "train_tokens_per_s": rate("train_tokens", "train_time_s"),
        "step_seconds_mean": round(sum(r.get("step_time_s", 0) for r in steps) / len(steps), 2)
        if steps
        else None,
    }


def done_line(summary: dict[str, Any]) -> str:
    """The run's last line: where it is and how the held-out reward moved (with its paired test)."""
    before, after = summary["eval_before"], summary["eval_after"]
    line = f"done: {summary['run_dir']}"
    if before and after:
        line += f"; held-out reward {before['eval_reward']:.4f} -> {after['eval_reward']:.4f}"
    c = summary.get("heldout_change")
    if c and c["n"]:
        lo, hi = c["ci95"]
        line += (
            f" (paired over {c['n']} prompts: change {c['mean_change']:+.3f} [{lo:+.3f}, {hi:+.3f}], "
            f"{c['up']} up / {c['down']} down, permutation p = {c['permutation_p']:.3g}, "
            f"sign test p = {c['sign_test_p']:.3g})"
        )
    return line


def record_heldout(
    run: RunDir,
    logger: Any,
    step: int,
    out: dict[str, Any],
    samples: list[dict],
    train_samples: list[dict],
    keep: int,
) -> str:
    """Log a held-out eval and its sample completions (eval and the last training step's); its line."""
    logger.log(step, **out)
    append_samples(run, step, "eval", samples[:keep])
    append_samples(run, step, "train", train_samples[:keep])
    return (
        f"step {step} held-out ({out['eval_n']} prompts, greedy): reward {out['eval_reward']:.4f}, "
        f"format {out['eval_format_accuracy']:.3f}, strict {out['eval_strict_accuracy']:.3f}, "
        f"truncated {out['eval_truncated']:.2f}"
    )
