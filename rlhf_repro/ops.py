"""Small tensor pieces every stage shares: padding masks, EOS truncation, reward read-out index,
next-token loss, log-prob gathering. Each is tested against a slow, obvious version in tests/.

Conventions (detail 6): PAD positions are replaced by token 0 before a forward pass and excluded by
`attention_mask = tokens != PAD`; queries are left-padded, SFT/RM sequences are right-padded. Explicit
`position_ids` are not passed to forward passes (the reference's choice; rotary attention depends only
on relative positions, so a uniform padding offset changes scores only at float precision, detail 14).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def first_true_indices(bools: torch.Tensor, dtype=torch.long) -> torch.Tensor:
    """Index of the first True along the last dim; the row length where a row has no True."""
    row_len = bools.size(-1)
    zero_or_index = row_len * (~bools).type(dtype) + torch.arange(row_len, dtype=dtype, device=bools.device)
    return torch.min(zero_or_index, dim=-1).values


def truncate_response(responses: torch.Tensor, truncate_token_id: int, pad_token_id: int) -> torch.Tensor:
    """Replace every token after the first `truncate_token_id` (EOS) by PAD; the EOS itself is kept (R-06).

    responses: (B, T). Rows without the token are returned unchanged.
    """
    trunc_idxs = first_true_indices(responses == truncate_token_id).unsqueeze(-1)
    idxs = torch.arange(responses.size(-1), device=responses.device).view(1, -1)
    return torch.masked_fill(responses, idxs > trunc_idxs, pad_token_id)


def reward_index(query_responses: torch.Tensor, pad_token_id: int, context_length: int = 0) -> torch.Tensor:
    """Position the reward is read from (detail 12): the index of the first PAD after `context_length`,
    minus 1; with no PAD, the last position.

    `context_length` is 0 for right-padded RM data and the (left-padded) query width for PPO layouts.
    With the datasets' right padding and EOS truncation this is the last non-PAD token, the EOS. A PAD
    id sampled mid-response would end the read-out there, as in the reference.
    """
    response_part = query_responses[:, context_length:] == pad_token_id
    return first_true_indices(response_part) - 1 + context_length


def model_inputs(query_responses: torch.Tensor, pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids with PAD replaced by 0, attention_mask = tokens != PAD) (detail 6)."""
    attention_mask = query_responses != pad_token_id
    return torch.masked_fill(query_responses, ~attention_mask, 0), attention_mask


def forward(model, query_responses: torch.Tensor, pad_token_id: int, **kwargs):
    """Run a causal LM (or backbone) on padded tokens the reference's way (no explicit position_ids)."""
    input_ids, attention_mask = model_inputs(query_responses, pad_token_id)
    return model(input_ids=input_ids, attention_mask=attention_mask, return_dict=True, **kwargs)


def trim_right_padding(tokens: torch.Tensor, pad_token_id: int, *others: torch.Tensor):
    """Drop trailing columns that are PAD in every row.

    With causal attention, tokens after a position never influence it, so outputs at the kept
    positions are unchanged (up to kernel numerics; tested). Saves compute on right-padded data.
    """
    nonpad = (tokens != pad_token_id).any(dim=0)
    width = int(nonpad.nonzero().max().item()) + 1 if nonpad.any() else 1
    if not others:
        return tokens[:, :width]
    return (tokens[:, :width], *(o[:, :width] for o in others))


def trim_left_padding(tokens: torch.Tensor, pad_token_id: int) -> torch.Tensor:
    """Drop leading columns that are PAD in every row (for left-padded queries before generation)."""
    nonpad = (tokens != pad_token_id).any(dim=0)
    start = int(nonpad.nonzero().min().item()) if nonpad.any() else tokens.size(1) - 1
    return tokens[:, start:]


def next_token_loss(logits: torch.Tensor, tokens: torch.Tensor, pad_token_id: int) -> torch.Tensor:
    """Mean next-token cross-entropy over every non-PAD target token (detail 9: query tokens included).

    logits: (B, T, V) from a forward on `tokens` (B, T). Token-mean within the batch, as the reference's
    `F.cross_entropy(..., ignore_index=-1)` with PAD labels set to -1.
    """
    labels = tokens.masked_fill(tokens == pad_token_id, -1)
    shift_logits = logits[:, :-1, :]
    shift_labels = labels[:, 1:]
    return F.cross_entropy(shift_logits.reshape(-1, shift_logits.size(-1)), shift_labels.reshape(-1), ignore_index=-1)


def logprobs_from_logits(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[token] for each position: logits (B, T, V), tokens (B, T) -> (B, T)."""
    logp = F.log_softmax(logits.float(), dim=-1)
    return torch.gather(logp, 2, tokens.unsqueeze(-1)).squeeze(-1)
