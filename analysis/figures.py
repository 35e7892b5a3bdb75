"""`rlhf-repro figures RESULTS_DIR`: every report figure and a report.md, from run folders alone.

A run folder is RESULTS_DIR/<experiment>/<stage>/<model>/<seed>/ with summary.json (written when the
stage finished), metrics.jsonl and the stage's tables. Nothing is read from W&B. Figures (PNG + PDF):

- sft_rouge.png            validation ROUGE-L against model size (per-seed points, mean +- std)
- rm_accuracy.png          RM accuracy on TL;DR and CNN/DM, and DPO's implicit-reward accuracy, against size
- rm_calibration_<model>.png  accuracy against |margin| per seed, with sigmoid(margin) (§4.6)
- response_length.png      mean response tokens of SFT/PPO/DPO samples against size
- eos.png                  share of samples without an EOS per stage and size, and the length histograms
- ppo_curves_<exp>.png     RM score, KL, no-EOS share and response length over PPO updates, per run (and
                           the gold score, for runs with --gold-metrics)
- overoptimization_<exp>.png  proxy (RM) score and gold score of the rollouts against sqrt(KL to the SFT
                           policy), as in Gao et al. (2022), for PPO runs with --gold-metrics
- win_rate.png             judge win rate against the references per stage against size (runs with a
                           judged_validation.csv from `rlhf-repro judge`), with an optional baseline line
- length_control.png       win rate against log length ratio per stage (largest model with judged runs)
- reference_gold_scores.png  with --world (simulated world): the histogram of the references' gold scores
                           from WORLD/world.json, with their mean and share of perfect ones

Model size is the parameter count read from the run's saved safetensors headers (no weights loaded).
"""

from __future__ import annotations

import argparse
import json
import struct
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

STAGE_COLORS = {"sft": "tab:gray", "ppo": "tab:blue", "dpo": "tab:orange", "reward": "tab:green"}


def trained_with_lora(run: Path) -> bool:
    """Whether the run trained LoRA adapters (its config.json has lora.enabled)."""
    try:
        lora = json.loads((run / "config.json").read_text()).get("lora") or {}
    except (OSError, json.JSONDecodeError):
        return False
    return bool(isinstance(lora, dict) and lora.get("enabled"))


def series_label(key: str) -> str:
    """A win-rate series' legend: "PPO", or "PPO w/ LoRA" as the reference's final plot names it."""
    stage, _, lora = key.partition("-")
    return stage.upper() + (" w/ LoRA" if lora else "")


def parameter_count(model_dir: Path) -> int | None:
    """Sum of tensor sizes in the safetensors headers of a saved model (None if none found)."""
    total = 0
    for f in sorted(model_dir.glob("*.safetensors")):
        with open(f, "rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(n))
        for name, meta in header.items():
            if name != "__metadata__":
                total += int(np.prod(meta["shape"])) if meta["shape"] else 1
    return total or None


def discover(results: Path) -> list[dict]:
    runs = []
    for summary in sorted(results.glob("*/*/*/*/summary.json")):
        path = summary.parent
        seed, model, stage, experiment = (
            path.name,
            path.parent.name,
            path.parent.parent.name,
            path.parent.parent.parent.name,
        )
        try:
            data = json.loads(summary.read_text())
        except json.JSONDecodeError:
            continue
        runs.append(
            dict(
                experiment=experiment,
                stage=stage,
                model=model,
                seed=seed,
                path=path,
                summary=data,
                params=parameter_count(path / "model"),
                lora=trained_with_lora(path),
            )
        )
    # One x position per model size: the largest saved model of that size (the causal LM; an RM, without
    # the LM head, would otherwise sit left of its own policy, as Pythia-1B's RM is not "1B").
    size = defaultdict(int)
    for r in runs:
        size[r["model"]] = max(size[r["model"]], r["params"] or 0)
    for r in runs:
        r["params"] = size[r["model"]] or None
    return runs


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig, out: Path, name: str, written: list) -> None:
    fig.savefig(out / f"{name}.png", dpi=130, bbox_inches="tight")
    fig.savefig(out / f"{name}.pdf", bbox_inches="tight")
    written.append(f"{name}.png")


def size_label(n: float) -> str:
    """A parameter count as a tick label: 189K, 1.4M, 6.9B."""
    for scale, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= scale:
            value = n / scale
            return f"{value:.2g}{suffix}" if value < 10 else f"{value:.0f}{suffix}"
    return f"{int(n)}"


def scaling_plot(ax, points: list[tuple[float, float]], label: str, color=None) -> dict:
    """Per-seed points and mean +- std per size; returns {size: (mean, std, n)}."""
    by = defaultdict(list)
    for x, y in points:
        by[x].append(y)
    xs = sorted(by)
    means = [float(np.mean(by[x])) for x in xs]
    stds = [float(np.std(by[x], ddof=1)) if len(by[x]) > 1 else 0.0 for x in xs]
    line = ax.errorbar(xs, means, yerr=stds, marker="o", capsize=3, label=label, color=color)
    ax.scatter([p[0] for p in points], [p[1] for p in points], s=10, alpha=0.5, color=line[0].get_color())
    ax.set_xscale("log")
    ax.set_xlabel("parameters")
    ax.size_ticks = sorted(set(getattr(ax, "size_ticks", ())) | set(xs))  # every series' sizes on this axes
    ax.set_xticks(ax.size_ticks, [size_label(x) for x in ax.size_ticks])
    ax.minorticks_off()
    return {int(x): {"mean": m, "std": s, "n": len(by[x])} for x, m, s in zip(xs, means, stds)}


SMOOTH = 5


def smooth(a, window: int = SMOOTH) -> np.ndarray:
    """Centered running mean over `window` values (fewer at the ends: what exists)."""
    a = np.asarray(a, dtype=float)
    c = np.cumsum(np.insert(a, 0, 0.0))
    i = np.arange(len(a))
    lo, hi = np.maximum(0, i - window // 2), np.minimum(len(a), i + window // 2 + 1)
    return (c[hi] - c[lo]) / (hi - lo)


def overoptimization_plot(plt, group: list[dict], curves: dict, out: Path, exp: str, written: list) -> dict:
    """Proxy (RM) and gold score of each update's rollouts against sqrt(KL) (Gao et al. 2022); returns
    per run the update where gold peaked and the proxy and gold there and at the end. Each update's
    rollout batch is small, so the curves (and the peak) are running means over `SMOOTH` updates; the
    raw points are drawn faintly."""
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.5), sharex=True)
    found = {}
    for r in group:
        rows = [m for m in curves[r["path"]] if m.get("gold/scores") is not None]
        if not rows:
            continue
        x = smooth(np.sqrt(np.maximum(0.0, [m["objective/kl"] for m in rows])))
        proxy = smooth(np.array([m["objective/raw_scores"] for m in rows]))
        gold = smooth(np.array([m["gold/scores"] for m in rows]))
        label = f"{r['model']}/{r['seed']}"
        line = a1.plot(x, proxy, lw=1.5, label=label)[0]
        raw_x = np.sqrt(np.maximum(0.0, [m["objective/kl"] for m in rows]))
        a1.plot(raw_x, [m["objective/raw_scores"] for m in rows], ".", ms=2, alpha=0.3, color=line.get_color())
        a2.plot(x, gold, lw=1.5, label=label, color=line.get_color())
        a2.plot(raw_x, [m["gold/scores"] for m in rows], ".", ms=2, alpha=0.3, color=line.get_color())
        peak = int(np.argmax(gold))
        found[label] = {
            "updates": len(rows),
            "gold_peak_update": int(rows[peak]["step"]),
            "gold_start": round(float(gold[0]), 4),
            "gold_peak": round(float(gold[peak]), 4),
            "gold_end": round(float(gold[-1]), 4),
            "proxy_start": round(float(proxy[0]), 4),
            "proxy_at_gold_peak": round(float(proxy[peak]), 4),
            "proxy_end": round(float(proxy[-1]), 4),
            "sqrt_kl_at_gold_peak": round(float(x[peak]), 4),
            "sqrt_kl_end": round(float(x[-1]), 4),
        }
    a1.set_ylabel("proxy: RM score of the rollouts")
    a2.set_ylabel("gold score of the rollouts (max 8)")
    for ax in (a1, a2):
        ax.set_xlabel("sqrt(KL to the SFT policy), nats^0.5 per response")
    a1.legend(fontsize=7)
    fig.suptitle(f"{exp}: the proxy reward against the truth (running mean of {SMOOTH} updates)", fontsize=10)
    save(fig, out, f"overoptimization_{exp}", written)
    plt.close(fig)
    return found


def read_rows(path: Path) -> list[dict]:
    """A run folder's table through the suite's one CSV reader (`rlhf_repro.readers.read_table`)."""
    from rlhf_repro.readers import read_table

    return read_table(path)


def reference_scores_plot(plt, world: Path, out: Path, written: list) -> dict | None:
    """Histogram of the references' gold scores (world.json `reference_gold_scores`): how good the human
    summaries of the simulated world are, the bar every policy is judged against."""
    refs = json.loads((world / "world.json").read_text()).get("reference_gold_scores")
    if not refs or not refs.get("histogram"):
        return None
    bins = list(refs["histogram"])
    counts = np.array([refs["histogram"][b] for b in bins], dtype=float)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.bar(range(len(bins)), counts / counts.sum(), color="tab:gray")
    ax.set_xticks(range(len(bins)))
    ax.set_xticklabels(bins, fontsize=7, rotation=30)
    ax.set_xlabel("gold score of the reference (maximum 8)")
    ax.set_ylabel("share of references")
    ax.set_title(
        f"references: mean {refs['mean']:.2f} ({refs['mean_fraction_of_max']:.0%} of max), "
        f"{refs['perfect_share']:.0%} perfect, n {refs['n']}",
        fontsize=9,
    )
    save(fig, out, "reference_gold_scores", written)
    plt.close(fig)
    return {k: refs[k] for k in ("mean", "mean_fraction_of_max", "perfect_share", "n")}


def build(
    results: Path, out: Path, baseline: dict | None = None, world: Path | None = None, headline: list[str] | None = None
) -> dict:
    plt = _plt()
    out.mkdir(parents=True, exist_ok=True)
    every = discover(results)
    # The figures across sizes and stages pool the runs of the headline experiments only, so that an
    # ablation's or a negative control's PPO is not averaged into the PPO point; PPO curves are per experiment.
    runs = [r for r in every if not headline or r["experiment"] in headline]
    written: list[str] = []
    numbers: dict = {"runs": len(every)}
    if headline:
        numbers["headline_experiments"] = sorted(headline)
    if world is not None:
        found = reference_scores_plot(plt, world, out, written)
        if found:
            numbers["reference_gold_scores"] = found

    def of(stage):
        return [r for r in runs if r["stage"] == stage and r["params"]]

    sft = [
        (r["params"], r["summary"]["validation/sft/rouge/rougeL"])
        for r in of("sft")
        if "validation/sft/rouge/rougeL" in r["summary"]
    ]
    if sft:
        fig, ax = plt.subplots(figsize=(5, 3.5))
        numbers["sft_rougeL"] = scaling_plot(ax, sft, "SFT", STAGE_COLORS["sft"])
        ax.set_ylabel("validation ROUGE-L")
        save(fig, out, "sft_rouge", written)
        plt.close(fig)

    acc_series = {
        "RM, TL;DR": [(r["params"], r["summary"].get("eval/rm/validation/accuracy")) for r in of("reward")],
        "RM, CNN/DM": [(r["params"], r["summary"].get("eval/rm/validation_cnndm/accuracy")) for r in of("reward")],
        "DPO implicit, TL;DR": [(r["params"], r["summary"].get("eval/rm/validation/accuracy")) for r in of("dpo")],
    }
    acc_series = {k: [p for p in v if p[1] is not None] for k, v in acc_series.items()}
    if any(acc_series.values()):
        fig, ax = plt.subplots(figsize=(5, 3.5))
        numbers["preference_accuracy"] = {k: scaling_plot(ax, v, k) for k, v in acc_series.items() if v}
        ax.set_ylabel("validation accuracy")
        ax.legend(fontsize=8)
        save(fig, out, "rm_accuracy", written)
        plt.close(fig)

    from analysis.stats import calibration

    by_model = defaultdict(list)
    for r in runs:
        if r["stage"] == "reward" and (r["path"] / "rm_eval_validation.csv").exists():
            by_model[r["model"]].append(r)
    numbers["calibration"] = {}
    for model, group in sorted(by_model.items()):
        fig, ax = plt.subplots(figsize=(5, 3.5))
        top = 0.5
        for r in group:
            rows = read_rows(r["path"] / "rm_eval_validation.csv")
            margin = np.array([float(x["chosen_reward"]) - float(x["rejected_reward"]) for x in rows])
            cal = calibration(margin, (margin > 0).astype(float))
            bins = [b for b in cal["width_bins"] if b["accuracy"] is not None]
            ax.plot(
                [(b["low"] + b["high"]) / 2 for b in bins],
                [b["accuracy"] for b in bins],
                marker="o",
                ms=3,
                label=f"{r['experiment']} seed {r['seed']} (ECE {cal['ece']:.3f})",
            )
            top = max(top, max(b["high"] for b in cal["width_bins"]))
            numbers["calibration"][f"{model}/{r['experiment']}/{r['seed']}"] = {
                k: cal[k] for k in ("ece", "brier", "confidence")
            }
        xs = np.linspace(0, top, 50)
        ax.plot(xs, 1 / (1 + np.exp(-xs)), "k--", label="perfect calibration")
        ax.set_xlabel("|reward margin|")
        ax.set_ylabel("accuracy")
        ax.set_title(model)
        ax.legend(fontsize=7)
        save(fig, out, f"rm_calibration_{model}", written)
        plt.close(fig)

    samples = []
    for r in runs:
        table = r["path"] / "query_responses_validation.csv"
        if r["stage"] in ("sft", "ppo", "dpo") and table.exists() and r["params"]:
            rows = read_rows(table)
            lens = np.array([float(x["response_token_len"]) for x in rows if x.get("response_token_len")])
            eos = np.array([x.get("eos_present") in ("True", "true", "1") for x in rows])
            samples.append((r, lens, eos))
    if samples:
        fig, ax = plt.subplots(figsize=(5, 3.5))
        numbers["response_tokens"] = {}
        for stage in ("sft", "ppo", "dpo"):
            pts = [(r["params"], float(lens.mean())) for r, lens, _ in samples if r["stage"] == stage and len(lens)]
            if pts:
                numbers["response_tokens"][stage] = scaling_plot(ax, pts, stage.upper(), STAGE_COLORS[stage])
        ax.set_ylabel("mean response tokens (validation, T = 0.01)")
        ax.legend(fontsize=8)
        save(fig, out, "response_length", written)
        plt.close(fig)

        fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.5))
        numbers["no_eos_fraction"] = {}
        labels = [f"{r['stage']} {r['model']}/{r['seed']}" for r, _, _ in samples]
        fractions = [float(1 - eos.mean()) if len(eos) else 0.0 for _, _, eos in samples]
        a1.barh(labels, fractions, color=[STAGE_COLORS[r["stage"]] for r, _, _ in samples])
        a1.set_xlabel("share of samples without an EOS")
        for (r, lens, _), label, f in zip(samples, labels, fractions):
            numbers["no_eos_fraction"][f"{r['experiment']}/{label}"] = f
            a2.hist(lens, bins=30, histtype="step", density=True, label=label, color=STAGE_COLORS[r["stage"]])
        a2.set_xlabel("response tokens")
        a2.legend(fontsize=6)
        save(fig, out, "eos", written)
        plt.close(fig)

    from rlhf_repro.runs import read_metrics

    for exp in sorted({r["experiment"] for r in every if r["stage"] == "ppo"}):
        group = [r for r in every if r["stage"] == "ppo" and r["experiment"] == exp]
        curves = {
            r["path"]: [m for m in read_metrics(r["path"] / "metrics.jsonl") if "objective/kl" in m] for r in group
        }
        gold = any("gold/scores" in m for rows in curves.values() for m in rows)
        keys = ("objective/scores", "objective/kl", "ppo/val/no_eos_fraction", "ppo/val/response_length")
        keys += ("gold/scores",) if gold else ()
        fig, axes = plt.subplots(1, len(keys), figsize=(3.5 * len(keys), 3))
        for r in group:
            rows = curves[r["path"]]
            for ax, key in zip(axes, keys):
                pts = [(m["step"], m[key]) for m in rows if m.get(key) is not None]
                ax.plot([p[0] for p in pts], [p[1] for p in pts], label=f"{r['model']}/{r['seed']}", lw=1)
        for ax, key in zip(axes, keys):
            ax.set_title(key, fontsize=9)
            ax.set_xlabel("update")
        axes[0].legend(fontsize=7)
        save(fig, out, f"ppo_curves_{exp}", written)
        plt.close(fig)
        if gold:
            found = overoptimization_plot(plt, group, curves, out, exp, written)
            numbers.setdefault("overoptimization", {})[exp] = found

    # LoRA runs are a series of their own in the win-rate figures ("PPO w/ LoRA" in the reference's final
    # plot), from whichever experiment trained them.
    lora_runs = [r for r in every if r["lora"] and r not in runs]
    judged = [
        (r, r["path"] / "judged_validation.csv")
        for r in runs + lora_runs
        if (r["path"] / "judged_validation.csv").exists()
    ]
    if judged:
        from analysis.cli import verdicts
        from analysis.stats import length_control

        fig, ax = plt.subplots(figsize=(5, 3.5))
        numbers["win_rate"] = {}
        per_stage = defaultdict(list)
        for r, path in judged:
            wins, kept, _ = verdicts(read_rows(path), str(path))
            per_stage[r["stage"] + ("-lora" if r["lora"] else "")].append((r, path, wins, kept))
        for stage, items in sorted(per_stage.items()):
            pts = [(r["params"], float(w.mean())) for r, _, w, _ in items if r["params"] and len(w)]
            if pts:
                numbers["win_rate"][stage] = scaling_plot(ax, pts, series_label(stage), STAGE_COLORS.get(stage))
        if baseline:
            ax.axhline(baseline["win_rate"], color="k", ls="--", lw=1, label=baseline.get("label", "baseline"))
        ax.set_ylabel("win rate against the references")
        ax.legend(fontsize=8)
        save(fig, out, "win_rate", written)
        plt.close(fig)

        biggest = max((r["params"] or 0) for r, _ in judged)
        fig, ax = plt.subplots(figsize=(5, 3.5))
        numbers["length_control"] = {}
        for stage, items in sorted(per_stage.items()):
            xs, ws = [], []
            for r, path, wins, kept in items:
                if r["params"] != biggest:
                    continue
                rows = read_rows(path)
                for i, w in zip(kept, wins):
                    resp, ref = len(rows[i]["response"].strip()), len(rows[i]["reference"].strip())
                    if resp and ref:
                        xs.append(np.log(resp / ref))
                        ws.append(w)
            if len(xs) < 3:
                continue
            lc = length_control(np.array(xs), np.array(ws), n_boot=200)
            numbers["length_control"][stage] = {
                k: lc[k] for k in ("win_rate_at_equal_length", "ci_low", "ci_high", "slope")
            }
            grid = np.linspace(min(xs), max(xs), 100)
            ax.plot(
                grid,
                1 / (1 + np.exp(-(lc["intercept"] + lc["slope"] * grid))),
                color=STAGE_COLORS.get(stage),
                label=series_label(stage),
            )
        ax.axvline(0, color="grey", lw=0.5)
        ax.set_xlabel("log(summary length / reference length), characters")
        ax.set_ylabel("win rate")
        ax.legend(fontsize=8)
        save(fig, out, "length_control", written)
        plt.close(fig)

    numbers["figures"] = written
    lines = [
        f"# Report: {results}",
        "",
        f"{len(every)} finished runs. Regenerate with `rlhf-repro figures {results}`"
        + "".join(f" --headline {h}" for h in sorted(headline or []))
        + "".join(f" --world {world}" for _ in [world] if world is not None)
        + ".",
        "",
    ]
    for name in written:
        lines += [f"## {name[:-4]}", "", f"![{name}]({name})", ""]
    lines += [
        "## Numbers",
        "",
        "```json",
        json.dumps({k: v for k, v in numbers.items() if k != "figures"}, indent=1, default=str),
        "```",
        "",
    ]
    (out / "report.md").write_text("\n".join(lines))
    (out / "numbers.json").write_text(json.dumps(numbers, indent=2, default=str) + "\n")
    return numbers


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="rlhf-repro figures", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("results", help="results directory holding <experiment>/<stage>/<model>/<seed>/ run folders")
    p.add_argument("--out", default=None, help="where figures and report.md go (default RESULTS/report)")
    p.add_argument("--baseline-judged", default=None, help="a judged CSV drawn as a horizontal line on win_rate.png")
    p.add_argument("--baseline-label", default="OpenAI 1.3B PPO", help="legend of the baseline line")
    p.add_argument(
        "--world", default=None, help="simulated world directory: adds reference_gold_scores.png from its world.json"
    )
    p.add_argument(
        "--headline",
        action="append",
        default=None,
        metavar="EXPERIMENT",
        help="experiment whose runs the figures across sizes and stages pool (repeatable; default every "
        "experiment); ablations and controls still get their own PPO curves",
    )
    args = p.parse_args(argv)
    results = Path(args.results)
    if not results.is_dir():
        print(f"error: {results}: not a directory", file=sys.stderr)
        return 2
    world = Path(args.world) if args.world else None
    headline = args.headline or None
    if world is not None and not (world / "world.json").is_file():
        print(f"error: {world / 'world.json'}: not found (--world must be a generated world)", file=sys.stderr)
        return 2
    baseline = None
    if args.baseline_judged:
        from analysis.cli import verdicts

        wins, _, _ = verdicts(read_rows(Path(args.baseline_judged)), args.baseline_judged)
        baseline = {"win_rate": float(wins.mean()), "label": args.baseline_label}
    numbers = build(results, Path(args.out) if args.out else results / "report", baseline, world, headline)
    print(json.dumps({"runs": numbers["runs"], "figures": numbers["figures"]}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
