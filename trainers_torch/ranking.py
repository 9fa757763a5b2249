"""The Collatz ranking MLP and its loss in torch (used by ``trainers_torch.collatz``).

V(x) = softplus(MLP(x)) + 1e-6 > 0 with LeakyReLU(0.1) hidden layers named ``layers.{i}``
(the export's names), or softplus(V_L(n) + MLP(x)) + 1e-6 with ``model.base: closed_form``
(the output layer then starts at zero). The loss, per batch:

    Σ w·relu(margin − (V(n) − V(T n))) / B          the weighted one-step hinge
  + t4·mean relu(margin − (V(n) − V(T^4 n)))       optional multi-step hinges (unweighted)
  + t8·mean relu(margin − (V(n) − V(T^8 n)))
  + anchor_weight·mean (V(n) − target)²            the decaying anchor: ln n + β·drift (β fixed
                                                    or trained) or the closed form V_L(n)

``trainers_jax/ranking.py`` is the same in JAX; ``tests/test_collatz_parity.py`` checks both
give the same loss and gradients on the same weights and batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from common.collatz import LEAKY_SLOPE, V_FLOOR, PairBatch, layer_sizes
from common.collatz_config import CollatzConfig, LossConfig


class RankingMLP(torch.nn.Module):
    """Features → widths → 1, LeakyReLU(0.1), softplus output; ``drift_coef`` is β.

    With ``zero_output`` the last layer starts at zero (a model with a base starts at it).
    """

    def __init__(
        self,
        lookahead: int,
        widths: Sequence[int],
        drift_coef: float,
        learn_drift: bool,
        zero_output: bool = False,
    ):
        super().__init__()
        linears = [torch.nn.Linear(i, o) for i, o in layer_sizes(lookahead, widths)]
        if zero_output:
            torch.nn.init.zeros_(linears[-1].weight)
            torch.nn.init.zeros_(linears[-1].bias)
        self.layers = torch.nn.ModuleList(linears)
        beta = torch.tensor(float(drift_coef))
        if learn_drift:
            self.drift_coef = torch.nn.Parameter(beta)
        else:
            self.register_buffer("drift_coef", beta)

    def forward(self, x: torch.Tensor, base: torch.Tensor | None = None) -> torch.Tensor:
        for layer in self.layers[:-1]:
            x = F.leaky_relu(layer(x), LEAKY_SLOPE)
        out = self.layers[-1](x).squeeze(-1)
        return F.softplus(out if base is None else out + base) + V_FLOOR

    def export_params(self) -> dict[str, np.ndarray]:
        return {k: v.detach().cpu().numpy() for k, v in self.state_dict().items() if k.startswith("layers.")}


def batch_tensors(batch: PairBatch) -> dict[str, torch.Tensor]:
    """The batch's arrays as tensors: ``x0``, ``x1`` (and ``x4``/``x8``), ``log_n``, ``drift``, ``weight``,
    and the model's base ``b0``, ``b1``, … when it has one."""
    out = {f"x{j}": torch.from_numpy(x) for j, x in batch.x.items()}
    out |= {f"b{j}": torch.from_numpy(b) for j, b in (batch.base or {}).items()}
    out |= {k: torch.from_numpy(getattr(batch, k)) for k in ("log_n", "drift", "weight")}
    if batch.closed_form is not None:
        out["closed_form"] = torch.from_numpy(batch.closed_form)
    return out


def hinge(v_a: torch.Tensor, v_b: torch.Tensor, margin: float) -> torch.Tensor:
    return torch.relu(margin - (v_a - v_b))


def ranking_loss(
    model: RankingMLP, t: dict[str, torch.Tensor], cfg: LossConfig, anchor: float
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The total loss and its parts (detached), plus the batch's one-step margins."""
    v0 = model(t["x0"], t.get("b0"))
    v1 = model(t["x1"], t.get("b1"))
    rank = (hinge(v0, v1, cfg.margin) * t["weight"]).mean()
    total = rank
    parts = {"rank": rank}
    for j, coef in ((4, cfg.t4), (8, cfg.t8)):
        if coef > 0:
            parts[f"t{j}"] = hinge(v0, model(t[f"x{j}"], t.get(f"b{j}")), cfg.margin).mean()
            total = total + coef * parts[f"t{j}"]
    target = t["closed_form"] if cfg.target == "closed_form" else t["log_n"] + model.drift_coef * t["drift"]
    parts["anchor"] = F.mse_loss(v0, target)
    total = total + anchor * parts["anchor"]
    parts["margin"] = v0 - v1
    return total, {k: v.detach() for k, v in parts.items()}


@torch.no_grad()
def margins(model: RankingMLP, batch: PairBatch) -> np.ndarray:
    """V(n) − V(T n) for every pair of ``batch`` (float32, as trained)."""
    t = batch_tensors(batch)
    return (model(t["x0"], t.get("b0")) - model(t["x1"], t.get("b1"))).numpy()


def build_model(cfg: CollatzConfig) -> RankingMLP:
    """The MLP with torch's default Linear init, drawn from ``seed``."""
    torch.manual_seed(cfg.seed)
    learn_drift = cfg.loss.target == "adaptive"
    zero_output = cfg.model.base != "none"
    return RankingMLP(cfg.task.lookahead, cfg.model.widths, cfg.loss.drift_coef, learn_drift, zero_output)


def build_optimizer(model: RankingMLP, cfg: CollatzConfig) -> torch.optim.AdamW:
    o = cfg.optim
    return torch.optim.AdamW(
        model.parameters(), lr=o.lr, betas=(o.betas[0], o.betas[1]), eps=o.eps, weight_decay=o.weight_decay
    )
