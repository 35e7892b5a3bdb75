"""Measure DPO on the simulated world with the tiny settings, next to the RM and PPO of the same size.

    rlhf-repro quickstart --out runs/quickstart
    python benchmarks/sft_rm_tiny.py --quickstart runs/quickstart --out runs/bench_sft_rm
    python benchmarks/ppo_tiny.py --quickstart runs/quickstart --sft-rm runs/bench_sft_rm   # optional
    python benchmarks/dpo_tiny.py --quickstart runs/quickstart --sft-rm runs/bench_sft_rm

Trains experiments/dpo.py with `rlhf_repro.presets.TINY_DPO_FLAGS` from the benchmark's SFT model
(evaluation samples at DPO's 128 new tokens), then samples the DPO policy again at 53 tokens (an
evaluation-only run, --num-train-epochs 0). Reports the implicit RM's validation accuracy next to the
explicit RM's, and per policy (SFT, PPO when its benchmark ran, DPO at 53 and 128 tokens) the gold
score, gold win rate against the references and mean response length on the same validation posts.
Writes OUT/dpo_tiny.json; prints Markdown.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

from rlhf_repro.presets import TINY_DPO_FLAGS  # noqa: E402


def policy_row(table: Path, posts: dict, ids: set | None) -> dict:
    from rlhf_repro.sim.evaluate import score_table

    rows, _ = score_table(table, posts)
    rows = [r for r in rows if ids is None or r["id"] in ids]
    n = max(1, len(rows))
    return {
        "rows": len(rows),
        "gold_response": sum(r["gold_response"] for r in rows) / n,
        "contradictions": sum(r["contradictions_response"] for r in rows) / n,
        "win_rate_vs_reference": sum(r["gold_response_beats_reference"] for r in rows) / n,
        "response_words": sum(len(r["response"].split()) for r in rows) / n,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quickstart", default="runs/quickstart", help="quickstart output (world/, data/)")
    parser.add_argument("--sft-rm", default="runs/bench_sft_rm", help="output of benchmarks/sft_rm_tiny.py")
    parser.add_argument("--ppo", default="runs/bench_ppo", help="output of benchmarks/ppo_tiny.py (optional)")
    parser.add_argument("--out", default="runs/bench_dpo", help="results folder of this benchmark")
    parser.add_argument("--seed", type=int, default=1, help="training seed")
    parser.add_argument("--dry-run", action="store_true", help="print the stage commands only")
    args = parser.parse_args()

    qs, sft_rm, out = Path(args.quickstart), Path(args.sft_rm), Path(args.out)
    sft_run = sft_rm / "tiny" / "sft" / "tiny-m" / str(args.seed)
    rm_run = sft_rm / "tiny" / "reward" / "tiny-m" / str(args.seed)
    dpo_run = out / "dpo" / "dpo" / "tiny-m" / str(args.seed)
    common = ["--query-dataset", str(qs / "data" / "sft"), "--label-dataset", str(qs / "data" / "preference")]
    common += ["--results-dir", str(out), "--seed", str(args.seed), "--no-progress", "--model-name", "tiny-m"]
    train = [sys.executable, "experiments/dpo.py", "--sft-model-path", str(sft_run / "model"), *common]
    train += ["--experiment", "dpo", *TINY_DPO_FLAGS]
    resample = [sys.executable, "experiments/dpo.py", "--sft-model-path", str(dpo_run / "model"), *common]
    resample += ["--experiment", "dpo-53", *TINY_DPO_FLAGS, "--num-train-epochs", "0", "--eval-response-length", "53"]
    if args.dry_run:
        print(" ".join(train) + "\n" + " ".join(resample))
        return 0
    if not (sft_run / "model").exists():
        print(f"no SFT model at {sft_run / 'model'}; run benchmarks/sft_rm_tiny.py first", file=sys.stderr)
        return 2

    from rlhf_repro.sim.evaluate import world_posts

    seconds = {}
    for name, cmd in (("dpo", train), ("dpo-53", resample)):
        print("$ " + " ".join(cmd), flush=True)
        t0 = time.time()
        subprocess.run(cmd, cwd=REPO, check=True)
        seconds[name] = round(time.time() - t0, 1)
    summary = json.loads((dpo_run / "summary.json").read_text())
    posts = world_posts(qs / "world")
    with open(dpo_run / "query_responses_validation.csv", newline="") as f:
        ids = {row["id"] for row in csv.DictReader(f)}
    tables = {
        "SFT (53 tokens)": sft_run / "query_responses_validation.csv",
        "DPO (128 tokens)": dpo_run / "query_responses_validation.csv",
        "DPO (53 tokens)": out / "dpo-53" / "dpo" / "tiny-m" / str(args.seed) / "query_responses_validation.csv",
    }
    ppo_table = Path(args.ppo) / "paper" / "ppo" / "tiny-m" / str(args.seed) / "query_responses_validation.csv"
    if ppo_table.exists():
        tables["PPO (53 tokens)"] = ppo_table
    policies = {name: policy_row(path, posts, ids) for name, path in tables.items()}
    accuracy = {}
    for split in ("validation", "validation_cnndm"):
        n = summary.get(f"eval/rm/{split}/n_pairs")
        rm_table = rm_run / f"rm_eval_{split}.csv"
        rm_acc = None
        if n and rm_table.exists():  # the explicit RM on the same first n pairs
            with open(rm_table, newline="") as f:
                rows = list(csv.DictReader(f))[:n]
            rm_acc = sum(float(r["accuracy"]) for r in rows) / max(1, len(rows))
        accuracy[split] = {"dpo_implicit": summary.get(f"eval/rm/{split}/accuracy"), "rm": rm_acc, "pairs": n}
    report = {
        "seconds": seconds,
        "updates": summary["num_updates"],
        "train_seconds": summary["train_seconds"],
        "accuracy": accuracy,
        "policies": policies,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "dpo_tiny.json").write_text(json.dumps(report, indent=2) + "\n")

    print("\n| preference accuracy | DPO implicit reward | explicit RM |\n|---|---|---|")
    for split, a in accuracy.items():
        rm = f"{a['rm']:.3f}" if a["rm"] is not None else "n/a"
        print(f"| {split} ({a['pairs']} pairs) | {a['dpo_implicit']:.3f} | {rm} |")
    print("\n| policy | gold score | contradictions | gold win rate vs reference | words |\n|---|---|---|---|---|")
    for name, p in policies.items():
        print(
            f"| {name} | {p['gold_response']:.2f} | {p['contradictions']:.2f} | "
            f"{p['win_rate_vs_reference']:.3f} | {p['response_words']:.1f} |"
        )
    print(f"wrote {out / 'dpo_tiny.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
