"""Can the pipeline optimize the truth? PPO with the gold labeler as its reward, at the quickstart's budget.

    rlhf-repro quickstart --out runs/quickstart            # world, data, SFT and RM (reused here)
    python benchmarks/gold_reward_ppo.py --quickstart runs/quickstart

Runs `rlhf-repro reproduce quickstart-gold-reward` into the quickstart's folder: the quickstart's PPO (same
SFT, same value model initialized from its RM, same 16 updates, lr, 40-token responses and EOS trick)
with `--reward-source gold`, whose reward is the gold labeler's score minus the references' mean (an
oracle RM). Then reports, on the same 300 validation posts, the gold win rate against the references of
SFT, of this oracle PPO and of the quickstart's RM-trained PPO, with the oracle PPO's gain over SFT and
its 95% interval (the normal interval of a difference of two proportions, as claim 2 computes it).

A pipeline whose PPO is right raises the win rate by well over 0.20 here (docs/measurements.md, "Gold-reward PPO"); when
it does not, run the CartPole check first (tests/test_quickstart_slow.py::test_ppo_learns_a_target_length).
Writes QUICKSTART/results/quickstart-gold-reward/gold_reward_ppo.json; prints Markdown.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quickstart", default="runs/quickstart", help="quickstart output folder (--out of it)")
    parser.add_argument("--seed", type=int, default=1, help="the quickstart's seed")
    parser.add_argument("--size", default="tiny-m", help="the quickstart's model size")
    parser.add_argument("--jobs", type=int, default=3, help="stages at once (passed to reproduce)")
    parser.add_argument("--dry-run", action="store_true", help="print the reproduce plan only")
    args = parser.parse_args()

    from analysis.claims import claim_gold_win_rate

    qs = Path(args.quickstart)
    command = [sys.executable, "-m", "rlhf_repro.cli", "reproduce", "quickstart-gold-reward", "--out", str(qs)]
    command += ["--seeds", str(args.seed), "--sizes", args.size, "--jobs", str(args.jobs)]
    if args.dry_run:
        return subprocess.run(command + ["--dry-run"]).returncode
    t0 = time.time()
    proc = subprocess.run(command)
    if proc.returncode != 0:
        print(f"gold_reward_ppo: reproduce failed (exit {proc.returncode}); see {qs / 'logs'}", file=sys.stderr)
        return proc.returncode
    seconds = time.time() - t0
    results = qs / "results"
    run = f"{args.size}/{args.seed}"
    sft = results / "quickstart" / "sft" / run
    oracle = results / "quickstart-gold-reward" / "ppo" / run
    rm_ppo = results / "quickstart" / "ppo" / run
    gain = claim_gold_win_rate([sft], [oracle])["numbers"]
    report = {
        "seed": args.seed,
        "size": args.size,
        "sft_win_rate": gain["sft_win_rate"],
        "gold_reward_ppo_win_rate": gain["ppo_win_rate"],
        "gain": gain["difference"],
        "gain_ci_low": gain["difference_ci_low"],
        "gain_ci_high": gain["difference_ci_high"],
        "n": gain["n_ppo"],
        "seconds": round(seconds, 1),
    }
    if (rm_ppo / "judged_validation.csv").exists():
        report["rm_ppo_win_rate"] = claim_gold_win_rate([sft], [rm_ppo])["numbers"]["ppo_win_rate"]
    out = results / "quickstart-gold-reward" / "gold_reward_ppo.json"
    out.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    print("| policy | gold win rate vs references |\n|---|---|")
    print(f"| SFT | {report['sft_win_rate']} |")
    if "rm_ppo_win_rate" in report:
        print(f"| PPO, RM reward (the quickstart's) | {report['rm_ppo_win_rate']} |")
    print(f"| PPO, gold reward | {report['gold_reward_ppo_win_rate']} |")
    print(
        f"\ngain of the gold-reward PPO over SFT: {report['gain']} (95% CI {report['gain_ci_low']} to "
        f"{report['gain_ci_high']}, n {report['n']}); {report['seconds']} s; {out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
