"""Unit tests of the shared tensor pieces, each against a slow obvious version on hand-made tensors."""

from __future__ import annotations

import math

import pytest
import torch

from rlhf_repro import ops
from rlhf_repro.generation import generate, sample_from_logits

pytestmark = pytest.mark.unit

PAD, EOS = 1, 0


def slow_first_true(row: list[bool]) -> int:
    for i, b in enumerate(row):
        if b:
            return i
    return len(row)


def test_first_true_indices_matches_a_loop():
    g = torch.Generator().manual_seed(0)
    bools = torch.rand(50, 7, generator=g) < 0.2
    bools[0] = False  # a row with no True returns the row length
    got = ops.first_true_indices(bools)
    assert got.tolist() == [slow_first_true(r) for r in bools.tolist()]
    assert got[0] == 7


def test_truncate_response_keeps_the_first_eos_and_pads_after_it():
    responses = torch.tensor(
        [
            [5, 6, EOS, 7, EOS],  # EOS mid-way: everything after the first EOS becomes PAD
            [5, 6, 7, 8, 9],  # no EOS: unchanged
            [EOS, 5, 6, 7, 8],  # EOS first
        ]
    )
    out = ops.truncate_response(responses, EOS, PAD)
    assert out.tolist() == [[5, 6, EOS, PAD, PAD], [5, 6, 7, 8, 9], [EOS, PAD, PAD, PAD, PAD]]


def test_reward_index_on_hand_built_batches():
    # Right-padded RM layout (context 0): the last non-PAD token, the EOS when present.
    right = torch.tensor(
        [
            [7, 8, 9, EOS, PAD, PAD],  # with EOS -> 3
            [7, 8, 9, 4, PAD, PAD],  # without EOS -> still the last non-PAD (3)
            [7, 8, 9, 4, 5, EOS],  # no padding at all -> last position (5)
        ]
    )
    assert ops.reward_index(right, PAD).tolist() == [3, 3, 5]
    # PPO layout: a left-padded query of width 4, then the response. PAD inside the query is skipped.
    left = torch.tensor(
        [
            [PAD, PAD, 7, 8, 9, EOS, PAD],  # EOS at 5
            [PAD, 7, 8, 8, 9, 4, 3],  # response without EOS nor PAD -> last position 6
            [PAD, PAD, PAD, 8, EOS, PAD, PAD],  # EOS right after the query -> 4
        ]
    )
    assert ops.reward_index(left, PAD, context_length=4).tolist() == [5, 6, 4]
    # The same left-layout row read with context 0 would stop at the query's padding: that is why
    # PPO passes the query width (the bug of an early reference version).
    assert ops.reward_index(left[:1], PAD, context_length=0).tolist() == [-1]


def test_get_reward_reads_scores_at_the_reward_index():
    from rlhf_repro.reward_model import get_reward

    class PositionScores(torch.nn.Module):
        """A stand-in RM whose score at position t is 10*t + the token id."""

        def forward(self, input_ids, attention_mask, return_dict=True):
            t = torch.arange(input_ids.size(1)).expand_as(input_ids)
            return (10 * t + input_ids).float()

    batch = torch.tensor([[7, 8, EOS, PAD], [7, 8, 9, 4]])
    scores, rewards, index = get_reward(PositionScores(), batch, PAD)
    assert index.tolist() == [2, 3]
    assert rewards.tolist() == [20.0 + EOS, 34.0]  # PAD replaced by 0 in inputs, EOS read at index 2
    assert scores.shape == (2, 4)


def test_model_inputs_replace_pad_and_mask_it():
    ids, mask = ops.model_inputs(torch.tensor([[PAD, 5, EOS, PAD]]), PAD)
    assert ids.tolist() == [[0, 5, EOS, 0]] and mask.tolist() == [[False, True, True, False]]


def test_next_token_loss_matches_a_loop_over_tokens():
    g = torch.Generator().manual_seed(1)
    tokens = torch.tensor([[4, 5, 6, EOS, PAD, PAD], [4, 2, 3, 3, 2, EOS]])
    logits = torch.randn(2, 6, 9, generator=g)
    total, count = 0.0, 0
    for b in range(2):
        for t in range(5):
            target = tokens[b, t + 1].item()
            if target == PAD:
                continue
            total += -torch.log_softmax(logits[b, t], -1)[target].item()
            count += 1
    assert ops.next_token_loss(logits, tokens, PAD).item() == pytest.approx(total / count, rel=1e-6)


def test_logprobs_from_logits_matches_a_loop():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(2, 3, 5, generator=g)
    tokens = torch.tensor([[0, 4, 2], [1, 1, 3]])
    got = ops.logprobs_from_logits(logits, tokens)
    for b in range(2):
        for t in range(3):
            assert got[b, t].item() == pytest.approx(torch.log_softmax(logits[b, t], -1)[tokens[b, t]].item())


def test_trim_padding_helpers():
    x = torch.tensor([[PAD, 5, 6, PAD, PAD], [PAD, PAD, 6, 7, PAD]])
    assert ops.trim_right_padding(x, PAD).tolist() == [[PAD, 5, 6, PAD], [PAD, PAD, 6, 7]]
    a, b = ops.trim_right_padding(x, PAD, x * 2)
    assert a.shape == b.shape == (2, 4)
    assert ops.trim_left_padding(x, PAD).tolist() == [[5, 6, PAD, PAD], [PAD, 6, 7, PAD]]


@pytest.fixture(scope="module")
def tiny_lm():
    from transformers import GPTNeoXForCausalLM

    from rlhf_repro.modeling import disable_dropout, shape_config

    torch.manual_seed(0)
    model = GPTNeoXForCausalLM(shape_config("tiny-s", 100, eos_token_id=EOS, max_positions=128))
    disable_dropout(model)
    return model.eval()


def test_logprobs_do_not_depend_on_right_padding_or_micro_batch(tiny_lm):
    g = torch.Generator().manual_seed(3)
    seqs = [torch.randint(2, 100, (n,), generator=g) for n in (5, 9, 7)]

    def padded(width):
        return torch.stack([torch.cat([s, torch.full((width - len(s),), PAD)]) for s in seqs])

    def logps(batch):
        with torch.no_grad():
            logits = ops.forward(tiny_lm, batch, PAD).logits[:, :-1]
        return ops.logprobs_from_logits(logits, ops.model_inputs(batch, PAD)[0][:, 1:])

    a, b = logps(padded(9)), logps(padded(16))
    for i, s in enumerate(seqs):
        n = len(s) - 1
        assert torch.allclose(a[i, :n], b[i, :n], atol=1e-5)
        alone = logps(s.unsqueeze(0))[0]  # micro-batch of one
        assert torch.allclose(a[i, :n], alone, atol=1e-5)
    trimmed = ops.trim_right_padding(padded(16), PAD)
    assert trimmed.size(1) == 9 and torch.allclose(logps(trimmed), a, atol=1e-6)


def test_left_padding_changes_outputs_only_at_float_precision(tiny_lm):
    # Detail 14: without position_ids a left-padded copy is shifted in absolute position; rotary
    # attention depends on relative positions only, so the difference is numerical noise.
    seq = torch.tensor([[5, 6, 7, 8, 9, 10]])
    left = torch.cat([torch.full((1, 5), PAD), seq], 1)
    with torch.no_grad():
        a = ops.forward(tiny_lm, seq, PAD).logits[0]
        b = ops.forward(tiny_lm, left, PAD).logits[0, 5:]
    assert (a - b).abs().max().item() < 1e-4


def test_sampler_backends_agree_when_greedy_and_length_is_fixed(tiny_lm):
    g = torch.Generator().manual_seed(4)
    queries = torch.randint(2, 100, (4, 8), generator=g)
    queries[0, :3] = PAD  # left padding of different amounts
    queries[1, :6] = PAD
    fast, lp_fast = generate(tiny_lm, queries, PAD, 11, 0.0, sampler="fast")
    hf, lp_hf = generate(tiny_lm, queries, PAD, 11, 0.0, sampler="hf")
    assert fast.shape == (4, 11) and torch.equal(fast, hf)
    assert torch.allclose(lp_fast, lp_hf, atol=1e-4)
    # Extra all-PAD columns on the left change nothing (positions come from the mask).
    wider = torch.cat([torch.full((4, 5), PAD), queries], 1)
    assert torch.equal(generate(tiny_lm, wider, PAD, 11, 0.0)[0], fast)
    # Sampling runs exactly 11 steps in both backends, EOS or not.
    torch.manual_seed(0)
    for sampler in ("fast", "hf"):
        out, lp = generate(tiny_lm, queries, PAD, 11, 1.0, sampler=sampler)
        assert out.shape == (4, 11) and torch.all(lp <= 0)


def test_sampler_never_stops_or_suppresses_eos(tiny_lm):
    # A model that always prefers EOS must get EOS at every step: min_new_tokens must not forbid it.
    from copy import deepcopy

    model = deepcopy(tiny_lm)
    with torch.no_grad():
        model.get_output_embeddings().bias = None
        model.get_output_embeddings().weight.zero_()  # every logit is 0
    queries = torch.randint(2, 100, (2, 5))
    for sampler in ("fast", "hf"):
        out, _ = generate(model, queries, PAD, 6, 0.0, sampler=sampler)
        assert out.tolist() == [[EOS] * 6] * 2  # argmax of all-equal logits is token 0 = EOS


def test_inverse_cdf_sampling_matches_softmax_frequencies():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0, -math.inf]]).expand(40000, 5)
    g = torch.Generator().manual_seed(5)
    tokens, logp = sample_from_logits(logits, 1.0, generator=g)
    freq = torch.bincount(tokens, minlength=5).float() / len(tokens)
    expected = torch.softmax(logits[0], -1)
    assert (freq - expected).abs().max().item() < 0.01
    assert freq[4] == 0  # zero-probability tokens are never drawn
    assert torch.allclose(logp, expected.log()[tokens])
    # The temperature sharpens: T=0.01 (+1e-7) is near-greedy; log-probs refer to the tempered distribution.
    tokens, logp = sample_from_logits(logits[:100], 0.01, generator=g)
    assert torch.all(tokens == 0) and torch.all(logp > -1e-6)
    tokens, logp = sample_from_logits(logits[:1], 0.5, generator=g)
    assert logp.item() == pytest.approx(torch.log_softmax(logits[0] / (0.5 + 1e-7), -1)[tokens.item()].item())


def _slow_logp(logits: torch.Tensor, tokens: torch.Tensor, temperature: float) -> torch.Tensor:
    """float64 log_softmax(logits / (T + 1e-7)) at `tokens` (untempered at T == 0): the slow reference."""
    scaled = logits.double() if temperature == 0 else logits.double() / (temperature + 1e-7)
    return torch.log_softmax(scaled, -1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def test_two_level_inverse_cdf_matches_tempered_softmax_frequencies():
    # 300 tokens span three CDF blocks of 128 (the last one partial, zero-padded); whole stretches of
    # zero-probability tokens sit at the start, inside a block, across a block boundary and at the end.
    g = torch.Generator().manual_seed(11)
    logits = torch.randn(300, generator=g) * 0.6
    dead = torch.zeros(300, dtype=torch.bool)
    dead[[0, 1, 2, 50, 127, 128, 129, 299]] = True
    dead[200:260] = True
    logits[dead] = -math.inf
    rows, calls, temperature = 50_000, 8, 0.7
    counts = torch.zeros(300, dtype=torch.float64)
    for _ in range(calls):
        tokens, logp = sample_from_logits(logits.expand(rows, -1), temperature, generator=g)
        counts += torch.bincount(tokens, minlength=300).double()
        assert (logp.double() - _slow_logp(logits.expand(rows, -1), tokens, temperature)).abs().max() < 1e-5
    draws = rows * calls
    expected = torch.softmax(logits.double() / (temperature + 1e-7), -1) * draws
    assert counts[dead].sum() == 0  # zero-probability tokens never win
    # Pearson chi-square over the live tokens (every expected count is above 50 here): df = 231, so the
    # statistic's mean is 231 and its sd 21.5; 400 is 7.9 sd above the mean.
    live = ~dead
    assert expected[live].min() > 50
    chi2 = ((counts[live] - expected[live]) ** 2 / expected[live]).sum().item()
    assert chi2 < 400, chi2
    # Total variation distance: sampling noise alone gives about 0.008 at 400k draws; T = 0.75 instead of 0.7
    # gives 0.025 (and chi-square 1,700).
    assert 0.5 * (counts - expected).abs().sum().item() / draws < 0.015


@pytest.mark.parametrize("temperature", [0.0, 0.01, 0.7, 1.0, 2.0])
def test_sampled_logprobs_match_a_float64_log_softmax(temperature):
    # Pythia's 50,304-token vocabulary (393 whole CDF blocks) and one that ends in a partial block.
    g = torch.Generator().manual_seed(12)
    for vocab in (50304, 1000):
        logits = torch.randn(64, vocab, generator=g) * 4
        logits[:, ::7] = -math.inf  # zero-probability tokens
        tokens, logp = sample_from_logits(logits, temperature, generator=g)
        assert logp.dtype == torch.float32 and tokens.dtype == torch.long
        assert torch.isfinite(logits.gather(-1, tokens.unsqueeze(-1))).all()
        if temperature == 0:
            assert torch.equal(tokens, logits.argmax(-1))
        assert (logp.double() - _slow_logp(logits, tokens, temperature)).abs().max().item() < 1e-5


def test_inverse_cdf_edges_never_pick_zero_mass_tokens():
    from rlhf_repro.generation import _CDF_BLOCK, _inverse_cdf

    # Mass only at tokens 3 and 200 of 256 (two blocks): u = 0 must give 3, u at or past the total
    # (a rounded-up u * total) must give 200, never a zero-mass token or index 256.
    e = torch.zeros(3, 2 * _CDF_BLOCK)
    e[:, 3], e[:, 200] = 0.25, 0.75
    blocks = e.view(3, 2, _CDF_BLOCK)
    block_cdf = blocks.sum(-1).cumsum(-1)
    u = torch.tensor([[0.0], [1.0], [5.0]])
    assert _inverse_cdf(blocks, block_cdf, u).squeeze(-1).tolist() == [3, 200, 200]
    assert _inverse_cdf(blocks, block_cdf, torch.full((3, 1), 0.2499)).squeeze(-1).tolist() == [3] * 3
    assert _inverse_cdf(blocks, block_cdf, torch.full((3, 1), 0.25)).squeeze(-1).tolist() == [200] * 3


def test_fast_sampler_logprobs_match_a_full_forward_of_its_samples(tiny_lm):
    # The KV-cache loop (chunked prefill, in-place cache, hand-made LM head) must give the log-probs that one
    # forward over query + response gives (positions from the mask, as the sampler derives them), with left
    # padding of different amounts.
    g = torch.Generator().manual_seed(13)
    queries = torch.randint(2, 100, (6, 9), generator=g)
    queries[0, :4] = PAD
    queries[2, :8] = PAD
    # float32 noise in the logits (~1e-7) is divided by the temperature, hence the wider tolerance at T = 0.01.
    for temperature, tolerance in ((0.7, 1e-5), (0.0, 1e-5), (0.01, 1e-4)):
        responses, logps = generate(tiny_lm, queries, PAD, 12, temperature, generator=g)
        input_ids, mask = ops.model_inputs(torch.cat((queries, responses), 1), PAD)
        positions = (mask.long().cumsum(1) - 1).clamp_min(0)
        with torch.no_grad():
            logits = tiny_lm(input_ids=input_ids, attention_mask=mask, position_ids=positions).logits
        reference = _slow_logp(logits[:, queries.size(1) - 1 : -1], responses, temperature)
        assert (logps.double() - reference).abs().max().item() < tolerance


def test_fast_sampler_is_the_same_with_any_prefill_chunking_and_without_the_hand_made_head(tiny_lm, monkeypatch):
    from copy import deepcopy

    from transformers import GPTNeoXForCausalLM

    from rlhf_repro import generation

    g = torch.Generator().manual_seed(14)
    queries = torch.randint(2, 100, (7, 10), generator=g)
    queries[1, :5] = PAD
    queries[6, :9] = PAD
    greedy, greedy_logps = generate(tiny_lm, queries, PAD, 9, 0.0)
    monkeypatch.setattr(generation, "_PREFILL_TOKENS", 25)  # 2 rows per prefill chunk: 2, 2, 2 and 1
    chunked, chunked_logps = generate(tiny_lm, queries, PAD, 9, 0.0)
    assert torch.equal(chunked, greedy) and torch.allclose(chunked_logps, greedy_logps, atol=1e-5)

    class Wrapped(GPTNeoXForCausalLM):
        def forward(self, *args, **kwargs):  # an overridden forward: the sampler must call it, not the head
            return super().forward(*args, **kwargs)

    other = deepcopy(tiny_lm)
    other.__class__ = Wrapped
    plain, plain_logps = generate(other, queries, PAD, 9, 0.0)
    assert torch.equal(plain, greedy) and torch.allclose(plain_logps, greedy_logps, atol=1e-5)
