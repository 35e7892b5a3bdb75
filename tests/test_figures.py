"""`rlhf-repro figures`: every figure and report.md from hand-made run folders (no training, no W&B)."""

from __future__ import annotations

import csv
import json
import sys

import pytest

from tests.conftest import run_cmd

pytestmark = pytest.mark.smoke


def write_csv(path, rows):
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def make_run(root, exp, stage, model, seed, hidden, summary, tables=True):
    import torch
    from safetensors.torch import save_file

    path = root / exp / stage / model / str(seed)
    (path / "model").mkdir(parents=True)
    save_file({"w": torch.zeros(hidden, hidden)}, str(path / "model" / "model.safetensors"))
    (path / "summary.json").write_text(json.dumps(summary))
    if stage in ("sft", "ppo", "dpo"):
        rows = [
            {
                "query": "POST: p",
                "response": "x " * (5 + i % 4),
                "reference": "x x x x x x",
                "response_token_len": 5 + i % 4,
                "eos_present": i % 5 != 0,
            }
            for i in range(40)
        ]
        write_csv(path / "query_responses_validation.csv", rows)
        judged = [dict(r, preferred="policy" if (i + seed) % 3 else "reference") for i, r in enumerate(rows)]
        write_csv(path / "judged_validation.csv", judged)
    if stage in ("reward", "dpo"):
        write_csv(
            path / "rm_eval_validation.csv",
            [{"chosen_reward": (i % 9) / 3 - 1, "rejected_reward": 0.0} for i in range(60)],
        )
    lines = []
    if stage == "ppo":
        lines = [
            {
                "step": s,
                "objective/scores": s / 10,
                "objective/kl": s / 5,
                "ppo/val/no_eos_fraction": 0.1,
                "ppo/val/response_length": 30,
            }
            for s in range(1, 6)
        ]
    (path / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


def test_figures_regenerates_every_figure_and_the_report_from_run_folders(tmp_path):
    results = tmp_path / "results"
    for model, hidden in (("small", 8), ("large", 32)):
        for seed in (1, 2):
            make_run(
                results,
                "exp",
                "sft",
                model,
                seed,
                hidden,
                {"validation/sft/rouge/rougeL": 0.3 + hidden / 100 + seed / 100},
            )
            make_run(
                results,
                "exp",
                "reward",
                model,
                seed,
                hidden - 1,  # an RM has no LM head: fewer parameters than its policy
                {"eval/rm/validation/accuracy": 0.6, "eval/rm/validation_cnndm/accuracy": 0.55},
            )
            make_run(results, "exp", "ppo", model, seed, hidden, {})
            make_run(results, "exp", "dpo", model, seed, hidden, {"eval/rm/validation/accuracy": 0.58})
    # An ablation with LoRA (not a headline experiment's run, yet its own win-rate series).
    for seed in (1, 2):
        lora = make_run(results, "ppo-lora", "ppo", "large", seed, 32, {})
        (lora / "config.json").write_text(json.dumps({"lora": {"enabled": True, "rank": 16}}))
    # An unfinished run (no summary.json) is ignored.
    (results / "exp" / "ppo" / "large" / "3").mkdir(parents=True)
    out = tmp_path / "report"
    r = run_cmd(
        [sys.executable, "-m", "rlhf_repro.cli", "figures", str(results), "--out", str(out), "--headline", "exp"]
    )
    assert r.returncode == 0, r.stderr
    listed = json.loads(r.stdout)
    assert listed["runs"] == 18
    expected = {
        "sft_rouge",
        "rm_accuracy",
        "rm_calibration_small",
        "rm_calibration_large",
        "response_length",
        "eos",
        "ppo_curves_exp",
        "ppo_curves_ppo-lora",  # PPO curves are per experiment
        "win_rate",
        "length_control",
    }
    assert {f[:-4] for f in listed["figures"]} == expected
    for name in expected:
        assert (out / f"{name}.png").stat().st_size > 0 and (out / f"{name}.pdf").exists()
    numbers = json.loads((out / "numbers.json").read_text())
    small, large = 8 * 8, 32 * 32
    assert numbers["sft_rougeL"][str(large)]["mean"] == pytest.approx(0.3 + 0.32 + 0.015)
    assert numbers["sft_rougeL"][str(small)]["n"] == 2
    # Every stage of one model size sits at one x: the size's largest model (the policy), RM included.
    for series in ("RM, TL;DR", "RM, CNN/DM", "DPO implicit, TL;DR"):
        assert set(numbers["preference_accuracy"][series]) == {str(small), str(large)}, series
    # PPO pools the headline experiment's runs only; the LoRA runs are their own series, at their size.
    assert set(numbers["win_rate"]) == {"sft", "ppo", "dpo", "ppo-lora"}
    assert set(numbers["win_rate"]["ppo-lora"]) == {str(large)} and numbers["win_rate"]["ppo"][str(large)]["n"] == 2
    assert numbers["no_eos_fraction"]  # 1 in 5 samples lacks an EOS
    assert all(v == pytest.approx(0.2) for v in numbers["no_eos_fraction"].values())
    report = (out / "report.md").read_text()
    assert all(f"![{name}.png]({name}.png)" in report for name in expected)
    r = run_cmd([sys.executable, "-m", "rlhf_repro.cli", "figures", str(tmp_path / "nowhere")])
    assert r.returncode == 2 and "nowhere" in r.stderr


def test_size_labels():
    from analysis.figures import size_label

    assert [size_label(n) for n in (189_312, 1_448_704, 6_049_792, 1_011_781_632, 6_857_302_016, 14_067_712, 512)] == [
        "189K",
        "1.4M",
        "6M",
        "1B",
        "6.9B",
        "14M",
        "512",
    ]


def test_smooth_is_a_centered_running_mean():
    from analysis.figures import smooth

    a = [1.0, 3.0, 2.0, 7.0, 9.0, 11.0]
    slow = [sum(a[max(0, i - 2) : i + 3]) / len(a[max(0, i - 2) : i + 3]) for i in range(len(a))]
    assert smooth(a, 5).tolist() == pytest.approx(slow)


def test_overoptimization_world_figure_and_headline(tmp_path):
    results = tmp_path / "results"
    make_run(results, "main", "sft", "m", 1, 16, {"validation/sft/rouge/rougeL": 0.5})
    main = make_run(results, "main", "ppo", "m", 1, 16, {})
    control = make_run(results, "control", "ppo", "m", 1, 16, {})
    # The main PPO wins every comparison, the control none: the headline win rate must be the main's alone.
    for path, verdict in ((main, "policy"), (control, "reference")):
        rows = list(csv.DictReader(open(path / "judged_validation.csv")))
        write_csv(path / "judged_validation.csv", [dict(r, preferred=verdict) for r in rows])
    # Gold metrics: the proxy keeps rising while gold peaks at update 6 and falls.
    gold = [1, 2, 3, 4, 5, 6, 5, 4, 3, 2, 1, 0]
    lines = [
        {"step": s, "objective/scores": s, "objective/raw_scores": s, "objective/kl": s * s, "gold/scores": g}
        for s, g in enumerate(gold, 1)
    ]
    (main / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    world = tmp_path / "world"
    world.mkdir()
    refs = {
        "n": 10,
        "mean": 6.5,
        "mean_fraction_of_max": 0.8125,
        "perfect_share": 0.2,
        "histogram": {"[6, 7)": 8, "[7, 8]": 2},
    }
    (world / "world.json").write_text(json.dumps({"reference_gold_scores": refs}))
    out = tmp_path / "report"
    args = [sys.executable, "-m", "rlhf_repro.cli", "figures", str(results), "--out", str(out)]
    r = run_cmd(args + ["--world", str(world), "--headline", "main"])
    assert r.returncode == 0, r.stderr
    numbers = json.loads((out / "numbers.json").read_text())
    assert numbers["runs"] == 3 and numbers["headline_experiments"] == ["main"]
    assert numbers["win_rate"]["ppo"][str(16 * 16)]["mean"] == 1.0  # the control's 0 is not pooled in
    assert numbers["reference_gold_scores"]["mean"] == 6.5 and (out / "reference_gold_scores.png").exists()
    found = numbers["overoptimization"]["main"]["m/1"]
    # Centered running means of 5: the smoothed gold peaks at update 6 (updates 4-8), the proxy still rising.
    assert found["gold_peak_update"] == 6 and found["gold_end"] < found["gold_peak"]
    assert found["proxy_end"] > found["proxy_at_gold_peak"]
    assert (out / "overoptimization_main.png").exists() and (out / "ppo_curves_control.png").exists()
    # Without --headline both PPO runs are pooled (the registry's plans always pass it).
    r = run_cmd([sys.executable, "-m", "rlhf_repro.cli", "figures", str(results), "--out", str(tmp_path / "all")])
    assert json.loads((tmp_path / "all" / "numbers.json").read_text())["win_rate"]["ppo"][str(256)]["mean"] == 0.5
    r = run_cmd(args + ["--world", str(tmp_path / "nowhere")])
    assert r.returncode == 2 and "world.json" in r.stderr
