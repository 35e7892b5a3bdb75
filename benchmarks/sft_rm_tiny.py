"""Measure the SFT and reward-model stages on the simulated world with the tiny settings.

    rlhf-repro quickstart --out runs/quickstart          # world, datasets, tiny-m base model
    python benchmarks/sft_rm_tiny.py --quickstart runs/quickstart

Runs experiments/sft.py and experiments/reward.py as subprocesses with `rlhf_repro.presets`'
TINY_SFT_FLAGS and TINY_REWARD_FLAGS, then reports, next to the simulated world's truth:
- SFT: validation ROUGE-L before vs after SFT (the reference's mean of batch means and the corpus
  mean), gold score, contradicted facts and fact coverage per response, EOS rate, wall clock;
- RM: validation accuracy overall, by labeler confidence and by batch, beside the gold labeler's
  accuracy on the same pairs (the achievable ceiling: labels are noisy draws); news (CNN/DM-style)
  accuracy; the reference-reward normalization; wall clock.
Writes OUT/sft_rm_tiny.json and prints a Markdown table. A benchmark, not a test: it reports numbers.
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

from rlhf_repro.presets import TINY_REWARD_FLAGS, TINY_SFT_FLAGS  # noqa: E402


def run(cmd: list[str]) -> float:
    print("$ " + " ".join(cmd), flush=True)
    t0 = time.time()
    subprocess.run(cmd, cwd=REPO, check=True)
    return round(time.time() - t0, 1)


def gold_accuracy(eval_csv: Path, posts: dict[str, str], label_dir: Path, split: str) -> dict:
    """The gold labeler's accuracy on the RM's evaluation pairs, overall and by confidence and batch."""
    from datasets import load_from_disk

    from rlhf_repro.sim.labeler import gold_score

    ds = load_from_disk(str(label_dir))[split]
    by_id = {}
    for info, chosen, rejected in zip(ds["info"], ds["chosen"], ds["rejected"]):
        post = posts.get(info["id"]) or info.get("post") or info.get("article") or ""
        g_c, g_r = gold_score(post, chosen), gold_score(post, rejected)
        by_id.setdefault(info["id"], []).append(1.0 if g_c > g_r else 0.5 if g_c == g_r else 0.0)
    groups: dict[str, list[float]] = {}
    rm_groups: dict[str, list[float]] = {}
    seen: dict[str, int] = {}
    with open(eval_csv, newline="") as f:
        for row in csv.DictReader(f):
            k = seen.get(row["id"], 0)
            seen[row["id"]] = k + 1
            gold = by_id[row["id"]][k]
            for key in ("all", f"confidence/{row['confidence']}", f"batch/{row['batch']}"):
                groups.setdefault(key, []).append(gold)
                rm_groups.setdefault(key, []).append(float(row["accuracy"]))
    return {
        k: {"rm": sum(rm_groups[k]) / len(rm_groups[k]), "gold": sum(v) / len(v), "n": len(v)}
        for k, v in sorted(groups.items())
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quickstart", default="runs/quickstart", help="quickstart output (world/, data/, results/)")
    parser.add_argument("--out", default="runs/bench_sft_rm", help="results folder of this benchmark")
    parser.add_argument("--seed", type=int, default=1, help="training seed")
    parser.add_argument("--dry-run", action="store_true", help="print the two stage commands only")
    args = parser.parse_args()

    qs, out = Path(args.quickstart), Path(args.out)
    # The quickstart's base model: the shipped one (rlhf_repro/sim/base_models/), or the one a quickstart
    # with --pretrain-base pretrained (base/pretrain/...).
    from rlhf_repro.sim.shipped import shipped_model_dir

    base = qs / "base" / "pretrain" / "tiny-m" / "1" / "model"
    if not base.exists():
        base = shipped_model_dir("tiny-m")
    common = ["--results-dir", str(out), "--experiment", "tiny", "--seed", str(args.seed), "--no-progress"]
    sft_cmd = [
        sys.executable,
        "experiments/sft.py",
        "--base-model",
        str(base),
        "--query-dataset",
        str(qs / "data" / "sft"),
    ]
    sft_cmd += [*common, *TINY_SFT_FLAGS, "--eval-at-start"]
    sft_run = out / "tiny" / "sft" / "tiny-m" / str(args.seed)
    rm_cmd = [sys.executable, "experiments/reward.py", "--sft-model-path", str(sft_run / "model")]
    rm_cmd += ["--label-dataset", str(qs / "data" / "preference"), "--query-dataset", str(qs / "data" / "sft")]
    rm_cmd += [*common, *TINY_REWARD_FLAGS]
    rm_run = out / "tiny" / "reward" / "tiny-m" / str(args.seed)
    if args.dry_run:
        print(" ".join(sft_cmd) + "\n" + " ".join(rm_cmd))
        return 0
    if not base.exists():
        print(f"no base model at {base}; run `rlhf-repro quickstart --out {qs}` first", file=sys.stderr)
        return 2

    from rlhf_repro.sim.evaluate import score_table, world_posts

    seconds = {"sft": run(sft_cmd), "reward": run(rm_cmd)}
    posts = world_posts(qs / "world")
    sft_summary = json.loads((sft_run / "summary.json").read_text())
    rm_summary = json.loads((rm_run / "summary.json").read_text())
    _, gold_before = score_table(sft_run / "query_responses_validation_start.csv", posts)
    _, gold_after = score_table(sft_run / "query_responses_validation.csv", posts)
    report = {
        "seconds": seconds,
        "sft": {
            "updates": sft_summary["num_updates"],
            "train_seconds": sft_summary["train_seconds"],
            "eval_seconds": sft_summary.get("eval_seconds"),
            "rougeL_before": sft_summary["start/validation/sft/rouge/rougeL"],
            "rougeL_after": sft_summary["validation/sft/rouge/rougeL"],
            "rougeL_corpus_before": sft_summary["start/validation/sft/rouge_corpus/rougeL"],
            "rougeL_corpus_after": sft_summary["validation/sft/rouge_corpus/rougeL"],
            "eos_fraction_before": sft_summary["start/validation/sft/eos_fraction"],
            "eos_fraction_after": sft_summary["validation/sft/eos_fraction"],
            "gold_before": gold_before,
            "gold_after": gold_after,
        },
        "reward": {
            "updates": rm_summary["num_updates"],
            "train_seconds": rm_summary["train_seconds"],
            "normalization": {k: v for k, v in rm_summary.items() if k.startswith("eval/rm/normalized")},
            "validation": gold_accuracy(
                rm_run / "rm_eval_validation.csv", posts, qs / "data" / "preference", "validation"
            ),
            "validation_cnndm": gold_accuracy(
                rm_run / "rm_eval_validation_cnndm.csv", posts, qs / "data" / "preference", "validation_cnndm"
            ),
        },
    }
    (out / "sft_rm_tiny.json").write_text(json.dumps(report, indent=2) + "\n")

    s = report["sft"]
    print("\n| SFT (validation, 2,000 posts) | before SFT | after SFT |\n|---|---|---|")
    print(
        f"| ROUGE-L (reference aggregation / corpus) | {s['rougeL_before']:.3f} / {s['rougeL_corpus_before']:.3f} "
        f"| {s['rougeL_after']:.3f} / {s['rougeL_corpus_after']:.3f} |"
    )
    gb, ga = s["gold_before"], s["gold_after"]
    print(
        f"| gold score per response (reference: {ga['gold_reference']:.2f}) | {gb['gold_response']:.2f} | "
        f"{ga['gold_response']:.2f} |"
    )
    contradictions = gb["contradictions_response"], ga["contradictions_response"]
    print(f"| contradicted facts per response | {contradictions[0]:.2f} | {contradictions[1]:.2f} |")
    print(f"| responses ending in EOS | {s['eos_fraction_before']:.1%} | {s['eos_fraction_after']:.1%} |")
    print(f"\nSFT: {s['updates']} updates in {s['train_seconds']} s; eval {s['eval_seconds']} s")
    print("\n| RM accuracy | pairs | RM | gold labeler |\n|---|---|---|---|")
    for split in ("validation", "validation_cnndm"):
        for key, v in report["reward"][split].items():
            print(f"| {split} {key} | {v['n']} | {v['rm']:.3f} | {v['gold']:.3f} |")
    r = report["reward"]
    print(f"\nRM: {r['updates']} updates in {r['train_seconds']} s; total {seconds}")
    print(f"wrote {out / 'sft_rm_tiny.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
