"""Where a benchmark side's time goes: each named side of ``benchmarks.sides`` run once under
the profiler with the suite's settings (``make bench-profile``).

    python -m benchmarks.profile sft_lora_ours decode_ours [--steps 2] [--out runs/bench/profiles]

Torch sides write ``<side>.txt`` (the top ops by self CPU time, the profiler's table) and
``<side>.json`` (each op kind's share of the profiled self time: matmuls, attention, softmax and
cross-entropy, copies, other aten ops, Python and framework overhead). JAX sides write a JAX
trace (``<side>/``, for TensorBoard or Perfetto) and their warm-up (compilation) vs step times.
The profiler adds overhead to every op: read shares, not speeds (``make bench`` measures those).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from benchmarks.harness import default_settings, run_side
from benchmarks.sides import SIDES


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("sides", nargs="+", choices=sorted(SIDES), metavar="SIDE")
    parser.add_argument("--steps", type=int, default=2, help="kept steps per side (after one warm-up)")
    parser.add_argument(
        "--settings", default="{}", help="JSON of benchmarks.harness.Settings fields to change"
    )
    parser.add_argument("--out", type=Path, default=Path("runs/bench/profiles"))
    args = parser.parse_args(argv)
    settings = dataclasses.replace(default_settings(), **({"steps": args.steps} | json.loads(args.settings)))
    (args.out / "results").mkdir(parents=True, exist_ok=True)
    for side in args.sides:
        run_side(side, settings, args.out / "results", profile=args.out)
        summary = json.loads((args.out / f"{side}.json").read_text())
        steps = ", ".join(f"{t:.2f}" for t in summary["step_s"])
        shares = "; ".join(f"{k} {v:.0%}" for k, v in summary.get("share_by_kind", {}).items())
        print(f"{side}: steps {steps} s (profiled)" + (f"; self time: {shares}" if shares else ""))
    print(f"profiles: {args.out}/")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
