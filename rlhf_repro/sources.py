"""Read TL;DR posts and human comparisons from the hub, a `save_to_disk` directory or JSONL files.

Every row is checked on the way in; a bad one stops the build with the file, line and field named.

TL;DR rows (OpenAI `tldr_3_filtered`): id (optional), subreddit, title, post, summary. Local split
files are train/valid/test.jsonl or train/validation/test.jsonl.

Comparison rows come in two forms, both normalized to OpenAI's original one:
* original: info{id, post, title, subreddit | article, site, title}, summaries[2]{text, policy, note},
  choice, worker, batch, split, extra.confidence;
* prompt/chosen/rejected (e.g. CarperAI's conversion): subreddit, title, post (or a `prompt` in the
  `SUBREDDIT: r/...\\nTITLE: ...\\nPOST: ...` form), chosen/rejected summaries. Policy, worker, batch and
  confidence are unknown and kept as null; the split is the file's name.
Comparison splits map to the reference's: `train` -> train, every other split -> validation; the builder
then moves the CNN/DM batches to validation_cnndm.
"""

from __future__ import annotations

import difflib
import os
import re
from pathlib import Path

from rlhf_repro.io import InputError, from_hub, looks_like_hub_id
from rlhf_repro.readers import Comparison, PromptComparison, TldrPost, read_jsonl, validate_row

# detail 1: the filtered TL;DR posts (SFT) and OpenAI's human comparisons (RM, DPO) are the two datasets.
TLDR_HUB_DEFAULT = "vwxyzjn/summarize_from_feedback_tldr_3_filtered"
COMPARISONS_HUB_DEFAULT = "openai/summarize_from_feedback"
TLDR_SPLIT_FILES = {"train": ("train",), "validation": ("valid", "validation"), "test": ("test",)}
TLDR_FIELDS = ("subreddit", "title", "post", "summary")
PROMPT_RE = re.compile(
    r"^SUBREDDIT: r/(?P<subreddit>.*?)\nTITLE: (?P<title>.*?)\nPOST: (?P<post>.*?)(\nTL;DR:\s*)?$", re.S
)


# A Reddit post is at most 40,000 characters; a field far beyond that is a broken export (a whole file in
# one cell, a binary blob) that would only show up later as an out-of-memory or a tokenizer stall.
MAX_FIELD_CHARS = 200_000


def _require_str(row: dict, key: str, where: tuple, allow_empty: bool = False, prefix: str = "") -> str:
    if key not in row or row[key] is None:
        # Extra columns are normal (the real exports carry row, source_prompt, ...) and are ignored, but one
        # that looks like the missing field is the likely culprit: name it.
        near = difflib.get_close_matches(key, [str(k) for k in row if k not in (key,)], n=1, cutoff=0.75)
        hint = f" (the row has an unexpected field {near[0]!r}: misnamed?)" if near else ""
        raise InputError("missing" + hint, *where, field=prefix + key)
    value = row[key]
    if not isinstance(value, str):
        raise InputError(f"expected a string, got {type(value).__name__}", *where, field=prefix + key)
    if not allow_empty and not value.strip():
        raise InputError("empty", *where, field=prefix + key)
    if len(value) > MAX_FIELD_CHARS:
        raise InputError(f"{len(value):,} characters; the limit is {MAX_FIELD_CHARS:,}", *where, field=prefix + key)
    return value


def _rows(source: str | os.PathLike, split_files: dict[str, tuple[str, ...]] | None, hub_config: str | None):
    """Yield (split, file-or-source label, line, row) from a JSONL directory, a saved DatasetDict or the hub."""
    path = Path(source)
    if path.is_dir() and (path / "dataset_dict.json").exists():
        from datasets import load_from_disk

        yield from _dataset_rows(load_from_disk(str(path)), str(path))
    elif path.is_dir():
        files = sorted(path.glob("*.jsonl"))
        if not files:
            raise InputError("no *.jsonl split files in directory", path)
        if split_files is not None:
            for split, names in split_files.items():
                found = [path / f"{n}.jsonl" for n in names if (path / f"{n}.jsonl").exists()]
                if not found:
                    raise InputError(f"missing split file {' or '.join(n + '.jsonl' for n in names)}", path)
                for lineno, row in read_jsonl(found[0]):
                    yield split, found[0], lineno, row
        else:
            for f in files:
                for lineno, row in read_jsonl(f):
                    yield f.stem, f, lineno, row
    elif path.exists():
        raise InputError("expected a directory of JSONL split files or a dataset saved with save_to_disk", path)
    elif looks_like_hub_id(str(source)):
        from datasets import load_dataset

        yield from _dataset_rows(from_hub("dataset", str(source), load_dataset, str(source), hub_config), str(source))
    else:
        raise InputError("no such directory", source)


def _dataset_rows(dsd, label: str):
    for split, ds in dsd.items():
        for i, row in enumerate(ds):
            yield split, f"{label}[{split}]", i + 1, row


def load_tldr(source: str | os.PathLike) -> dict[str, list[dict]]:
    """TL;DR posts by split (train/validation/test), each row {id, subreddit, title, post, summary}."""
    out: dict[str, list[dict]] = {"train": [], "validation": [], "test": []}
    seen: dict[str, tuple] = {}
    for split, f, lineno, row in _rows(source, TLDR_SPLIT_FILES, None):
        split = {"valid": "validation"}.get(split, split)
        where = (f, lineno)
        clean = {key: _require_str(row, key, where, allow_empty=key == "summary") for key in TLDR_FIELDS}
        validate_row(TldrPost, row, *where)  # every other field's type (rlhf_repro/readers.py)
        if row.get("id") is not None and not isinstance(row["id"], (str, int)) or isinstance(row.get("id"), bool):
            raise InputError(f"expected a string, got {type(row['id']).__name__}", *where, field="id")
        clean["id"] = str(row["id"]) if row.get("id") is not None else f"{Path(str(f)).stem}-{lineno}"
        if clean["id"] in seen:
            raise InputError(
                f"duplicate id {clean['id']!r} (first at {seen[clean['id']][0]}:{seen[clean['id']][1]})",
                *where,
                field="id",
            )
        seen[clean["id"]] = where
        clean["_where"] = f"{f}:{lineno}"
        out.setdefault(split, []).append(clean)
    return out


def _leading_space(text: str) -> str:
    # OpenAI's comparison texts start with a space and the builder only appends EOS (detail 3).
    # Some conversions stripped it; restore it so tokenization matches the original data.
    return text if text.startswith(" ") else " " + text


def _normalize_original(row: dict, where: tuple) -> dict:
    info = row.get("info")
    if not isinstance(info, dict):
        raise InputError("missing or not an object", *where, field="info")
    summaries = row.get("summaries")
    if not isinstance(summaries, list) or len(summaries) != 2:
        raise InputError("expected a list of exactly 2 summaries", *where, field="summaries")
    choice = row.get("choice")
    if isinstance(choice, bool) or choice not in (0, 1):
        raise InputError(f"expected 0 or 1, got {choice!r}", *where, field="choice")
    is_news = info.get("article") is not None
    keys = ("article", "title") if is_news else ("post", "title", "subreddit")
    clean_info = {k: None for k in ("id", "post", "title", "subreddit", "site", "article")}
    for k in keys:
        clean_info[k] = _require_str(info, k, where, allow_empty=k == "title", prefix="info.")
    clean_info["id"] = None if info.get("id") is None else str(info["id"])
    clean_info["site"] = info.get("site")
    clean_summaries = []
    for j, s in enumerate(summaries):
        if not isinstance(s, dict):
            raise InputError("expected an object", *where, field=f"summaries[{j}]")
        clean_summaries.append(
            dict(
                text=_leading_space(_require_str(s, "text", where, allow_empty=True, prefix=f"summaries[{j}].")),
                policy=None if s.get("policy") is None else str(s["policy"]),
                note=None if s.get("note") is None else str(s["note"]),
            )
        )
    extra = row.get("extra") or {}
    confidence = extra.get("confidence") if isinstance(extra, dict) else None
    if confidence is not None and (isinstance(confidence, bool) or not isinstance(confidence, int)):
        raise InputError(f"expected an integer, got {confidence!r}", *where, field="extra.confidence")
    # The fields checked above with their own messages; the schema covers the rest (worker, batch, split,
    # policy, note, ids, site), which would otherwise reach pyarrow, or str(), as whatever type they were.
    validate_row(Comparison, row, *where)
    return dict(
        info=clean_info,
        summaries=clean_summaries,
        choice=choice,
        worker=row.get("worker"),
        batch=row.get("batch"),
        split=row.get("split"),
        extra=dict(confidence=confidence),
    )


def _normalize_prompt_form(row: dict, split: str, where: tuple) -> dict:
    if all(k in row for k in ("subreddit", "title", "post")):
        info = {k: _require_str(row, k, where, allow_empty=k == "title") for k in ("subreddit", "title", "post")}
    else:
        prompt = _require_str(row, "prompt", where)
        m = PROMPT_RE.match(prompt)
        if not m:
            raise InputError("not of the form 'SUBREDDIT: r/...\\nTITLE: ...\\nPOST: ...'", *where, field="prompt")
        info = {k: m.group(k) for k in ("subreddit", "title", "post")}
    validate_row(PromptComparison, row, *where)
    texts = []
    for key in ("chosen", "rejected"):
        # A summary may be empty (a policy sample that said nothing); a missing one is an error.
        if isinstance(row.get(f"{key}_summary"), str):
            text = _require_str(row, f"{key}_summary", where, allow_empty=True)
        else:
            text = _require_str(row, key, where, allow_empty=True)
            text = text[len("TL;DR:") :] if text.startswith("TL;DR:") else text
        texts.append(_leading_space(text))
    return dict(
        info=dict(id=None if row.get("id") is None else str(row["id"]), site=None, article=None, **info),
        summaries=[dict(text=t, policy=None, note=None) for t in texts],
        choice=0,
        worker=None,
        batch=None,
        split=split,
        extra=dict(confidence=None),
    )


def load_comparisons(source: str | os.PathLike) -> dict[str, list[dict]]:
    """Comparisons in OpenAI's original form, by reference split (train / validation)."""
    out: dict[str, list[dict]] = {"train": [], "validation": []}
    for split, f, lineno, row in _rows(source, None, "comparisons"):
        where = (f, lineno)
        if "summaries" in row or "info" in row:
            clean = _normalize_original(row, where)
            if clean["split"] is None:
                clean["split"] = split
        elif "chosen" in row or "chosen_summary" in row:
            clean = _normalize_prompt_form(row, split, where)
        else:
            raise InputError(
                "neither OpenAI's comparison form (info, summaries, choice) nor prompt/chosen/rejected",
                *where,
                field="summaries",
            )
        clean["_where"] = f"{f}:{lineno}"
        target = "train" if clean["split"] == "train" or (clean["split"] is None and split == "train") else "validation"
        out[target].append(clean)
    return out
