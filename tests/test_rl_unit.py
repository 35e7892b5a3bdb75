"""Unit tests of the PPO arithmetic (rlhf_repro/rl.py) against slow loops on hand-made tensors."""

from __future__ import annotations

import math

import pytest
import torch

from rlhf_repro import rl

pytestmark = pytest.mark.unit

PAD, EOS = 1, 0


def test_masked_mean_var_whiten_match_plain_statistics_of_the_kept_values():
    values = torch.tensor([[1.0, 2.0, 3.0, 100.0], [4.0, 5.0, -50.0, 7.0]])
    mask = torch.tensor([[True, True, True, False], [True, True, False, True]])
    kept = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 7.0])
    assert rl.masked_mean(values, mask).item() == pytest.approx(kept.mean().item())
    assert rl.masked_mean(values, mask, axis=1).tolist() == pytest.approx([2.0, 16 / 3])
    assert rl.masked_var(values, mask).item() == pytest.approx(kept.var(unbiased=True).item())
    assert rl.masked_var(values, mask, unbiased=False).item() == pytest.approx(kept.var(unbiased=False).item())
    # Whitening uses the biased variance (the reference) and, with shift_mean=False, keeps the mean.
    w = rl.masked_whiten(values, mask)
    expected = (kept - kept.mean()) / math.sqrt(kept.var(unbiased=False).item() + 1e-8)
    assert w[mask].tolist() == pytest.approx(expected.tolist(), abs=1e-6)
    assert rl.masked_mean(w, mask).item() == pytest.approx(0.0, abs=1e-6)
    unshifted = rl.masked_whiten(values, mask, shift_mean=False)
    assert unshifted[mask].tolist() == pytest.approx((expected + kept.mean()).tolist(), abs=1e-5)
    with pytest.raises(ValueError, match="at least 2"):
        rl.masked_var(values, torch.tensor([[True, False, False, False], [False, False, False, False]]))


def test_response_masks_for_eos_truncated_responses():
    responses = torch.tensor(
        [
            [5, 6, EOS, PAD, PAD],  # EOS at 2
            [5, 6, 7, 8, 9],  # no EOS: last index 4
            [EOS, PAD, PAD, PAD, PAD],  # EOS first
        ]
    )
    lengths, padding_mask, padding_mask_p1 = rl.response_masks(responses, PAD)
    assert lengths.tolist() == [2, 4, 0]
    assert padding_mask.int().tolist() == [[0, 0, 0, 1, 1], [0, 0, 0, 0, 0], [0, 1, 1, 1, 1]]
    assert padding_mask_p1.int().tolist() == [[0, 0, 0, 0, 1], [0, 0, 0, 0, 0], [0, 0, 1, 1, 1]]


def test_score_position_eos_plus_one_vs_eos_and_the_rewards_it_builds():
    lengths = torch.tensor([2, 4, 0])
    assert rl.score_positions(lengths, 5, "eos_plus_one").tolist() == [3, 4, 1]  # at the end: stays at EOS
    assert rl.score_positions(lengths, 5, "eos").tolist() == [2, 4, 0]
    kl = torch.tensor([[0.1, 0.2, 0.3, 0.0, 0.0], [0.1, 0.1, 0.1, 0.1, 0.1], [0.5, 0.0, 0.0, 0.0, 0.0]])
    scores = torch.tensor([1.0, 2.0, 3.0])
    rewards, non_score = rl.per_token_rewards(scores, kl, 0.05, rl.score_positions(lengths, 5))
    expected = -0.05 * kl
    expected[0, 3] += 1.0
    expected[1, 4] += 2.0
    expected[2, 1] += 3.0
    assert torch.allclose(rewards, expected) and torch.allclose(non_score, -0.05 * kl)
    with pytest.raises(ValueError):
        rl.score_positions(lengths, 5, "nowhere")


def test_missing_eos_penalty_replace_vs_subtract():
    scores = torch.tensor([2.0, 3.0, -0.5])
    has_eos = torch.tensor([True, False, False])
    assert rl.apply_missing_eos_penalty(scores, has_eos, -1.0, "replace").tolist() == [2.0, -1.0, -1.0]
    assert rl.apply_missing_eos_penalty(scores, has_eos, 1.0, "subtract").tolist() == [2.0, 2.0, -1.5]
    assert rl.apply_missing_eos_penalty(scores, has_eos, -1.0, "subtract").tolist() == [2.0, 2.0, -1.5]


def test_kl_estimators():
    logp = torch.tensor([-1.0, -2.0, -0.5])
    ref = torch.tensor([-1.5, -2.0, -0.1])
    assert rl.kl_estimate(logp, ref, "k1").tolist() == pytest.approx([0.5, 0.0, -0.4])
    k3 = rl.kl_estimate(logp, ref, "k3")
    slow = [math.exp(r - p) - 1 - (r - p) for p, r in zip(logp.tolist(), ref.tolist())]
    assert k3.tolist() == pytest.approx(slow) and bool((k3 >= 0).all())


def test_gae_matches_a_slow_per_sequence_loop():
    g = torch.Generator().manual_seed(0)
    rewards = torch.randn(3, 6, generator=g)
    values = torch.randn(3, 6, generator=g)
    gamma, lam = 0.9, 0.8
    adv, ret = rl.gae(rewards, values, gamma, lam)
    for b in range(3):
        for t in range(6):
            # A_t = sum_k (gamma lam)^k delta_{t+k}
            total = 0.0
            for k in range(t, 6):
                next_v = values[b, k + 1].item() if k + 1 < 6 else 0.0
                delta = rewards[b, k].item() + gamma * next_v - values[b, k].item()
                total += (gamma * lam) ** (k - t) * delta
            assert adv[b, t].item() == pytest.approx(total, abs=1e-5)
    assert torch.allclose(ret, adv + values)
    # gamma = lam = 1 and zero values: the advantage is the reward-to-go.
    adv, _ = rl.gae(rewards, torch.zeros_like(values), 1.0, 1.0)
    assert torch.allclose(adv, rewards.flip(1).cumsum(1).flip(1), atol=1e-6)


def test_policy_loss_against_hand_computed_values():
    old = torch.log(torch.tensor([[0.5, 0.5, 0.5]]))
    new = torch.log(torch.tensor([[0.5, 0.75, 0.25]]))  # ratios 1, 1.5, 0.5
    adv = torch.tensor([[1.0, 1.0, -1.0]])
    valid = torch.tensor([[True, True, True]])
    loss, stats = rl.policy_loss(new, old, adv, valid, cliprange=0.2)
    # per token: max(-A r, -A clip(r)): t0 -1; t1 max(-1.5, -1.2) = -1.2 (clipped); t2 max(0.5, 0.8) = 0.8 (clipped)
    assert loss.item() == pytest.approx((-1.0 - 1.2 + 0.8) / 3)
    assert stats["clipfrac"].item() == pytest.approx(2 / 3)
    # A masked position does not count.
    loss_masked, _ = rl.policy_loss(new, old, adv, torch.tensor([[True, True, False]]), 0.2)
    assert loss_masked.item() == pytest.approx((-1.0 - 1.2) / 2)
    # First epoch: new == old gives ratio 1, approxkl 0, no clipping.
    loss0, stats0 = rl.policy_loss(old, old, adv, valid, 0.2)
    assert stats0["approxkl"].item() == 0.0 and stats0["clipfrac"].item() == 0.0
    assert torch.all(stats0["ratio"] == 1.0) and loss0.item() == pytest.approx(-(1 + 1 - 1) / 3)


def test_value_loss_against_hand_computed_values():
    old = torch.tensor([[0.0, 0.0]])
    new = torch.tensor([[0.5, -0.1]])
    returns = torch.tensor([[1.0, 1.0]])
    loss, stats = rl.value_loss(new, old, returns, torch.tensor([[True, True]]), cliprange_value=0.2)
    # t0: max((0.5-1)^2, (0.2-1)^2) = 0.64 (clipped worse); t1: max((-0.1-1)^2, same) = 1.21
    assert loss.item() == pytest.approx(0.5 * (0.64 + 1.21) / 2)
    assert stats["clipfrac"].item() == pytest.approx(0.5)


def test_adaptive_kl_controller_moves_beta_toward_the_target():
    ctl = rl.AdaptiveKLController(0.05, target=6.0, horizon=10000)
    assert ctl.update(12.0, 512) == pytest.approx(0.05 * (1 + 0.2 * 512 / 10000))  # KL too high: beta up, capped
    before = ctl.value
    assert ctl.update(3.0, 512) == pytest.approx(before * (1 - 0.2 * 512 / 10000))  # too low: down
    assert ctl.update(6.0, 512) == pytest.approx(before * (1 - 0.2 * 512 / 10000))  # on target: unchanged


def test_global_whitening_equals_whitening_the_concatenated_batches():
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(3, 5, generator=g), torch.randn(2, 5, generator=g)
    ma, mb = torch.rand(3, 5, generator=g) > 0.3, torch.rand(2, 5, generator=g) > 0.3
    full = rl.masked_whiten(torch.cat([a, b]), torch.cat([ma, mb]))

    # Process "a" sees shard a; its all_reduce adds what process "b" contributes to the same statistic,
    # in the order masked_whiten asks: the count, the sum, then squared deviations from the global mean.
    other = b * mb
    n_b, sum_b = mb.sum().float(), other.sum()
    seen = []

    def all_reduce(t):
        seen.append(t)
        if len(seen) == 1:
            return t + n_b
        if len(seen) == 2:
            return t + sum_b
        global_mean = (seen[1] + sum_b) / (seen[0] + n_b)
        return t + (((b - global_mean) ** 2) * mb).sum()

    local = rl.masked_whiten(a, ma, all_reduce=all_reduce)
    assert torch.allclose(local[ma], full[:3][ma], atol=1e-5)
    assert not torch.allclose(rl.masked_whiten(a, ma)[ma], full[:3][ma], atol=1e-3)  # rank-local differs


def test_gae_with_the_reference_masks_equals_gae_stopped_after_the_score():
    # Row 0 ends (EOS) at 2: KL is 0 after it, the score sits at 3, values are zeroed after 3. Running
    # GAE over all positions must equal a loop that stops at the score position with V(4) = 0.
    responses = torch.tensor([[5, 6, EOS, PAD, PAD, PAD], [5, 6, 7, 8, 9, 4]])
    lengths, padding_mask, padding_mask_p1 = rl.response_masks(responses, PAD)
    g = torch.Generator().manual_seed(2)
    kl = torch.randn(2, 6, generator=g).masked_fill(padding_mask, 0.0)
    values = torch.randn(2, 6, generator=g).masked_fill(padding_mask_p1, 0.0)
    scores = torch.tensor([1.5, -0.5])
    rewards, _ = rl.per_token_rewards(scores, kl, 0.05, rl.score_positions(lengths, 6))
    adv, _ = rl.gae(rewards, values, 1.0, 0.95)
    for b, last in ((0, 3), (1, 5)):
        lastgaelam = 0.0
        expected = [0.0] * (last + 1)
        for t in reversed(range(last + 1)):
            next_v = values[b, t + 1].item() if t < last else 0.0
            delta = rewards[b, t].item() + next_v - values[b, t].item()
            lastgaelam = delta + 0.95 * lastgaelam
            expected[t] = lastgaelam
        assert adv[b, : last + 1].tolist() == pytest.approx(expected, abs=1e-5)
    assert torch.all(adv[0, 4:] == 0)
    whitened = rl.masked_whiten(adv, ~padding_mask).masked_fill(padding_mask, 0)
    assert rl.masked_mean(whitened, ~padding_mask).item() == pytest.approx(0.0, abs=1e-6)
