"""Measure PPO on the simulated world with the tiny settings, judged by the gold labeler.

    rlhf-repro quickstart --out runs/quickstart
    python benchmarks/sft_rm_tiny.py --quickstart runs/quickstart --out runs/bench_sft_rm
    python benchmarks/ppo_tiny.py --quickstart runs/quickstart --sft-rm runs/bench_sft_rm

Runs experiments/ppo.py with `rlhf_repro.presets.TINY_PPO_FLAGS` from the benchmark's SFT model and
RM, once as the paper sets it up and once per ablation (--variants), then reports per run: the gold
win rate of the final policy against the human references on validation (ties count half) next to the
SFT model's, the gold score and contradicted facts, mean response length, the no-EOS fraction and KL
over training, and seconds per phase and episodes per second. Writes OUT/ppo_tiny.json; prints Markdown.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

from rlhf_repro.presets import TINY_PPO_FLAGS  # noqa: E402

VARIANTS = {
    "paper": [],
    "no-eos-trick": ["--no-non-eos-penalty"],
    "whiten-rewards": ["--ppo.whiten-rewards"],
    # The gold labeler as the reward: what PPO reaches when the reward is the truth.
    "gold-reward": ["--reward-source", "gold"],
    # Responses cut at 38 tokens: a third of the SFT samples (34-41 tokens long) lack an EOS there.
    "eos-38": ["--response-length", "38"],
    "eos-38-no-trick": ["--response-length", "38", "--no-non-eos-penalty"],
    # At 34 tokens 87% of SFT samples are cut: a complete summary must drop a fact.
    "eos-34": ["--response-length", "34"],
    "eos-34-no-trick": ["--response-length", "34", "--no-non-eos-penalty"],
}


def response_length(flags: list[str]) -> int:
    return int(flags[flags.index("--response-length") + 1]) if "--response-length" in flags else 53


def sft_table(args, sft_run: Path, out: Path, length: int) -> Path:
    """The SFT model's validation samples at `length` new tokens: its own table at 53, else an
    evaluation-only SFT run (--num-train-epochs 0) made once per length."""
    if length == 53:
        return sft_run / "query_responses_validation.csv"
    run = out / f"sft-{length}" / "sft" / "tiny-m" / str(args.seed)
    if not (run / "summary.json").exists():
        cmd = [sys.executable, "experiments/sft.py", "--base-model", str(sft_run / "model"), "--query-dataset"]
        cmd += [str(Path(args.quickstart) / "data" / "sft"), "--results-dir", str(out), "--experiment", f"sft-{length}"]
        cmd += ["--model-name", "tiny-m", "--seed", str(args.seed), "--no-progress", "--num-train-epochs", "0"]
        cmd += [
            "--run-eval",
            "--response-length",
            str(length),
            "--max-eval-samples",
            "500",
            "--local-eval-batch-size",
            "64",
        ]
        print("$ " + " ".join(cmd), flush=True)
        subprocess.run(cmd, cwd=REPO, check=True)
    return run / "query_responses_validation.csv"


def gold_vs(policy_table: Path, other_table: Path, seed: int, posts: dict[str, str]) -> dict:
    """Gold-judge win rate of a policy against another policy's samples on the same queries (ties: a
    seeded coin flip), with its Wilson interval; and the other policy's mean gold score."""
    from analysis.stats import wilson_interval
    from rlhf_repro.judge import GoldJudge, judge_rows
    from rlhf_repro.judge_cli import align_against, read_table

    rows = align_against(read_table(policy_table, None), read_table(other_table, None), str(other_table))
    judged = judge_rows(GoldJudge(seed, posts), rows, seed=seed, progress=False)
    wins = sum(r["preferred"] == "policy" for r in judged)
    lo, hi = wilson_interval(wins, len(judged))
    other_gold = sum(r["judge_reference_score"] for r in judged) / max(1, len(judged))
    return {
        "win_rate": wins / max(1, len(judged)),
        "wilson_low": lo,
        "wilson_high": hi,
        "n": len(judged),
        "ties": sum(bool(r["guessed"]) for r in judged),
        "sft_gold": other_gold,
    }


def window(rows: list[dict], key: str, n: int) -> dict:
    values = [r[key] for r in rows]
    return {"first": sum(values[:n]) / len(values[:n]), "last": sum(values[-n:]) / len(values[-n:])}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quickstart", default="runs/quickstart", help="quickstart output (world/, data/)")
    parser.add_argument("--sft-rm", default="runs/bench_sft_rm", help="output of benchmarks/sft_rm_tiny.py")
    parser.add_argument("--out", default="runs/bench_ppo", help="results folder of this benchmark")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS), help="runs to make")
    parser.add_argument("--seed", type=int, default=1, help="training seed")
    parser.add_argument("--dry-run", action="store_true", help="print the stage commands only")
    parser.add_argument(
        "--report-only", action="store_true", help="rebuild the report from the runs already in --out (no training)"
    )
    parser.add_argument("--window", type=int, default=10, help="updates averaged for the first/last curve values")
    args = parser.parse_args()

    qs, sft_rm, out = Path(args.quickstart), Path(args.sft_rm), Path(args.out)
    sft_run = sft_rm / "tiny" / "sft" / "tiny-m" / str(args.seed)
    rm_model = sft_rm / "tiny" / "reward" / "tiny-m" / str(args.seed) / "model"
    commands = {
        name: [
            sys.executable,
            "experiments/ppo.py",
            "--sft-model-path",
            str(sft_run / "model"),
            "--reward-model-path",
            str(rm_model),
            "--query-dataset",
            str(qs / "data" / "sft"),
            "--results-dir",
            str(out),
            "--experiment",
            name,
            "--seed",
            str(args.seed),
            "--no-progress",
            *TINY_PPO_FLAGS,
            *VARIANTS[name],
        ]
        for name in args.variants
    }
    if args.dry_run:
        print("\n".join(" ".join(c) for c in commands.values()))
        return 0
    if not rm_model.exists():
        print(f"no reward model at {rm_model}; run benchmarks/sft_rm_tiny.py first", file=sys.stderr)
        return 2

    from rlhf_repro.runs import read_metrics
    from rlhf_repro.sim.evaluate import score_table, world_posts

    posts = world_posts(qs / "world")
    report = {}
    for name, cmd in commands.items():
        t0 = time.time()
        if not args.report_only:
            print("$ " + " ".join(cmd), flush=True)
            subprocess.run(cmd, cwd=REPO, check=True)
        run = out / name / "ppo" / "tiny-m" / str(args.seed)
        rows = [r for r in read_metrics(run / "metrics.jsonl") if "objective/kl" in r]
        _, gold = score_table(run / "query_responses_validation.csv", posts)
        summary = json.loads((run / "summary.json").read_text())
        n = len(rows)
        report[name] = {
            "seconds": round(time.time() - t0, 1) if not args.report_only else summary.get("seconds"),
            "updates": n,
            "gold": gold,
            "response_token_len": summary["validation/ppo/response_token_len"],
            "rm_score": summary["validation/ppo/score"],
            # Curves are noisy at 32 episodes per update: means over the first and last --window updates.
            "no_eos_fraction": window(rows, "ppo/val/no_eos_fraction", args.window),
            "no_eos_fraction_eval": 1 - summary["validation/ppo/eos_fraction"],
            "kl": window(rows, "objective/kl", args.window),
            "scores": window(rows, "objective/scores", args.window),
            "response_length": window(rows, "ppo/val/response_length", args.window),
            "seconds_per_update": {
                k.rsplit("/", 1)[-1]: round(sum(r[k] for r in rows) / n, 3)
                for k in ("time/ppo/generate", "time/ppo/score", "time/ppo/rollout", "time/ppo/train")
            },
            "episodes_per_second": rows[-1]["ppo/eps"],
            # Head to head against the SFT model sampled with the same token budget, judged by gold.
            "gold_vs_sft": gold_vs(
                run / "query_responses_validation.csv",
                sft_table(args, sft_run, out, response_length(VARIANTS[name])),
                args.seed,
                posts,
            ),
        }
    # The SFT model on the same validation rows (its table covers the whole split).
    import csv

    ppo_ids = set()
    with open(out / args.variants[0] / "ppo" / "tiny-m" / str(args.seed) / "query_responses_validation.csv") as f:
        ppo_ids = {row["id"] for row in csv.DictReader(f)}
    rows, _ = score_table(sft_run / "query_responses_validation.csv", posts)
    rows = [r for r in rows if r["id"] in ppo_ids]
    sft_win = sum(r["gold_response_beats_reference"] for r in rows) / max(1, len(rows))
    sft_gold = sum(r["gold_response"] for r in rows) / max(1, len(rows))
    report["sft"] = {"gold_win_rate": sft_win, "gold_response": sft_gold, "rows": len(rows)}
    (out / "ppo_tiny.json").write_text(json.dumps(report, indent=2) + "\n")

    header = ["run", "gold win rate vs reference", "gold score", "gold win rate vs SFT (same budget; SFT's gold)"]
    header += ["tokens", "no-EOS, training (first -> last)"]
    header += ["no-EOS, final eval"]
    header += ["KL (first -> last)", "s/update (gen / score / train)", "episodes/s"]
    print("\n| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    print(f"| SFT (53 tokens) | {sft_win:.3f} | {sft_gold:.2f} | | | | | | | |")
    for name in args.variants:
        r = report[name]
        s, no_eos, kl, v = r["seconds_per_update"], r["no_eos_fraction"], r["kl"], r["gold_vs_sft"]
        cells = [
            f"PPO {name}",
            f"{r['gold']['win_rate_vs_reference']:.3f}",
            f"{r['gold']['gold_response']:.2f}",
            f"{v['win_rate']:.3f} [{v['wilson_low']:.3f}, {v['wilson_high']:.3f}] (SFT {v['sft_gold']:.2f})",
            f"{r['response_token_len']:.1f}",
            f"{no_eos['first']:.2f} -> {no_eos['last']:.2f}",
            f"{r['no_eos_fraction_eval']:.3f}",
            f"{kl['first']:.2f} -> {kl['last']:.2f}",
            f"{s['generate']} / {s['score']} / {s['train']}",
            f"{r['episodes_per_second']:.1f}",
        ]
        print("| " + " | ".join(cells) + " |")
    print(f"wrote {out / 'ppo_tiny.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
