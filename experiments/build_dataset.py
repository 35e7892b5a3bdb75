"""Build the processed SFT and preference datasets exactly as the N+ reference does (details 1-5, R-21).

    python experiments/build_dataset.py --tldr-source SRC --comparisons-source SRC --tokenizer TOK \
        --output-dir OUT [--no-check-length-correctness]

SRC is a hub id (the real path: vwxyzjn/summarize_from_feedback_tldr_3_filtered and
openai/summarize_from_feedback), a directory of JSONL split files, or a `save_to_disk` directory; either
source may be omitted. TOK is a hub id, a tokenizer directory or a tokenizer.json file.

Writes, all at once when everything succeeded (a failed build leaves OUT as it was):
  OUT/sft/          DatasetDict train/validation/test      (schema of n-plus-details.md §3.2)
  OUT/preference/   DatasetDict train/validation/validation_cnndm (§3.3)
  OUT/dataset_visuals/*.png   token-length histograms, confidence and policy distributions (R-21)
  OUT/build_summary.json      rows, truncated queries, length percentiles and maxima per split
  OUT/config.json, OUT/provenance.json
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from rlhf_repro.io import InputError, atomic_directory, atomic_write_json
from rlhf_repro.provenance import provenance
from rlhf_repro.runs import config_dict
from rlhf_repro.tldr import (
    CNNDM_BATCHES,
    TaskQueryHParams,
    TruncationError,
    cnndm_params_default,
    ensure_length,
    pad_right,
    response_label,
    tldr_params_default,
    truncate_query_fields,
)


@dataclass
class Args:
    tldr_source: str | None = None
    """TL;DR posts: hub id (vwxyzjn/summarize_from_feedback_tldr_3_filtered), JSONL directory or saved dataset."""
    comparisons_source: str | None = None
    """Human comparisons: hub id (openai/summarize_from_feedback), JSONL directory or saved dataset."""
    tokenizer: str = "EleutherAI/pythia-1b-deduped"
    """Tokenizer: hub id, directory, or a tokenizer.json file. [PAD] is added as a new special token."""
    output_dir: str = "data/tldr"
    """Where OUT/sft and OUT/preference are written (replaced as a whole when the build succeeds)."""
    check_length_correctness: bool = True
    """Require the configured length maxima to equal the dataset's maxima (the reference's assert, R-21).
    Turn off for subsets; over-budget rows are then cut to the budget and counted in the summary."""
    tldr_params: TaskQueryHParams = field(default_factory=tldr_params_default)
    """TL;DR query format and length budgets."""
    cnndm_params: TaskQueryHParams = field(default_factory=cnndm_params_default)
    """CNN/DM (out-of-domain validation) query format and length budgets."""
    pad_token: str = "[PAD]"
    """Padding token registered on the tokenizer; must differ from EOS (detail 3)."""
    special_tokens_in_text: Literal["text", "special"] = "text"
    """A special token's string inside a post or summary (`<|endoftext|>`, `[PAD]`): tokenized as text (ours:
    the ids then hold EOS and PAD only where the pipeline puts them), or as the special token, as the
    reference's tokenizer call does (a second EOS inside a summary; a PAD inside a query, hidden by the mask)."""
    max_rows_per_split: int | None = None
    """Keep only the first N rows of each split (for quick looks; implies nothing about length checks)."""
    batch_size: int = 2048
    """Rows tokenized per batched call (the fast tokenizer spreads each call over all cores)."""
    progress: bool = True
    """Show progress bars."""


class Encoder:
    """Batched encoding with the tokenizer's Rust backend (uses every core).

    Text rules (docs/inputs.md): with `special_tokens_in_text="text"` (the default) a special token's
    string inside a post, title or summary (`<|endoftext|>`, `[PAD]`, ...) is tokenized as the characters it
    is, so the processed ids hold a special id only where the pipeline put one: the EOS appended to every
    summary (`eos=True`) and the padding. With `"special"`, as the reference's tokenizer call does, such a
    string becomes the special token itself: a second EOS inside a summary, or a PAD inside a query that the
    attention mask then hides (and the decoded query no longer matches its post)."""

    def __init__(self, tokenizer, special_tokens_in_text: str = "text"):
        self.tok = tokenizer
        self.pad_id = tokenizer.pad_token_id
        self.eos = tokenizer.eos_token
        self.as_text = special_tokens_in_text == "text"

    def batch(self, texts: list[str], eos: bool = False) -> list[list[int]]:
        """Token ids of each text; with `eos`, each text ends with the EOS string the pipeline appended."""
        if not texts:
            return []
        if not self.as_text:
            return self.tok(texts, add_special_tokens=False)["input_ids"]
        if eos:
            assert all(t.endswith(self.eos) for t in texts), "eos=True for a text without the appended EOS"
            texts = [t[: -len(self.eos)] for t in texts]
        ids = self.tok(texts, add_special_tokens=False, split_special_tokens=True)["input_ids"]
        return [row + [self.tok.eos_token_id] for row in ids] if eos else ids

    def one(self, text: str) -> list[int]:
        return self.batch([text])[0]

    def decode_batch(self, token_rows: list[list[int]]) -> list[str]:
        if not token_rows:
            return []
        # No clean-up of tokenization spaces: the decoded query must give back the formatted text
        # exactly (" ." stays " ."), so query_* strings and query_token agree.
        return self.tok.batch_decode(token_rows, skip_special_tokens=True, clean_up_tokenization_spaces=False)


def pad_sequence_for(hparams: TaskQueryHParams, enc: Encoder) -> list[int]:
    unit = [enc.pad_id] if hparams.padding == "pad_token" else enc.one(" ")
    return unit * hparams.length


def process_queries(infos: list[dict], hparams: TaskQueryHParams, enc: Encoder, where: list[str]):
    """query_token (left-padded), query text and unpadded length for a batch, truncating as the reference does."""
    formatted = []
    for info, w in zip(infos, where):
        try:
            formatted.append(hparams.format_str.format(**info))
        except KeyError as e:
            raise InputError("query template needs this field", w, field=str(e.args[0])) from None
    tokens = enc.batch(formatted)
    truncated = 0
    for i, t in enumerate(tokens):
        if len(t) > hparams.length:
            try:
                tokens[i], _, _ = truncate_query_fields(infos[i], hparams, enc.one)
            except TruncationError as e:
                raise InputError(str(e), where[i], field=hparams.truncate_field) from None
            truncated += 1
    pad_seq = pad_sequence_for(hparams, enc)
    query_token = [ensure_length(t, hparams.length, pad_seq, hparams.pad_side) for t in tokens]
    query = [q.lstrip() for q in enc.decode_batch(query_token)]
    return query_token, query, [len(t) for t in tokens], truncated


def encode_padded(texts: list[str], length: int, enc: Encoder) -> tuple[list[list[int]], list[int]]:
    """Summaries (each ending with the appended EOS), tokenized and right-padded to `length`."""
    tokens = enc.batch(texts, eos=True)
    return [pad_right(t, length, enc.pad_id) for t in tokens], [len(t) for t in tokens]


def query_response(queries, query_tokens, query_lens, responses, response_tokens, hparams, max_len, enc):
    """query.strip() + response, tokenized and right-padded, plus its response-only label (detail 5: every
    column pre-tokenized to a fixed width)."""
    texts = [q.strip() + r for q, r in zip(queries, responses)]
    if hparams.padding == "empty_space":
        # The reference concatenates token lists when queries are padded with spaces.
        tokens = [list(q) + list(r) for q, r in zip(query_tokens, response_tokens)]
        lens = [len(t) for t in enc.batch(texts, eos=True)]
        labels = [response_label(t, hparams.length, enc.pad_id) for t in tokens]
    else:
        tokens, lens = encode_padded(texts, max_len, enc)
        labels = [response_label(t, n, enc.pad_id) for t, n in zip(tokens, query_lens)]
    return texts, tokens, lens, labels


def sft_chunk(rows: list[dict], hp: TaskQueryHParams, enc: Encoder) -> tuple[dict, int]:
    query_token, query, query_len, truncated = process_queries(rows, hp, enc, [r["_where"] for r in rows])
    # tldr_3_filtered summaries have no leading space: add it, and the literal EOS (detail 3).
    reference = [f" {r['summary']}{enc.eos}" for r in rows]
    ref_tok, ref_len = encode_padded(reference, hp.max_sft_response_length, enc)
    qr, qr_tok, qr_len, qr_label = query_response(
        query, query_token, query_len, reference, ref_tok, hp, hp.max_sft_query_response_length, enc
    )
    cols = {k: [r[k] for r in rows] for k in ("id", "subreddit", "title", "post", "summary")}
    cols.update(
        query_token=query_token,
        query=query,
        query_token_len=query_len,
        reference_response=reference,
        reference_response_token=ref_tok,
        reference_response_token_len=ref_len,
        query_reference_response=qr,
        query_reference_response_token=qr_tok,
        query_reference_response_token_response_label=qr_label,
        query_reference_response_token_len=qr_len,
    )
    return cols, truncated


def preference_chunk(rows: list[dict], hp: TaskQueryHParams, enc: Encoder) -> tuple[dict, int]:
    query_token, query, query_len, truncated = process_queries(
        [r["info"] for r in rows], hp, enc, [r["_where"] for r in rows]
    )
    cols = {k: [r[k] for r in rows] for k in ("info", "summaries", "choice", "worker", "batch", "split", "extra")}
    cols.update(query_token=query_token, query=query, query_token_len=query_len)
    for side, pick in (("chosen", lambda r: r["choice"]), ("rejected", lambda r: 1 - r["choice"])):
        texts = [r["summaries"][pick(r)]["text"] + enc.eos for r in rows]  # texts already start with a space
        tok, lens = encode_padded(texts, hp.max_rm_response_length, enc)
        qr, qr_tok, qr_len, qr_label = query_response(
            query, query_token, query_len, texts, tok, hp, hp.max_rm_query_response_length, enc
        )
        cols.update(
            {
                side: texts,
                f"{side}_token": tok,
                f"{side}_token_len": lens,
                f"{side}_policy": [r["summaries"][pick(r)]["policy"] for r in rows],
                f"query_{side}": qr,
                f"query_{side}_token": qr_tok,
                f"query_{side}_token_len": qr_len,
                f"query_{side}_token_response_label": qr_label,
            }
        )
    cols["policies"] = [
        None if None in p else "--".join(sorted(p)) for p in zip(cols["chosen_policy"], cols["rejected_policy"])
    ]
    return cols, truncated


def arrow_schema(kind: str):
    import pyarrow as pa

    s = pa.string()
    if kind == "sft":
        return {}
    return {
        "info": pa.struct([(k, s) for k in ("id", "post", "title", "subreddit", "site", "article")]),
        "summaries": pa.list_(pa.struct([("text", s), ("policy", s), ("note", s)])),
        "extra": pa.struct([("confidence", pa.int64())]),
        "worker": s,
        "batch": s,
        "split": s,
        "chosen_policy": s,
        "rejected_policy": s,
        "policies": s,
    }


def to_dataset(chunks: list[dict], kind: str):
    """Columns -> datasets.Dataset through Arrow (token columns as list<int64>, no Python-int blow-up)."""
    import pyarrow as pa
    from datasets import Dataset
    from datasets.table import InMemoryTable

    schema = arrow_schema(kind)
    tables = []
    for cols in chunks:
        arrays = {}
        for name, values in cols.items():
            if name.endswith("_token") or name.endswith("_response_label"):
                flat = np.asarray(values, dtype=np.int64).reshape(len(values), -1 if values else 0)
                offsets = np.arange(len(values) + 1, dtype=np.int32) * flat.shape[1]
                arrays[name] = pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat.ravel()))
            else:
                default = pa.int64() if name.endswith("_len") or name == "choice" else pa.string()
                arrays[name] = pa.array(values, type=schema.get(name, default))
        tables.append(pa.table(arrays))
    return Dataset(InMemoryTable(pa.concat_tables(tables)))


def build_split(rows: list[dict], chunk_fn, hp: TaskQueryHParams, enc: Encoder, kind: str, desc: str, args: Args):
    from tqdm.auto import tqdm

    chunks, truncated = [chunk_fn([], hp, enc)[0]] if not rows else [], 0
    with tqdm(total=len(rows), desc=desc, unit="row", disable=not args.progress) as bar:
        for start in range(0, len(rows), args.batch_size):
            cols, t = chunk_fn(rows[start : start + args.batch_size], hp, enc)
            chunks.append(cols)
            truncated += t
            bar.update(len(cols["query"]))
    return to_dataset(chunks, kind), truncated


LENGTH_COLUMNS = {
    "sft": {
        "reference_response_token_len": "max_sft_response_length",
        "query_reference_response_token_len": "max_sft_query_response_length",
    },
    "preference": {
        "chosen_token_len": "max_rm_response_length",
        "rejected_token_len": "max_rm_response_length",
        "query_chosen_token_len": "max_rm_query_response_length",
        "query_rejected_token_len": "max_rm_query_response_length",
    },
}


def length_report(kind: str, dsd, params_of, check: bool) -> dict:
    """Length percentiles and maxima per split; enforce the configured maxima (detail 4, R-21)."""
    report, overall = {}, {}
    for split, ds in dsd.items():
        hp = params_of(split)
        entry = {"rows": len(ds), "query_token_len": _percentiles(ds["query_token_len"])}
        for col, budget_field in LENGTH_COLUMNS[kind].items():
            lens = np.asarray(ds[col])
            budget = getattr(hp, budget_field)
            over = np.nonzero(lens > budget)[0]
            entry[col] = _percentiles(lens) | {"budget": budget, "over_budget": int(over.size)}
            if over.size and check:
                i = int(over[0])
                row_id = ds[i]["id"] if "id" in ds.column_names else ds[i]["info"]["id"]
                raise InputError(
                    f"{col} is {int(lens[i])} > {budget_field}={budget} (split {split}, row {i}, id {row_id!r}); "
                    f"raise the budget or pass --no-check-length-correctness to cut over-budget rows",
                    field=col,
                )
            key = (col, budget_field, budget, "cnndm" if split == "validation_cnndm" else "tldr")
            overall[key] = max(overall.get(key, 0), int(lens.max()) if lens.size else 0)
        report[split] = entry
    if check:
        for (col, budget_field, budget, task), observed in overall.items():
            if observed != budget:
                raise InputError(
                    f"longest {col} is {observed} tokens but the {task} {budget_field} is {budget}: with "
                    "--check-length-correctness the budgets must equal the data's maxima (the reference's "
                    "assert). Set the budget to the observed value, or pass --no-check-length-correctness",
                    field=col,
                )
    return report


def _percentiles(values) -> dict:
    a = np.asarray(values)
    if a.size == 0:
        return {"max": 0}
    p = np.percentile(a, [50, 90, 99])
    return {"p50": float(p[0]), "p90": float(p[1]), "p99": float(p[2]), "max": int(a.max())}


def save_histograms(out: Path, kind: str, dsd) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = ["query_token_len", *LENGTH_COLUMNS[kind]]
    fig, axes = plt.subplots(1, len(cols), figsize=(4.2 * len(cols), 3.4), squeeze=False)
    for ax, col in zip(axes[0], cols):
        for split, ds in dsd.items():
            if len(ds):
                ax.hist(ds[col], bins=40, alpha=0.55, label=split)
        ax.set_title(col, fontsize=9)
        ax.set_xlabel("tokens")
    axes[0][0].set_ylabel("rows")
    axes[0][-1].legend(fontsize=8)
    fig.suptitle(f"{kind} token lengths")
    fig.tight_layout()
    files = [f"{kind}_token_len.png"]
    fig.savefig(out / files[0], dpi=110)
    plt.close(fig)
    if kind == "preference":
        files.append("preference_labels.png")
        fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
        for split, ds in dsd.items():
            conf = Counter(e["confidence"] for e in ds["extra"] if e["confidence"] is not None)
            if conf:
                keys = sorted(conf)
                axes[0].plot(keys, [conf[k] for k in keys], marker="o", label=split)
        axes[0].set_title("labeler confidence")
        axes[0].set_xlabel("extra.confidence")
        if axes[0].get_legend_handles_labels()[0]:
            axes[0].legend(fontsize=8)
        pol = Counter(p for p in dsd["train"]["policies"] if p) if "train" in dsd else Counter()
        top = pol.most_common(15)
        axes[1].barh([k for k, _ in top][::-1], [v for _, v in top][::-1])
        axes[1].set_title("policy pairs (train)")
        axes[1].tick_params(labelsize=7)
        fig.tight_layout()
        fig.savefig(out / files[1], dpi=110)
        plt.close(fig)
    return files


def save_splits(dsd, path: Path) -> None:
    # An empty split (e.g. validation_cnndm of a TL;DR-only source) needs one explicit shard: with none,
    # datasets writes no Arrow file and cannot load the split back.
    dsd.save_to_disk(str(path), num_shards={k: 1 for k, v in dsd.items() if len(v) == 0} or None)


def main(args: Args) -> dict:
    from datasets import DatasetDict

    from rlhf_repro.sources import load_comparisons, load_tldr
    from rlhf_repro.tokenization import load_tokenizer, tokenizer_fingerprint

    if args.tldr_source is None and args.comparisons_source is None:
        raise InputError("nothing to build: pass --tldr-source and/or --comparisons-source")
    t0 = time.time()
    tokenizer = load_tokenizer(args.tokenizer, pad_token=args.pad_token)
    enc = Encoder(tokenizer, args.special_tokens_in_text)
    print(
        f"tokenizer {args.tokenizer}: {len(tokenizer)} tokens, eos={tokenizer.eos_token_id}, "
        f"pad={tokenizer.pad_token_id} ({tokenizer.pad_token})"
    )
    out = Path(args.output_dir)
    if out.exists() and any(out.iterdir()) and not (out / "build_summary.json").exists():
        raise InputError("output directory exists and is not a previous build; choose an empty or new directory", out)
    summary = {
        "tokenizer": args.tokenizer,
        "tokenizer_fingerprint": tokenizer_fingerprint(tokenizer),
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    limit = args.max_rows_per_split

    with atomic_directory(out) as tmp:
        visuals = tmp / "dataset_visuals"
        visuals.mkdir()
        if args.tldr_source is not None:
            posts = load_tldr(args.tldr_source)
            dsd, truncated = DatasetDict(), {}
            for split, rows in posts.items():
                rows = rows[:limit] if limit else rows
                dsd[split], truncated[split] = build_split(
                    rows, sft_chunk, args.tldr_params, enc, "sft", f"sft/{split}", args
                )
            report = length_report("sft", dsd, lambda s: args.tldr_params, args.check_length_correctness)
            for split in report:
                report[split]["truncated_queries"] = truncated[split]
            save_splits(dsd, tmp / "sft")
            summary["sft"] = report
            summary["visuals"] = save_histograms(visuals, "sft", dsd)
        if args.comparisons_source is not None:
            comparisons = load_comparisons(args.comparisons_source)
            splits = {"train": [], "validation": [], "validation_cnndm": []}
            for split, rows in comparisons.items():
                for r in rows:
                    is_cnndm = r["batch"] in CNNDM_BATCHES
                    if is_cnndm and split == "train":
                        raise InputError(
                            f"CNN/DM batch {r['batch']!r} in the train split; the reference keeps "
                            "CNN/DM for validation only",
                            r["_where"],
                            field="batch",
                        )
                    splits["validation_cnndm" if is_cnndm else split].append(r)
            dsd, truncated = DatasetDict(), {}
            for split, rows in splits.items():
                rows = rows[:limit] if limit else rows
                hp = args.cnndm_params if split == "validation_cnndm" else args.tldr_params
                dsd[split], truncated[split] = build_split(
                    rows, preference_chunk, hp, enc, "preference", f"preference/{split}", args
                )
            params_of = lambda s: args.cnndm_params if s == "validation_cnndm" else args.tldr_params  # noqa: E731
            report = length_report("preference", dsd, params_of, args.check_length_correctness)
            for split in report:
                report[split]["truncated_queries"] = truncated[split]
            save_splits(dsd, tmp / "preference")
            summary["preference"] = report
            summary.setdefault("visuals", []).extend(save_histograms(visuals, "preference", dsd))
        summary["seconds"] = round(time.time() - t0, 2)
        atomic_write_json(tmp / "config.json", config_dict(args))
        atomic_write_json(
            tmp / "provenance.json",
            provenance(
                {
                    "tokenizer": args.tokenizer,
                    "tldr_source": args.tldr_source,
                    "comparisons_source": args.comparisons_source,
                }
            ),
        )
        atomic_write_json(tmp / "build_summary.json", summary)
    print_summary(summary, out)
    return summary


def print_summary(summary: dict, out: Path) -> None:
    for kind in ("sft", "preference"):
        for split, r in summary.get(kind, {}).items():
            lens = ", ".join(
                f"{c.replace('_token_len', '')} p50/max {v['p50'] if 'p50' in v else '-'}/{v['max']}"
                for c, v in r.items()
                if c.endswith("_token_len") and isinstance(v, dict)
            )
            over = sum(v.get("over_budget", 0) for v in r.values() if isinstance(v, dict))
            print(
                f"{kind}/{split}: {r['rows']} rows, {r['truncated_queries']} truncated queries, "
                f"{over} over-budget responses; {lens}"
            )
    print(f"wrote {out}/sft, {out}/preference, {out}/dataset_visuals in {summary['seconds']} s")


def cli(argv: list[str] | None = None) -> int:
    from rlhf_repro.cli import run_stage

    return run_stage(Args, main, argv, __doc__)


if __name__ == "__main__":
    sys.exit(cli())
