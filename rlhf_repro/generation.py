"""Fixed-length sampling (R-03): exactly `response_length` new tokens, never stopping at EOS.

The reference calls HF `generate` with min_new_tokens = max_new_tokens = response length, EOS and PAD
unset, `temperature + 1e-7`, top_k 0 and top_p 1, then truncates after the first EOS (R-06). Two
backends draw from that same distribution:

- `hf`: HF `generate` configured exactly like the reference (the faithful path).
- `fast` (default): our own decode loop over the model's forward with a KV cache, positions derived
  from the attention mask (as `generate` derives them), and inverse-CDF sampling. On CPU, HF's
  `torch.multinomial` dominates sampling time at Pythia's 50k vocabulary (stack-notes §3b); the
  inverse CDF draws one uniform per row instead. The distribution is the same; the random stream is
  not, so the two backends give different samples for one seed (identical tokens when greedy).
  What else makes it fast on CPU (`rlhf-repro bench generate`): the KV cache is written in place
  instead of torch.cat-ed per step, the prompt is prefilled in row chunks, GPT-NeoX's LM head runs
  against a transposed weight, and the draw needs one exp pass over the vocabulary and no full-vocabulary
  log_softmax or cumulative sum.

`temperature == 0` means argmax (greedy) in both backends.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from rlhf_repro.ops import model_inputs, trim_left_padding

TEMPERATURE_EPS = 1e-7  # the reference adds it to every temperature, so T=0.01 never divides by 0

# Inverse-CDF sampling works on blocks of this many vocabulary entries (see `_sample`).
_CDF_BLOCK = 128
# The smallest argument `_sample` passes to exp(): exp(-87) = 1.6e-38 is still a normal float32.
_EXP_FLOOR = -87.0


def sample_from_logits(logits: torch.Tensor, temperature: float, generator: torch.Generator | None = None):
    """One token per row from softmax(logits / (T + 1e-7)) by inverse CDF; argmax when T == 0.

    logits: (B, V). Returns (tokens (B,), float32 log-probs of those tokens under the tempered distribution
    (B,); at T == 0, under the untempered softmax).
    """
    return _sample(logits, temperature, generator)


def _sample_buffer(rows: int, vocab: int, device) -> torch.Tensor:
    """Scratch space for `_sample`, reusable across steps: V entries per row, zero-padded to whole blocks."""
    return torch.zeros(rows, -(-vocab // _CDF_BLOCK) * _CDF_BLOCK, dtype=torch.float32, device=device)


def _sample(logits, temperature, generator=None, scratch=None):
    """`sample_from_logits`, optionally writing into `scratch` from `_sample_buffer` (its padding stays 0).

    One pass each for the row max, exp((l - max) / T') and per-block sums; no log_softmax and no cumulative
    sum over the whole vocabulary. The draw is two-level: u ~ U[0, total mass) picks the block whose
    cumulative mass first exceeds u, then the token inside that block whose cumulative mass first exceeds
    the remainder of u. This is the inverse CDF of the full vocabulary, with shorter (so also more accurate)
    float32 sums. The log-prob is (l_tok - max) / T' - log(total mass), i.e. log_softmax at the drawn token.
    """
    logits = logits.float()
    rows, vocab = logits.shape
    if scratch is None:
        scratch = _sample_buffer(rows, vocab, logits.device)
    if isinstance(temperature, torch.Tensor):  # one temperature per row (B,), all > 0: `generate_many`
        greedy, t = False, (temperature.float() + TEMPERATURE_EPS).view(rows, 1)
    else:
        greedy = temperature == 0
        t = 1.0 if greedy else temperature + TEMPERATURE_EPS
    top = logits.amax(-1, keepdim=True)
    e = scratch[:, :vocab]
    torch.sub(logits, top, out=e)  # in place on the buffer: no fresh (B, V) allocations per step
    if not greedy:
        e.div_(t)
    # exp() of arguments below about -87 lands in float32's subnormal range (or 0), which this CPU computes
    # ~15x slower: at T = 0.01 (every evaluation, R-04) nearly the whole vocabulary does, and a sampling
    # step took 22 ms instead of 2. Flooring the argument at -87 gives those entries a mass of 1.6e-38
    # instead of less: at most 1e-33 of probability over the whole vocabulary, far below what the float32
    # sums resolve (the total is >= 1). The log-prob of the drawn token does not read `e`.
    e.clamp_min_(_EXP_FLOOR)
    e.exp_()  # the max entry is exactly 1, so the total mass lies in [1, V]: no overflow, no underflow of it
    blocks = scratch.view(rows, -1, _CDF_BLOCK)
    block_cdf = blocks.sum(-1).cumsum(-1)  # (B, blocks)
    total = block_cdf[:, -1:]
    if greedy:
        tokens = logits.argmax(-1, keepdim=True)
    else:
        u = torch.rand(rows, 1, generator=generator, device=logits.device, dtype=torch.float32) * total
        tokens = _inverse_cdf(blocks, block_cdf, u)
    logp = (logits.gather(-1, tokens) - top) / t - total.log()
    return tokens.squeeze(-1), logp.squeeze(-1)


def _below(x, bound):
    """min(x, the largest float32 below `bound`): keeps a draw strictly inside [0, bound) despite rounding."""
    return torch.minimum(x, torch.nextafter(bound, torch.zeros_like(bound)))


def _inverse_cdf(blocks, block_cdf, u):
    """Tokens (B, 1): the first index whose cumulative mass exceeds u (B, 1), 0 <= u < total mass.

    searchsorted(right=True) returns the first entry strictly greater than u, so an entry of zero mass (whose
    cumulative value equals its predecessor's) is never returned; clamping u below the last cumulative value
    guarantees such an entry exists.
    """
    rows, _, size = blocks.shape
    u = _below(u, block_cdf[:, -1:])
    block = torch.searchsorted(block_cdf, u, right=True)  # (B, 1): block_cdf[block - 1] <= u < block_cdf[block]
    before = torch.where(block > 0, block_cdf.gather(-1, (block - 1).clamp_min(0)), 0.0)
    inner = blocks.gather(1, block.unsqueeze(-1).expand(rows, 1, size)).squeeze(1).cumsum(-1)  # (B, size)
    rest = _below(u - before, inner[:, -1:])  # u - before >= 0 exactly (IEEE subtraction of a >= b)
    return block * size + torch.searchsorted(inner, rest, right=True)


# Tokens per prefill forward (whole prompt rows): chunks this small keep the prefill's activations in the CPU
# caches, which beats one forward over the whole batch (10-20% faster at 64 x 200 tokens on CPU).
_PREFILL_TOKENS = 4096


@functools.cache
def _in_place_layer():
    """The cache layer class for decoding (defined lazily: importing transformers takes seconds)."""
    from transformers.cache_utils import DynamicLayer

    class InPlaceLayer(DynamicLayer):
        """A `DynamicLayer` whose keys/values are the filled prefix of buffers allocated once.

        `DynamicLayer.update` torch.cat's the whole cache every step; at batch 64 and ~250 positions that copy
        costs more than the attention itself. Here `update` writes the new positions in place. Keys and values
        are still exactly the filled positions (not a padded static cache), so attention and its mask are what
        `DynamicCache` would give.
        """

        def __init__(self, keys: torch.Tensor, values: torch.Tensor, filled: int):
            super().__init__()
            self.dtype, self.device = keys.dtype, keys.device
            self._buffers = keys, values
            self.keys, self.values = keys[:, :, :filled], values[:, :, :filled]
            self.is_initialized = True

        def update(self, key_states, value_states, *args, **kwargs):
            keys, values = self._buffers
            start = self.keys.size(-2)
            end = start + key_states.size(-2)
            keys[:, :, start:end] = key_states
            values[:, :, start:end] = value_states
            self.keys, self.values = keys[:, :, :end], values[:, :, :end]
            return self.keys, self.values

    return InPlaceLayer


def _next_token_logits(model):
    """forward(**inputs) -> (B, V) float32 logits at the last position, with the LM head done by hand if possible.

    The returned tensor may be a buffer that the next call overwrites: use it before calling again.

    For GPT-NeoX the logits are exactly `embed_out(gpt_neox(...).last_hidden_state)`. Doing that product here
    against a transposed copy of the head's weight (made once per call) is about 30% faster than nn.Linear's
    (V, H) layout at 64 rows on CPU, and writes into one buffer instead of a fresh (B, V) tensor per step.
    Any other model goes through its own forward.
    """
    from transformers import GPTNeoXForCausalLM

    head = model.get_output_embeddings()
    if not (
        isinstance(model, GPTNeoXForCausalLM)
        and type(model).forward is GPTNeoXForCausalLM.forward
        and type(head) is torch.nn.Linear
        and head.weight.dtype == torch.float32
    ):
        return lambda **inputs: model(**inputs, logits_to_keep=1).logits[:, -1].float()
    weight_t = head.weight.detach().t().contiguous()  # (H, V)
    bias = None if head.bias is None else head.bias.detach()
    out = None

    def forward(**inputs):
        nonlocal out
        hidden = model.gpt_neox(**inputs).last_hidden_state[:, -1]
        if out is None or out.size(0) != hidden.size(0):
            out = hidden.new_empty(hidden.size(0), weight_t.size(1))
        if bias is None:
            return torch.mm(hidden, weight_t, out=out)
        return torch.addmm(bias, hidden, weight_t, out=out)

    return forward


@torch.no_grad()
def _generate_fast(model, queries, pad_token_id, response_length, temperature, generator):
    from transformers import DynamicCache
    from transformers.cache_utils import Cache

    # Leading all-PAD columns carry nothing: positions come from the mask, so dropping them is exact.
    input_ids, prompt_mask = model_inputs(trim_left_padding(queries, pad_token_id), pad_token_id)
    rows, prompt_length = input_ids.shape
    # The last sampled token is never fed back, so the cache holds prompt_length + response_length - 1 entries.
    length = prompt_length + max(response_length - 1, 0)
    # The full-length mask is written once and grows in place (slices of it are passed), not by torch.cat.
    mask = prompt_mask.new_zeros(rows, length, dtype=torch.long)
    mask[:, :prompt_length] = prompt_mask
    positions = (mask[:, :prompt_length].cumsum(1) - 1).clamp_min(0)
    next_token_logits = _next_token_logits(model)

    # Prefill in row chunks of about _PREFILL_TOKENS tokens; each chunk's keys/values are copied into buffers
    # for the whole batch and all positions, which the decode steps then fill in place.
    step = max(1, _PREFILL_TOKENS // prompt_length)
    logits = buffers = None
    for r in range(0, rows, step):
        part = slice(r, r + step)
        cache = DynamicCache()
        chunk_logits = next_token_logits(
            input_ids=input_ids[part],
            attention_mask=mask[part, :prompt_length],
            position_ids=positions[part],
            past_key_values=cache,
            use_cache=True,
        )
        if buffers is None:
            logits = chunk_logits.new_empty(rows, chunk_logits.size(-1))
            buffers = [
                tuple(x.new_empty(rows, x.size(1), length, x.size(-1)) for x in (layer.keys, layer.values))
                for layer in cache.layers
            ]
        logits[part] = chunk_logits
        for (keys, values), layer in zip(buffers, cache.layers):
            keys[part, :, :prompt_length] = layer.keys
            values[part, :, :prompt_length] = layer.values
    cache = Cache(layers=[_in_place_layer()(keys, values, prompt_length) for keys, values in buffers])

    tokens = torch.empty(rows, response_length, dtype=torch.long, device=input_ids.device)
    logps = torch.empty(rows, response_length, dtype=torch.float32, device=input_ids.device)
    scratch = _sample_buffer(rows, logits.size(-1), logits.device)
    next_pos = positions[:, -1:] + 1
    for t in range(response_length):
        tokens[:, t], logps[:, t] = _sample(logits, temperature, generator, scratch)
        if t == response_length - 1:
            break
        mask[:, prompt_length + t] = 1
        logits = next_token_logits(
            input_ids=tokens[:, t : t + 1],
            attention_mask=mask[:, : prompt_length + t + 1],
            position_ids=next_pos,
            past_key_values=cache,
            use_cache=True,
        )
        next_pos = next_pos + 1
    return tokens, logps


@torch.no_grad()
def _generate_hf(model, queries, pad_token_id, response_length, temperature):
    from transformers import GenerationConfig

    greedy = temperature == 0
    config = GenerationConfig(
        max_new_tokens=response_length,
        min_new_tokens=response_length,
        do_sample=not greedy,
        temperature=None if greedy else temperature + TEMPERATURE_EPS,
        top_k=None if greedy else 0,
        top_p=None if greedy else 1.0,
        eos_token_id=None,  # never stop at EOS and never pad: every row gets exactly response_length tokens
        pad_token_id=None,
        return_dict_in_generate=True,
        output_scores=True,
    )
    input_ids, mask = model_inputs(queries, pad_token_id)
    # transformers 5 fills unset fields of `config` from the model's own generation_config, so an EOS
    # there would switch on the min_new_tokens processor and forbid EOS. The reference clears the model's
    # fields; do the same for the duration of the call.
    saved = model.generation_config.eos_token_id, model.generation_config.pad_token_id
    model.generation_config.eos_token_id = model.generation_config.pad_token_id = None
    try:
        out = model.generate(input_ids=input_ids, attention_mask=mask, generation_config=config)
    finally:
        model.generation_config.eos_token_id, model.generation_config.pad_token_id = saved
    responses = out.sequences[:, queries.size(1) :]
    scores = torch.stack(out.scores, 1)  # (B, R, V), already divided by the temperature when sampling
    logps = torch.log_softmax(scores.float(), -1).gather(-1, responses.unsqueeze(-1)).squeeze(-1)
    return responses, logps


def generate(
    model,
    queries: torch.Tensor,
    pad_token_id: int,
    response_length: int,
    temperature: float,
    sampler: str = "fast",
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample `response_length` tokens after each left-padded query.

    queries: (B, Q) left-padded with PAD. Returns (responses (B, R), logprobs (B, R)): the log-prob of each
    sampled token under softmax(logits / (T + 1e-7)), the distribution it was drawn from (R-01, R-02).
    """
    if queries.size(0) == 0:
        empty = torch.zeros(0, response_length, dtype=torch.long, device=queries.device)
        return empty, empty.float()
    if sampler == "fast":
        return _generate_fast(model, queries, pad_token_id, response_length, temperature, generator)
    if sampler == "hf":
        return _generate_hf(model, queries, pad_token_id, response_length, temperature)
    raise ValueError(f"unknown sampler {sampler!r}; one of fast, hf")


def generate_many(
    model,
    parts: list[tuple[torch.Tensor, float]],
    pad_token_id: int,
    response_length: int,
    sampler: str = "fast",
    generator: torch.Generator | None = None,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """`generate` for several (queries, temperature) batches at once: [(responses, logprobs), ...].

    With the fast sampler and every temperature > 0, the batches are left-padded to one width and sampled
    together, each row at its own temperature: one prefill and one decode loop instead of several. Positions
    come from the attention mask, so the extra left padding changes nothing (a row is drawn from exactly the
    distribution it would be drawn from alone). Otherwise the batches are sampled one after the other.
    PPO uses this for the validation batch it samples at T = 0.01 every update (R-05): alone, its 8 rows
    cost about half as much as the 64-row rollout, the decode loop being per-step overhead at that size."""
    if sampler != "fast" or len(parts) < 2 or any(t <= 0 for _, t in parts) or any(q.size(0) == 0 for q, _ in parts):
        return [generate(model, q, pad_token_id, response_length, t, sampler, generator) for q, t in parts]
    width = max(q.size(1) for q, _ in parts)
    queries = torch.cat([F.pad(q, (width - q.size(1), 0), value=pad_token_id) for q, _ in parts], 0)
    temperature = torch.cat([torch.full((q.size(0),), float(t), device=q.device) for q, t in parts])
    tokens, logps = _generate_fast(model, queries, pad_token_id, response_length, temperature, generator)
    sizes = [q.size(0) for q, _ in parts]
    return list(zip(tokens.split(sizes), logps.split(sizes)))
