"""`rlhf-repro compare RESULTS_DIR`: the ablation table, one row per (experiment, stage, size), each
number a mean over seeds with a 95% t-interval (seeds are the unit of replication, as in the paper).

    rlhf-repro compare runs/results                      # prints Markdown, writes compare.csv/.md
    rlhf-repro compare runs/results --stages ppo --out report/

Columns (empty where a stage has no such number):
- win_rate       judge win rate against the references (judged_validation.csv.summary.json)
- rm_accuracy    validation preference accuracy: the RM's (reward rows) or DPO's implicit reward's
- kl             PPO: objective/kl, mean of the last 3 updates
- length         mean response tokens of the validation samples
- no_eos         share of responses without an EOS: PPO rollouts (last 3 updates), else validation samples
- gold_score     mean gold score of the judged responses (simulated world)
Reads run folders only (summary.json, metrics.jsonl, judged tables); nothing from W&B.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

from rlhf_repro.io import InputError, atomic_write_text

COLUMNS = ("win_rate", "rm_accuracy", "kl", "length", "no_eos", "gold_score")
STAGES = ("sft", "reward", "ppo", "dpo")
# Two-sided 97.5% quantiles of Student's t for 1..30 degrees of freedom (normal beyond).
T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131)
T975 += (2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def mean_ci(values: list[float]) -> tuple[float, float | None]:
    """Mean and half-width of the 95% t-interval (None with one value)."""
    v = np.asarray(values, dtype=float)
    if len(v) < 2:
        return float(v.mean()), None
    t = T975[len(v) - 2] if len(v) - 1 <= len(T975) else 1.96
    return float(v.mean()), float(t * v.std(ddof=1) / math.sqrt(len(v)))


def _last(path: Path, key: str, k: int = 3) -> float | None:
    vals = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row.get(key), (int, float)):
                vals.append(float(row[key]))
    return float(np.mean(vals[-k:])) if vals else None


def run_numbers(run: Path, stage: str) -> dict:
    s = json.loads((run / "summary.json").read_text())
    out: dict = {}
    judged = run / "judged_validation.csv.summary.json"
    if judged.exists():
        out["win_rate"] = json.loads(judged.read_text()).get("win_rate")
        from rlhf_repro.readers import read_table

        rows = read_table(run / "judged_validation.csv")
        scores = [float(r["judge_policy_score"]) for r in rows if r.get("judge_policy_score") not in (None, "")]
        if scores:
            out["gold_score"] = float(np.mean(scores))
    if stage == "reward":
        out["rm_accuracy"] = s.get("eval/rm/validation/accuracy")
    if stage == "dpo":
        out["rm_accuracy"] = s.get("eval/rm/validation/accuracy")
    if stage in ("sft", "ppo", "dpo"):
        out["length"] = s.get(f"validation/{stage}/response_token_len")
        eos = s.get(f"validation/{stage}/eos_fraction")
        if eos is not None:
            out["no_eos"] = 1.0 - eos
    if stage == "ppo":
        out["kl"] = _last(run / "metrics.jsonl", "objective/kl")
        rollout = _last(run / "metrics.jsonl", "ppo/val/no_eos_fraction")
        if rollout is not None:
            out["no_eos"] = rollout
    return {k: v for k, v in out.items() if v is not None}


def compare(results: Path, stages=STAGES) -> list[dict]:
    groups: dict[tuple[str, str, str], list[dict]] = defaultdict(list)
    for summary in sorted(results.glob("*/*/*/*/summary.json")):
        run = summary.parent
        stage, experiment = run.parent.parent.name, run.parent.parent.parent.name
        if stage not in stages:
            continue
        try:
            nums = run_numbers(run, stage)
        except (OSError, json.JSONDecodeError) as e:
            raise InputError(f"unreadable run folder ({e})", run) from None
        groups[(experiment, stage, run.parent.name)].append(nums | {"_seed": run.name})
    rows = []
    for (experiment, stage, size), runs in sorted(groups.items()):
        row: dict = {"experiment": experiment, "stage": stage, "size": size, "seeds": len(runs)}
        for col in COLUMNS:
            vals = [r[col] for r in runs if col in r]
            if vals:
                m, h = mean_ci(vals)
                row[col], row[f"{col}_ci"] = round(m, 4), None if h is None else round(h, 4)
        rows.append(row)
    return rows


def to_markdown(rows: list[dict]) -> str:
    head = ["experiment", "stage", "size", "seeds", *COLUMNS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["experiment"], r["stage"], r["size"], str(r["seeds"])]
        for col in COLUMNS:
            if col not in r:
                cells.append("")
            elif r.get(f"{col}_ci") is None:
                cells.append(f"{r[col]:.3f}")
            else:
                cells.append(f"{r[col]:.3f} ± {r[f'{col}_ci']:.3f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def to_csv(rows: list[dict]) -> str:
    fields = ["experiment", "stage", "size", "seeds"] + [c for col in COLUMNS for c in (col, f"{col}_ci")]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="rlhf-repro compare", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("results", help="results directory holding <experiment>/<stage>/<size>/<seed>/ run folders")
    p.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES), help="stages to tabulate")
    p.add_argument("--out", default=None, help="folder for compare.csv and compare.md (default RESULTS)")
    args = p.parse_args(argv)
    results = Path(args.results)
    try:
        if not results.is_dir():
            raise InputError("not a directory", results)
        rows = compare(results, tuple(args.stages))
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not rows:
        print(f"error: {results}: no finished run folders (<experiment>/<stage>/<size>/<seed>/summary.json)")
        return 2
    out = Path(args.out) if args.out else results
    out.mkdir(parents=True, exist_ok=True)
    md = to_markdown(rows)
    atomic_write_text(out / "compare.md", md)
    atomic_write_text(out / "compare.csv", to_csv(rows))
    print(md, end="")
    print(f"wrote {out / 'compare.csv'} and {out / 'compare.md'} ({len(rows)} rows)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
