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

`temperature == 0` means argmax (greedy) in both backends.
"""

from __future__ import annotations

import torch

from rlhf_repro.ops import model_inputs, trim_left_padding

TEMPERATURE_EPS = 1e-7  # the reference adds it to every temperature, so T=0.01 never divides by 0


def sample_from_logits(logits: torch.Tensor, temperature: float, generator: torch.Generator | None = None):
    """One token per row from softmax(logits / (T + 1e-7)) by inverse CDF; argmax when T == 0.

    logits: (B, V). Returns (tokens (B,), log-probs of those tokens under the tempered distribution (B,);
    at T == 0, under the untempered softmax).
    """
    if temperature == 0:
        tokens = logits.argmax(-1)
        logp = torch.log_softmax(logits.float(), -1)
    else:
        logp = torch.log_softmax(logits.float() / (temperature + TEMPERATURE_EPS), -1)
        cdf = logp.exp().cumsum(-1)
        u = torch.rand(logits.size(0), 1, generator=generator, device=logits.device) * cdf[:, -1:]
        # right=True: the first index whose cumulative mass exceeds u, so zero-probability tokens never win.
        tokens = torch.searchsorted(cdf, u, right=True).squeeze(-1).clamp_max(logits.size(-1) - 1)
    return tokens, logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


@torch.no_grad()
def _generate_fast(model, queries, pad_token_id, response_length, temperature, generator):
    from transformers import DynamicCache

    # Leading all-PAD columns carry nothing: positions come from the mask, so dropping them is exact.
    input_ids, mask = model_inputs(trim_left_padding(queries, pad_token_id), pad_token_id)
    mask = mask.long()
    positions = (mask.cumsum(1) - 1).clamp_min(0)
    out = model(
        input_ids=input_ids,
        attention_mask=mask,
        position_ids=positions,
        past_key_values=DynamicCache(),
        use_cache=True,
        logits_to_keep=1,
    )
    tokens, logps = [], []
    ones = torch.ones(len(queries), 1, dtype=mask.dtype, device=mask.device)
    next_pos = positions[:, -1:] + 1
    for t in range(response_length):
        tok, logp = sample_from_logits(out.logits[:, -1], temperature, generator)
        tokens.append(tok)
        logps.append(logp)
        if t == response_length - 1:
            break
        mask = torch.cat((mask, ones), dim=1)
        out = model(
            input_ids=tok.unsqueeze(1),
            attention_mask=mask,
            position_ids=next_pos,
            past_key_values=out.past_key_values,
            use_cache=True,
        )
        next_pos = next_pos + 1
    return torch.stack(tokens, 1), torch.stack(logps, 1)


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
