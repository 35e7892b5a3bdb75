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

Where the paper reports the same quantity (ROUGE-L, RM / CNN/DM / DPO-implicit accuracy, response length,
win rate), the figure has a second panel with the paper's values at the paper's Pythia sizes (from
results/paper/numbers.csv; never rescaled onto our axis). Rates run from 0 to 1. A figure the run folders
cannot fill is not drawn, and the report says why. Also written: numbers.json (every number drawn),
report.md and report.html (self-contained, figures embedded): the headline table (ours beside the
paper), the claims and negative controls of every experiment that has them, and every figure with a
one-line caption.

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


def recorded_parameters(run: Path) -> int | None:
    """The parameter count a copied run folder records in model_info.json (results/reference keeps no
    weights; scripts/refresh_reference.py writes it from the saved model's headers)."""
    try:
        return int(json.loads((run / "model_info.json").read_text())["parameters"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def sample_table(run: Path) -> Path | None:
    """The run's validation samples: query_responses_validation.csv, or the judged table that carries the
    same rows and columns (a reference copy keeps only the judged one)."""
    for name in ("query_responses_validation.csv", "judged_validation.csv"):
        if (run / name).is_file():
            return run / name
    return None


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
                params=parameter_count(path / "model") or recorded_parameters(path),
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
    ax.set_xlabel("model size, parameters (ours)")
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


CAPTIONS = {
    "reference_gold_scores": "How good the simulated world's human references are, the bar every policy is judged "
    "against: most score near the top, some miss a fact, are vague or padded.",
    "sft_rouge": "SFT's validation ROUGE-L against model size, per seed and mean; the paper's (right) rises from "
    "0.247 at 1B to 0.263 at 6.9B.",
    "rm_accuracy": "RM accuracy on TL;DR and on out-of-domain CNN/DM, and DPO's implicit-reward accuracy, against "
    "size; in the paper all three rise with size and DPO's stays below the RM's.",
    "rm_calibration": "Accuracy against |reward margin| per seed beside sigmoid(margin): a calibrated RM follows "
    "the dashed line; the paper's RMs lie below it (6.9B: 0.54 at margin 0.25, 0.95-0.97 at 5-6.5).",
    "response_length": "Mean response tokens of SFT, PPO and DPO validation samples against size; in the paper "
    "PPO writes about 13 tokens more than SFT at every size.",
    "eos": "Share of validation samples without an EOS per run, and the response-length histograms: with the EOS "
    "trick PPO's samples end.",
    "ppo_curves": "Per PPO update: RM score, KL to the SFT policy, share of rollouts without an EOS, response "
    "length (and the gold score where logged): the RM score rises as the policy moves away from SFT.",
    "overoptimization": "Proxy (RM) and gold score of the rollouts against sqrt(KL to SFT): where the proxy keeps "
    "rising and gold falls, PPO over-optimizes its RM (the paper: 1B seeds at KL 50-85 nats fell below a 0.20 "
    "win rate).",
    "win_rate": "Win rate against the human references per stage and size, per-seed points and mean +- std; the "
    "paper's (right): PPO above SFT at every size and above OpenAI's 1.3B PPO at 2.8B and 6.9B.",
    "length_control": "Win rate against log(summary / reference length), a logistic fit per stage at the largest "
    "judged size: its value at 0 is the win rate at equal length, with length's effect removed.",
}
PAPER_TITLE = "the paper: Pythia on real TL;DR"


def caption_of(name: str) -> str:
    for key in sorted(CAPTIONS, key=len, reverse=True):
        if name == key or name.startswith(key + "_"):
            return CAPTIONS[key]
    return ""


def panels(plt, paper_rows: list | None, width: float = 5.0, height: float = 3.6):
    """A figure of ours, with a second panel for the paper's values when the paper has the quantity."""
    if paper_rows:
        fig, (ax, pax) = plt.subplots(1, 2, figsize=(2 * width, height))
        return fig, ax, pax
    fig, ax = plt.subplots(figsize=(width, height))
    return fig, ax, None


def rate_axis(ax, axis: str = "y") -> None:
    """A rate's axis runs from 0 to 1 whatever the data."""
    (ax.set_ylim if axis == "y" else ax.set_xlim)(0, 1.02 if axis == "y" else 1.0)


def paper_plot(ax, rows: list[dict], label: str, color=None, marker: str = "s") -> None:
    """The paper's values of one series: per-seed points where given, the mean per size as a line, its
    error (std) or the range read off a figure as a bar; the x axis names the paper's Pythia sizes."""
    from analysis.paper import SIZE_NAMES

    by = defaultdict(list)
    for r in rows:
        by[r["parameters"]].append(r)
    xs = sorted(by)
    means = [float(np.mean([r["value"] for r in by[x]])) for x in xs]
    lo, hi = [], []
    for x, m in zip(xs, means):
        group = by[x]
        if len(group) > 1:
            values = [r["value"] for r in group]
            lo.append(m - min(values)), hi.append(max(values) - m)
        elif group[0]["error"] is not None:
            lo.append(group[0]["error"]), hi.append(group[0]["error"])
        else:
            low = group[0]["low"] if group[0]["low"] is not None else m
            high = group[0]["high"] if group[0]["high"] is not None else m
            lo.append(m - low), hi.append(high - m)
    line = ax.errorbar(xs, means, yerr=[lo, hi], marker=marker, capsize=3, label=label, color=color, ls="--")
    multi = [(x, r["value"]) for x in xs for r in by[x] if len(by[x]) > 1]
    if multi:
        ax.scatter(*zip(*multi), s=12, alpha=0.6, color=line[0].get_color())
    ax.set_xscale("log")
    ax.paper_ticks = sorted(set(getattr(ax, "paper_ticks", ())) | set(xs))
    names = {r["parameters"]: SIZE_NAMES.get(r["model"], r["model"]) for r in rows}
    ax.paper_names = {**getattr(ax, "paper_names", {}), **names}
    ax.set_xticks(ax.paper_ticks, [ax.paper_names[x] for x in ax.paper_ticks])
    ax.minorticks_off()
    ax.set_xlabel("Pythia model size (the paper's)")
    ax.set_title(PAPER_TITLE, fontsize=9)


def paper_stages(ax, paper: list[dict], quantity: str, per_stage: dict[str, list[dict]]) -> None:
    """The paper's series of each stage, and OpenAI's released 1.3B PPO checkpoint as a line."""
    from analysis.paper import rows_of

    for stage, rows in per_stage.items():
        if rows:
            paper_plot(ax, rows, f"{stage.upper()} (paper)", STAGE_COLORS[stage])
    openai = rows_of(paper, quantity, "openai-1.3b-ppo")
    if openai:
        ax.axhline(openai[0]["value"], color="k", ls=":", lw=1, label="OpenAI 1.3B PPO")


def build(
    results: Path,
    out: Path,
    baseline: dict | None = None,
    world: Path | None = None,
    headline: list[str] | None = None,
    paper: list[dict] | None = None,
) -> dict:
    """Every figure the run folders allow, numbers.json, and the report (report.md, report.html). With
    `paper` (analysis.paper.load()), figures of a quantity the paper reports get a panel of its values."""
    from analysis.paper import rows_of

    plt = _plt()
    out.mkdir(parents=True, exist_ok=True)
    paper = paper or []
    every = discover(results)
    # The figures across sizes and stages pool the runs of the headline experiments only, so that an
    # ablation's or a negative control's PPO is not averaged into the PPO point; PPO curves are per experiment.
    runs = [r for r in every if not headline or r["experiment"] in headline]
    written: list[str] = []
    skipped: dict[str, str] = {}
    numbers: dict = {"runs": len(every)}
    if headline:
        numbers["headline_experiments"] = sorted(headline)
    numbers["sizes"] = {str(r["params"]): r["model"] for r in sorted(runs, key=lambda r: r["model"]) if r["params"]}
    if world is not None:
        found = reference_scores_plot(plt, world, out, written)
        if found:
            numbers["reference_gold_scores"] = found
        else:
            skipped["reference_gold_scores"] = f"{world / 'world.json'} has no reference_gold_scores histogram"

    def of(stage):
        return [r for r in runs if r["stage"] == stage and r["params"]]

    sft = [
        (r["params"], r["summary"]["validation/sft/rouge/rougeL"])
        for r in of("sft")
        if "validation/sft/rouge/rougeL" in r["summary"]
    ]
    if sft:
        fig, ax, pax = panels(plt, rows_of(paper, "sft_rougeL", "sft"))
        numbers["sft_rougeL"] = scaling_plot(ax, sft, "SFT", STAGE_COLORS["sft"])
        ax.set_ylabel("validation ROUGE-L (F1)")
        ax.set_title("ours: the simulated world", fontsize=9)
        if pax is not None:
            paper_plot(pax, rows_of(paper, "sft_rougeL", "sft"), "SFT (paper)", STAGE_COLORS["sft"])
            pax.set_ylabel("validation ROUGE-L (F1)")
        save(fig, out, "sft_rouge", written)
        plt.close(fig)
    else:
        skipped["sft_rouge"] = "no finished SFT run has validation ROUGE-L in its summary.json"

    acc_series = {
        "RM, TL;DR": [(r["params"], r["summary"].get("eval/rm/validation/accuracy")) for r in of("reward")],
        "RM, CNN/DM": [(r["params"], r["summary"].get("eval/rm/validation_cnndm/accuracy")) for r in of("reward")],
        "DPO implicit, TL;DR": [(r["params"], r["summary"].get("eval/rm/validation/accuracy")) for r in of("dpo")],
    }
    acc_series = {k: [p for p in v if p[1] is not None] for k, v in acc_series.items()}
    paper_acc = {
        "RM, TL;DR": rows_of(paper, "rm_accuracy_tldr", "reward"),
        "RM, CNN/DM": rows_of(paper, "rm_accuracy_cnndm", "reward"),
        "DPO implicit, TL;DR": rows_of(paper, "dpo_implicit_accuracy_tldr", "dpo"),
    }
    acc_colors = {"RM, TL;DR": "tab:green", "RM, CNN/DM": "tab:olive", "DPO implicit, TL;DR": "tab:orange"}
    if any(acc_series.values()):
        fig, ax, pax = panels(plt, [r for rows in paper_acc.values() for r in rows])
        numbers["preference_accuracy"] = {k: scaling_plot(ax, v, k, acc_colors[k]) for k, v in acc_series.items() if v}
        ax.axhline(0.5, color="grey", lw=0.5, ls=":")
        ax.set_ylabel("validation accuracy")
        ax.set_title("ours: the simulated world (gold-labelled pairs)", fontsize=9)
        ax.legend(fontsize=7, loc="lower right")
        rate_axis(ax)
        if pax is not None:
            for k, rows in paper_acc.items():
                if rows:
                    paper_plot(pax, rows, k, acc_colors[k])
            pax.axhline(0.5, color="grey", lw=0.5, ls=":")
            pax.set_ylabel("validation accuracy")
            pax.legend(fontsize=7, loc="lower right")
            rate_axis(pax)
        save(fig, out, "rm_accuracy", written)
        plt.close(fig)
    else:
        skipped["rm_accuracy"] = "no finished RM or DPO run has a validation accuracy in its summary.json"

    from analysis.stats import calibration

    by_model = defaultdict(list)
    for r in runs:
        if r["stage"] == "reward" and (r["path"] / "rm_eval_validation.csv").exists():
            by_model[r["model"]].append(r)
    numbers["calibration"] = {}
    if not by_model:
        skipped["rm_calibration"] = "no finished RM run has an rm_eval_validation.csv (reward.py --run-eval)"
    for model, group in sorted(by_model.items()):
        fig, ax = plt.subplots(figsize=(5, 3.6))
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
        ax.plot(xs, 1 / (1 + np.exp(-xs)), "k--", label="perfect calibration: sigmoid(margin)")
        ax.set_xlabel("|reward margin| (chosen - rejected), RM units")
        ax.set_ylabel("accuracy of the pairs in the bin")
        ax.set_title(f"{model}: RM calibration on validation pairs", fontsize=9)
        ax.legend(fontsize=7, loc="lower right")
        rate_axis(ax)
        save(fig, out, f"rm_calibration_{model}", written)
        plt.close(fig)

    samples = []
    for r in runs:
        table = sample_table(r["path"])
        if r["stage"] in ("sft", "ppo", "dpo") and table is not None and r["params"]:
            rows = read_rows(table)
            lens = np.array([float(x["response_token_len"]) for x in rows if x.get("response_token_len")])
            eos = np.array([x.get("eos_present") in ("True", "true", "1") for x in rows])
            samples.append((r, lens, eos))
    if samples:
        paper_len = {s: rows_of(paper, "response_tokens", s) for s in ("sft", "ppo")}
        fig, ax, pax = panels(plt, paper_len["sft"] + paper_len["ppo"])
        numbers["response_tokens"] = {}
        for stage in ("sft", "ppo", "dpo"):
            pts = [(r["params"], float(lens.mean())) for r, lens, _ in samples if r["stage"] == stage and len(lens)]
            if pts:
                numbers["response_tokens"][stage] = scaling_plot(ax, pts, stage.upper(), STAGE_COLORS[stage])
        ax.set_ylabel("mean response tokens (validation, T = 0.01)")
        ax.set_title("ours: the simulated world", fontsize=9)
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=8)
        if pax is not None:
            paper_stages(pax, paper, "response_tokens", paper_len)
            pax.set_ylabel("mean response tokens")
            pax.set_ylim(bottom=0)
            pax.legend(fontsize=7, loc="lower right")
        save(fig, out, "response_length", written)
        plt.close(fig)

        fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, max(3.6, 0.22 * len(samples) + 1)))
        numbers["no_eos_fraction"] = {}
        labels = [f"{r['experiment']} {r['stage']} {r['model']}/{r['seed']}" for r, _, _ in samples]
        fractions = [float(1 - eos.mean()) if len(eos) else 0.0 for _, _, eos in samples]
        a1.barh(labels, fractions, color=[STAGE_COLORS[r["stage"]] for r, _, _ in samples])
        a1.set_xlabel("share of validation samples without an EOS")
        a1.tick_params(axis="y", labelsize=6)
        rate_axis(a1, "x")
        for (r, _, _), f in zip(samples, fractions):
            numbers["no_eos_fraction"][f"{r['experiment']}/{r['stage']} {r['model']}/{r['seed']}"] = f
        # Lengths pooled per stage, one bin per token count.
        longest = max((int(lens.max()) for _, lens, _ in samples if len(lens)), default=1)
        bins = np.arange(0, longest + 2) - 0.5
        for stage in ("sft", "ppo", "dpo"):
            pooled = [lens for r, lens, _ in samples if r["stage"] == stage and len(lens)]
            if pooled:
                lens = np.concatenate(pooled)
                a2.hist(lens, bins=bins, histtype="stepfilled", alpha=0.35, density=True,
                        color=STAGE_COLORS[stage], label=f"{stage.upper()} ({len(lens)} samples)")  # fmt: skip
        a2.set_xlabel("response tokens (validation samples, pooled over runs)")
        a2.set_ylabel("share of samples")
        a2.legend(fontsize=7)
        save(fig, out, "eos", written)
        plt.close(fig)
    else:
        for name in ("response_length", "eos"):
            skipped[name] = "no finished SFT, PPO or DPO run has a query_responses_validation.csv (--run-eval)"

    from rlhf_repro.runs import read_metrics

    ppo_experiments = sorted({r["experiment"] for r in every if r["stage"] == "ppo"})
    if not ppo_experiments:
        skipped["ppo_curves"] = "no finished PPO run"
    for exp in ppo_experiments:
        group = [r for r in every if r["stage"] == "ppo" and r["experiment"] == exp]
        curves = {
            r["path"]: [m for m in read_metrics(r["path"] / "metrics.jsonl") if "objective/kl" in m] for r in group
        }
        gold = any("gold/scores" in m for rows in curves.values() for m in rows)
        keys = {
            "objective/scores": "RM score (after the EOS trick)",
            "objective/kl": "KL to SFT, nats per response",
            "ppo/val/no_eos_fraction": "share of rollouts without an EOS",
            "ppo/val/response_length": "response tokens",
        }
        if gold:
            keys["gold/scores"] = "gold score (max 8)"
        fig, axes = plt.subplots(1, len(keys), figsize=(3.5 * len(keys), 3))
        for r in group:
            rows = curves[r["path"]]
            for ax, key in zip(axes, keys):
                pts = [(m["step"], m[key]) for m in rows if m.get(key) is not None]
                ax.plot([p[0] for p in pts], [p[1] for p in pts], label=f"{r['model']}/{r['seed']}", lw=1)
        for ax, (key, title) in zip(axes, keys.items()):
            ax.set_title(f"{title}\n{key}", fontsize=8)
            ax.set_xlabel("PPO update")
            if key == "ppo/val/no_eos_fraction":
                rate_axis(ax)
        axes[0].legend(fontsize=7)
        fig.suptitle(f"{exp}: PPO training curves", fontsize=10, y=1.07)
        save(fig, out, f"ppo_curves_{exp}", written)
        plt.close(fig)
        if gold:
            found = overoptimization_plot(plt, group, curves, out, exp, written)
            numbers.setdefault("overoptimization", {})[exp] = found
    if "overoptimization" not in numbers:
        skipped["overoptimization"] = "no PPO run logged gold scores (ppo.py --gold-metrics, simulated world)"

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

        paper_win = {s: rows_of(paper, "win_rate", s) for s in ("sft", "ppo", "dpo")}
        fig, ax, pax = panels(plt, [r for rows in paper_win.values() for r in rows])
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
        ax.axhline(0.5, color="grey", lw=0.5, ls=":")
        ax.set_ylabel("win rate against the references")
        ax.set_title("ours: the simulated world, gold judge", fontsize=9)
        ax.legend(fontsize=8)
        rate_axis(ax)
        if pax is not None:
            paper_stages(pax, paper, "win_rate", paper_win)
            pax.axhline(0.5, color="grey", lw=0.5, ls=":")
            pax.set_ylabel("win rate against the references (GPT-3.5 judge)")
            pax.legend(fontsize=7, loc="lower right")
            rate_axis(pax)
        save(fig, out, "win_rate", written)
        plt.close(fig)

        biggest = max((r["params"] or 0) for r, _ in judged)
        fig, ax = plt.subplots(figsize=(5, 3.6))
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
                label=f"{series_label(stage)}: {lc['win_rate_at_equal_length']:.2f} at equal length",
            )
        ax.axvline(0, color="grey", lw=0.5)
        ax.set_xlabel("log(summary length / reference length), characters")
        ax.set_ylabel("win rate (logistic fit)")
        ax.set_title(f"length-controlled win rate, {size_label(biggest)} parameters", fontsize=9)
        ax.legend(fontsize=7)
        rate_axis(ax)
        save(fig, out, "length_control", written)
        plt.close(fig)
    else:
        for name in ("win_rate", "length_control"):
            skipped[name] = "no run has a judged_validation.csv (`rlhf-repro judge`)"

    numbers["figures"] = written
    numbers["not_drawn"] = skipped
    regenerate = (
        f"rlhf-repro figures {results}"
        + "".join(f" --headline {h}" for h in sorted(headline or []))
        + "".join(f" --world {world}" for _ in [world] if world is not None)
    )
    from analysis.report import write_report

    write_report(out, results, numbers, {n: caption_of(n[:-4]) for n in written}, paper, regenerate)
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
        "--paper",
        default=None,
        metavar="CSV",
        help="the paper's published numbers drawn beside ours (default: the repository's results/paper/numbers.csv)",
    )
    p.add_argument("--no-paper", action="store_true", help="draw our results alone, without the paper's panels")
    p.add_argument(
        "--headline",
        action="append",
        default=None,
        metavar="EXPERIMENT",
        help="experiment whose runs the figures across sizes and stages pool (repeatable; default every "
        "experiment); ablations and controls still get their own PPO curves",
    )
    args = p.parse_args(argv)
    from rlhf_repro.io import InputError

    try:
        return _run(args)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def _run(args) -> int:
    results = Path(args.results)
    if not results.is_dir():
        print(f"error: {results}: not a directory", file=sys.stderr)
        return 2
    # A results folder may say how it is drawn (results/reference/figures.json: its headline experiments
    # and its world, relative to the folder); the flags win.
    defaults = {}
    if (results / "figures.json").is_file():
        from rlhf_repro.io import InputError
        from rlhf_repro.readers import decode_utf8, loads_strict

        path = results / "figures.json"
        try:
            defaults = loads_strict(decode_utf8(path.read_bytes(), path))
        except ValueError as e:
            raise InputError(f"not valid JSON ({e})", path) from None
        headline_ok = isinstance(defaults, dict) and isinstance(defaults.get("headline", []), list)
        if not headline_ok or not all(isinstance(h, str) for h in defaults.get("headline", [])):
            raise InputError('expected {"headline": [experiment, ...], "world": "folder"}', path, field="headline")
        if not isinstance(defaults.get("world", ""), str):
            raise InputError("expected the world folder's path as text, relative to this folder", path, field="world")
    world = Path(args.world) if args.world else (results / defaults["world"] if defaults.get("world") else None)
    headline = args.headline or defaults.get("headline") or None
    if world is not None and not (world / "world.json").is_file():
        print(f"error: {world / 'world.json'}: not found (--world must be a generated world)", file=sys.stderr)
        return 2
    baseline = None
    if args.baseline_judged:
        from analysis.cli import verdicts

        wins, _, _ = verdicts(read_rows(Path(args.baseline_judged)), args.baseline_judged)
        baseline = {"win_rate": float(wins.mean()), "label": args.baseline_label}
    paper = None
    if not args.no_paper:
        from analysis import paper as paper_numbers

        source = Path(args.paper) if args.paper else paper_numbers.DEFAULT
        if args.paper or source.is_file():  # an installed copy without the repository draws ours alone
            paper = paper_numbers.load(source)
    numbers = build(results, Path(args.out) if args.out else results / "report", baseline, world, headline, paper)
    print(json.dumps({"runs": numbers["runs"], "figures": numbers["figures"]}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
