"""Query formatting, paragraph truncation and padding for TL;DR and CNN/DM (details 2-5).

A port of the behaviour of OpenAI's `summarize_from_feedback/tasks.py` as the N+ reference uses it:
the template is tokenized; while it is longer than the budget, the truncation field is cut back to
just before its last `truncate_text` (a newline: drop the last paragraph), or by one character when
there is none, and the template is tokenized again. The result is padded to exactly `length` tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

TLDR_FORMAT = "SUBREDDIT: r/{subreddit}\n\nTITLE: {title}\n\nPOST: {post}\n\nTL;DR:"
CNNDM_FORMAT = "Article:\n{article}\n\nTL;DR:\n"
CNNDM_BATCHES = ("batch0_cnndm", "cnndm0", "cnndm2")


@dataclass
class TaskQueryHParams:
    """How queries of one task are formatted, truncated and padded, and the token-length maxima."""

    length: int = 512
    """Query budget in tokens: every query is padded (or truncated) to exactly this many tokens."""
    format_str: str = TLDR_FORMAT
    """Query template. No space after 'TL;DR:': the completion carries the leading space (detail 2)."""
    truncate_field: str = "post"
    """Field cut back while the formatted query is over budget."""
    truncate_text: str = "\n"
    """Cut the field just before its last occurrence of this text (one paragraph at a time)."""
    padding: Literal["pad_token", "empty_space"] = "pad_token"
    """Pad queries with the [PAD] token (released setting) or with space tokens (OpenAI's original)."""
    pad_side: Literal["left", "right"] = "left"
    """Side queries are padded on; left, so every prompt ends at the same column for generation."""
    max_sft_response_length: int | None = 53
    """Token budget of the SFT reference response (EOS included); also the policy's response length."""
    max_sft_query_response_length: int | None = 562
    """Token budget of query + reference response for SFT."""
    max_rm_response_length: int = 169
    """Token budget of a chosen/rejected response (EOS included)."""
    max_rm_query_response_length: int = 638
    """Token budget of query + chosen/rejected response."""


def tldr_params_default() -> TaskQueryHParams:
    return TaskQueryHParams()


def cnndm_params_default() -> TaskQueryHParams:
    return TaskQueryHParams(
        length=2047 - 128,
        format_str=CNNDM_FORMAT,
        truncate_field="article",
        max_sft_response_length=None,
        max_sft_query_response_length=None,
        max_rm_response_length=155,
        max_rm_query_response_length=2021,
    )


class TruncationError(ValueError):
    pass


def ensure_length(tokens: list[int], length: int, pad_sequence: list[int], pad_side: str | None) -> list[int]:
    """Pad `tokens` to `length` from `pad_sequence` (left: its tail, right: its head); never truncate."""
    if len(tokens) > length:
        raise TruncationError(f"{len(tokens)} tokens do not fit {length}")
    pad = length - len(tokens)
    if pad == 0:
        return list(tokens)
    if pad_side == "left":
        return list(pad_sequence[len(pad_sequence) - pad :]) + list(tokens)
    if pad_side == "right":
        return list(tokens) + list(pad_sequence[:pad])
    raise TruncationError(f"needed to pad {len(tokens)} tokens to {length} but pad_side is {pad_side!r}")


def truncate_query_fields(fields: dict, hparams: TaskQueryHParams, encode) -> tuple[list[int], dict, int]:
    """Cut `fields[truncate_field]` until the formatted query fits; return (tokens, fields, cuts).

    `encode(text) -> list[int]`. Faithful to the reference: drop everything from the last
    `truncate_text` on, or one character when there is none, then re-tokenize the whole template.
    """
    fields = dict(fields)
    key = hparams.truncate_field
    if key not in fields:
        raise TruncationError(f"cannot truncate field {key!r}; fields are {sorted(fields)}")
    tokens = encode(hparams.format_str.format(**fields))
    cuts = 0
    while len(tokens) > hparams.length:
        text = fields[key]
        if not text:
            raise TruncationError(
                f"query is {len(tokens)} tokens with field {key!r} already empty; the rest of the template "
                f"does not fit {hparams.length} tokens"
            )
        i = text.rfind(hparams.truncate_text) if hparams.truncate_text else -1
        fields[key] = text[:i] if i != -1 else text[:-1]
        tokens = encode(hparams.format_str.format(**fields))
        cuts += 1
    return tokens, fields, cuts


def pad_right(tokens: list[int], length: int, pad_id: int) -> list[int]:
    """Right-pad with PAD or cut to `length`, as the reference's `encode(padding="max_length",
    truncation=True)` does."""
    return list(tokens[:length]) + [pad_id] * max(0, length - len(tokens))


def response_label(query_response_token: list[int], n_query_tokens: int, pad_id: int) -> list[int]:
    """The query+response tokens with the first `n_query_tokens` positions set to PAD (used by DPO)."""
    out = list(query_response_token)
    out[:n_query_tokens] = [pad_id] * min(n_query_tokens, len(out))
    return out
