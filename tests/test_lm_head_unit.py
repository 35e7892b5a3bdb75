"""The fused LM head (`lm_head.py`), the last layer on the read positions only, per-row temperatures in the
sampler and the fused optimizer: each against the slow, obvious computation it replaces."""

from __future__ import annotations

import math
from copy import deepcopy

import pytest
import torch

from rlhf_repro import lm_head, ops
from rlhf_repro.generation import _sample, _sample_buffer, generate, generate_many
from rlhf_repro.reward_model import ScalarModel, get_reward

PAD, EOS = 1, 0


def _model(parallel: bool = True, vocab: int = 100):
    from transformers import GPTNeoXForCausalLM

    from rlhf_repro.modeling import disable_dropout, shape_config

    torch.manual_seed(0)
    config = shape_config("tiny-s", vocab, eos_token_id=EOS, max_positions=128)
    config.use_parallel_residual = parallel
    model = GPTNeoXForCausalLM(config)
    disable_dropout(model)
    return model.eval()


@pytest.fixture(scope="module")
def lm():
    return _model()


def _obvious(hidden, weight, tokens, temperature):
    """float64 log_softmax(h W^T / T) at the tokens, and the entropy of that softmax."""
    logits = (hidden.double() @ weight.double().t()) / temperature
    logp = torch.log_softmax(logits, -1)
    return logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1), -(logp.exp() * logp).sum(-1)


@pytest.mark.parametrize("temperature", [1.0, 0.7 + 1e-7])
@pytest.mark.parametrize("chunk_elements", [lm_head.CHUNK_ELEMENTS, 3 * 97])  # one chunk; chunks of 3 rows
def test_token_logprobs_match_log_softmax_of_the_full_logits(temperature, chunk_elements):
    g = torch.Generator().manual_seed(1)
    hidden = torch.randn(4, 5, 16, generator=g, requires_grad=True)
    weight = (torch.randn(97, 16, generator=g) * 0.3).requires_grad_()
    tokens = torch.randint(0, 97, (4, 5), generator=g)
    logp, entropy = lm_head.token_logprobs(hidden, weight, tokens, temperature, True, chunk_elements)
    want_logp, want_entropy = _obvious(hidden, weight, tokens, temperature)
    assert logp.shape == entropy.shape == (4, 5) and logp.dtype == torch.float32
    assert (logp.double() - want_logp).abs().max() < 1e-5 and (entropy.double() - want_entropy).abs().max() < 1e-5
    upstream = torch.randn(4, 5, generator=g)
    grads = torch.autograd.grad((logp * upstream).sum(), (hidden, weight))
    want = torch.autograd.grad((want_logp * upstream.double()).sum(), (hidden, weight))
    for got, expected in zip(grads, want):
        assert (got.double() - expected).abs().max() < 1e-5
    assert lm_head.token_logprobs(hidden, weight, tokens, temperature)[1] is None  # entropy only when asked


def test_token_logprobs_gradcheck_in_float64_across_chunks():
    g = torch.Generator().manual_seed(2)
    hidden = torch.randn(5, 6, dtype=torch.float64, generator=g, requires_grad=True)
    weight = torch.randn(11, 6, dtype=torch.float64, generator=g, requires_grad=True)
    tokens = torch.randint(0, 11, (5,), generator=g)
    assert torch.autograd.gradcheck(
        lambda h, w: lm_head.token_logprobs(h, w, tokens, 0.7, chunk_elements=2 * 11)[0], (hidden, weight)
    )


def test_two_forwards_before_a_backward_keep_their_own_softmax():
    # The second forward finds the shared buffer leased to the first graph and takes its own.
    g = torch.Generator().manual_seed(3)
    weight = torch.randn(50, 8, generator=g, requires_grad=True)
    h1, h2 = (torch.randn(6, 8, generator=g, requires_grad=True) for _ in range(2))
    t1, t2 = (torch.randint(0, 50, (6,), generator=g) for _ in range(2))
    a = lm_head.token_logprobs(h1, weight, t1)[0].sum()
    b = lm_head.token_logprobs(h2, weight, t2)[0].sum()
    (a + 2 * b).backward()
    h1r, h2r, wr = (x.detach().clone().requires_grad_() for x in (h1, h2, weight))
    (_obvious(h1r, wr, t1, 1.0)[0].sum() + 2 * _obvious(h2r, wr, t2, 1.0)[0].sum()).backward()
    for got, want in ((h1.grad, h1r.grad), (h2.grad, h2r.grad), (weight.grad, wr.grad)):
        assert (got.double() - want).abs().max() < 1e-5


def test_a_retained_graph_is_reused_correctly_or_fails_loudly():
    g = torch.Generator().manual_seed(4)
    weight = torch.randn(30, 8, generator=g, requires_grad=True)
    hidden = torch.randn(4, 8, generator=g, requires_grad=True)
    tokens = torch.randint(0, 30, (4,), generator=g)
    out = lm_head.token_logprobs(hidden, weight, tokens)[0].sum()
    first = torch.autograd.grad(out, hidden, retain_graph=True)[0]
    again = torch.autograd.grad(out, hidden, retain_graph=True)[0]
    assert torch.equal(first, again)  # the backward does not consume the saved softmax
    lm_head.token_logprobs(hidden, weight, tokens)  # overwrites the (now released) shared buffer
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        torch.autograd.grad(out, hidden)


def test_no_grad_calls_save_nothing_and_match():
    g = torch.Generator().manual_seed(5)
    hidden, weight = torch.randn(7, 8, generator=g), torch.randn(40, 8, generator=g)
    tokens = torch.randint(0, 40, (7,), generator=g)
    with torch.no_grad():
        logp, entropy = lm_head.token_logprobs(hidden, weight, tokens, 0.5, True, chunk_elements=80)
    want_logp, want_entropy = _obvious(hidden, weight, tokens, 0.5)
    assert (logp.double() - want_logp).abs().max() < 1e-5 and (entropy.double() - want_entropy).abs().max() < 1e-5


@pytest.mark.parametrize("parallel", [True, False])
def test_tail_hidden_equals_the_full_forward_sliced_with_and_without_padding(parallel):
    model = _model(parallel)
    body = model.base_model
    assert lm_head.tail_supported(body)
    g = torch.Generator().manual_seed(6)
    tokens = torch.randint(2, 100, (3, 14), generator=g)
    padded = tokens.clone()
    padded[0, :4] = PAD  # left padding
    padded[2, -3:] = PAD  # right padding
    for x in (tokens, padded):  # no padding: the model passes no mask and the tail builds the causal one
        full = ops.forward(body, x, PAD).last_hidden_state
        tail = lm_head.tail_hidden(body, x, PAD, 9)
        assert tail.shape == (3, 5, full.size(-1))
        assert (tail - full[:, 9:]).abs().max() < 1e-5
        upstream = torch.randn(tail.shape, generator=g)
        params = [p for p in body.parameters()]
        want = torch.autograd.grad((full[:, 9:] * upstream).sum(), params, allow_unused=True)
        got = torch.autograd.grad((lm_head.tail_hidden(body, x, PAD, 9) * upstream).sum(), params, allow_unused=True)
        for a, b in zip(got, want):
            assert (a is None) == (b is None)
            if a is not None:
                assert (a - b).abs().max() < 1e-4
    assert "forward" not in vars(body.layers[-1])  # the layer's own forward is back
    checkpointed = deepcopy(model)
    checkpointed.activation_checkpointing_enable()
    assert not lm_head.tail_supported(checkpointed.base_model)  # its backward reruns the layer's forward
    assert torch.equal(lm_head.tail_hidden(body, tokens, PAD, 0), ops.forward(body, tokens, PAD).last_hidden_state)


def test_next_token_logprobs_with_a_mask_and_start_none_match_the_model_logits(lm):
    g = torch.Generator().manual_seed(7)
    tokens = torch.randint(2, 100, (3, 12), generator=g)
    tokens[1, :3] = PAD
    targets = tokens[:, 1:].clone()
    targets[:, :5] = PAD  # only the "response" positions count, as DPO's labels
    targets[2, -2:] = PAD
    mask = targets != PAD
    logits = ops.forward(lm, tokens, PAD).logits[:, :-1]
    want = torch.log_softmax(logits.double(), -1).gather(-1, targets.clamp_min(0).unsqueeze(-1)).squeeze(-1) * mask
    got, _ = lm_head.next_token_logprobs(lm, tokens, PAD, start=None, targets=targets, mask=mask)
    assert got.shape == (3, 11 - 5)  # from the first column the mask selects
    assert (got.double() - want[:, 5:]).abs().max() < 1e-5 and torch.all(got[~mask[:, 5:]] == 0)
    # The same numbers when the model offers no plain head (its own logits are used then).
    other = deepcopy(lm)
    head = other.get_output_embeddings()
    head.bias = torch.nn.Parameter(torch.zeros(head.out_features))
    assert lm_head.output_head(other) is None
    plain, _ = lm_head.next_token_logprobs(other, tokens, PAD, start=None, targets=targets, mask=mask)
    assert (plain - got).abs().max() < 1e-5
    # The SFT loss: the mean over every non-PAD target, as F.cross_entropy with ignore_index.
    loss = lm_head.next_token_nll(lm, tokens, PAD)
    assert loss.item() == pytest.approx(ops.next_token_loss(ops.forward(lm, tokens, PAD).logits, tokens, PAD).item())


def test_get_reward_from_start_reads_the_same_scores(lm):
    rm = ScalarModel.from_sft(lm.base_model).eval()
    g = torch.Generator().manual_seed(8)
    query_responses = torch.randint(2, 100, (4, 15), generator=g)
    query_responses[0, :3] = PAD
    query_responses[1, 11:] = PAD  # ends early: reward index 10
    query_responses[3, 9:] = PAD  # ends right after the query (context 9): reward index 8
    full, score, index = get_reward(rm, query_responses, PAD, context_length=9)
    for start in (None, 8):
        part, score2, index2 = get_reward(rm, query_responses, PAD, context_length=9, start=start)
        assert torch.equal(index2, index) and part.shape == (4, 15 - 8)
        assert (part - full[:, 8:]).abs().max() < 1e-5 and (score2 - score).abs().max() < 1e-5


def test_per_row_temperatures_draw_each_row_from_its_own_softmax():
    g = torch.Generator().manual_seed(9)
    logits = torch.randn(3, 40, generator=g) * 3
    temperature = torch.tensor([0.7, 0.01, 2.0])
    rows = 30_000
    big = logits.repeat_interleave(rows, 0)
    tokens, logp = _sample(big, temperature.repeat_interleave(rows), g, _sample_buffer(3 * rows, 40, "cpu"))
    for i, t in enumerate(temperature.tolist()):
        p = torch.softmax(logits[i].double() / (t + 1e-7), -1)
        freq = torch.bincount(tokens[i * rows : (i + 1) * rows], minlength=40).double() / rows
        assert 0.5 * (freq - p).abs().sum() < 0.02, (t, 0.5 * (freq - p).abs().sum())
        expected = torch.log_softmax(logits[i].double() / (t + 1e-7), -1)[tokens[i * rows : (i + 1) * rows]]
        assert (logp[i * rows : (i + 1) * rows].double() - expected).abs().max() < 1e-4


def test_sampling_where_most_of_the_vocabulary_underflows_keeps_the_distribution():
    # At T = 0.01 nearly every (l - max) / T is far below -87 (the exp floor): the live tokens must keep
    # their frequencies and the underflowed ones must (practically) never be drawn.
    logits = torch.full((50304,), -5.0)
    logits[[7, 1000, 40000]] = torch.tensor([0.0, -0.01, -0.02])
    rows = 20_000
    g = torch.Generator().manual_seed(10)
    tokens, logp = _sample(logits.expand(rows, -1), 0.01, g)
    p = torch.softmax(logits.double() / (0.01 + 1e-7), -1)
    freq = torch.bincount(tokens, minlength=50304).double() / rows
    assert set(tokens.unique().tolist()) <= {7, 1000, 40000}
    assert (freq[[7, 1000, 40000]] - p[[7, 1000, 40000]]).abs().max() < 0.015
    assert (logp.double() - torch.log(p)[tokens]).abs().max() < 1e-5


def test_generate_many_matches_separate_calls_at_each_rows_temperature(lm):
    g = torch.Generator().manual_seed(11)
    a = torch.randint(2, 100, (5, 9), generator=g)
    a[0, :4] = PAD
    b = torch.randint(2, 100, (3, 6), generator=g)  # narrower: left-padded to 9 when merged
    (ra, la), (rb, lb) = generate_many(lm, [(a, 0.7), (b, 0.01)], PAD, 8)
    assert ra.shape == (5, 8) and rb.shape == (3, 8)
    # Each row's log-probs are those of one full forward of its own (unpadded) query + response.
    for queries, responses, logps, t in ((a, ra, la, 0.7), (b, rb, lb, 0.01)):
        tokens = torch.cat((queries, responses), 1)
        input_ids, mask = ops.model_inputs(tokens, PAD)
        positions = (mask.long().cumsum(1) - 1).clamp_min(0)
        with torch.no_grad():
            logits = lm(input_ids=input_ids, attention_mask=mask, position_ids=positions).logits
        scaled = logits[:, queries.size(1) - 1 : -1].double() / (t + 1e-7)
        want = torch.log_softmax(scaled, -1).gather(-1, responses.unsqueeze(-1)).squeeze(-1)
        assert (logps.double() - want).abs().max() < 1e-4
    # Greedy batches (or the HF sampler) fall back to one call per batch.
    torch.manual_seed(0)
    (ga, _), (gb, _) = generate_many(lm, [(a, 0.0), (b, 0.0)], PAD, 8)
    assert torch.equal(ga, generate(lm, a, PAD, 8, 0.0)[0]) and torch.equal(gb, generate(lm, b, PAD, 8, 0.0)[0])


def test_the_fused_optimizer_steps_like_the_for_loop_one():
    from rlhf_repro.training import make_optimizer

    for name, cls in (("adamw", torch.optim.AdamW), ("adam", torch.optim.Adam)):
        torch.manual_seed(0)
        params = [torch.nn.Parameter(torch.randn(40, 8)), torch.nn.Parameter(torch.randn(8))]
        twins = [torch.nn.Parameter(p.detach().clone()) for p in params]
        fused = make_optimizer(name, params, 1e-2, 1e-5)
        plain = cls(twins, lr=1e-2, eps=1e-5, foreach=False)
        assert fused.defaults["fused"] is True
        for step in range(5):
            grads = [torch.randn_like(p) * math.exp(-step) for p in params]
            for p, q, grad in zip(params, twins, grads):
                p.grad, q.grad = grad.clone(), grad.clone()
            fused.step()
            plain.step()
        for p, q in zip(params, twins):
            assert torch.allclose(p, q, atol=1e-6, rtol=0)


def test_under_autocast_the_head_runs_in_its_own_dtype_and_zero3_params_are_left_alone(lm):
    g = torch.Generator().manual_seed(12)
    hidden = torch.randn(6, 16, generator=g).bfloat16().requires_grad_()
    weight = torch.randn(50, 16, generator=g, requires_grad=True)
    tokens = torch.randint(0, 50, (6,), generator=g)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logp, _ = lm_head.token_logprobs(hidden, weight, tokens, 0.7)
    assert logp.dtype == torch.float32
    want, _ = _obvious(hidden.float(), weight, tokens, 0.7)
    assert (logp.double() - want).abs().max() < 1e-5
    logp.sum().backward()
    assert hidden.grad.dtype == torch.bfloat16 and weight.grad is not None
    # A DeepSpeed ZeRO-3 parameter is a placeholder outside its module's hooks: the model's own head runs.
    other = deepcopy(lm)
    assert lm_head.output_head(other) is not None
    other.get_output_embeddings().weight.ds_id = 7
    assert lm_head.output_head(other) is None


@pytest.mark.parametrize("head", ["logits", "obvious"])
def test_the_logits_and_obvious_heads_take_the_models_own_logits(lm, monkeypatch, head):
    # DPO takes "logits" for both models when its prepared policy must run through its own forward;
    # `--lm-head obvious` is the reference's log_softmax + gather on those logits.
    tokens = torch.randint(2, 100, (2, 9), generator=torch.Generator().manual_seed(13))
    fused, fused_entropy = lm_head.next_token_logprobs(lm, tokens, PAD, start=3, entropy=True)

    def refuse(*args, **kwargs):
        raise AssertionError("the fused head ran")

    monkeypatch.setattr(lm_head, "token_logprobs", refuse)
    plain, plain_entropy = lm_head.next_token_logprobs(lm, tokens, PAD, start=3, entropy=True, head=head)
    assert plain.shape == fused.shape == (2, 5) and (plain - fused).abs().max() < 1e-5
    assert (plain_entropy - fused_entropy).abs().max() < 1e-4
    with pytest.raises(AssertionError, match="fused head ran"):
        lm_head.next_token_logprobs(lm, tokens, PAD, start=3)
    with pytest.raises(ValueError, match="head must be one of"):
        lm_head.next_token_logprobs(lm, tokens, PAD, start=3, head="fast")


def test_wrapped_models_and_zero3_layers_run_their_own_forward(lm):
    # A DeepSpeed engine passes unknown attributes (get_output_embeddings) through to its module, yet going
    # around its forward would skip ZeRO-3's gathering: a model with a `.module` is a wrapper, left alone.
    class Engine(torch.nn.Module):
        def __init__(self, module):
            super().__init__()
            self.module = module

        def __getattr__(self, name):
            try:
                return super().__getattr__(name)
            except AttributeError:
                return getattr(self.module, name)

        def forward(self, *args, **kwargs):
            return self.module(*args, **kwargs)

    engine = Engine(lm)
    assert engine.get_output_embeddings() is lm.get_output_embeddings()
    assert lm_head.output_head(lm) is not None and lm_head.output_head(engine) is None
    tokens = torch.randint(2, 100, (2, 9), generator=torch.Generator().manual_seed(14))
    via_engine, _ = lm_head.next_token_logprobs(engine, tokens, PAD, start=3)
    direct, _ = lm_head.next_token_logprobs(lm, tokens, PAD, start=3)
    assert (via_engine - direct).abs().max() < 1e-5
    # ZeRO-3 (PPO --offload): the last layer's weights are placeholders, so the tail path is off.
    other = deepcopy(lm)
    assert lm_head.tail_supported(other.base_model)
    next(other.base_model.layers[-1].parameters()).ds_id = 3
    assert not lm_head.tail_supported(other.base_model)


@pytest.mark.parametrize("temperature", [0.7 + 1e-7, 1.0, 0.05])
def test_fused_token_logprobs_and_entropy_match_the_obvious_version(temperature):
    torch.manual_seed(0)
    logits = (torch.randn(3, 5, 97, dtype=torch.float64) * 3).requires_grad_()
    tokens = torch.randint(0, 97, (3, 5))
    weights = torch.randn(3, 5, dtype=torch.float64)  # an arbitrary upstream gradient

    logp, entropy = lm_head.token_logprobs_and_entropy(logits, tokens, temperature)
    (logp * weights).sum().backward()
    fused_grad = logits.grad.clone()

    logits.grad = None
    full = torch.log_softmax(logits / temperature, -1)
    slow_logp = full.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    slow_entropy = -(full.exp() * full).sum(-1)
    # --lm-head obvious is that same computation.
    obvious_logp, obvious_entropy = lm_head.obvious_logprobs(logits, tokens, temperature, entropy=True)
    assert torch.equal(obvious_logp, slow_logp) and torch.equal(obvious_entropy, slow_entropy.detach())
    (slow_logp * weights).sum().backward()
    assert torch.allclose(logp, slow_logp, atol=1e-10)
    assert torch.allclose(entropy, slow_entropy.detach(), atol=1e-10)
    assert torch.allclose(fused_grad, logits.grad, atol=1e-10)
    assert not entropy.requires_grad
    assert torch.autograd.gradcheck(lambda x: lm_head.token_logprobs_and_entropy(x, tokens, temperature)[0], (logits,))
