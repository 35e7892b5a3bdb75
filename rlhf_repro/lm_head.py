"""The LM head and the token log-probs in one op: `token_logprobs(hidden, weight, tokens, temperature)`.

Every stage that trains a policy needs log softmax(h W^T / T)[token] at some positions (SFT's next-token
loss, DPO's sequence log-probs, PPO's new log-probs and the reference policy's), and PPO also wants the
entropy. The obvious route (the model's LM head over every position, a scaled copy, log_softmax, gather)
allocates several fresh (rows, vocab) tensors per call. At Pythia's 50k vocabulary each one is ~170 MB
per 848 rows, and on CPU a fresh allocation that size costs page faults worth 3-4 full passes over it
(`bench ppo` profile: ~40% of a pythia-14m PPO micro-step sat in the LM head and its softmax).

This op instead
- runs the head only on the rows the caller selects (response positions, non-PAD targets);
- works in row chunks into scratch buffers that live across calls (no fresh vocab-sized tensors);
- keeps the softmax for the backward pass in a buffer that is leased to the autograd graph (a second
  forward before the first graph's backward gets its own buffer; a buffer overwritten under a retained
  graph makes that graph's backward fail loudly through autograd's saved-tensor version check, never
  silently);
- returns d/dh = G W and d/dW = G^T h with G = (onehot - softmax) * grad, in the same row chunks.

Numerics: the same math as `log_softmax(h @ W.T / T)`, in float32 (or float64) whatever the model dtype;
h is divided by T before the matmul, which moves results by float rounding only (tests compare against
the obvious version and run gradcheck in float64).
"""

from __future__ import annotations

import contextlib
import weakref

import torch
import torch.nn.functional as F

HEADS = ("fused", "logits", "obvious")
"""`next_token_logprobs` paths; `--lm-head` offers fused (default) and obvious."""

CHUNK_ELEMENTS = 1 << 24
"""Rows per chunk = this many elements / vocab (333 rows at 50k): two float32 scratch chunks of ~64 MB."""


class _Lease:
    """Held by the autograd context that saved a softmax buffer; the buffer is free once it is released
    (the backward ran) or garbage (the graph was dropped)."""

    released = False


class _Workspace:
    """Per (device, dtype, role) a flat buffer that grows to the largest request and is reused after."""

    def __init__(self):
        self.buffers: dict[tuple, torch.Tensor] = {}
        self.leases: dict[tuple, weakref.ref] = {}

    def get(self, role: str, shape: tuple[int, ...], dtype, device) -> torch.Tensor:
        key = (role, dtype, torch.device(device))
        numel = 1
        for s in shape:
            numel *= s
        buf = self.buffers.get(key)
        if buf is None or buf.numel() < numel:
            buf = self.buffers[key] = torch.empty(numel, dtype=dtype, device=device)
        return buf[:numel].view(shape)

    def lease(self, shape, dtype, device) -> tuple[torch.Tensor, _Lease]:
        """A buffer for a saved softmax: the shared one when no live graph holds it, else a fresh one."""
        key = ("saved", dtype, torch.device(device))
        holder = self.leases.get(key)
        lease = _Lease()
        current = holder() if holder is not None else None
        if current is not None and not current.released:
            return torch.empty(shape, dtype=dtype, device=device), lease
        self.leases[key] = weakref.ref(lease)
        return self.get("saved", shape, dtype, device), lease

    def clear(self) -> None:
        self.buffers.clear()
        self.leases.clear()


WORKSPACE = _Workspace()


def _chunks(rows: int, vocab: int, chunk_elements: int):
    step = max(1, chunk_elements // max(1, vocab))
    for start in range(0, rows, step):
        yield slice(start, min(rows, start + step))


class _TokenLogprobs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, tokens, want_entropy: bool, chunk_elements: int):
        rows, vocab = hidden.size(0), weight.size(0)
        acc = torch.promote_types(hidden.dtype, torch.float32)
        device = hidden.device
        needs_grad = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        logp = torch.empty(rows, dtype=acc, device=device)
        entropy = torch.empty(rows, dtype=acc, device=device) if want_entropy else None
        saved, lease = (None, None)
        if needs_grad:
            saved, lease = WORKSPACE.lease((rows, vocab), acc, device)
        step_rows = max(1, chunk_elements // max(1, vocab))
        logits = WORKSPACE.get("logits", (min(rows, step_rows), vocab), hidden.dtype, device)
        scratch = WORKSPACE.get("scratch", (min(rows, step_rows), vocab), acc, device)
        with torch.no_grad():
            for c in _chunks(rows, vocab, chunk_elements):
                n = c.stop - c.start
                lg, lsm = logits[:n], scratch[:n]
                torch.mm(hidden[c], weight.t(), out=lg)
                torch.log_softmax(lg, -1, dtype=acc, out=lsm)
                logp[c] = lsm.gather(1, tokens[c].unsqueeze(1)).squeeze(1)
                if saved is not None:
                    p = saved[c]
                    torch.exp(lsm, out=p)
                elif want_entropy:
                    p = lg if lg.dtype == acc else torch.empty_like(lsm)
                    torch.exp(lsm, out=p)
                if want_entropy:
                    entropy[c] = lsm.mul_(p).sum(1).neg_()
        ctx.mark_non_differentiable(*(t for t in (entropy,) if t is not None))
        if saved is not None:
            ctx.save_for_backward(hidden, weight, tokens, saved)
            ctx.lease, ctx.chunk_elements = lease, chunk_elements
        return logp, entropy

    @staticmethod
    def backward(ctx, grad_logp, _grad_entropy):
        hidden, weight, tokens, saved = ctx.saved_tensors
        rows, vocab = saved.shape
        device, acc = hidden.device, saved.dtype
        grad_hidden = torch.empty(hidden.shape, dtype=hidden.dtype, device=device) if ctx.needs_input_grad[0] else None
        grad_weight = torch.zeros(weight.shape, dtype=acc, device=device) if ctx.needs_input_grad[1] else None
        step_rows = max(1, ctx.chunk_elements // max(1, vocab))
        scratch = WORKSPACE.get("scratch", (min(rows, step_rows), vocab), acc, device)
        low = hidden.dtype != acc
        cast = WORKSPACE.get("logits", (min(rows, step_rows), vocab), hidden.dtype, device) if low else None
        g = grad_logp.to(acc).unsqueeze(1)
        for c in _chunks(rows, vocab, ctx.chunk_elements):
            n = c.stop - c.start
            grad = scratch[:n]
            # (onehot - p) * g, written to scratch: the saved softmax stays intact for a retained graph.
            torch.mul(saved[c], g[c].neg(), out=grad)
            grad.scatter_add_(1, tokens[c].unsqueeze(1), g[c])
            if low:
                cast[:n].copy_(grad)
                grad = cast[:n]
            if grad_hidden is not None:
                torch.mm(grad, weight, out=grad_hidden[c])
            if grad_weight is not None:
                grad_weight.addmm_(grad.t().to(acc), hidden[c].to(acc))
        ctx.lease.released = True
        if grad_weight is not None:
            grad_weight = grad_weight.to(weight.dtype)
        return grad_hidden, grad_weight, None, None, None


def token_logprobs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    tokens: torch.Tensor,
    temperature: float = 1.0,
    entropy: bool = False,
    chunk_elements: int = CHUNK_ELEMENTS,
):
    """log softmax(hidden @ weight.T / temperature)[tokens], and optionally the entropy of that softmax.

    hidden (..., H) (the final hidden states at the positions wanted), weight (V, H) (the output
    embedding, no bias), tokens (...) -> log-probs (...) in float32 (float64 for float64 inputs), and
    entropy (...) or None. Differentiable in `hidden` and `weight`; the entropy is a statistic (no
    gradient). `temperature` is the one the tokens were sampled at (R-01: the caller adds the 1e-7)."""
    lead = tokens.shape
    # In the head's own dtype, outside any autocast (the out= matmuls take no autocast; under mixed precision
    # this is the fp32 head and softmax a bf16 `logits` path would only approximate).
    h = hidden.reshape(-1, hidden.size(-1)).to(weight.dtype)
    if temperature != 1.0:
        h = h / temperature
    with torch.autocast(h.device.type, enabled=False):
        logp, ent = _TokenLogprobs.apply(h, weight, tokens.reshape(-1), entropy, chunk_elements)
    return logp.view(lead), (ent.view(lead) if ent is not None else None)


class _TokenLogprobsEntropy(torch.autograd.Function):
    """Forward: log-prob of `tokens` and entropy under softmax(logits / T), from one softmax pass. Backward:
    d logp / d logits = (onehot - p) / T from the saved softmax. The obvious version
    (log_softmax of a scaled copy, gather, then a separate softmax for the entropy) makes about twice as
    many full-vocabulary passes and copies; at Pythia's 50k vocabulary those dominate a PPO micro-step's
    LM-head work (bench ppo)."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, tokens: torch.Tensor, temperature: float):
        with torch.no_grad():
            scaled = logits.to(torch.promote_types(logits.dtype, torch.float32)) / temperature  # bf16 -> fp32
            top = scaled.amax(-1, keepdim=True)
            p = (scaled - top).exp_()
            z = p.sum(-1, keepdim=True)
            p.div_(z)
            lse = (top + z.log()).squeeze(-1)
            entropy = lse - torch.einsum("...v,...v->...", p, scaled)
            logp = scaled.gather(-1, tokens.unsqueeze(-1)).squeeze(-1) - lse
        ctx.save_for_backward(p, tokens)
        ctx.temperature, ctx.dtype = temperature, logits.dtype
        ctx.mark_non_differentiable(entropy)
        return logp, entropy

    @staticmethod
    def backward(ctx, grad_logp: torch.Tensor, _grad_entropy):
        p, tokens = ctx.saved_tensors
        g = (grad_logp / ctx.temperature).unsqueeze(-1)
        grad = p * -g  # not in place: a retained graph (retain_graph=True, gradcheck) may need p again
        grad.scatter_add_(-1, tokens.unsqueeze(-1), g)
        return grad.to(ctx.dtype), None, None


def token_logprobs_and_entropy(logits: torch.Tensor, tokens: torch.Tensor, temperature: float):
    """(log-prob of `tokens`, entropy) under softmax(logits / temperature), both (..., ) from logits (..., V).

    Differentiable in the log-probs (the entropy is a statistic: no gradient). `temperature` is the one the
    tokens were sampled at, including the reference's +1e-7 (R-01)."""
    return _TokenLogprobsEntropy.apply(logits, tokens, temperature)


def obvious_logprobs(logits: torch.Tensor, tokens: torch.Tensor, temperature: float = 1.0, entropy: bool = False):
    """The reference's way, for `--lm-head obvious` and as the tests' yardstick: log_softmax of the scaled
    logits over the whole vocabulary, gather at `tokens`; the entropy from the same log-softmax (no gradient).
    logits (..., V), tokens (...) -> (log-probs (...), entropy (...) or None), float32 or wider."""
    logp_all = F.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)) / temperature, dim=-1)
    logp = logp_all.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    ent = -(logp_all.exp() * logp_all).sum(-1).detach() if entropy else None
    return logp, ent


def output_head(model) -> torch.Tensor | None:
    """The output-embedding weight of a causal LM whose head is a bias-free linear layer, else None
    (callers then take the model's own logits). Also None for a model whose forward was replaced on the
    instance (accelerate's mixed-precision autocast wrapper) or that is wrapped (DDP, a DeepSpeed engine,
    which passes unknown attributes such as `get_output_embeddings` through to its module): going around
    their forward would skip the autocast, the gradient sync or ZeRO-3's parameter gathering."""
    if "forward" in vars(model) or isinstance(getattr(model, "module", None), torch.nn.Module):
        return None
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if not isinstance(head, torch.nn.Linear) or head.bias is not None:
        return None
    if hasattr(head.weight, "ds_id"):  # DeepSpeed ZeRO-3: a partitioned parameter, gathered only by the module's hooks
        return None
    return head.weight


# --- the last layer on the positions read only --------------------------------------------------------


def _tail_layer_forward(layer, start: int, hidden_states, attention_mask=None, position_embeddings=None, **_):
    """A GPT-NeoX layer whose outputs are computed for positions >= `start` only: keys and values still come
    from every position, but the queries, the attention output, the MLP and the residual sum do not run for
    the positions before `start`, whose last-layer outputs nothing reads. Same math as `GPTNeoXLayer.forward`
    (transformers 5) restricted to those rows; the attention mask is the one the model built, sliced, or
    the causal one when the model passed none (no padding)."""
    from transformers.models.gpt_neox.modeling_gpt_neox import apply_rotary_pos_emb

    attn = layer.attention
    batch, length, _ = hidden_states.shape
    qkv = attn.query_key_value(layer.input_layernorm(hidden_states))
    qkv = qkv.view(batch, length, -1, 3 * attn.head_size).transpose(1, 2)
    query, key, value = qkv.chunk(3, dim=-1)
    cos, sin = position_embeddings
    # HF's rotary function rotates two tensors of one length: the keys at every position, the queries at start..
    key = apply_rotary_pos_emb(key, key, cos, sin)[1]
    query = query[:, :, start:]
    query = apply_rotary_pos_emb(query, query, cos[:, start:], sin[:, start:])[0]
    if attention_mask is None:
        rows = torch.arange(start, length, device=hidden_states.device)
        mask = rows[:, None] >= torch.arange(length, device=hidden_states.device)[None, :]
    else:
        mask = attention_mask[:, :, start:, :]
    dropout = attn.attention_dropout if layer.training else 0.0
    out = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, dropout_p=dropout, scale=attn.scaling)
    out = attn.dense(out.transpose(1, 2).reshape(batch, length - start, -1))
    out = layer.post_attention_dropout(out)
    kept = hidden_states[:, start:]
    if layer.use_parallel_residual:
        mlp = layer.post_mlp_dropout(layer.mlp(layer.post_attention_layernorm(kept)))
        return mlp + out + kept
    out = out + kept
    return layer.post_mlp_dropout(layer.mlp(layer.post_attention_layernorm(out))) + out


def tail_supported(body) -> bool:
    """Whether `tail_hidden` can skip work on this body: a GPT-NeoX model with SDPA or eager attention and no
    gradient checkpointing (whose recomputation in the backward pass would run the layer's own forward)."""
    layers = getattr(body, "layers", None)
    config = getattr(body, "config", None)
    return (
        type(body).__name__ == "GPTNeoXModel"
        and layers is not None
        and len(layers) > 0
        and getattr(config, "_attn_implementation", None) in ("sdpa", "eager")
        and not getattr(body, "gradient_checkpointing", False)
        and not getattr(layers[-1], "gradient_checkpointing", False)
        # DeepSpeed ZeRO-3 (PPO's --offload): partitioned weights exist only inside their own modules' hooks
        and not any(hasattr(p, "ds_id") for p in layers[-1].parameters())
    )


@contextlib.contextmanager
def tail_of(body, start: int):
    """Within this context, `body`'s forward returns hidden states for positions start.. only, with its last
    layer run for those positions alone (GPT-NeoX); a no-op for start <= 0 or other bodies (whose callers
    slice). Not re-entrant for one body."""
    if start <= 0 or not tail_supported(body):
        yield
        return
    layer = body.layers[-1]
    layer.forward = lambda *args, **kwargs: _tail_layer_forward(layer, start, *args, **kwargs)
    try:
        yield
    finally:
        del layer.forward


def tail_hidden(body, tokens: torch.Tensor, pad_token_id: int, start: int) -> torch.Tensor:
    """Final (normed) hidden states of a transformer body at positions start.. of `tokens` (B, T) padded
    (detail 6): (B, T - start, H), equal to `forward(body, tokens, pad).last_hidden_state[:, start:]`.

    On GPT-NeoX the last layer runs for those positions only (its outputs elsewhere are never read): a
    PPO micro-step reads 54 of 253 positions, so about a sixth of each body's work goes. Other bodies run
    whole and are sliced."""
    from rlhf_repro.ops import forward

    with tail_of(body, start):
        hidden = forward(body, tokens, pad_token_id).last_hidden_state
    return hidden[:, max(start, 0) :] if hidden.size(1) == tokens.size(1) else hidden


def next_token_logprobs(
    model,
    tokens: torch.Tensor,
    pad_token_id: int,
    start: int | None = 0,
    targets: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    temperature: float = 1.0,
    entropy: bool = False,
    head: str = "fused",
):
    """Log-probs of the next tokens under a causal LM: position t (t >= start) scores `targets[:, t - start]`.

    tokens (B, T) padded (PAD handled as `ops.forward`, detail 6); targets (B, T - 1 - start), default
    tokens[:, start + 1:]; mask (same shape, optional): only those positions go through the LM head, the
    others get log-prob 0 (and entropy 0). Returns (log-probs, entropy or None), float32.

    start=None (with full-width targets and mask, (B, T - 1)): from the first position any row's mask
    selects, so the body's last layer skips the columns before it; the outputs then cover start.. only.

    `head` picks the path (`--lm-head`): "fused" runs `token_logprobs` when the model's output embedding is
    a bias-free linear layer (GPT-NeoX, Llama, ...) of a plain module (`output_head`), else the model's own
    logits through `token_logprobs_and_entropy` (one softmax pass); "logits" always takes that second path;
    "obvious" the model's logits through `obvious_logprobs` (log_softmax, gather). All agree to float
    rounding, not bit for bit: a caller comparing two models (DPO's policy and reference) uses one path
    for both."""
    from rlhf_repro.ops import forward

    if head not in HEADS:
        raise ValueError(f"head must be one of {HEADS}, got {head!r}")

    if start is None:
        if mask is None or targets is None:
            raise ValueError("start=None needs targets and mask")
        columns = mask.any(0).nonzero()
        start = int(columns[0]) if len(columns) else 0
        targets, mask = targets[:, start:], mask[:, start:]
    if targets is None:
        targets = tokens[:, start + 1 :]
    weight = output_head(model) if head == "fused" else None
    if weight is None:
        logits = forward(model, tokens, pad_token_id).logits[:, start:-1]
        safe = targets if mask is None else targets.masked_fill(~mask, 0)
        if head == "obvious":
            logp, ent = obvious_logprobs(logits, safe, temperature, entropy=True)
        else:
            logp, ent = token_logprobs_and_entropy(logits, safe, temperature)
        if mask is not None:
            logp, ent = logp * mask, ent * mask
        return logp, (ent if entropy else None)
    hidden = tail_hidden(model.base_model, tokens, pad_token_id, start)[:, :-1]
    if mask is None:
        return token_logprobs(hidden, weight, targets, temperature, entropy)
    logp, ent = token_logprobs(hidden[mask], weight, targets[mask], temperature, entropy)
    full = torch.zeros(mask.shape, dtype=logp.dtype, device=logp.device)
    return full.masked_scatter(mask, logp), (full.masked_scatter(mask, ent) if ent is not None else None)


def next_token_nll(model, tokens: torch.Tensor, pad_token_id: int, head: str = "fused") -> torch.Tensor:
    """Mean next-token cross-entropy over every non-PAD target token (detail 9: query tokens included), as
    `ops.next_token_loss` on the model's logits, with the LM head on those rows only (`token_logprobs`)."""
    targets = tokens[:, 1:]
    mask = targets != pad_token_id
    logp, _ = next_token_logprobs(model, tokens, pad_token_id, start=None, targets=targets, mask=mask, head=head)
    return -logp.sum() / mask.sum()
