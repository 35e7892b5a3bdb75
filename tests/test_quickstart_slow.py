"""The quickstart end to end at its default sizes: every stage, the claims and the issue-18 targets on their
numbers, a rerun; then the claims' negative controls (which must FAIL) and the CartPole of RLHF (PPO raises
an easy reward from the quickstart's SFT policy)."""

import json
import time

import pytest

from tests.conftest import cli

pytestmark = pytest.mark.slow
# The CartPole check's budget and bar (README "Tests"): measured rise on seed 1 is in docs/LOG.md.
CARTPOLE_UPDATES = 16
CARTPOLE_MIN_RISE = 0.3
SUMMARY_KEYS = (
    "base_rougeL",
    "sft_rougeL",
    "rm_accuracy",
    "rm_accuracy_by_confidence",
    "rm_accuracy_ood",
    "gold_ceiling_accuracy",
    "dpo_implicit_accuracy",
    "gold_win_rate",
    "no_eos_fraction",
    "mean_response_length",
    "stage_seconds",
    "rm_gold_agreement_on_policy_samples",
    "reference_gold_score",
    "base_loses_to_reference_share",
)


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory):
    out = tmp_path_factory.mktemp("qs") / "qs"
    t0 = time.time()
    r = cli("quickstart", "--out", str(out), timeout=1800)
    print(f"quickstart: {time.time() - t0:.0f} s")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "== quickstart summary ==" in r.stdout
    return out


def test_quickstart_default(quickstart):
    out = quickstart
    world = json.loads((out / "world" / "world.json").read_text())
    assert world["sizes"]["tldr/train"] == 16000
    acc = world["gold_accuracy_validation"]
    assert 0.7 < acc["all"]["accuracy"] < 0.95 and abs(acc["all"]["accuracy"] - acc["expected_ceiling"]) < 0.05
    build = json.loads((out / "data" / "build_summary.json").read_text())
    assert build["preference"]["validation_cnndm"]["rows"] == 1000

    results = out / "results" / "quickstart"
    claims = json.loads((results / "claims.json").read_text())
    assert len(claims) == 5 and all(set(c) == {"claim", "passed", "numbers"} for c in claims)
    # Issue 18: all five claims pass on seed 1 (README "Quickstart results across seeds": seeds 2 and 3 pass
    # four, claim 3 failing where their RMs read unended rollouts below the EOS trick's -1).
    for c in claims:
        assert c["passed"], c
    table = (results / "claims.md").read_text()
    assert table.count("| PASS |") == 5

    summary = json.loads((results / "summary.json").read_text())
    for key in SUMMARY_KEYS:
        assert key in summary, key
    win = summary["gold_win_rate"]
    # SFT in the paper's range (its SFT 1B: 0.33); PPO at least 0.10 above it with the interval of the
    # difference above 0 (claim 2's numbers); DPO above SFT.
    assert 0.10 <= win["sft"] <= 0.45, win
    gain = claims[1]["numbers"]
    assert gain["difference"] >= 0.10 and gain["difference_ci_low"] > 0, gain
    assert win["dpo"] > win["sft"], win
    # The RM orders the SFT policy's own sample pairs as the gold labeler does well above chance.
    assert summary["rm_gold_agreement_on_policy_samples"] >= 0.65, summary["rm_gold_agreement_on_policy_samples"]
    # The world stays honest: the base model loses to the references on >= 95% of posts, and the mean
    # reference scores at least 70% of the maximum.
    assert summary["base_loses_to_reference_share"] >= 0.95
    assert summary["reference_gold_score"]["mean_fraction_of_max"] >= 0.70
    assert summary["sft_rougeL"] > summary["base_rougeL"] + 0.2
    assert 0.6 < summary["rm_accuracy"] < summary["gold_ceiling_accuracy"]
    assert summary["no_eos_fraction"]["ppo"] < summary["no_eos_fraction"]["ppo_no_eos_trick"]
    assert set(summary["stage_seconds"]) >= {"sft", "reward", "ppo", "dpo"}
    report = out / "results" / "report"
    assert (report / "report.md").exists() and list(report.glob("*.png"))
    assert (report / "overoptimization_quickstart.png").exists()

    # Rerunning skips every finished stage (only the base check, figures and claims, which have no marker,
    # run again).
    r = cli("quickstart", "--out", str(out), timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    for key in (
        "world",
        "datasets",
        "quickstart/sft/tiny-m/1",
        "quickstart/rm-agreement/tiny-m/1",
        "quickstart/ppo/tiny-m/1",
    ):
        assert f"[skip] {key}:" in r.stdout, key
    assert "quickstart/claims" in r.stdout


# Strict tolerance of the comparison with results/reference: the same torch build dispatching to the same
# vector ISA gives bitwise-equal numbers for the same seed (the determinism tests), so a relative 1e-6
# only absorbs the last digit of a JSON float. On another ISA (AVX2 vs AVX512 kernels round matmuls
# differently, and a sampled token that flips changes every later number), per-update equality cannot
# hold; there the summary's rates must agree within LOOSE_ABS (about 3 standard errors of a 300-sample
# win rate), which still catches a change that moves a result.
STRICT_REL, STRICT_ABS = 1e-6, 1e-9
LOOSE_ABS = 0.08
REFERENCE_RUNS = [f"quickstart/{stage}/tiny-m/1" for stage in ("sft", "reward", "ppo", "dpo")]
REFERENCE_RUNS.append("quickstart-no-eos-trick/ppo/tiny-m/1")


def test_quickstart_equals_the_committed_reference_results(quickstart):
    """results/reference holds the seed-1 quickstart of the commit that refreshed it: this run must equal
    it metric by metric and update by update, so a change that moves a number refreshes the reference in
    the same commit (`python scripts/refresh_reference.py --source OUT --experiments quickstart
    quickstart-no-eos-trick`), and stale reference results cannot hide."""
    import sys

    from tests.conftest import REPO

    sys.path.insert(0, str(REPO / "scripts"))
    from refresh_reference import compare, machine

    reference = REPO / "results" / "reference"
    recorded = json.loads((reference / "index.json").read_text())["machine"]
    if machine() == recorded:
        diffs = compare(reference, quickstart / "results", REFERENCE_RUNS, STRICT_REL, STRICT_ABS)
        assert not diffs, "\n".join(diffs[:40])
    else:
        print(f"reference made on {recorded}, this machine is {machine()}: summary rates within {LOOSE_ABS}")
    ours = json.loads((quickstart / "results" / "quickstart" / "summary.json").read_text())
    theirs = json.loads((reference / "quickstart" / "summary_seed1.json").read_text())
    for key in ("gold_win_rate", "no_eos_fraction"):
        for name, value in theirs[key].items():
            assert abs(ours[key][name] - value) <= LOOSE_ABS, (key, name, ours[key][name], value)
    for key in ("rm_accuracy", "dpo_implicit_accuracy", "rm_gold_agreement_on_policy_samples"):
        assert abs(ours[key] - theirs[key]) <= LOOSE_ABS, (key, ours[key], theirs[key])
    claims = json.loads((quickstart / "results" / "quickstart" / "claims.json").read_text())
    committed = json.loads((reference / "quickstart" / "claims_seed1.json").read_text())
    assert [c["passed"] for c in claims] == [c["passed"] for c in committed]


def test_quickstart_controls_fail_as_they_must(quickstart):
    """Each negative control breaks the mechanism of one claim (a negated reward, a frozen policy, no EOS
    trick in either arm); the claim's check must FAIL on it, or the claim proves nothing."""
    r = cli("quickstart", "--controls", "--out", str(quickstart), timeout=1800)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    results = quickstart / "results" / "quickstart"
    controls = json.loads((results / "controls.json").read_text())
    names = {c["control"] for c in controls}
    assert names == {"control-negated-reward", "control-frozen-policy", "control-no-eos-trick-2"}
    for c in controls:
        assert not c["passed"], c
    assert "Negative controls" in (results / "claims.md").read_text()
    assert json.loads((results / "summary.json").read_text())["controls_failing_as_they_must"] == "3/3"
    # The negated reward drives the gold win rate below SFT's: the control is not merely "no change".
    negated = next(c for c in controls if c["control"] == "control-negated-reward")
    assert negated["numbers"]["difference"] < 0


def test_ppo_learns_a_target_length(quickstart, tmp_path):
    """The CartPole of RLHF: from the quickstart's SFT policy, PPO on a reward for a 20-token response (the
    SFT policy writes about 37) must raise that reward within a few minutes. The first check to run when
    the gold-reward PPO does not learn. The EOS trick is off: its -1 sits above what a 37-token response
    scores here (-1.7), so with it on, never ending would be the easiest gain (measured: the reward fell
    from -1.77 to -1.94 in 12 updates), the trap the trick's value must avoid in any reward's units."""
    sft = quickstart / "results" / "quickstart" / "sft" / "tiny-m" / "1" / "model"
    r = cli(
        "ppo",
        "--sft-model-path",
        str(sft),
        "--query-dataset",
        str(quickstart / "data" / "sft"),
        "--reward-source",
        "length",
        "--target-length",
        "20",
        "--value-init",
        "sft",
        "--no-non-eos-penalty",
        "--model-name",
        "tiny-m",
        "--results-dir",
        str(tmp_path),
        "--experiment",
        "cartpole",
        *"--batch-size 32 --local-micro-batch-size 16 --local-rollout-forward-batch-size 32".split(),
        "--total-episodes",
        str(CARTPOLE_UPDATES * 32),
        "--lr",
        "5e-5",
        "--lr-schedule",
        "constant",
        "--response-length",
        "40",
        "--no-progress",
        timeout=1200,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    run = tmp_path / "cartpole" / "ppo" / "tiny-m" / "1"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    scores = [row["objective/raw_scores"] for row in rows]
    assert len(scores) == CARTPOLE_UPDATES
    first, last = sum(scores[:3]) / 3, sum(scores[-3:]) / 3
    print(f"length reward: first 3 updates {first:.3f}, last 3 {last:.3f}")
    assert last > first + CARTPOLE_MIN_RISE, scores
