"""`rlhf-repro quickstart`: the simulated TL;DR world end to end on this machine, about 12 minutes on 2 cores.

It is `rlhf-repro reproduce quickstart --preset tiny --jobs 3`: world -> datasets -> the shipped tiny base
model (checked against the world it was pretrained on) -> SFT -> RM (and its agreement with the gold
labeler on SFT's own samples) -> PPO (and PPO without the EOS trick) and DPO -> gold judge -> figures ->
the paper's claims, checked on its own results and printed as PASS/FAIL with their numbers. With
--controls it also runs the claims' negative controls (about 4 more minutes), which must FAIL. Every
step is the same code a paper run uses; only the sources and sizes differ. Rerunning skips finished
stages (and resumes a killed one).

Writes under --out: world/, data/, logs/ (base/ too with --pretrain-base), and results/ with the run
folders (results/quickstart/<stage>/tiny-m/<seed>/), results/report/ (figures + report.md) and
results/quickstart/{claims.json, claims.md, summary.json} (controls.json with --controls).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def cli(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="rlhf-repro quickstart", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default="runs/quickstart", help="folder for world/, data/, base/ and results/")
    parser.add_argument("--seed", type=int, default=1, help="training seed of SFT, RM, PPO and DPO")
    parser.add_argument("--size", default="tiny-m", help="base model size (tiny-xs, tiny-s, tiny-m, tiny-l)")
    parser.add_argument("--jobs", type=int, default=3, help="stages run at once when their inputs are ready")
    parser.add_argument("--dry-run", action="store_true", help="print the stage commands without running them")
    parser.add_argument("--track", action="store_true", help="log the training stages to W&B")
    parser.add_argument(
        "--controls",
        action="store_true",
        help="also run the claims' negative controls (PPO against the negated RM, PPO that cannot move, a second "
        "PPO without the EOS trick) and report them beside the claims: `reproduce quickstart-controls`",
    )
    parser.add_argument(
        "--pretrain-base",
        action="store_true",
        help="pretrain the base model on the world instead of starting from the shipped one",
    )
    args = parser.parse_args(argv)

    from rlhf_repro.reproduce import main as reproduce

    experiment = "quickstart-controls" if args.controls else "quickstart"
    forward = [experiment, "--preset", "tiny", "--out", args.out, "--seeds", str(args.seed)]
    forward += ["--sizes", args.size, "--jobs", str(args.jobs)] + (["--track"] if args.track else [])
    forward += ["--pretrain-base"] if args.pretrain_base else []
    if args.dry_run:
        return reproduce(forward + ["--dry-run"])
    t0 = time.time()
    rc = reproduce(forward)
    if rc:
        return rc
    results = Path(args.out) / "results"
    summary = json.loads((results / "quickstart" / "summary.json").read_text())
    claims = json.loads((results / "quickstart" / "claims.json").read_text())
    print("\n== quickstart summary ==")
    win = summary["gold_win_rate"]
    print(f"ROUGE-L (validation)     base {summary['base_rougeL']}  ->  SFT {summary['sft_rougeL']}")
    print(
        f"RM accuracy              {summary['rm_accuracy']} (gold labeler ceiling {summary['gold_ceiling_accuracy']}; "
        f"news {summary['rm_accuracy_ood']}); DPO implicit {summary['dpo_implicit_accuracy']}"
    )
    print(
        f"RM vs gold on SFT's own  {summary['rm_gold_agreement_on_policy_samples']} of sample pairs ordered as gold "
        "orders them at 53 tokens (chance 0.5)"
        + "".join(f"; {v} at {k}" for k, v in summary.get("rm_gold_agreement_at_rollout_length", {}).items())
    )
    refs = summary.get("reference_gold_score", {})
    print(
        f"references' gold score   mean {refs.get('mean')} of 8 ({refs.get('mean_fraction_of_max')}), "
        f"{refs.get('perfect_share')} perfect; the base model loses to them on "
        f"{summary.get('base_loses_to_reference_share')} of posts"
    )
    print("gold win rate vs refs    " + ", ".join(f"{k} {v}" for k, v in win.items()))
    print("gold score per summary   " + ", ".join(f"{k} {v}" for k, v in summary["gold_score"].items()))
    print("no-EOS share of rollouts " + ", ".join(f"{k} {v}" for k, v in summary["no_eos_fraction"].items()))
    print("mean response tokens     " + ", ".join(f"{k} {v}" for k, v in summary["mean_response_length"].items()))
    print(f"claims                   {sum(c['passed'] for c in claims)}/{len(claims)} pass (claims.md)")
    if summary.get("controls_failing_as_they_must"):
        print(f"negative controls        {summary['controls_failing_as_they_must']} fail as they must (claims.md)")
    print(f"figures                  {results / 'report'}")
    print(f"quickstart finished in {time.time() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(cli())
