"""What every benchmark entry shares: the settings a side runs with, its subprocess, the
float32 matmul peak, FLOP counts, peak memory and the ``extra_info`` schema.

Each side (ours or a peer) runs in its own subprocess (``python -m benchmarks.sides NAME``),
so its peak resident memory is its own, on the threads the settings give it. A side times
``warmup`` steps it then drops and ``steps`` steps it keeps; the entry's figure is the median.

FLOPs are model FLOPs, counted the same way for ours and the peer from the tokens of the
step (so MFU ratios equal speed ratios), per token of an example at position p:

- decoder body (every matmul in the blocks, N_body parameters): forward 2·N_body, backward
  2·N_body for the activation gradients and, when the weights train (full), 2·N_body more:
  LoRA 4·N_body, full 6·N_body; LoRA adapters add 6·N_lora (they train);
- the LM head (vocab × hidden, tied to the embedding) only where the loss needs it, at the
  completion positions: 4·N_head with LoRA (forward + activation gradient), 6·N_head full;
- attention: 4·heads·head_dim FLOPs per (query, key) pair per layer forward (QKᵀ and AV),
  pairs = min(p + 1, window) on sliding layers and p + 1 on global ones; backward twice that.

Decoding counts 2·N_body + 2·N_head per generated token (the head only at the last position)
and 2·N_body per prompt token, plus the attention pairs forward only.

MFU = model FLOPs per second ÷ the float32 (or the run's dtype) matmul peak measured in the
same run on the same threads (``matmul_peak``: the best of square sizes by ``torch.mm`` and,
on CPU, oneDNN's linear).
"""

from __future__ import annotations

import dataclasses
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
INFO_KEYS = ("tokens_per_s", "samples_per_s", "peer", "ratio_to_peer", "mfu", "peak_rss_mb")


# --------------------------------------------------------------------------------------------
# Settings and the side subprocess
# --------------------------------------------------------------------------------------------


@dataclass
class Settings:
    """What every side of a benchmark group runs with (sent to the side's subprocess as JSON)."""

    model: str = "models/gemma-3-270m"
    dtype: str = "float32"  # bfloat16 on CUDA
    device: str = "cpu"
    threads: int = 2
    warmup: int = 1  # steps timed but dropped (first allocations, JAX compilation)
    steps: int = 2  # steps kept; the figure is their median
    sft_config: str = "configs/sft_gemma3_270m_cpu.yaml"
    sft_overrides: list[str] = field(default_factory=list)  # key=value on the SFT config
    # GRPO: P prompts x G samples of exactly max_new_tokens (the base model never stops early)
    grpo_prompts: int = 2
    grpo_generations: int = 4
    grpo_max_new_tokens: int = 48
    grpo_prompt_file: str = "data/built/gsm8k/train.jsonl"
    # decoding: greedy, batch, items of the eval config (the SFT default run's merged export)
    decode_model: str = "runs/sft-gemma3-270m-cpu"
    decode_config: str = "configs/eval/gsm8k_cpu.yaml"
    decode_data: str | None = None  # another item file than the eval config's
    decode_items: int = 100
    decode_batch: int = 32
    decode_max_new_tokens: int = 256
    decode_check_items: int = 32  # the first (longest) items also through transformers' generate


def default_settings() -> Settings:
    """The suite's settings: float32 on CPU with this machine's cores, bfloat16 on a GPU when
    ``BENCH_DEVICE=cuda``; ``BENCH_THREADS`` / ``BENCH_STEPS`` override the counts."""
    device = os.environ.get("BENCH_DEVICE", "cpu")
    return Settings(
        dtype="bfloat16" if device == "cuda" else "float32",
        device=device,
        threads=int(os.environ.get("BENCH_THREADS", len(os.sched_getaffinity(0)))),
        steps=int(os.environ.get("BENCH_STEPS", 2)),
    )


def run_side(side: str, settings: Settings, out_dir: Path, profile: Path | None = None) -> dict[str, Any]:
    """Run one side in a fresh subprocess on ``settings.threads`` threads; its result dict
    (under the profiler, its tables written to ``profile``, when given)."""
    out = out_dir / f"{side}.json"
    threads = str(settings.threads)
    env = dict(os.environ, OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads, PYTHONPATH=str(ROOT))
    env["XLA_FLAGS"] = side_xla_flags(env.get("XLA_FLAGS", ""), settings.threads)
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.sides",
        side,
        "--settings",
        json.dumps(dataclasses.asdict(settings)),
    ]
    cmd += ["--out", str(out)] + (["--profile", str(profile)] if profile else [])
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-30:])
        raise RuntimeError(f"side {side} failed (exit {proc.returncode}):\n{tail}")
    return json.loads(out.read_text()) | {"xla_flags": env["XLA_FLAGS"]}


def side_xla_flags(caller: str, threads: int) -> str:
    """A side's ``XLA_FLAGS``: the caller's own flags (kept) with one Eigen threading flag for
    ``threads`` (XLA has no thread-count flag); an Eigen flag already there (the in-process
    Collatz entry sets one for its single thread) is replaced, not stacked."""
    kept = [f for f in caller.split() if not f.startswith("--xla_cpu_multi_thread_eigen")]
    return " ".join([*kept, f"--xla_cpu_multi_thread_eigen={'true' if threads > 1 else 'false'}"])


def run_interleaved(sides: list[str], settings: Settings, out_dir: Path, rounds: int = 1) -> dict[str, Any]:
    """Each side ``rounds`` times in turn (a, b, a, b, ...), so a change in load hits every side;
    a side's steps from all its rounds are pooled."""
    results: dict[str, Any] = {}
    for r in range(rounds):
        for side in sides:
            res = run_side(side, settings, out_dir / f"round{r}")
            if side in results:
                for key in ("step_s", "tokens", "samples", "flops"):
                    results[side][key] += res[key]
                results[side]["peak_rss_mb"] = max(results[side]["peak_rss_mb"], res["peak_rss_mb"])
            else:
                results[side] = res
    return results


# --------------------------------------------------------------------------------------------
# Measuring inside a side: steps, memory, the matmul peak
# --------------------------------------------------------------------------------------------


def peak_rss_mb() -> float:
    """This process's peak resident memory in MB (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


class StepTimer:
    """Collects the per-step wall time, real tokens, samples and model FLOPs of a side."""

    def __init__(self, device: str = "cpu") -> None:
        self.device = device
        self.step_s: list[float] = []
        self.tokens: list[int] = []
        self.samples: list[int] = []
        self.flops: list[float] = []
        self._t0 = 0.0

    def start(self) -> None:
        sync(self.device)
        self._t0 = time.perf_counter()

    def stop(self, tokens: int, samples: int, flops: float) -> float:
        sync(self.device)
        dt = time.perf_counter() - self._t0
        self.step_s.append(dt)
        self.tokens.append(int(tokens))
        self.samples.append(int(samples))
        self.flops.append(float(flops))
        return dt

    def result(self, warmup: int, **extra: Any) -> dict[str, Any]:
        """The kept steps (after ``warmup``) and the process's peak memory."""
        out = {
            "step_s": self.step_s[warmup:],
            "tokens": self.tokens[warmup:],
            "samples": self.samples[warmup:],
            "flops": self.flops[warmup:],
            "warmup_s": self.step_s[:warmup],
            "peak_rss_mb": round(peak_rss_mb(), 1),
        }
        if self.device == "cuda":
            import torch

            out["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        return out | extra


def matmul_peak(device: str = "cpu", dtype: str = "float32", sizes: tuple[int, ...] = (1024, 2048, 3072),
                seconds: float = 1.5) -> dict[str, Any]:  # fmt: skip
    """The best matmul FLOP/s over square sizes on this process's threads: ``torch.mm`` and, on a
    CPU in float32 where this torch has it, oneDNN's linear (the decode loop's kernel,
    ``trainers_torch.kernels``), which on some CPUs beats the BLAS behind
    ``torch.mm``; ``kernel`` names the winner and ``by_kernel`` holds each one's best."""
    import torch

    from trainers_torch.kernels import ONEDNN, onednn_linear

    dt = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    kernels: dict[str, Any] = {"torch.mm": torch.mm}
    if device == "cpu" and dt == torch.float32 and ONEDNN is not None:
        kernels["oneDNN"] = onednn_linear  # a·bᵀ: the same FLOPs
    best: dict[str, Any] = {"flops_per_s": 0.0}
    by_kernel: dict[str, float] = {}
    for name, mm in kernels.items():
        for n in sizes:
            a = torch.randn(n, n, dtype=dt, device=device)
            b = torch.randn(n, n, dtype=dt, device=device)
            mm(a, b)  # warm-up
            reps, t0 = 0, time.perf_counter()
            sync(device)
            while time.perf_counter() - t0 < seconds / len(sizes):
                mm(a, b)
                reps += 1
            sync(device)
            rate = 2 * n**3 * reps / (time.perf_counter() - t0)
            by_kernel[name] = max(by_kernel.get(name, 0.0), rate)
            if rate > best["flops_per_s"]:
                best = {"flops_per_s": rate, "size": n, "kernel": name}
    info = {"by_kernel": by_kernel, "threads": torch.get_num_threads(), "dtype": dtype, "device": device}
    return best | info


# --------------------------------------------------------------------------------------------
# FLOP counts
# --------------------------------------------------------------------------------------------


@dataclass
class Shape:
    """The matmul shapes of a decoder-only model, from its HF ``config.json``."""

    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    windows: list[int | None]  # per layer: the sliding window, or None (global attention)

    @classmethod
    def from_model_dir(cls, path: str | Path) -> Shape:
        cfg = json.loads((Path(path) / "config.json").read_text())
        cfg = cfg.get("text_config", cfg)
        n = cfg["num_hidden_layers"]
        types = cfg.get("layer_types") or ["full_attention"] * n
        window = cfg.get("sliding_window")
        return cls(
            layers=n,
            hidden=cfg["hidden_size"],
            intermediate=cfg["intermediate_size"],
            heads=cfg["num_attention_heads"],
            kv_heads=cfg["num_key_value_heads"],
            head_dim=cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"],
            vocab=cfg["vocab_size"],
            windows=[window if t == "sliding_attention" else None for t in types],
        )

    @property
    def n_body(self) -> int:
        """Parameters in the decoder blocks' matmuls (q, k, v, o and the gated MLP)."""
        attn = 2 * self.hidden * self.heads * self.head_dim + 2 * self.hidden * self.kv_heads * self.head_dim
        return self.layers * (attn + 3 * self.hidden * self.intermediate)

    @property
    def n_head(self) -> int:
        return self.vocab * self.hidden

    def n_lora(self, rank: int) -> int:
        """LoRA parameters on every linear layer of the blocks (A: in x r, B: r x out)."""
        q = self.heads * self.head_dim
        kv = self.kv_heads * self.head_dim
        per_layer = (self.hidden + q) * 2 + (self.hidden + kv) * 2 + 3 * (self.hidden + self.intermediate)
        return self.layers * rank * per_layer

    def attention_pairs(self, lengths: list[int], start: int = 0) -> int:
        """(query, key) pairs summed over layers for examples of these lengths, queries at
        positions ``start ..`` (``start`` > 0: tokens decoded after a prompt of that length)."""
        total = 0
        for n in lengths:
            for w in self.windows:
                total += sum(min(p + 1, w) if w else p + 1 for p in range(start, start + n))
        return total

    def attention_flops(self, pairs: int) -> float:
        return 4.0 * self.heads * self.head_dim * pairs


def train_flops(shape: Shape, lengths: list[int], n_targets: int, method: str, lora_rank: int = 0) -> float:
    """Model FLOPs of one training step on examples of ``lengths`` tokens with ``n_targets``
    completion (loss) positions (LoRA or full; see the module docstring)."""
    tokens = sum(lengths)
    if method == "lora":
        body = 4.0 * shape.n_body + 6.0 * shape.n_lora(lora_rank)
        head = 4.0 * shape.n_head
    else:
        body, head = 6.0 * shape.n_body, 6.0 * shape.n_head
    return body * tokens + head * n_targets + 3.0 * shape.attention_flops(shape.attention_pairs(lengths))


def decode_flops(shape: Shape, prompt_lengths: list[int], completion_lengths: list[int]) -> float:
    """Model FLOPs of prefilling the prompts and decoding the completions (forward only)."""
    prefill = 2.0 * shape.n_body * sum(prompt_lengths) + 2.0 * shape.n_head * len(prompt_lengths)
    prefill += shape.attention_flops(shape.attention_pairs(prompt_lengths))
    new = sum(max(0, c - 1) for c in completion_lengths)  # the first token comes from the prefill
    pairs = sum(
        shape.attention_pairs([max(0, c - 1)], start=p)
        for p, c in zip(prompt_lengths, completion_lengths, strict=True)
    )
    return prefill + (2.0 * shape.n_body + 2.0 * shape.n_head) * new + shape.attention_flops(pairs)


# --------------------------------------------------------------------------------------------
# Entries: figures, ratios, extra_info, pytest-benchmark stats
# --------------------------------------------------------------------------------------------


def figures(res: dict[str, Any], peak_flops_per_s: float) -> dict[str, Any]:
    """Median step time, tokens/s and samples/s over the kept steps, and MFU."""
    total_s = sum(res["step_s"])
    flops_per_s = sum(res["flops"]) / total_s
    return {
        "step_time_s": round(statistics.median(res["step_s"]), 4),
        "tokens_per_s": round(sum(res["tokens"]) / total_s, 2),
        "samples_per_s": round(sum(res["samples"]) / total_s, 4),
        "tflops_per_s": round(flops_per_s / 1e12, 5),
        "mfu": round(flops_per_s / peak_flops_per_s, 4) if peak_flops_per_s > 0 else None,
        "peak_rss_mb": res["peak_rss_mb"],
        "steps": len(res["step_s"]),
    }


def entry_info(
    side: str, results: dict[str, Any], peer: str | None, peak: dict[str, Any], rate: str = "tokens_per_s"
) -> dict[str, Any]:
    """The ``extra_info`` of one entry: its figures, its peer and the ratio of ``rate``
    (this side / the peer, from the same run), the matmul peak and what the side reported."""
    mine = figures(results[side], peak["flops_per_s"])
    info: dict[str, Any] = {"side": side, **mine, "rate": rate, "peer": peer, "ratio_to_peer": None}
    if peer is not None:
        theirs = figures(results[peer], peak["flops_per_s"])
        info["ratio_to_peer"] = round(mine[rate] / theirs[rate], 3) if theirs[rate] else None
        info["peak_rss_ratio_to_peer"] = round(mine["peak_rss_mb"] / theirs["peak_rss_mb"], 3)
    info["matmul_peak_gflops"] = round(peak["flops_per_s"] / 1e9, 1)
    info["matmul_peak_kernel"] = peak.get("kernel", "torch.mm")
    info["threads"] = peak["threads"]
    info["device"], info["dtype"] = peak["device"], peak["dtype"]
    info["xla_flags"] = results[side].get("xla_flags")  # what the side's subprocess ran with
    info["load"] = os.environ.get("BENCH_LOAD", "not stated (set BENCH_LOAD to name the machine's load)")
    info["notes"] = results[side].get("notes", {})
    return info


def enter(
    benchmark: Any, results: dict[str, Any], side: str, peer: str | None, peak: dict[str, Any], **extra: Any
) -> dict[str, Any]:
    """One entry of the suite: ``entry_info`` plus ``extra``, recorded on ``benchmark``."""
    info = entry_info(side, results, peer, peak) | extra
    record(benchmark, results, side, info)
    assert info["tokens_per_s"] > 0 and info["samples_per_s"] > 0, info
    return info


def record(benchmark: Any, results: dict[str, Any], side: str, info: dict[str, Any]) -> None:
    """Put a side's kept step times into the benchmark's stats (so ``pytest-benchmark compare``
    compares step times) and ``info`` into its ``extra_info``; prints the entry's line."""
    benchmark.extra_info.update(info)
    if not benchmark.disabled:  # the fixture's own timer would time the subprocesses, not the steps
        benchmark._mode = "pedantic(...)"
        stats = benchmark._make_stats(1)
        for s in results[side]["step_s"]:
            stats.update(s)
    ratio = info["ratio_to_peer"]
    versus = f", {ratio:.2f}x {info['peer']}" if ratio is not None else ""
    mfu = f"{info['mfu']:.1%}" if info["mfu"] is not None else "n/a"
    print(
        f"\n{side}: {info['tokens_per_s']:.1f} tokens/s, {info['samples_per_s']:.3f} samples/s, step "
        f"{info['step_time_s']:.2f} s, MFU {mfu}, peak RSS {info['peak_rss_mb']:.0f} MB{versus}"
    )


def load_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())
