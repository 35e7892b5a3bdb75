"""`rlhf-repro claims` and `rlhf-repro compare` on hand-made run folders with known answers."""

import csv
import json
import math

import numpy as np
import pytest

from analysis import claims as C
from analysis import compare as K
from rlhf_repro.io import InputError
from tests.conftest import cli

pytestmark = pytest.mark.unit


def _run(root, exp, stage, seed, summary, metrics=(), wins=None, size="tiny-m", lengths=(32, 30)):
    run = root / exp / stage / size / str(seed)
    run.mkdir(parents=True)
    (run / "summary.json").write_text(json.dumps(summary))
    (run / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
    if wins is not None:
        with open(run / "judged_validation.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["query", "response", "reference", "preferred", "policy_score"])
            w.writeheader()
            for i, win in enumerate(wins):
                w.writerow(
                    {
                        "query": "q",
                        "response": "r" * (lengths[0] + i % 21 - 10),
                        "reference": "f" * lengths[1],
                        "preferred": "policy" if win else "reference",
                        "policy_score": float(win),
                    }
                )
        (run / "judged_validation.csv.summary.json").write_text(json.dumps({"win_rate": float(np.mean(wins))}))
    return run


def _world(root, rm_conf, sft_wins, ppo_wins, trick, no_trick, dpo_acc=0.6):
    rm = {"eval/rm/validation/accuracy": 0.7, "eval/rm/validation/n_pairs": 2000, "seconds": 10}
    rm |= {f"eval/rm/validation/accuracy/confidence/{k}": v for k, v in enumerate(rm_conf, start=1)}
    rm["eval/rm/validation_cnndm/accuracy"] = 0.55
    _run(root, "qs", "reward", 1, rm)
    sft = {"start/validation/sft/rouge/rougeL": 0.3, "validation/sft/rouge/rougeL": 0.7, "seconds": 20}
    sft |= {"validation/sft/response_token_len": 30.0, "validation/sft/eos_fraction": 0.25}
    _run(root, "qs", "sft", 1, sft, wins=sft_wins)
    ppo = {"validation/ppo/response_token_len": 28.0, "validation/ppo/eos_fraction": 0.9, "seconds": 30}
    _run(
        root,
        "qs",
        "ppo",
        1,
        ppo,
        [{"ppo/val/no_eos_fraction": v, "objective/kl": 0.1 * i} for i, v in enumerate(trick)],
        ppo_wins,
    )
    _run(root, "qs-no-eos-trick", "ppo", 1, ppo, [{"ppo/val/no_eos_fraction": v} for v in no_trick], ppo_wins)
    _run(root, "qs", "dpo", 1, {"eval/rm/validation/accuracy": dpo_acc, "seconds": 5}, wins=sft_wins)


def test_claims_pass_on_a_world_where_they_hold(tmp_path):
    rng = np.random.default_rng(0)
    sft_wins = (rng.random(400) < 0.2).tolist()
    ppo_wins = (rng.random(400) < 0.6).tolist()
    conf = [0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9]
    _world(tmp_path, conf, sft_wins, ppo_wins, trick=[0.8, 0.8, 0.8, 0.3, 0.1, 0.05, 0.05], no_trick=[0.8] * 7)
    got = C.check_claims(tmp_path, "qs", "qs-no-eos-trick")
    assert [c["passed"] for c in got] == [True] * 5, got
    # The RM's read-out of unended rollouts is context: a read-out below the penalty adds a note and
    # leaves every verdict as it was.
    (tmp_path / "qs/ppo/tiny-m/1/config.json").write_text(
        json.dumps({"response_length": 40, "penalty_reward_value": -1})
    )
    report = {"response_length": 40, "rm_score_ended": 0.1, "rm_score_no_eos": -3.0}
    (tmp_path / "qs/reward/tiny-m/1/rm_policy_agreement.json").write_text(json.dumps(report))
    again = C.check_claims(tmp_path, "qs", "qs-no-eos-trick")
    assert [c["passed"] for c in again] == [True] * 5 and "note" in again[2]["numbers"]
    eos = got[2]["numbers"]
    assert eos["with_trick_first"] == 0.8 and eos["with_trick_last"] == pytest.approx(0.0667, abs=1e-4)
    rm = got[0]["numbers"]
    assert rm["accuracy_confidence_1_3"] == pytest.approx(0.55) and rm["accuracy_confidence_7_9"] == pytest.approx(0.85)
    g = got[1]["numbers"]
    p1, p2 = np.mean(ppo_wins), np.mean(sft_wins)
    se = math.sqrt(p1 * (1 - p1) / 400 + p2 * (1 - p2) / 400)
    assert g["difference_ci_low"] == pytest.approx(p1 - p2 - 1.96 * se, abs=1e-4)


def test_claims_fail_with_their_numbers_and_missing_inputs_fail(tmp_path):
    flat = [0.7] * 9  # accuracy does not rise with confidence
    _world(tmp_path, flat, [0, 0, 1, 0] * 50, [0, 0, 1, 0] * 50, trick=[0.8] * 6, no_trick=[0.8] * 6, dpo_acc=0.8)
    got = C.check_claims(tmp_path, "qs", "qs-no-eos-trick")
    assert [c["passed"] for c in got] == [False] * 5
    assert got[3]["numbers"] == {"rm_accuracy": 0.7, "dpo_implicit_accuracy": 0.8}
    missing = C.check_claims(tmp_path, "nothing", "none")
    assert all(not c["passed"] and "missing" in c["numbers"] for c in missing)


def test_eos_claim_reports_the_rms_readout_of_unended_rollouts_without_changing_its_verdict(tmp_path):
    trick, no_trick = [0.4, 0.4, 0.4, 0.1, 0.05, 0.05], [0.4, 0.4, 0.4, 0.1, 0.05, 0.05]
    _world(tmp_path, [0.5] * 9, [0] * 10, [1] * 10, trick=trick, no_trick=no_trick)
    before = C.check_claims(tmp_path, "qs", "qs-no-eos-trick")[2]
    assert not before["passed"] and "rm_readout_no_eos" not in before["numbers"]  # no agreement report yet
    for run in ("qs/ppo/tiny-m/1", "qs-no-eos-trick/ppo/tiny-m/1"):
        (tmp_path / run / "config.json").write_text(json.dumps({"response_length": 40, "penalty_reward_value": -1.0}))
    # The agreement report at the paper's 53 tokens, with PPO's 40 under at_length: the 40-token numbers count.
    report = {"response_length": 53, "rm_score_ended": 0.5, "rm_score_no_eos": 0.0}
    report["rm_gold_agreement_on_policy_samples"] = 0.7
    report["at_length"] = {"40": {"rm_score_ended": -0.05, "rm_score_no_eos": -2.5}}
    report["at_length"]["40"]["rm_gold_agreement_on_policy_samples"] = 0.6
    (tmp_path / "qs/reward/tiny-m/1/rm_policy_agreement.json").write_text(json.dumps(report))
    summary = C.headline_summary(tmp_path, "qs", "qs-no-eos-trick", None)
    assert summary["rm_gold_agreement_on_policy_samples"] == 0.7
    assert summary["rm_gold_agreement_at_rollout_length"] == {"40": 0.6}
    after = C.check_claims(tmp_path, "qs", "qs-no-eos-trick")[2]
    assert after["passed"] == before["passed"]
    assert {k: after["numbers"][k] for k in ("rm_readout_ended", "rm_readout_no_eos", "eos_trick_penalty")} == {
        "rm_readout_ended": -0.05,
        "rm_readout_no_eos": -2.5,
        "eos_trick_penalty": -1.0,
    }
    assert "below the EOS trick's penalty" in after["numbers"]["note"]
    # A read-out above the penalty leaves no note (the claim then fails or passes on its own numbers).
    report["at_length"]["40"]["rm_score_no_eos"] = 0.1
    (tmp_path / "qs/reward/tiny-m/1/rm_policy_agreement.json").write_text(json.dumps(report))
    assert "note" not in C.check_claims(tmp_path, "qs", "qs-no-eos-trick")[2]["numbers"]
    # Without the trick (or with TRL's subtract mode) there is no penalty to compare the read-out with.
    for run in ("qs/ppo/tiny-m/1", "qs-no-eos-trick/ppo/tiny-m/1"):
        cfg = {"response_length": 40, "penalty_reward_value": -1.0, "penalty_mode": "subtract"}
        (tmp_path / run / "config.json").write_text(json.dumps(cfg))
    assert "eos_trick_penalty" not in C.check_claims(tmp_path, "qs", "qs-no-eos-trick")[2]["numbers"]
    # A report of the wrong shape is refused with the file named, not a traceback.
    for bad in ([1, 2], {"response_length": 53, "at_length": [1]}, {"response_length": 40, "rm_score_ended": "x"}):
        (tmp_path / "qs/reward/tiny-m/1/rm_policy_agreement.json").write_text(json.dumps(bad))
        with pytest.raises(InputError, match="rm_policy_agreement.json"):
            C.check_claims(tmp_path, "qs", "qs-no-eos-trick")
            C.headline_summary(tmp_path, "qs", "qs-no-eos-trick", None)


def test_claims_cli_writes_json_markdown_and_summary(tmp_path):
    _world(
        tmp_path, [0.5 + 0.05 * k for k in range(9)], [0, 1] * 100, [1, 1, 1, 0] * 50, [0.9] * 3 + [0.1] * 3, [0.9] * 6
    )
    world = tmp_path / "world"
    world.mkdir()
    (world / "world.json").write_text(json.dumps({"gold_accuracy_validation": {"all": {"accuracy": 0.82}}}))
    r = cli("claims", str(tmp_path), "--experiment", "qs", "--world", str(world))
    assert r.returncode == 0, r.stderr
    assert "| 1 | RM validation accuracy" in r.stdout and "claims pass" in r.stdout
    claims = json.loads((tmp_path / "qs" / "claims.json").read_text())
    assert [set(c) for c in claims] == [{"claim", "passed", "numbers"}] * 5
    assert all(isinstance(c["passed"], bool) for c in claims)
    s = json.loads((tmp_path / "qs" / "summary.json").read_text())
    for key in ("base_rougeL", "sft_rougeL", "rm_accuracy", "rm_accuracy_by_confidence", "rm_accuracy_ood",
                "gold_ceiling_accuracy", "dpo_implicit_accuracy", "gold_win_rate", "no_eos_fraction",
                "mean_response_length", "stage_seconds"):  # fmt: skip
        assert key in s, key
    assert s["gold_ceiling_accuracy"] == 0.82 and s["base_rougeL"] == 0.3 and s["rm_accuracy_ood"] == 0.55
    assert s["gold_win_rate"] == {"sft": 0.5, "ppo": 0.75, "dpo": 0.5, "ppo_no_eos_trick": 0.75}
    assert s["no_eos_fraction"] == {"ppo": 0.1, "ppo_no_eos_trick": 0.9}
    assert s["stage_seconds"]["ppo"] == 30 and s["rm_accuracy_by_confidence"]["9"] == 0.9
    assert (tmp_path / "qs" / "claims.md").read_text().count("| PASS |") == sum(c["passed"] for c in claims)
    r = cli("claims", str(tmp_path), "--experiment", "absent")
    assert r.returncode == 2 and "absent" in r.stderr


def test_mean_ci_matches_the_t_interval():
    m, h = K.mean_ci([1.0, 2.0, 3.0, 4.0])
    assert m == 2.5 and h == pytest.approx(3.182 * np.std([1, 2, 3, 4], ddof=1) / 2)
    assert K.mean_ci([5.0]) == (5.0, None)


def test_compare_table_over_seeds(tmp_path):
    for seed, (kl, wr) in enumerate([(0.2, 0.5), (0.4, 0.7)], start=1):
        ppo = {"validation/ppo/response_token_len": 30.0 + seed, "validation/ppo/eos_fraction": 1.0}
        _run(tmp_path, "paper", "ppo", seed, ppo, [{"objective/kl": 9.0}] + [{"objective/kl": kl}] * 3, [1, 0] * 5)
        (tmp_path / "paper" / "ppo" / "tiny-m" / str(seed) / "judged_validation.csv.summary.json").write_text(
            json.dumps({"win_rate": wr})
        )
        _run(tmp_path, "paper", "reward", seed, {"eval/rm/validation/accuracy": 0.6 + 0.1 * seed})
    r = cli("compare", str(tmp_path))
    assert r.returncode == 0, r.stderr
    rows = list(csv.DictReader(open(tmp_path / "compare.csv")))
    ppo = next(x for x in rows if x["stage"] == "ppo")
    assert ppo["seeds"] == "2" and float(ppo["kl"]) == pytest.approx(0.3)
    assert float(ppo["kl_ci"]) == pytest.approx(12.706 * np.std([0.2, 0.4], ddof=1) / math.sqrt(2), abs=1e-3)
    assert float(ppo["win_rate"]) == pytest.approx(0.6) and float(ppo["length"]) == pytest.approx(31.5)
    assert float(ppo["no_eos"]) == 0.0
    rm = next(x for x in rows if x["stage"] == "reward")
    assert float(rm["rm_accuracy"]) == pytest.approx(0.75) and rm["kl"] == ""
    md = (tmp_path / "compare.md").read_text()
    assert "| paper | ppo | tiny-m | 2 | 0.600 ± " in md
    r = cli("compare", str(tmp_path / "nope"))
    assert r.returncode == 2
