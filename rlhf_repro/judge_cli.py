"""`rlhf-repro judge`: judge a table of policy summaries against the references and write the judged table.

    rlhf-repro judge --input RUN/query_responses_validation.csv --backend openai --out judged.csv
    rlhf-repro judge --input RUN/query_responses_validation.csv --backend gold --out judged.csv
    rlhf-repro judge --input TABLE.csv --backend rm --reward-model RUN/model --out judged.csv

The input needs `query`, `response` and `reference` columns (any stage's query_responses_*.csv, or the
OpenAI-baseline CSV). The output keeps every input column and adds `preferred` (policy / reference /
empty when no verdict), `policy_position` (A/B), `raw_answer`, `explanation`, `judge`, `parsed`,
`guessed`, `attempts`, token counts, `cost`, `error` and `failure` (why a row has no verdict: rate_limited,
server_error, timeout, connection, bad_response, client_error, unparsed or error). A summary JSON (win rate
over rows with a verdict, failed rows by reason, unparsed and guessed counts, tokens, cost; order
consistency with --both-orders) is printed and written next to the output as OUT.summary.json.

Exit status: 0; 2 for bad input (one line naming the file, line and column); 1 when more than
--max-failed-fraction of the rows (default 0.1) got no verdict, or every row failed: the table and summary
are still written, and rerunning the same command asks again only the failed rows (answers are cached).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from rlhf_repro.io import InputError


def read_table(path: Path, limit: int | None, response_column: str = "response", reference_column: str = "reference"):
    """Rows with `query`, `response` and `reference` (renamed from the given columns; a reference is cut
    at the first <|endoftext|>, as the reference's judge does), read by the suite's one CSV reader."""
    from rlhf_repro.readers import read_table as read

    rows = read(path, ("query", response_column, reference_column))
    for row in rows:
        row["response"], row["reference"] = row[response_column], row[reference_column].split("<|endoftext|>")[0]
    return rows[:limit] if limit else rows


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="rlhf-repro judge", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--input", default=None, help="CSV with query, response, reference columns")
    p.add_argument(
        "--pairs",
        default=None,
        help="instead of --input: a comparisons source (OpenAI's form: a directory of *.jsonl or a hub id); the "
        "judge picks between each pair's two summaries and its agreement with the human choice is reported",
    )
    p.add_argument("--pairs-split", choices=("train", "validation"), default="validation", help="--pairs split")
    p.add_argument(
        "--export-comparisons",
        default=None,
        help="with --pairs: write the judged pairs as DIR/{train,valid}.jsonl in OpenAI's comparison form, with the "
        "judge's choice as the label (RLAIF: build_dataset.py --comparisons-source DIR)",
    )
    p.add_argument("--out", required=True, help="judged CSV to write (atomically)")
    p.add_argument("--backend", choices=("openai", "rm", "gold"), default="openai", help="who judges")
    p.add_argument("--model", default=None, help="chat model (default gpt-3.5-turbo-0125 or $OPENAI_MODEL)")
    p.add_argument("--base-url", default=None, help="OpenAI-compatible server URL (default $OPENAI_BASE_URL)")
    p.add_argument("--api-key-env", default="OPENAI_API_KEY", help="environment variable holding the API key")
    p.add_argument(
        "--temperature", type=float, default=None, help="sampling temperature (default: unset, as the reference)"
    )
    p.add_argument("--judge-seed", type=int, default=None, help="seed sent to the API (default: none)")
    p.add_argument("--seed", type=int, default=0, help="seed of the A/B order per row and of paper-mode coin flips")
    p.add_argument("--parse-mode", choices=("paper", "strict"), default="paper", help="how answers are read")
    p.add_argument("--strict-retries", type=int, default=2, help="strict mode: re-asks of an unparseable answer")
    p.add_argument("--template", default=None, help="prompt template file with {post}, {summary_a}, {summary_b}")
    p.add_argument("--concurrency", type=int, default=11, help="parallel requests (the reference: 11)")
    p.add_argument(
        "--max-retries",
        type=int,
        default=6,
        help="retries of a request after a transient fault: 429, 5xx, timeout, dropped connection, truncated body",
    )
    p.add_argument("--timeout", type=float, default=60.0, help="seconds per request")
    p.add_argument("--backoff", type=float, default=1.0, help="first backoff in seconds (doubles per retry)")
    p.add_argument(
        "--max-wait",
        type=float,
        default=60.0,
        help="longest wait before a retry, in seconds: caps both the backoff and a server's Retry-After",
    )
    p.add_argument(
        "--max-failed-fraction",
        type=float,
        default=0.1,
        help="exit 1 when more than this fraction of rows got no verdict (see `failures` in the summary; "
        "paper-mode coin flips are verdicts). A win rate over the rows that happened to succeed can be "
        "biased, so a run that lost many rows is an error, not a result. The table and summary are written "
        "anyway; rerun to ask again only the failed rows. A run with no verdict at all always exits 1",
    )
    p.add_argument("--cache", default=None, help="response cache JSONL (default: OUT.cache.jsonl)")
    p.add_argument("--price-prompt", type=float, default=None, help="USD per 1M prompt tokens (default: known models)")
    p.add_argument("--price-completion", type=float, default=None, help="USD per 1M completion tokens")
    p.add_argument("--both-orders", action="store_true", help="judge each pair twice (A/B swapped): position bias")
    p.add_argument(
        "--world", default=None, help="--backend gold: a sim world directory; full posts looked up by the row's id"
    )
    p.add_argument("--reward-model", default=None, help="--backend rm: the RM directory (reward.py's RUN/model)")
    p.add_argument("--limit", type=int, default=None, help="judge only the first N rows")
    p.add_argument(
        "--against",
        default=None,
        help="judge against another policy instead of the references: a second table whose `response` replaces "
        "the reference, aligned by query text (duplicate queries dropped), as the reference's policy-vs-SFT eval",
    )
    p.add_argument("--response-column", default="response", help="column holding the policy's summary")
    p.add_argument("--reference-column", default="reference", help="column holding the reference summary")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def make_judge(args):
    from rlhf_repro import judge as J

    if args.backend == "gold":
        posts = None
        if args.world:
            from rlhf_repro.sim.evaluate import world_posts

            posts = world_posts(args.world)
        return J.GoldJudge(args.seed, posts)
    if args.backend == "rm":
        if not args.reward_model:
            raise InputError("--backend rm needs --reward-model")
        return J.RewardModelJudge(args.reward_model, args.seed)
    prices = None
    if args.price_prompt is not None or args.price_completion is not None:
        prices = (args.price_prompt or 0.0, args.price_completion or 0.0)
    from rlhf_repro.judge_openai import OpenAIJudge, ResponseCache

    return OpenAIJudge(
        model=args.model or os.environ.get("OPENAI_MODEL") or J.DEFAULT_MODEL,
        base_url=args.base_url,
        api_key=os.environ.get(args.api_key_env),
        temperature=args.temperature,
        seed=args.judge_seed,
        template=J.load_template(args.template),
        parse_mode=args.parse_mode,
        strict_retries=args.strict_retries,
        max_retries=args.max_retries,
        timeout=args.timeout,
        backoff=args.backoff,
        max_wait=args.max_wait,
        cache=ResponseCache(args.cache or f"{args.out}.cache.jsonl"),
        prices=prices,
        judge_seed=args.seed,
    )


def align_against(rows: list[dict], other: list[dict], other_path: str) -> list[dict]:
    """Rows whose query also appears in `other`, with the other policy's response as the `reference`
    (the human reference kept as `human_reference`); each query judged once (§4.2, policy vs SFT)."""
    theirs: dict[str, str] = {}
    for row in other:
        theirs.setdefault(row["query"], row["response"])
    out, seen = [], set()
    for row in rows:
        if row["query"] in theirs and row["query"] not in seen:
            seen.add(row["query"])
            out.append({**row, "human_reference": row["reference"], "reference": theirs[row["query"]]})
    if not out:
        raise InputError("no query in common with the --input table", other_path, field="query")
    return out


def pair_rows(args) -> list[dict]:
    """One row per comparison: summary 0 in the `response` slot, summary 1 in the `reference` slot."""
    from rlhf_repro.sources import load_comparisons

    rows = []
    for c in load_comparisons(args.pairs)[args.pairs_split][: args.limit]:
        info = c["info"]
        if info.get("article") is not None:
            query = f"Article:\n{info['article']}\n\nTL;DR:"
        else:
            query = f"SUBREDDIT: r/{info['subreddit']}\n\nTITLE: {info['title']}\n\nPOST: {info['post']}\n\nTL;DR:"
        rows.append(
            {
                "id": info.get("id"),
                "batch": c["batch"],
                "split": c["split"],
                "confidence": c["extra"].get("confidence"),
                "human_choice": c["choice"],
                "query": query,
                "response": c["summaries"][0]["text"],
                "reference": c["summaries"][1]["text"],
                "_comparison": c,
            }
        )
    return rows


def pair_summary(judged: list[dict]) -> dict:
    """Judge-human agreement overall and by batch and confidence (pairs the judge decided)."""
    groups: dict[str, list[float]] = {}
    for r in judged:
        if not r["preferred"]:
            continue
        agree = float((0 if r["preferred"] == "policy" else 1) == r["human_choice"])
        for key in ("all", f"batch/{r['batch']}", f"confidence/{r['confidence']}"):
            groups.setdefault(key, []).append(agree)
    return {f"agreement/{k}" if k != "all" else "agreement": sum(v) / len(v) for k, v in sorted(groups.items())}


def export_comparisons(judged: list[dict], out_dir: Path, judge_name: str) -> None:
    from rlhf_repro.io import atomic_write_text

    by_file: dict[str, list[str]] = {}
    for r in judged:
        if not r["preferred"]:
            continue
        c = dict(r["_comparison"])
        c.pop("_where", None)
        c["choice"] = 0 if r["preferred"] == "policy" else 1
        c["worker"] = f"judge:{judge_name}"
        c["extra"] = {"confidence": None}
        name = "train" if c["split"] == "train" else "valid"
        by_file.setdefault(name, []).append(json.dumps(c, ensure_ascii=False))
    for name, lines in by_file.items():
        atomic_write_text(out_dir / f"{name}.jsonl", "".join(line + "\n" for line in lines))


def main(argv: list[str] | None = None) -> int:
    import pandas as pd

    from rlhf_repro.io import atomic_write_text
    from rlhf_repro.judge import judge_rows, summarize

    args = build_parser().parse_args(argv)
    if (args.input is None) == (args.pairs is None):
        print("error: give exactly one of --input and --pairs", file=sys.stderr)
        return 2
    if not 0.0 <= args.max_failed_fraction <= 1.0:
        print("error: --max-failed-fraction must be between 0 and 1", file=sys.stderr)
        return 2
    try:
        from rlhf_repro.readers import output_file

        output_file(args.out)  # a directory or a path under a file is refused before any judging
        if args.pairs:
            rows = pair_rows(args)
        else:
            rows = read_table(Path(args.input), None, args.response_column, args.reference_column)
            if args.against:
                rows = align_against(rows, read_table(Path(args.against), None), args.against)
            rows = rows[: args.limit] if args.limit else rows
        judge = make_judge(args)
        concurrency = args.concurrency if args.backend == "openai" else 1
        judged = judge_rows(judge, rows, args.seed, concurrency, args.both_orders, not args.no_progress)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    judge_name = judged[0]["judge"] if judged else args.backend
    if args.pairs and args.export_comparisons:
        export_comparisons(judged, Path(args.export_comparisons), judge_name)
    table = pd.DataFrame([{k: v for k, v in r.items() if k != "_comparison"} for r in judged])
    atomic_write_text(out, table.to_csv(index=False))
    summary = summarize(judged) | {"backend": args.backend, "judge": judge_name}
    if args.pairs:
        summary |= pair_summary(judged)
    atomic_write_text(Path(f"{out}.summary.json"), json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    return failure_status(summary, args.max_failed_fraction)


def failure_status(summary: dict, max_failed_fraction: float) -> int:
    """0, or 1 with one line on stderr when too many rows (or all of them) got no verdict. Some failures
    under the threshold get a one-line warning, so they are never silent."""
    n, failed = summary["n"], summary["n_failed"]
    if not failed:
        return 0
    reasons = ", ".join(f"{k}: {v}" for k, v in summary["failures"].items())
    what = f"{failed} of {n} rows got no verdict ({reasons})"
    if failed == n or failed > max_failed_fraction * n:
        limit = "every row failed" if failed == n else f"over --max-failed-fraction {max_failed_fraction:g}"
        print(f"error: {what}, {limit}; rerun to ask again only those rows (answers are cached)", file=sys.stderr)
        return 1
    print(f"warning: {what}; the win rate is over the other rows", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
