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
    "matmul": ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::matmul", "aten::linear",
               "mkldnn::_linear_pointwise"),  # oneDNN's linear (trainers_torch.kernels)
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
WRAPPERS = ("ThunkExecutor::", "TaskDispatcher::")  # the runtime's spans around the ops it runs
OP_THREADS = (
    "XLAEigen"  # XLA's CPU intra-op threads, where the ops run (elsewhere: Python, waits, copies out)
)
XLA_KINDS = {  # executed XLA ops by kind (on CPU, YNNPACK runs the dots and what is fused into them)
    "matmul": ("ynn_fusion", "dot", "convolution"),
    "loops (lax.scan / while)": ("while", "conditional"),
    "copies / layout": ("copy", "wrapped_copy", "transpose", "concatenate", "slice", "dynamic"),
}


def xla_kind(name: str) -> str:
    base = name.split(".")[0]
    for kind, prefixes in XLA_KINDS.items():
        if base.startswith(prefixes):
            return kind
    return "elementwise / other fusions"


def jax_trace_summary(trace_dir: Path) -> dict[str, Any]:
    """The newest JAX trace under ``trace_dir``: compilation time apart, and the executed XLA ops
    summed by name (numbered copies of one op together: ``ynn_fusion.12`` → ``ynn_fusion``) and
    by kind. Only outermost ops count, so a loop's body is inside the loop's time, not added to it;
    Only XLA's intra-op threads count when the trace names them; Python frames, waits, dispatch and
    the runtime's wrappers are left out."""
    import gzip
    import re

    traces = sorted(trace_dir.glob("plugins/profile/*/*.trace.json.gz"))
    if not traces:
        return {"trace_summary": "no trace written"}
    events = json.loads(gzip.decompress(traces[-1].read_bytes()))["traceEvents"]
    compile_s, ops, kinds = 0.0, dict[str, float](), dict[str, float]()
    names = {(e.get("pid"), e.get("tid")): str(e.get("args", {}).get("name", ""))
             for e in events if e.get("ph") == "M" and e.get("name") == "thread_name"}  # fmt: skip
    op_threads = {k for k, v in names.items() if OP_THREADS in v}
    spans = sorted(
        (e for e in events if e.get("ph") == "X"), key=lambda e: (e.get("pid"), e.get("tid"), e.get("ts", 0))
    )
    thread, open_until = None, float("-inf")
    for e in spans:
        name, dur = e.get("name", ""), e.get("dur", 0)
        if name == "backend_compile_and_load":
            compile_s += dur / 1e6
            continue
        if op_threads and (e.get("pid"), e.get("tid")) not in op_threads:
            continue
        if name.startswith(("$", "PjitFunction", *WRAPPERS)) or any(m in name for m in COMPILE_MARKS):
            continue
        if (e.get("pid"), e.get("tid")) != thread:
            thread, open_until = (e.get("pid"), e.get("tid")), float("-inf")
        if e.get("ts", 0) < open_until:  # inside an op already counted (a loop's body)
            continue
        open_until = e.get("ts", 0) + dur
        key = re.sub(r"\.\d+$", "", name)
        ops[key] = ops.get(key, 0.0) + dur / 1e6
        kinds[xla_kind(key)] = kinds.get(xla_kind(key), 0.0) + dur / 1e6
    total = sum(ops.values()) or 1.0
    top = sorted(ops.items(), key=lambda kv: -kv[1])[:20]
    return {
        "compile_s": round(compile_s, 2),
        "op_s": round(sum(ops.values()), 3),
        "share_by_kind": {k: round(v / total, 4) for k, v in sorted(kinds.items(), key=lambda kv: -kv[1])},
        "top_events_s": {k: round(v, 3) for k, v in top},
    }


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
        kind = op_kind(e.key) if e.key.startswith(("aten::", "mkldnn::")) else "python / framework"
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
