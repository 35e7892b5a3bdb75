"""`rlhf-repro analyze` end to end: judged tables in, JSON and figures out; the real OpenAI 1.3B PPO
summaries judged by the gold backend and analysed by token (real Pythia tokenizer) and by character."""

from __future__ import annotations

import csv
import json
import sys

import pytest

from tests.conftest import REAL_TOKENIZER, SHARED_DATA, run_cmd

pytestmark = pytest.mark.smoke

OAI = SHARED_DATA / "tldr-oai-ppo1.3b-valid" / "oai1b.csv"


def cli(*args):
    r = run_cmd([sys.executable, "-m", "rlhf_repro.cli", *args])
    return r


def write_judged(path, preferred, responses=None):
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["query", "response", "reference", "preferred", "score", "reference_score"])
        w.writeheader()
        for i, p in enumerate(preferred):
            resp = responses[i] if responses else "word " * (i % 7 + 1)
            score = 1.0 if p == "policy" else 0.0
            w.writerow(
                {
                    "query": "q",
                    "response": resp,
                    "reference": "word word word",
                    "preferred": p,
                    "score": score,
                    "reference_score": 0.5,
                }
            )


def test_win_rate_per_seed_and_pooled(tmp_path):
    (tmp_path / "1").mkdir(), (tmp_path / "2").mkdir()
    write_judged(tmp_path / "1" / "judged.csv", ["policy"] * 6 + ["reference"] * 4 + [""])
    write_judged(tmp_path / "2" / "judged.csv", ["policy"] * 2 + ["reference"] * 8)
    r = cli("analyze", "win-rate", "--judged", str(tmp_path / "1" / "judged.csv"), str(tmp_path / "2" / "judged.csv"))
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["seeds"]["1"]["win_rate"] == 0.6 and out["seeds"]["1"]["n_unparsed"] == 1
    assert out["win_rate"] == 0.4 and out["n"] == 20 and out["n_unparsed"] == 1
    assert out["seed_mean"] == pytest.approx(0.4) and out["seed_std"] == pytest.approx(0.2828, abs=1e-3)
    for key in ("ci_low", "ci_high", "wilson_low", "wilson_high"):
        assert 0 <= out[key] <= 1
    # agreement: the RM prefers the policy exactly where the judge did
    r = cli("analyze", "agreement", "--judged", str(tmp_path / "1" / "judged.csv"))
    assert json.loads(r.stdout)["agreement"] == 1.0
    # §4.6's judge mode: margins RM(policy) - RM(reference) = +-0.5, the RM always sides with the judge
    r = cli("analyze", "calibration", "--judged", str(tmp_path / "1" / "judged.csv"), "--label", "ppo")
    out = json.loads(r.stdout)["ppo"]
    assert out["n"] == 10 and out["accuracy"] == 1.0 and out["confidence"] == "under"


def test_bad_tables_name_the_file_row_and_field(tmp_path):
    bad = tmp_path / "bad.csv"
    write_judged(bad, ["policy", "maybe"])
    r = cli("analyze", "win-rate", "--judged", str(bad))
    assert r.returncode == 2 and "bad.csv:3" in r.stderr and "preferred" in r.stderr and "maybe" in r.stderr
    r = cli("analyze", "calibration", "--rm-eval", str(bad))
    assert r.returncode == 2 and "chosen_reward" in r.stderr


def test_openai_ppo_summaries_judged_and_length_controlled_by_token_and_char(tmp_path):
    judged = tmp_path / "oai_judged.csv"
    r = cli(
        "judge",
        "--input",
        str(OAI),
        "--response-column",
        "postprocessed_response",
        "--reference-column",
        "reference_responses",
        "--backend",
        "gold",
        "--out",
        str(judged),
        "--limit",
        "300",
        "--no-progress",
    )
    assert r.returncode == 0, r.stderr
    with open(judged, newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 300 and all("<|endoftext|>" not in row["reference"] for row in rows)
    for by, extra in (("token", ["--tokenizer", str(REAL_TOKENIZER)]), ("char", [])):
        fig = tmp_path / f"lc_{by}.png"
        r = cli(
            "analyze",
            "length-control",
            "--judged",
            str(judged),
            "--label",
            "oai",
            "--length-by",
            by,
            *extra,
            "--n-boot",
            "50",
            "--figure",
            str(fig),
        )
        assert r.returncode == 0, r.stderr
        out = json.loads(r.stdout)["policies"]["oai"]
        for key in ("intercept", "slope", "win_rate_at_equal_length", "ci_low", "ci_high", "bins"):
            assert key in out
        assert len(out["bins"]["edges"]) == 10 and sum(out["bins"]["counts"]) == out["n"] == 300
        # OpenAI's PPO summaries run longer than the references (by either unit).
        assert out["mean_length_response"] > out["mean_length_reference"]
        assert fig.stat().st_size > 0 and fig.with_suffix(".pdf").stat().st_size > 0


def test_calibration_of_an_rm_eval_table(tmp_path):
    table = tmp_path / "rm_eval_validation.csv"
    with open(table, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["chosen_reward", "rejected_reward"])
        w.writeheader()
        for i in range(200):
            margin = (i % 20) / 4 - 1.0  # -1 .. 3.75
            w.writerow({"chosen_reward": margin, "rejected_reward": 0.0})
    fig = tmp_path / "cal.png"
    r = cli("analyze", "calibration", "--rm-eval", str(table), "--label", "rm", "--figure", str(fig))
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)["rm"]
    assert out["n"] == 200 and out["accuracy"] == pytest.approx(150 / 200)
    assert {"ece", "brier", "confidence", "width_bins", "equal_count_bins"} <= set(out) and fig.exists()


def test_eos_and_rouge_of_sample_tables(tmp_path):
    table = tmp_path / "query_responses_validation.csv"
    rows = [
        {"response": "a b c", "reference": "a b c", "response_token_len": 4, "eos_present": True, "batch": 0},
        {"response": "a b d", "reference": "a b c", "response_token_len": 53, "eos_present": False, "batch": 0},
    ]
    with open(table, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    r = cli("analyze", "eos", "--table", str(table), "--label", "t", "--figure", str(tmp_path / "eos.png"))
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)["t"]
    assert out["no_eos_fraction"] == 0.5 and out["mean_tokens"] == 28.5 and out["mean_tokens_with_eos"] == 4
    assert sum(out["histogram"]["counts"]) == 2 and (tmp_path / "eos.png").exists()
    r = cli("analyze", "rouge", "--table", str(table))
    corpus = json.loads(r.stdout)[str(table)]["corpus"]
    assert corpus["rouge1"] == pytest.approx((1 + 2 / 3) / 2)  # unigram F1 of the two pairs
