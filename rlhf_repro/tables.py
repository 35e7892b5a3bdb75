"""Rows of the `query_responses_{split}.csv` tables every generating stage writes (SFT, PPO, DPO)."""

from __future__ import annotations

import torch


def sample_rows(tokenizer, meta, idx, postprocessed: torch.Tensor, references: torch.Tensor, **columns) -> list[dict]:
    """One row per sampled query: its dataset row, id and query text (from `meta`, the split's id/query
    columns), the decoded response and reference, any extra per-row `columns` (tensors or lists, in
    order), the response's tokens up to and including its first EOS, and whether it has one."""
    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    texts = tokenizer.batch_decode(postprocessed, skip_special_tokens=True)
    ref_texts = tokenizer.batch_decode(references, skip_special_tokens=True)
    info = meta[[int(i) for i in idx]]
    rows = []
    for i, row in enumerate(int(j) for j in idx):
        out = {
            "row": row,
            "id": info["id"][i] if "id" in info else str(row),
            "query": info["query"][i] if "query" in info else "",
            "response": texts[i],
            "reference": ref_texts[i],
        }
        for key, values in columns.items():
            value = values[i]
            out[key] = value.item() if isinstance(value, torch.Tensor) else value
        out["response_token_len"] = int((postprocessed[i] != pad).sum())
        out["eos_present"] = bool((postprocessed[i] == eos).any())
        rows.append(out)
    return rows
