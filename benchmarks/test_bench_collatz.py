"""Collatz ranking MLP: training-step throughput, torch vs JAX, and the batch draw they share.

    make bench PYTEST_ARGS="-k collatz -s"

The model, optimizer and batch size are ``configs/collatz_cpu.yaml``'s, on one thread (the
config's ``train.threads``; XLA's flags are set before JAX computes anything). Each round is
``STEPS`` optimizer steps on pre-drawn batches, so the step entries time the framework alone;
``test_collatz_batch_draw`` times the exact-integer sampler and features (the same for both).
Samples/s go into each benchmark's ``extra_info`` and are printed.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from common import collatz_train as plan
from common.collatz_config import CollatzConfig
from common.config import load_config
from trainers_jax.ranking import limit_threads

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "collatz_cpu.yaml"
CFG = load_config(CollatzConfig, CONFIG)
STEPS = 5
limit_threads(CFG.train.threads)  # before the first JAX computation of the session


@pytest.fixture(scope="module")
def batches() -> list:
    sampler = plan.build_sampler(CFG)
    sampler.set_active(len(sampler.seeds))
    return [sampler.batch(CFG.train.batch_size) for _ in range(STEPS)]


def torch_steps(batches: list):
    import torch

    from trainers_torch.ranking import batch_tensors, build_model, build_optimizer, ranking_loss

    if CFG.train.threads:
        torch.set_num_threads(CFG.train.threads)
    model = build_model(CFG)
    optimizer = build_optimizer(model, CFG)
    tensors = [batch_tensors(b) for b in batches]

    def run() -> None:
        for t in tensors:
            loss, _ = ranking_loss(model, t, CFG.loss, 0.01)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    return run


def jax_steps(batches: list):
    import jax
    import jax.numpy as jnp

    from trainers_jax.ranking import batch_arrays, init_params, make_optimizer, make_train_step

    params = init_params(jax.random.key(0), CFG.task.lookahead, CFG.model.widths, CFG.loss.drift_coef, False)
    optimizer = make_optimizer(CFG.optim)
    state = {"params": params, "opt": optimizer.init(params)}
    step = make_train_step(CFG.loss, optimizer, CFG.loss.drift_coef)
    arrays = [{k: jnp.asarray(v) for k, v in batch_arrays(b).items()} for b in batches]
    anchor, lr = jnp.float32(0.01), jnp.float32(CFG.optim.lr)

    def run() -> None:
        for a in arrays:
            state["params"], state["opt"], loss, _ = step(state["params"], state["opt"], a, anchor, lr)
        loss.block_until_ready()

    return run


def timed(fn: Callable[[], object], seconds: list[float]) -> Callable[[], None]:
    """``fn`` that also records its wall time (the figures hold with --benchmark-disable too)."""

    def run() -> None:
        t0 = time.perf_counter()
        fn()
        seconds.append(time.perf_counter() - t0)

    return run


@pytest.mark.parametrize("backend", ["torch", "jax"])
def test_collatz_train_step(benchmark, batches, backend: str) -> None:
    run = torch_steps(batches) if backend == "torch" else jax_steps(batches)
    run()  # warm-up: JAX compiles, torch allocates
    seconds: list[float] = []
    benchmark.pedantic(timed(run, seconds), rounds=5, iterations=1)
    per_s = STEPS * CFG.train.batch_size / statistics.median(seconds)
    benchmark.extra_info.update({"samples_per_s": round(per_s), "widths": CFG.model.widths})
    print(
        f"\n{backend} Collatz training step, MLP {CFG.model.widths}, batch {CFG.train.batch_size}: {per_s:,.0f} samples/s"
    )
    assert per_s > 0


def test_collatz_batch_draw(benchmark) -> None:
    sampler = plan.build_sampler(CFG)
    sampler.set_active(len(sampler.seeds))
    seconds: list[float] = []
    benchmark.pedantic(timed(lambda: sampler.batch(CFG.train.batch_size), seconds), rounds=10, iterations=1)
    per_s = CFG.train.batch_size / statistics.median(seconds)
    benchmark.extra_info["samples_per_s"] = round(per_s)
    print(f"\nCollatz batch draw (exact integers, L = {CFG.task.lookahead}): {per_s:,.0f} samples/s")
    assert per_s > 0
