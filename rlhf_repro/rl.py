"""The PPO arithmetic of the reference (n-plus-details.md details 23-25, R-07..R-10), as small pure
functions over (batch, response_length) tensors. Each is tested against a slow loop in tests/.

Masks follow the reference's names: `padding_mask[b, t]` is True at response positions after the EOS
(index > sequence_length), `padding_mask_p1` one position later (index > sequence_length + 1), because
the value target includes the step that receives the score (R-08).
"""

from __future__ import annotations

import torch

from rlhf_repro.ops import first_true_indices

INVALID_LOGPROB = 1.0  # the reference's fill for log-probs after the EOS: their KL is then exactly 0


def masked_mean(values: torch.Tensor, mask: torch.Tensor, axis: int | None = None) -> torch.Tensor:
    """Mean of `values` where `mask` is True (over everything, or along `axis`)."""
    mask = mask.to(values.dtype)
    if axis is None:
        return (values * mask).sum() / mask.sum()
    return (values * mask).sum(axis) / mask.sum(axis)


def masked_var(values: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance of `values` where `mask` is True; `unbiased` applies Bessel's correction n / (n - 1)."""
    mean = masked_mean(values, mask)
    variance = masked_mean((values - mean) ** 2, mask)
    if unbiased:
        n = mask.sum()
        if n < 2:
            raise ValueError(f"an unbiased variance needs at least 2 unmasked values, got {int(n)}")
        variance = variance * n / (n - 1)
    return variance


def masked_whiten(values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, all_reduce=None) -> torch.Tensor:
    """(values - mean) / sqrt(var + 1e-8) over the masked entries, with the *biased* variance as the
    reference computes it. `shift_mean=False` adds the mean back (used for reward whitening, detail 24).

    The reference whitens each process's batch on its own (R-13). `all_reduce`, a function summing a
    tensor over processes, makes the statistics global instead.
    """
    if all_reduce is None:
        mean, var = masked_mean(values, mask), masked_var(values, mask, unbiased=False)
    else:
        m = mask.to(values.dtype)
        n = all_reduce(m.sum())
        mean = all_reduce((values * m).sum()) / n
        var = all_reduce((((values - mean) ** 2) * m).sum()) / n
    whitened = (values - mean) * torch.rsqrt(var + 1e-8)
    if not shift_mean:
        whitened = whitened + mean
    return whitened


def response_masks(postprocessed_responses: torch.Tensor, pad_token_id: int):
    """(sequence_lengths, padding_mask, padding_mask_p1) for EOS-truncated responses (B, T).

    sequence_lengths[b] is the index of the last kept token (the EOS, or T-1 without one).
    """
    sequence_lengths = first_true_indices(postprocessed_responses == pad_token_id) - 1
    idx = torch.arange(postprocessed_responses.size(1), device=postprocessed_responses.device).unsqueeze(0)
    return sequence_lengths, idx > sequence_lengths.unsqueeze(1), idx > (sequence_lengths + 1).unsqueeze(1)


def kl_estimate(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: str = "k1") -> torch.Tensor:
    """Per-token KL estimate of the policy from the reference at the sampled tokens.

    k1 = log p - log q (the reference's; unbiased, can be negative); k3 = (q/p - 1) - log(q/p) (Schulman's
    low-variance, always >= 0 estimator).
    """
    if estimator == "k1":
        return logprobs - ref_logprobs
    if estimator == "k3":
        log_ratio = ref_logprobs - logprobs
        return torch.expm1(log_ratio) - log_ratio
    raise ValueError(f"unknown KL estimator {estimator!r}; one of k1, k3")


def apply_missing_eos_penalty(
    scores: torch.Tensor, contain_eos: torch.Tensor, penalty: float, mode: str = "replace"
) -> torch.Tensor:
    """Detail 23 (the EOS trick): responses without an EOS get `penalty` as their score (`replace`, the
    reference: -1) or lose |penalty| from it (`subtract`, TRL's `missing_eos_penalty`)."""
    if mode == "replace":
        return torch.where(contain_eos, scores, torch.full_like(scores, penalty))
    if mode == "subtract":
        return torch.where(contain_eos, scores, scores - abs(penalty))
    raise ValueError(f"unknown penalty mode {mode!r}; one of replace, subtract")


def score_positions(sequence_lengths: torch.Tensor, length: int, where: str = "eos_plus_one") -> torch.Tensor:
    """Index at which the score is added to the per-token rewards (R-08).

    `eos_plus_one` (the reference): one step after the EOS when that fits in the response, else at the
    EOS; `eos`: on the EOS token itself (the corrected placement argued in TRL #1893 / #3750).
    """
    if where == "eos_plus_one":
        p1 = sequence_lengths + 1
        return torch.where(p1 < length, p1, sequence_lengths)
    if where == "eos":
        return sequence_lengths
    raise ValueError(f"unknown score position {where!r}; one of eos_plus_one, eos")


def per_token_rewards(scores: torch.Tensor, kl: torch.Tensor, kl_coef: float, positions: torch.Tensor):
    """(rewards, non_score_reward): -kl_coef * kl at every step, plus the score at `positions` (R-07, R-08)."""
    non_score_reward = -kl_coef * kl
    rewards = non_score_reward.clone()
    rewards[torch.arange(rewards.size(0), device=rewards.device), positions] += scores
    return rewards, non_score_reward


def gae(rewards: torch.Tensor, values: torch.Tensor, gamma: float, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalized advantage estimation over all positions by a backward loop (R-09); the value after the
    last position is 0. Returns (advantages, returns = advantages + values). Mask values beforehand."""
    length = rewards.size(1)
    lastgaelam = torch.zeros_like(rewards[:, 0])
    reversed_advantages = []
    for t in reversed(range(length)):
        next_values = values[:, t + 1] if t < length - 1 else torch.zeros_like(values[:, t])
        delta = rewards[:, t] + gamma * next_values - values[:, t]
        lastgaelam = delta + gamma * lam * lastgaelam
        reversed_advantages.append(lastgaelam)
    advantages = torch.stack(reversed_advantages[::-1], dim=1)
    return advantages, advantages + values


def policy_loss(new_logprobs, old_logprobs, advantages, valid, cliprange: float):
    """Clipped surrogate (R-10): masked mean of max(-A r, -A clip(r, 1 +- eps)); returns (loss, stats)."""
    log_ratio = new_logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    losses = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)
    loss = masked_mean(torch.max(losses, clipped), valid)
    stats = {
        "clipfrac": masked_mean((clipped > losses).float(), valid),
        "approxkl": 0.5 * (log_ratio**2).mean(),
        "ratio": ratio,
    }
    return loss, stats


def value_loss(new_values, old_values, returns, valid, cliprange_value: float):
    """Clipped value loss (R-10): 0.5 * masked mean of max((V - R)^2, (clip(V, V_old +- eps) - R)^2)."""
    clipped_values = torch.clamp(new_values, old_values - cliprange_value, old_values + cliprange_value)
    losses = (new_values - returns) ** 2
    clipped = (clipped_values - returns) ** 2
    loss = 0.5 * masked_mean(torch.max(losses, clipped), valid)
    return loss, {"clipfrac": masked_mean((clipped > losses).float(), valid)}


class AdaptiveKLController:
    """lm-human-preferences' adaptive KL coefficient (the reference ships it off, R-07).

    After each batch: beta *= 1 + clip(KL / target - 1, -0.2, 0.2) * n_steps / horizon, where KL is the
    batch's mean summed per-token KL and n_steps the episodes in the batch.
    """

    def __init__(self, init_kl_coef: float, target: float, horizon: int):
        self.value, self.target, self.horizon = init_kl_coef, target, horizon

    def update(self, current_kl: float, n_steps: int) -> float:
        proportional_error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + proportional_error * n_steps / self.horizon
        return self.value
