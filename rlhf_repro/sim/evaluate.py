"""Gold-label a table of model summaries (a stage's query_responses_*.csv) in the simulated world.

ROUGE flatters a model that writes well-formed summaries full of wrong facts (feasibility notes), so
the sim world's truth is the honest yardstick: per row the gold score of the response and of the
reference, the facts covered and the facts contradicted. Posts are looked up by id in the world's
tldr/*.jsonl (the full post, before any query truncation); without a world, the POST section of the
query text is used.
"""

from __future__ import annotations

import os
from pathlib import Path

from rlhf_repro.io import InputError, read_jsonl
from rlhf_repro.sim.labeler import score_detail


def world_posts(world: str | os.PathLike) -> dict[str, str]:
    posts = {}
    for name in ("train", "valid", "test"):
        path = Path(world) / "tldr" / f"{name}.jsonl"
        if path.exists():
            for _, row in read_jsonl(path):
                posts[row["id"]] = row["post"]
    if not posts:
        raise InputError("no tldr/{train,valid,test}.jsonl posts found", world)
    return posts


def post_from_query(query: str) -> str:
    """The POST section of a formatted query (between 'POST:' and the final 'TL;DR:')."""
    start = query.find("POST:")
    end = query.rfind("TL;DR:")
    return query[start + len("POST:") : end if end > start else None].strip() if start >= 0 else query


def score_table(path: str | os.PathLike, posts: dict[str, str] | None = None) -> tuple[list[dict], dict]:
    """(rows with gold columns, summary) for a CSV with query, response and reference columns."""
    from rlhf_repro.readers import read_table

    rows = read_table(path, ("query", "response", "reference"))
    totals: dict[str, float] = {}
    for row in rows:
        post = (posts or {}).get(row.get("id", "")) or post_from_query(row["query"])
        for side in ("response", "reference"):
            d = score_detail(post, row[side])
            row[f"gold_{side}"] = d.score
            row[f"contradictions_{side}"] = d.contradictions
            totals[f"gold_{side}"] = totals.get(f"gold_{side}", 0.0) + d.score
            totals[f"contradictions_{side}"] = totals.get(f"contradictions_{side}", 0.0) + d.contradictions
            if side == "response":
                for fact, value in d.covered.items():
                    totals[f"covered/{fact}"] = totals.get(f"covered/{fact}", 0.0) + value
        # A tie counts half, as a coin flip would settle it.
        g_resp, g_ref = row["gold_response"], row["gold_reference"]
        row["gold_response_beats_reference"] = 1.0 if g_resp > g_ref else 0.5 if g_resp == g_ref else 0.0
        totals["win_rate_vs_reference"] = (
            totals.get("win_rate_vs_reference", 0.0) + row["gold_response_beats_reference"]
        )
    n = max(1, len(rows))
    summary = {"rows": len(rows), **{k: round(v / n, 4) for k, v in sorted(totals.items())}}
    return rows, summary
