"""`rlhf-repro analyze`: statistics and figures from saved tables (judged CSVs, rm_eval CSVs).

    rlhf-repro analyze win-rate --judged RUN/judged.csv [more seeds ...]
    rlhf-repro analyze length-control --judged PPO.csv DPO.csv SFT.csv --label PPO DPO SFT --figure lc.png
    rlhf-repro analyze calibration --rm-eval RUN/rm_eval_validation.csv --figure calibration.png
    rlhf-repro analyze agreement --judged RUN/judged.csv

Each command prints one JSON object (and writes it with --out); --figure writes a PNG (and a PDF
beside it). Rows without a verdict (`preferred` empty) are left out of win rates and counted in
`n_unparsed`.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

from rlhf_repro.io import InputError


def read_csv(path: str, required: tuple[str, ...], numeric: tuple[str, ...] = ()) -> list[dict]:
    """A judged / evaluation table through the suite's one CSV reader (`rlhf_repro.readers.read_table`)."""
    from rlhf_repro.readers import read_table

    return read_table(path, required, numeric)


def verdicts(rows: list[dict], path: str) -> tuple[np.ndarray, list[int], int]:
    """(wins array, indices of rows with a verdict, unparsed count)."""
    wins, kept = [], []
    for i, r in enumerate(rows):
        p = r["preferred"]
        if p in ("policy", "reference"):
            wins.append(1.0 if p == "policy" else 0.0)
            kept.append(i)
        elif p:
            line = rows.lines[i] if hasattr(rows, "lines") else i + 2
            raise InputError(f"must be policy, reference or empty, got {p!r}", path, line=line, field="preferred")
    if not kept:
        raise InputError("no row has a verdict ('preferred' is policy or reference in none of them)", path)
    return np.array(wins), kept, len(rows) - len(kept)


def scores_of(rows, path: str, i: int, *columns: str) -> list[float]:
    """Row i's numeric cells (checked finite by the reader); an empty one is refused with its line."""
    out = []
    for c in columns:
        if rows[i][c] == "":
            raise InputError("empty, but this row has a verdict and needs the score", path, line=rows.lines[i], field=c)
        out.append(float(rows[i][c]))
    return out


def finite_json(obj):
    """`obj` with every non-finite float as None: the output is JSON, which has no NaN."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: finite_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_json(v) for v in obj]
    if isinstance(obj, np.generic):
        return finite_json(obj.item())
    return obj


def seed_of(path: str) -> str:
    """A run folder's seed (…/<model>/<seed>/file.csv), else the file's stem."""
    parent = Path(path).parent.name
    return parent if parent.isdigit() else Path(path).stem


def cmd_win_rate(args) -> dict:
    from analysis.stats import win_rate

    per_seed, pooled = {}, []
    for path in args.judged:
        rows = read_csv(path, ("preferred",))
        wins, _, unparsed = verdicts(rows, path)
        per_seed[seed_of(path)] = win_rate(wins, seed=args.seed) | {"n_unparsed": unparsed, "file": path}
        pooled.append(wins)
    everything = np.concatenate(pooled) if pooled else np.array([])
    out = win_rate(everything, seed=args.seed) | {"n_unparsed": sum(s["n_unparsed"] for s in per_seed.values())}
    rates = [s["win_rate"] for s in per_seed.values()]
    out["seeds"] = per_seed
    out["seed_mean"] = float(np.mean(rates))
    out["seed_std"] = float(np.std(rates, ddof=1)) if len(rates) > 1 else 0.0
    return out


def lengths(texts: list[str], by: str, tokenizer) -> np.ndarray:
    if by == "char":
        return np.array([len(t.strip()) for t in texts], dtype=float)
    return np.array([len(tokenizer.encode(t.strip(), add_special_tokens=False)) for t in texts], dtype=float)


def cmd_length_control(args) -> dict:
    from analysis.stats import length_control

    tokenizer = None
    if args.length_by == "token":
        if not args.tokenizer:
            raise InputError("--length-by token needs --tokenizer (a tokenizer directory, file or hub id)")
        from rlhf_repro.tokenization import load_tokenizer

        tokenizer = load_tokenizer(args.tokenizer)
    labels = args.label or [Path(p).stem for p in args.judged]
    if len(labels) != len(args.judged):
        raise InputError(f"{len(labels)} --label value(s) for {len(args.judged)} --judged file(s)")
    out = {"length_by": args.length_by, "policies": {}}
    for label, path in zip(labels, args.judged):
        rows = read_csv(path, ("preferred", "response", "reference"))
        wins, kept, unparsed = verdicts(rows, path)
        kept_rows = [rows[i] for i in kept]
        refs = [r["reference"].split("<|endoftext|>")[0] for r in kept_rows]
        lr, lf = (
            lengths([r["response"] for r in kept_rows], args.length_by, tokenizer),
            lengths(refs, args.length_by, tokenizer),
        )
        ok = (lr > 0) & (lf > 0)  # log ratio undefined for empty texts: counted, not fitted
        x = np.log(lr[ok] / lf[ok])
        result = length_control(x, wins[ok], seed=args.seed, n_boot=args.n_boot)
        result |= {"n_unparsed": unparsed, "n_empty": int((~ok).sum()), "win_rate": float(wins.mean())}
        result["mean_length_response"], result["mean_length_reference"] = float(lr.mean()), float(lf.mean())
        out["policies"][label] = result
        out["policies"][label]["_x"], out["policies"][label]["_wins"] = x, wins[ok]
    if args.figure:
        plot_length_control(out, args.figure)
    for r in out["policies"].values():
        r.pop("_x"), r.pop("_wins")
    return out


def save_figure(fig, path: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130, bbox_inches="tight")
    fig.savefig(path.with_suffix(".pdf"), bbox_inches="tight")


def plot_length_control(out: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for label, r in out["policies"].items():
        x = r["_x"]
        grid = np.linspace(x.min(), x.max(), 100) if len(x) else np.array([])
        line = ax.plot(grid, 1 / (1 + np.exp(-(r["intercept"] + r["slope"] * grid))), label=f"{label} (fit)")[0]
        b = r["bins"]
        keep = [i for i, f in enumerate(b["win_fractions"]) if f is not None]
        ax.scatter([b["edges"][i] for i in keep], [b["win_fractions"][i] for i in keep], color=line.get_color(), s=14)
        ax.errorbar(
            [0],
            [r["win_rate_at_equal_length"]],
            yerr=[[r["win_rate_at_equal_length"] - r["ci_low"]], [r["ci_high"] - r["win_rate_at_equal_length"]]],
            color=line.get_color(),
            fmt="o",
            capsize=3,
        )
    ax.axvline(0, color="grey", lw=0.5)
    ax.axhline(0.5, color="grey", lw=0.5, ls="--")
    ax.set_xlabel(f"log(length of summary / length of reference), by {out['length_by']}")
    ax.set_ylabel("win rate against the reference")
    ax.set_ylim(-0.02, 1.02)
    ax.legend(fontsize=8)
    save_figure(fig, path)
    plt.close(fig)


def judged_margins(path: str, score: str, reference_score: str) -> tuple[np.ndarray, np.ndarray]:
    """§4.6's judge mode: margin = RM(policy) - RM(reference); 'correct' = the RM's preference matches
    the judge's (rows without a verdict left out)."""
    rows = read_csv(path, ("preferred", score, reference_score), numeric=(score, reference_score))
    margin, correct = [], []
    for i, r in enumerate(rows):
        if r["preferred"] in ("policy", "reference"):
            a, b = scores_of(rows, path, i, score, reference_score)
            m = a - b
            margin.append(m)
            correct.append(float((m > 0) == (r["preferred"] == "policy")))
    return np.array(margin), np.array(correct)


def cmd_calibration(args) -> dict:
    from analysis.stats import calibration

    paths = args.rm_eval or args.judged
    if not paths:
        raise InputError("give --rm-eval (human pairs) or --judged (RM vs judge on policy samples)")
    labels = args.label or [seed_of(p) for p in paths]
    out = {}
    for label, path in zip(labels, paths):
        if args.rm_eval:
            rows = read_csv(path, ("chosen_reward", "rejected_reward"))
            pairs = [scores_of(rows, path, i, "chosen_reward", "rejected_reward") for i in range(len(rows))]
            margin = np.array([a - b for a, b in pairs])
            correct = (margin > 0).astype(float)
        else:
            margin, correct = judged_margins(path, args.score_column, args.reference_score_column)
        out[label] = calibration(margin, correct, width=args.width)
    if args.figure:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(5, 4))
        for label, r in out.items():
            bins = [b for b in r["width_bins"] if b["accuracy"] is not None]
            ax.plot(
                [(b["low"] + b["high"]) / 2 for b in bins],
                [b["accuracy"] for b in bins],
                marker="o",
                label=f"{label} (ECE {r['ece']:.3f})",
            )
        xs = np.linspace(0, max((b["high"] for r in out.values() for b in r["width_bins"]), default=1), 50)
        ax.plot(xs, 1 / (1 + np.exp(-xs)), color="black", ls="--", label="perfect calibration")
        ax.set_xlabel("|reward margin|")
        ax.set_ylabel("accuracy")
        ax.legend(fontsize=8)
        save_figure(fig, args.figure)
        plt.close(fig)
    return out


def cmd_agreement(args) -> dict:
    columns = (args.score_column, args.reference_score_column)
    rows = read_csv(args.judged, ("preferred", *columns), numeric=columns)
    agree = n = 0
    for i, r in enumerate(rows):
        if r["preferred"] not in ("policy", "reference"):
            continue
        a, b = scores_of(rows, args.judged, i, *columns)
        rm_policy = a > b
        agree += rm_policy == (r["preferred"] == "policy")
        n += 1
    from analysis.stats import wilson_interval

    lo, hi = wilson_interval(agree, n)
    return {"agreement": agree / n if n else math.nan, "n": n, "wilson_low": lo, "wilson_high": hi}


def cmd_eos(args) -> dict:
    """Share of samples without an EOS, mean truncated length and the length histogram per table (§4.8)."""
    out = {}
    labels = args.label or ["/".join(Path(p).parts[-4:-1] + (Path(p).stem,)) for p in args.table]
    if args.figure:
        plt = _plt()
        fig, ax = plt.subplots(figsize=(5, 3.5))
    for label, path in zip(labels, args.table):
        rows = read_csv(path, ("response_token_len", "eos_present"))
        lens = np.array([float(scores_of(rows, path, i, "response_token_len")[0]) for i in range(len(rows))])
        eos = np.array([r["eos_present"] in ("True", "true", "1") for r in rows])
        counts, edges = np.histogram(lens, bins=np.arange(0, lens.max() + 2) if len(lens) else 1)
        out[label] = {
            "n": len(rows),
            "no_eos_fraction": float(1 - eos.mean()) if len(rows) else None,
            "mean_tokens": float(lens.mean()) if len(rows) else None,
            "mean_tokens_with_eos": float(lens[eos].mean()) if eos.any() else None,
            "histogram": {"edges": edges.tolist(), "counts": counts.tolist()},
        }
        if args.figure:
            ax.hist(
                lens,
                bins=30,
                histtype="step",
                density=True,
                label=f"{label} (no EOS {out[label]['no_eos_fraction']:.1%})",
            )
    if args.figure:
        ax.set_xlabel("response tokens (up to the first EOS)")
        ax.legend(fontsize=7)
        save_figure(fig, args.figure)
        plt.close(fig)
    return out


def cmd_rouge(args) -> dict:
    """ROUGE of each table's responses against its references: the reference's aggregation (bootstrap
    mid per eval batch, when a `batch` column exists) and the corpus mean."""
    from rlhf_repro import rouge

    out = {}
    for path in args.table:
        rows = read_csv(path, ("response", "reference"))
        scores = rouge.pair_scores([r["response"] for r in rows], [r["reference"] for r in rows])
        batches = [int(r["batch"]) for r in rows] if rows and "batch" in rows[0] else [0] * len(rows)
        out[path] = rouge.aggregate(scores, batches, seed=args.seed) | {"n": len(rows)}
    return out


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="rlhf-repro analyze", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = p.add_subparsers(dest="command", required=True)

    def common(s):
        s.add_argument("--out", default=None, help="also write the JSON here")
        s.add_argument("--seed", type=int, default=0, help="bootstrap seed")

    w = sub.add_parser("win-rate", help="win rate with bootstrap and Wilson 95%% intervals, per seed and pooled")
    w.add_argument("--judged", nargs="+", required=True, help="judged CSV(s), one per seed")
    common(w)
    lc = sub.add_parser("length-control", help="win rate against log length ratio; win rate at equal length")
    lc.add_argument("--judged", nargs="+", required=True, help="judged CSV(s), one per policy")
    lc.add_argument("--label", nargs="+", default=None, help="policy names (default: file stems)")
    lc.add_argument("--length-by", choices=("token", "char"), default="token", help="length unit")
    lc.add_argument("--tokenizer", default=None, help="tokenizer for --length-by token")
    lc.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples of the logistic fit")
    lc.add_argument("--figure", default=None, help="PNG to write (PDF beside it)")
    common(lc)
    c = sub.add_parser("calibration", help="RM accuracy against |margin|: 0.5-wide and equal-count bins, ECE, Brier")
    c.add_argument("--rm-eval", nargs="+", default=None, help="rm_eval_{split}.csv table(s) (RM or DPO)")
    c.add_argument(
        "--judged",
        nargs="+",
        default=None,
        help="instead: judged PPO table(s); accuracy = RM agrees with the judge, margin = RM(policy) - RM(reference)",
    )
    c.add_argument("--score-column", default="score", help="--judged: RM score of the policy's response")
    c.add_argument("--reference-score-column", default="reference_score", help="--judged: RM score of the reference")
    c.add_argument("--label", nargs="+", default=None, help="curve names (default: the run's seed)")
    c.add_argument("--width", type=float, default=0.5, help="bin width over |margin|")
    c.add_argument("--figure", default=None, help="PNG to write (PDF beside it)")
    common(c)
    e = sub.add_parser("eos", help="no-EOS share, mean length and length histogram of sample tables")
    e.add_argument("--table", nargs="+", required=True, help="query_responses_*.csv table(s)")
    e.add_argument("--label", nargs="+", default=None, help="names (default: run folder / file)")
    e.add_argument("--figure", default=None, help="PNG of the length histograms (PDF beside it)")
    common(e)
    rg = sub.add_parser("rouge", help="ROUGE-1/2/L/Lsum of a table's responses against its references")
    rg.add_argument("--table", nargs="+", required=True, help="CSV(s) with response and reference columns")
    common(rg)
    a = sub.add_parser("agreement", help="RM vs judge agreement on a judged table with RM scores")
    a.add_argument("--judged", required=True, help="judged CSV with RM scores of response and reference")
    a.add_argument("--score-column", default="score", help="RM score of the policy's response")
    a.add_argument("--reference-score-column", default="reference_score", help="RM score of the reference")
    common(a)
    return p


COMMANDS = {
    "win-rate": cmd_win_rate,
    "length-control": cmd_length_control,
    "calibration": cmd_calibration,
    "agreement": cmd_agreement,
    "eos": cmd_eos,
    "rouge": cmd_rouge,
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        from rlhf_repro.readers import output_file

        for target in (getattr(args, "out", None), getattr(args, "figure", None)):
            if target:
                output_file(target)  # refused before any work, not after it
        result = COMMANDS[args.command](args)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    text = json.dumps(finite_json(result), indent=2, default=float, allow_nan=False)
    if args.out:
        from rlhf_repro.io import atomic_write_text

        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.out, text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
