"""Is claim 3 decided before PPO starts? The EOS-trick comparison on several RMs drawn from one SFT policy.

    rlhf-repro quickstart --out runs/quickstart            # world, data and the SFT policy (reused here)
    python benchmarks/eos_trick_rm_seeds.py --quickstart runs/quickstart --rm-seeds 11 12 13 14 15 16

For each RM seed k it trains the quickstart's RM again from the quickstart's SFT (same flags; the seed
draws the head's init, detail 11, and the data order), measures the RM's read-out of the SFT policy's own
40-token rollouts (`sim rm-agreement`), and runs the quickstart's PPO on it twice, with the EOS trick
and without (seed k for both). It then applies claim 3's check (analysis/claims.py, `claim_eos`) to
each pair, unchanged.

The question it answers: when claim 3 fails (the PPO without the trick learns to end as well), is the
cause the pipeline or the RM's read-out at a token that is not an EOS, which nothing in RM training
sets (details 12, 13)? The check's outcome is compared with one number known before PPO runs: whether
the RM reads unended rollouts below the trick's penalty (-1). docs/measurements.md ("Claim 3 across
RM seeds") has the measured table.

Writes QUICKSTART/results/eos-rm-seeds/eos_trick_rm_seeds.json and .md, and eos_trick_rm_seeds.png (the
no-EOS share of both arms per update, one panel per RM, titled with its read-out); prints the Markdown.
Resumes: an RM or PPO run whose summary.json exists is not run again.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

EXPERIMENT = "eos-rm-seeds"
ABLATION = f"{EXPERIMENT}-no-eos-trick"


def _set(argv: list[str], flag: str, value: str) -> list[str]:
    """argv with FLAG's value replaced (the flag must be there: a plan that changed shape is an error)."""
    if flag not in argv:
        raise SystemExit(f"eos_trick_rm_seeds: the quickstart's plan has no {flag} in {' '.join(argv[:3])} ...")
    out = list(argv)
    out[out.index(flag) + 1] = value
    return out


def commands(quickstart: Path, seed: int, size: str, rm_seed: int) -> dict[str, list[str]]:
    """The `rlhf-repro` argv of each step for one RM seed, taken from the quickstart's own plan (so its
    flags stay the quickstart's) with the seed, the experiment and the RM path changed."""
    from rlhf_repro.reproduce.plan import Layout, PlanOptions, plan
    from rlhf_repro.reproduce.registry import load_registry

    layout = Layout(quickstart)
    nodes = {n.key: n for n in plan(load_registry(), "quickstart", layout, PlanOptions(sizes=[size], seeds=[seed]))}
    run = f"{size}/{seed}"
    rm_dir = layout.run(EXPERIMENT, "reward", size, rm_seed)
    reward = _set(_set(nodes[f"quickstart/reward/{run}"].argv, "--seed", str(rm_seed)), "--experiment", EXPERIMENT)
    agreement = nodes[f"quickstart/rm-agreement/{run}"].argv
    agreement = _set(_set(agreement, "--reward-model", str(rm_dir / "model")), "--seed", str(rm_seed))
    agreement = _set(agreement, "--out", str(rm_dir / "rm_policy_agreement.json"))
    out = {"reward": reward, "rm-agreement": agreement}
    for step, key, experiment in (
        ("ppo", f"quickstart/ppo/{run}", EXPERIMENT),
        ("ppo-no-trick", f"quickstart-no-eos-trick/ppo/{run}", ABLATION),
    ):
        argv = _set(nodes[key].argv, "--reward-model-path", str(rm_dir / "model"))
        out[step] = _set(_set(argv, "--seed", str(rm_seed)), "--experiment", experiment)
    return out


def _done(quickstart: Path, size: str, rm_seed: int) -> dict[str, Path]:
    """The file each step leaves behind when it has finished."""
    from rlhf_repro.reproduce.plan import Layout

    layout = Layout(Path(quickstart))
    rm = layout.run(EXPERIMENT, "reward", size, rm_seed)
    return {
        "reward": rm / "summary.json",
        "rm-agreement": rm / "rm_policy_agreement.json",
        "ppo": layout.run(EXPERIMENT, "ppo", size, rm_seed) / "summary.json",
        "ppo-no-trick": layout.run(ABLATION, "ppo", size, rm_seed) / "summary.json",
    }


def run_seed(quickstart: Path, seed: int, size: str, rm_seed: int, log_dir: Path) -> None:
    """Runs the four steps of one RM seed in order, skipping those already done."""
    done = _done(quickstart, size, rm_seed)
    for step, argv in commands(quickstart, seed, size, rm_seed).items():
        if done[step].exists():
            continue
        log = log_dir / f"{EXPERIMENT}-{rm_seed}-{step}.log"
        print(f"[eos-rm-seeds] RM seed {rm_seed}: {step} (log {log})", flush=True)
        with open(log, "w") as f:
            proc = subprocess.run([sys.executable, "-m", "rlhf_repro.cli", *argv], stdout=f, stderr=subprocess.STDOUT)
        if proc.returncode != 0:
            raise SystemExit(
                f"eos_trick_rm_seeds: RM seed {rm_seed}, {step} failed (exit {proc.returncode}); see {log}"
            )


def verdicts(results: Path, size: str, rm_seeds: list[int]) -> list[dict]:
    """Claim 3's check on each RM seed's pair of PPO runs, with the RM's read-outs beside it."""
    from analysis.claims import claim_eos

    rows = []
    for k in rm_seeds:
        rm = results / EXPERIMENT / "reward" / size / str(k)
        verdict = claim_eos(
            [results / EXPERIMENT / "ppo" / size / str(k)], [results / ABLATION / "ppo" / size / str(k)], [rm]
        )
        n = verdict["numbers"]
        readout, penalty = n.get("rm_readout_no_eos"), n.get("eos_trick_penalty")
        accuracy = json.loads((rm / "summary.json").read_text()).get("eval/rm/validation/accuracy")
        rows.append(
            {
                "rm_seed": k,
                "passed": verdict["passed"],
                "rm_validation_accuracy": accuracy,
                "rm_readout_ended": n.get("rm_readout_ended"),
                "rm_readout_no_eos": readout,
                "readout_below_penalty": None if readout is None or penalty is None else bool(readout < penalty),
                **{
                    key: n.get(key)
                    for key in ("with_trick_first", "with_trick_last", "without_trick_first", "without_trick_last")
                },
            }
        )
    return rows


def tally(rows: list[dict]) -> dict:
    """How often claim 3 passed, overall and split by whether the RM read unended rollouts below the penalty."""
    out = {"rm_seeds": len(rows), "passed": sum(r["passed"] for r in rows)}
    for name, below in (("readout_above_penalty", False), ("readout_below_penalty", True)):
        group = [r for r in rows if r["readout_below_penalty"] is below]
        out[name] = {"rm_seeds": len(group), "passed": sum(r["passed"] for r in group)}
    return out


def markdown(rows: list[dict], counts: dict) -> str:
    lines = [
        "| RM seed | RM accuracy | read-out: ended / unended | no-EOS share with trick (first -> last) "
        "| without trick | claim 3 |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['rm_seed']} | {r['rm_validation_accuracy']} | {r['rm_readout_ended']} / {r['rm_readout_no_eos']} | "
            f"{r['with_trick_first']} -> {r['with_trick_last']} | "
            f"{r['without_trick_first']} -> {r['without_trick_last']} | "
            f"{'PASS' if r['passed'] else 'FAIL'} |"
        )
    a, b = counts["readout_above_penalty"], counts["readout_below_penalty"]
    lines.append(
        f"\nclaim 3 passes on {counts['passed']} of {counts['rm_seeds']} RMs: {a['passed']} of the {a['rm_seeds']} "
        f"whose unended read-out is at or above the trick's penalty, {b['passed']} of the {b['rm_seeds']} below it."
    )
    return "\n".join(lines) + "\n"


def figure(results: Path, size: str, rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from analysis.claims import _series

    cols = min(4, len(rows))
    nrows = -(-len(rows) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(3.2 * cols, 2.6 * nrows), sharey=True, squeeze=False)
    for ax in axes.flat[len(rows) :]:
        ax.axis("off")
    for ax, r in zip(axes.flat, rows):
        k = r["rm_seed"]
        for experiment, label, color in ((EXPERIMENT, "with trick", "C0"), (ABLATION, "without trick", "C3")):
            series = _series(results / experiment / "ppo" / size / str(k), "ppo/val/no_eos_fraction")
            ax.plot(range(1, len(series) + 1), series, color=color, label=label)
        readout = "?" if r["rm_readout_no_eos"] is None else f"{r['rm_readout_no_eos']:.2f}"
        ax.set_title(f"RM {k}: unended read-out {readout} ({'PASS' if r['passed'] else 'FAIL'})", fontsize=9)
        ax.set_ylim(0, 1)
        ax.set_xlabel("PPO update")
    for ax in axes[:, 0]:
        ax.set_ylabel("share of rollouts without EOS")
    axes.flat[0].legend(fontsize=8)
    fig.suptitle("Claim 3 on RMs drawn from one SFT policy (trick's penalty: -1)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quickstart", default="runs/quickstart", help="quickstart output folder (--out of it)")
    parser.add_argument("--seed", type=int, default=1, help="the quickstart's seed (its SFT policy is reused)")
    parser.add_argument("--size", default="tiny-m", help="the quickstart's model size")
    parser.add_argument("--rm-seeds", type=int, nargs="+", default=[11, 12, 13, 14, 15, 16], help="RM seeds to draw")
    parser.add_argument("--jobs", type=int, default=1, help="RM seeds run at once")
    parser.add_argument("--dry-run", action="store_true", help="print the commands of the first RM seed only")
    args = parser.parse_args()

    qs = Path(args.quickstart)
    if args.dry_run:
        for step, argv in commands(qs, args.seed, args.size, args.rm_seeds[0]).items():
            print(f"# {step}\nrlhf-repro {' '.join(argv)}")
        return 0
    sft = qs / "results" / "quickstart" / "sft" / args.size / str(args.seed) / "summary.json"
    if not sft.exists():
        print(
            f"eos_trick_rm_seeds: no SFT run at {sft.parent}; run `rlhf-repro quickstart --out {qs}` first",
            file=sys.stderr,
        )
        return 2
    log_dir = qs / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        list(pool.map(lambda k: run_seed(qs, args.seed, args.size, k, log_dir), args.rm_seeds))
    results = qs / "results"
    rows = verdicts(results, args.size, args.rm_seeds)
    counts = tally(rows)
    report = {
        "seed": args.seed,
        "size": args.size,
        "rm_seeds": rows,
        "counts": counts,
        "seconds_this_call": round(time.time() - t0, 1),
    }
    out = results / EXPERIMENT
    (out / "eos_trick_rm_seeds.json").write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    text = markdown(rows, counts)
    (out / "eos_trick_rm_seeds.md").write_text(text)
    figure(results, args.size, rows, out / "eos_trick_rm_seeds.png")
    print(text + f"\n{report['seconds_this_call']} s in this call; {out / 'eos_trick_rm_seeds.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
