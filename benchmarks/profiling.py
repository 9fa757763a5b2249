"""Where a benchmark side's time goes: the profiler around one side (``benchmarks.sides NAME
--profile DIR``, driven by ``make bench-profile`` / ``benchmarks.profile``), torch ops summed by
kind, JAX traces summed by XLA op with compilation apart."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.harness import Settings
from common.jsonl import write_json

# aten ops by kind, for the profile's shares (the rest is "other": elementwise, copies, norms ...)
OP_KINDS = {
    "matmul": ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::matmul", "aten::linear"),
    "attention": ("aten::_scaled_dot_product", "aten::scaled_dot_product"),
    "softmax / cross-entropy": ("aten::_softmax", "aten::_log_softmax", "aten::nll_loss", "aten::softmax",
                                "aten::log_softmax"),
    "copies / layout": ("aten::copy_", "aten::cat", "aten::index", "aten::contiguous", "aten::clone",
                        "aten::_to_copy", "aten::fill_", "aten::zero_", "aten::index_select", "aten::gather",
                        "aten::scatter", "aten::empty", "aten::embedding"),
}  # fmt: skip


def op_kind(name: str) -> str:
    for kind, prefixes in OP_KINDS.items():
        if name.startswith(prefixes):
            return kind
    return "other"


COMPILE_MARKS = ("ompile", "Codegen", "Pass", "HLO passes", "lower", "Lower", "Emit", "simplif")


def jax_trace_summary(trace_dir: Path) -> dict[str, Any]:
    """The newest JAX trace under ``trace_dir``, summed by event name: compilation apart, and the
    executed XLA ops (fusions, dots, copies) by total time, Python frames and dispatch left out."""
    import gzip

    traces = sorted(trace_dir.glob("plugins/profile/*/*.trace.json.gz"))
    if not traces:
        return {"trace_summary": "no trace written"}
    events = json.loads(gzip.decompress(traces[-1].read_bytes()))["traceEvents"]
    compile_s, ops = 0.0, dict[str, float]()
    for e in events:
        name = e.get("name", "")
        if e.get("ph") != "X" or name.startswith(("$", "PjitFunction")):
            continue
        if name == "backend_compile_and_load":
            compile_s += e.get("dur", 0) / 1e6
        elif not any(mark in name for mark in COMPILE_MARKS):
            ops[name] = ops.get(name, 0.0) + e.get("dur", 0) / 1e6
    top = sorted(ops.items(), key=lambda kv: -kv[1])[:20]
    return {"compile_s": round(compile_s, 2), "top_events_s": {k: round(v, 3) for k, v in top}}


def profile_side(
    name: str, fn: Callable[[Settings], dict[str, Any]], s: Settings, out_dir: Path
) -> dict[str, Any]:
    """Run ``fn``, the side ``name`` under the torch profiler (CPU, and CUDA on a GPU); write the top ops by
    self time (``<name>.txt``) and each op kind's share of the profiled self time (``<name>.json``).
    JAX sides write a JAX trace (``<name>/``, TensorBoard or Perfetto) and the step-time split."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if name.endswith(("_jax", "_tunix")):
        import jax

        options = jax.profiler.ProfileOptions()
        options.python_tracer_level = 0  # Python frames would fill the trace's event cap before XLA's ops
        with jax.profiler.trace(str(out_dir / name), profiler_options=options):
            res = fn(s)
        summary = {
            "side": name,
            "trace": str(out_dir / name),
            "warmup_s": res["warmup_s"],
            "step_s": res["step_s"],
        }
        write_json(out_dir / f"{name}.json", summary | jax_trace_summary(out_dir / name))
        return res
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if s.device == "cuda" else [])
    with profile(activities=activities) as prof:
        res = fn(s)
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events) or 1
    shares: dict[str, float] = {}
    for e in events:
        kind = op_kind(e.key) if e.key.startswith("aten::") else "python / framework"
        shares[kind] = shares.get(kind, 0.0) + e.self_cpu_time_total / total
    top = sorted(events, key=lambda e: -e.self_cpu_time_total)[:15]
    summary = {
        "side": name,
        "profiled_self_cpu_s": round(total / 1e6, 2),
        "step_s": res["step_s"],
        "warmup_s": res["warmup_s"],
        "share_by_kind": {k: round(v, 4) for k, v in sorted(shares.items(), key=lambda kv: -kv[1])},
        "top_ops": [{"op": e.key, "self_cpu_s": round(e.self_cpu_time_total / 1e6, 3), "calls": e.count,
                     "share": round(e.self_cpu_time_total / total, 4)} for e in top],
    }  # fmt: skip
    write_json(out_dir / f"{name}.json", summary)
    (out_dir / f"{name}.txt").write_text(events.table(sort_by="self_cpu_time_total", row_limit=30) + "\n")
    return res
