"""GRPO maths on small tensors, against values worked out by hand: advantages, the three loss
aggregations, clipping and its fraction, the k3 KL, the per-token weights."""

from __future__ import annotations

import math

import pytest
import torch

from common.grpo_config import LossConfig
from trainers_torch.losses import group_advantages, grpo_loss, sequence_weights, token_loss


def test_group_advantages_normalise_within_groups():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 2.0, 2.0, 2.0, 2.0, 0.0, 3.0, 0.0, 0.0])
    adv, flat = group_advantages(rewards, group_size=4)
    # group 1: mean 0.5, sample std sqrt(1/3); group 2: all equal; group 3: mean 0.75, std 1.5
    s1 = math.sqrt(1 / 3) + 1e-4
    want = [0.5 / s1, -0.5 / s1, -0.5 / s1, 0.5 / s1, 0, 0, 0, 0, -0.75 / 1.5001, 2.25 / 1.5001, -0.75 / 1.5001, -0.75 / 1.5001]  # fmt: skip
    torch.testing.assert_close(adv, torch.tensor(want), rtol=1e-6, atol=1e-6)
    assert flat.tolist() == [False, True, False]
    none, _ = group_advantages(rewards, group_size=4, scale="none")
    torch.testing.assert_close(
        none, torch.tensor([0.5, -0.5, -0.5, 0.5, 0, 0, 0, 0, -0.75, 2.25, -0.75, -0.75])
    )
    for r in adv.reshape(3, 4):
        assert abs(float(r.sum())) < 1e-5  # centred per group


def test_zero_variance_groups_get_exactly_zero():
    # 0.1 + 0.2 style values whose float mean is not exactly the value itself
    rewards = torch.tensor([0.1 + 0.2] * 3 + [1 / 3] * 3, dtype=torch.float32)
    adv, flat = group_advantages(rewards, group_size=3)
    assert flat.tolist() == [True, True]
    assert adv.tolist() == [0.0] * 6
    adv, _ = group_advantages(rewards, group_size=3, scale="none")
    assert adv.tolist() == [0.0] * 6


def padded_batch():
    """Two completions: 3 tokens with A = +1, 2 tokens with A = -2; ratios chosen per token."""
    ratios = torch.tensor([[1.0, 1.5, 0.5], [0.7, 1.1, 1.0]], dtype=torch.float64)
    old = torch.tensor([[-1.0, -2.0, -0.5], [-3.0, -0.2, -1.0]], dtype=torch.float64)
    logp = (old + ratios.log()).requires_grad_(True)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    adv = torch.tensor([1.0, -2.0], dtype=torch.float64)
    return logp, old, adv, mask


# per-token losses by hand, epsilon 0.2 (ratio clipped to [0.8, 1.2]):
#   A = +1: -min(r, clip r) = -1.0, -1.2 (1.5 clipped), -0.5 (0.5 below: min keeps r) -> sum -2.7
#   A = -2: 2 * max(r, clip r) = 1.6 (0.7 clipped to 0.8), 2.2                        -> sum  3.8
@pytest.mark.parametrize(
    ("loss_type", "want"),
    [
        ("grpo", (-2.7 / 3 + 3.8 / 2) / 2),  # per-sequence mean, then batch mean = 0.5
        ("dr_grpo", (-2.7 + 3.8) / (2 * 4)),  # / (N * max_new_tokens) = 0.1375
        ("dapo", (-2.7 + 3.8) / 5),  # / all tokens = 0.22
    ],
)
def test_loss_types_match_hand_computed_values(loss_type, want):
    logp, old, adv, mask = padded_batch()
    loss, stats = grpo_loss(logp, old, adv, mask, LossConfig(loss_type=loss_type), max_new_tokens=4)
    assert loss.item() == pytest.approx(want, abs=1e-9)
    assert stats["clip_fraction"] == pytest.approx(2 / 5)  # 1.5 above (A > 0) and 0.7 below (A < 0)
    assert "kl" not in stats


def test_clipping_stops_the_gradient_only_where_it_binds():
    logp, old, adv, mask = padded_batch()
    loss, _ = grpo_loss(logp, old, adv, mask, LossConfig(loss_type="grpo"), max_new_tokens=4)
    (grad,) = torch.autograd.grad(loss, logp)
    # d/dlogp of -r*A*w = -A * r * w with w = 1 / (N * |o_i|); clipped tokens and padding: 0
    want = torch.tensor(
        [[-1.0 * 1.0 / 6, 0.0, -1.0 * 0.5 / 6], [0.0, 2.0 * 1.1 / 4, 0.0]], dtype=torch.float64
    )
    torch.testing.assert_close(grad, want)


def test_epsilon_high_widens_only_the_upper_side():
    logp, old, adv, mask = padded_batch()
    cfg = LossConfig(loss_type="grpo", epsilon=0.2, epsilon_high=0.6)  # [0.8, 1.6]: 1.5 no longer clipped
    loss, stats = grpo_loss(logp, old, adv, mask, cfg, max_new_tokens=4)
    assert loss.item() == pytest.approx((-3.0 / 3 + 3.8 / 2) / 2)
    assert stats["clip_fraction"] == pytest.approx(1 / 5)
    assert cfg.clip_range == (0.8, 1.6)


def test_k3_kl_is_zero_when_policy_equals_reference_and_adds_beta_times_kl():
    logp, old, adv, mask = padded_batch()
    base, _ = grpo_loss(logp, old, adv, mask, LossConfig(loss_type="dapo"), max_new_tokens=4)
    same, stats = grpo_loss(
        logp, old, adv, mask, LossConfig(loss_type="dapo", beta=0.5), 4, ref_logp=logp.detach().clone()
    )
    assert stats["kl"] == 0.0 and same.item() == pytest.approx(base.item(), abs=1e-12)
    d = 0.5  # reference 0.5 nats above the policy on every token
    loss, stats = grpo_loss(
        logp, old, adv, mask, LossConfig(loss_type="dapo", beta=0.5), 4, ref_logp=logp.detach() + d
    )
    kl = math.exp(d) - d - 1  # 0.148721...
    assert stats["kl"] == pytest.approx(kl)
    assert loss.item() - base.item() == pytest.approx(0.5 * kl, abs=1e-9)  # dapo weights sum to 1
    d = torch.linspace(-3, 3, 13)
    assert bool(((torch.exp(d) - d - 1) >= 0).all())  # k3 is never negative


def test_on_policy_ratio_is_one_and_the_gradient_is_minus_advantage_times_weight():
    logp = torch.tensor([-1.0, -2.0, -0.3, -0.7], requires_grad=True)
    adv = torch.tensor([0.5, 0.5, -1.0, -1.0])
    w = torch.tensor(sequence_weights([2, 2], "grpo", 8)).repeat_interleave(2)
    loss, stats = token_loss(logp, logp.detach(), adv, w, LossConfig())
    (grad,) = torch.autograd.grad(loss, logp)
    torch.testing.assert_close(grad, -adv * w)
    assert loss.item() == pytest.approx(float(-(adv * w).sum()))
    assert int(stats["clipped_low"] + stats["clipped_high"]) == 0


def test_sequence_weights():
    assert sequence_weights([2, 4], "grpo", 10) == [1 / 4, 1 / 8]
    assert sequence_weights([2, 4], "dr_grpo", 10) == [1 / 20, 1 / 20]
    assert sequence_weights([2, 4], "dapo", 10) == [1 / 6, 1 / 6]
    with pytest.raises(ValueError):
        sequence_weights([1], "ppo", 10)
