"""Check that a refactor kept every number: the four training stages at a small budget, from a git ref and
from the working tree, compared file by file.

    python scripts/same_numbers.py --ref HEAD --data runs/quickstart/data \
        --base-model rlhf_repro/sim/base_models/tiny-m/model

It checks out REF into a temporary git worktree, runs SFT -> RM -> PPO and DPO (a few updates each, one
thread, evaluation on) from both trees on the same processed datasets, and compares metrics.jsonl (less
the timing fields), summary.json (less seconds and paths), every CSV table and the saved weights. Exit 0
when all are equal, 1 with the differing files listed otherwise.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
STAGES = ("sft", "reward", "ppo", "dpo")
TIMING = ("time/", "tokens_per_s", "seconds", "ppo/eps", "train/eps", "model_dir")


def stage_commands(out: Path, data: Path, base: Path) -> list[list[str]]:
    common = ["--experiment", "s", "--model-name", "m", "--seed", "1", "--results-dir", str(out), "--threads", "1"]
    common += ["--no-progress", "--run-eval", "--max-eval-samples", "16", "--local-eval-batch-size", "16"]
    sft, rm = out / "s/sft/m/1/model", out / "s/reward/m/1/model"
    batch = ["--batch-size", "16", "--local-micro-batch-size", "16"]
    commands = [
        ["sft", "--base-model", str(base), "--query-dataset", str(data / "sft"), "--lr", "5e-4", *batch]
        + ["--total-episodes", "64", "--response-length", "16"],
        ["reward", "--sft-model-path", str(sft), "--query-dataset", str(data / "sft")]
        + ["--label-dataset", str(data / "preference"), "--lr", "2e-4", *batch, "--total-episodes", "64"]
        + ["--norm-episodes", "32"],
        ["ppo", "--sft-model-path", str(sft), "--reward-model-path", str(rm), "--query-dataset", str(data / "sft")]
        + ["--lr", "1e-4", "--batch-size", "16", "--local-micro-batch-size", "8"]
        + ["--local-rollout-forward-batch-size", "16", "--total-episodes", "48", "--response-length", "16"]
        + ["--eval-splits", "validation"],
        ["dpo", "--sft-model-path", str(sft), "--query-dataset", str(data / "sft")]
        + ["--label-dataset", str(data / "preference"), "--lr", "1e-4", *batch, "--total-episodes", "48"]
        + ["--eval-response-length", "16"],
    ]
    return [[*cmd, *common] for cmd in commands]


def run_tree(tree: Path, out: Path, data: Path, base: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(tree), "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1"}
    for stage, *flags in stage_commands(out, data, base):
        cmd = [sys.executable, str(tree / "experiments" / f"{stage}.py"), *flags]
        r = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True)
        if r.returncode != 0:
            sys.exit(f"{stage} failed in {tree}:\n{r.stderr[-3000:]}")
        print(f"{tree.name}: {stage} done")


def without_timing(row: dict) -> dict:
    return {k: v for k, v in row.items() if not any(t in k for t in TIMING)}


def differences(a: Path, b: Path) -> list[str]:
    out = []
    for stage in STAGES:
        ra, rb = a / "s" / stage / "m" / "1", b / "s" / stage / "m" / "1"
        rows = [
            [without_timing(json.loads(x)) for x in (r / "metrics.jsonl").read_text().splitlines()] for r in (ra, rb)
        ]
        if rows[0] != rows[1]:
            out.append(f"{stage}/metrics.jsonl")
        summaries = [without_timing(json.loads((r / "summary.json").read_text())) for r in (ra, rb)]
        if summaries[0] != summaries[1]:
            out.append(f"{stage}/summary.json")
        for table in sorted(p.relative_to(ra) for p in ra.rglob("*.csv")):
            if not (rb / table).exists() or (ra / table).read_bytes() != (rb / table).read_bytes():
                out.append(f"{stage}/{table}")
        for weights in sorted(p.relative_to(ra) for p in ra.glob("*/model.safetensors")):
            digests = [
                hashlib.sha256((r / weights).read_bytes()).hexdigest() for r in (ra, rb) if (r / weights).exists()
            ]
            if len(digests) != 2 or digests[0] != digests[1]:
                out.append(f"{stage}/{weights}")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ref", default="HEAD", help="git ref to compare the working tree with (default HEAD)")
    parser.add_argument("--data", type=Path, required=True, help="processed datasets (build-dataset's output)")
    parser.add_argument("--base-model", type=Path, required=True, help="a causal LM directory to start SFT from")
    parser.add_argument("--out", type=Path, default=None, help="where both runs go (default: a temporary folder)")
    args = parser.parse_args(argv)
    out = args.out or Path(tempfile.mkdtemp(prefix="same-numbers-"))
    before = out / "worktree"
    subprocess.run(["git", "worktree", "add", "--detach", str(before), args.ref], cwd=REPO, check=True)
    try:
        run_tree(before, out / "before", args.data.resolve(), args.base_model.resolve())
        run_tree(REPO, out / "after", args.data.resolve(), args.base_model.resolve())
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(before)], cwd=REPO, check=False)
    diff = differences(out / "before", out / "after")
    if diff:
        print(f"different from {args.ref}: " + ", ".join(diff))
        return 1
    print(f"same numbers as {args.ref}: metrics, summaries, tables and weights of {', '.join(STAGES)} ({out})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
