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


def _joined(values: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in values.items() if v is not None)


def summary_lines(summary: dict, claims: list[dict], results: Path) -> list[str]:
    """The closing summary: one line per measured quantity, and no line for one the run did not measure
    (no empty `label   ` lines)."""
    refs = summary.get("reference_gold_score") or {}
    at_length = summary.get("rm_gold_agreement_at_rollout_length") or {}
    rows = [
        ("ROUGE-L (validation)", summary.get("sft_rougeL") is not None
         and f"base {summary.get('base_rougeL')}  ->  SFT {summary['sft_rougeL']}"),
        ("RM accuracy", summary.get("rm_accuracy") is not None
         and f"{summary['rm_accuracy']} (gold labeler ceiling {summary.get('gold_ceiling_accuracy')}; news "
             f"{summary.get('rm_accuracy_ood')}); DPO implicit {summary.get('dpo_implicit_accuracy')}"),
        ("RM vs gold on SFT's own", summary.get("rm_gold_agreement_on_policy_samples") is not None
         and f"{summary['rm_gold_agreement_on_policy_samples']} of sample pairs ordered as gold orders them at 53 "
             "tokens (chance 0.5)" + "".join(f"; {v} at {k}" for k, v in at_length.items())),
        ("references' gold score", refs.get("mean") is not None
         and f"mean {refs['mean']} of 8 ({refs.get('mean_fraction_of_max')}), {refs.get('perfect_share')} perfect; "
             f"the base model loses to them on {summary.get('base_loses_to_reference_share')} of posts"),
        ("gold win rate vs refs", _joined(summary.get("gold_win_rate") or {})),
        ("gold score per summary", _joined(summary.get("gold_score") or {})),
        ("no-EOS share of rollouts", _joined(summary.get("no_eos_fraction") or {})),
        ("mean response tokens", _joined(summary.get("mean_response_length") or {})),
        ("claims", claims and f"{sum(c['passed'] for c in claims)}/{len(claims)} pass (claims.md)"),
        ("negative controls", summary.get("controls_failing_as_they_must")
         and f"{summary['controls_failing_as_they_must']} fail as they must (claims.md)"),
        ("report", f"{results / 'report' / 'report.html'} (figures, claims, ours beside the paper)"),
    ]  # fmt: skip
    return ["", "== quickstart summary =="] + [f"{label:24s} {text}" for label, text in rows if text]


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
    for line in summary_lines(summary, claims, results):
        print(line)
    print(f"quickstart finished in {time.time() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(cli())
