"""Query truncation and padding (details 2-5) against a slow, literal port of the reference."""

import pytest

from rlhf_repro.tldr import (
    TaskQueryHParams,
    TruncationError,
    ensure_length,
    pad_right,
    response_label,
    truncate_query_fields,
)

pytestmark = pytest.mark.unit


def char_encode(text):  # one token per character: lengths are easy to count by hand
    return [ord(c) for c in text]


def reference_process_query(query_info, encode, length, format_str, truncate_field, truncate_text, pad, pad_side):
    """Slow, obvious port of the reference's process_query + _ensure_length."""
    query_info = dict(**query_info)
    query_tokens = encode(format_str.format(**query_info))
    while len(query_tokens) > length:
        if not len(query_info[truncate_field]):
            raise ValueError("Could not truncate enough!")
        i = -1
        if truncate_text:
            try:
                i = query_info[truncate_field].rindex(truncate_text)
            except ValueError:
                pass
        query_info[truncate_field] = query_info[truncate_field][:i]
        query_tokens = encode(format_str.format(**query_info))
    pad_amt = length - len(query_tokens)
    if pad_amt == 0:
        return query_tokens
    padding = [pad] * length
    return padding[-pad_amt:] + query_tokens if pad_side == "left" else query_tokens + padding[:pad_amt]


def hp(length, **kw):
    return TaskQueryHParams(length=length, format_str="P: {post}\nT:", **kw)


def test_fits_without_truncation_is_left_padded():
    tokens, fields, cuts = truncate_query_fields({"post": "ab"}, hp(12), char_encode)
    assert cuts == 0 and fields["post"] == "ab"
    padded = ensure_length(tokens, 12, [0] * 12, "left")
    assert padded == [0, 0, 0, 0] + char_encode("P: ab\nT:")  # 8 characters, 4 pads


def test_drops_last_paragraph_then_characters():
    # "P: ab\ncd\nef\nT:" is 14 chars; budget 10 -> drop "\nef" (11 chars, still > 10) -> drop "\ncd" (8).
    tokens, fields, cuts = truncate_query_fields({"post": "ab\ncd\nef"}, hp(10), char_encode)
    assert fields["post"] == "ab" and cuts == 2 and len(tokens) == 8
    # No newline left: one character per iteration.
    tokens, fields, cuts = truncate_query_fields({"post": "abcdef"}, hp(8), char_encode)
    assert fields["post"] == "ab" and cuts == 4


def test_template_alone_too_long_raises():
    with pytest.raises(TruncationError, match="already empty"):
        truncate_query_fields({"post": "abc"}, hp(5), char_encode)


def test_missing_truncate_field_raises():
    with pytest.raises(TruncationError, match="cannot truncate field"):
        truncate_query_fields({"title": "x"}, TaskQueryHParams(length=4, format_str="{title}"), char_encode)


@pytest.mark.parametrize("post", ["a\n\nb\nccc\n\ndddd", "no newlines at all here", "x\ny", "", "\n\n\n"])
@pytest.mark.parametrize("length", [9, 12, 20, 40])
@pytest.mark.parametrize("pad_side", ["left", "right"])
def test_matches_reference_port(post, length, pad_side):
    p = hp(length, pad_side=pad_side)
    try:
        expected = reference_process_query({"post": post}, char_encode, length, p.format_str, "post", "\n", 1, pad_side)
    except ValueError:
        with pytest.raises(TruncationError):
            truncate_query_fields({"post": post}, p, char_encode)
        return
    tokens, _, _ = truncate_query_fields({"post": post}, p, char_encode)
    assert ensure_length(tokens, length, [1] * length, pad_side) == expected


def test_ensure_length_uses_pad_sequence_ends():
    assert ensure_length([7], 3, [1, 2, 3], "left") == [2, 3, 7]
    assert ensure_length([7], 3, [1, 2, 3], "right") == [7, 1, 2]
    with pytest.raises(TruncationError):
        ensure_length([1, 2, 3], 2, [0, 0], "left")


def test_pad_right_truncates_like_max_length_padding():
    assert pad_right([5, 6], 4, 9) == [5, 6, 9, 9]
    assert pad_right([5, 6, 7, 8, 0], 4, 9) == [5, 6, 7, 8]


def test_response_label_masks_query_positions():
    assert response_label([10, 11, 12, 0, 9], 2, 9) == [9, 9, 12, 0, 9]
    assert response_label([10, 11], 5, 9) == [9, 9]
