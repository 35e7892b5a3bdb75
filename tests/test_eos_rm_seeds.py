"""benchmarks/eos_trick_rm_seeds.py: its commands are the quickstart's with only the seed, the experiment and
the RM changed, and its table applies claim 3's check unchanged (hand-made run folders)."""

import json
import sys

import pytest

from analysis import claims as C
from benchmarks import eos_trick_rm_seeds as B

pytestmark = pytest.mark.unit


def _without(argv, flags):
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a in flags:
            skip = True
            continue
        out.append(a)
    return out


def test_commands_change_only_the_seed_the_experiment_and_the_rm(tmp_path):
    from rlhf_repro.reproduce.plan import Layout, PlanOptions, plan
    from rlhf_repro.reproduce.registry import load_registry

    nodes = {n.key: n.argv for n in plan(load_registry(), "quickstart", Layout(tmp_path), PlanOptions(seeds=[1]))}
    cmds = B.commands(tmp_path, 1, "tiny-m", 17)
    rm = tmp_path / "results" / "eos-rm-seeds" / "reward" / "tiny-m" / "17"
    pairs = [
        ("reward", "quickstart/reward/tiny-m/1", {"--seed": "17", "--experiment": "eos-rm-seeds"}),
        ("rm-agreement", "quickstart/rm-agreement/tiny-m/1",
         {"--seed": "17", "--reward-model": str(rm / "model"), "--out": str(rm / "rm_policy_agreement.json")}),
        ("ppo", "quickstart/ppo/tiny-m/1",
         {"--seed": "17", "--experiment": "eos-rm-seeds", "--reward-model-path": str(rm / "model")}),
        ("ppo-no-trick", "quickstart-no-eos-trick/ppo/tiny-m/1",
         {"--seed": "17", "--experiment": "eos-rm-seeds-no-eos-trick", "--reward-model-path": str(rm / "model")}),
    ]  # fmt: skip
    for step, key, changed in pairs:
        argv = cmds[step]
        for flag, value in changed.items():
            assert argv[argv.index(flag) + 1] == value, (step, flag)
        assert _without(argv, changed) == _without(nodes[key], changed), step
    # The SFT policy stays the quickstart's, and only the ablation arm drops the trick.
    sft = str(tmp_path / "results" / "quickstart" / "sft" / "tiny-m" / "1" / "model")
    assert sft in cmds["ppo"] and sft in cmds["ppo-no-trick"] and sft in cmds["reward"]
    assert "--no-non-eos-penalty" in cmds["ppo-no-trick"] and "--no-non-eos-penalty" not in cmds["ppo"]
    with pytest.raises(SystemExit, match="--nope"):
        B._set(["a", "b"], "--nope", "1")


def _pair(results, k, trick, no_trick, unended):
    rm = results / "eos-rm-seeds" / "reward" / "tiny-m" / str(k)
    rm.mkdir(parents=True)
    (rm / "summary.json").write_text(json.dumps({"eval/rm/validation/accuracy": 0.7}))
    report = {"response_length": 53, "at_length": {"40": {"rm_score_ended": 0.0, "rm_score_no_eos": unended}}}
    (rm / "rm_policy_agreement.json").write_text(json.dumps(report))
    for exp, series in (("eos-rm-seeds", trick), ("eos-rm-seeds-no-eos-trick", no_trick)):
        run = results / exp / "ppo" / "tiny-m" / str(k)
        run.mkdir(parents=True)
        (run / "config.json").write_text(json.dumps({"response_length": 40, "penalty_reward_value": -1.0}))
        (run / "summary.json").write_text("{}")
        (run / "metrics.jsonl").write_text("".join(json.dumps({"ppo/val/no_eos_fraction": v}) + "\n" for v in series))


def test_table_applies_claim_3_unchanged_and_splits_by_the_readout(tmp_path):
    falls, stays = [0.4, 0.4, 0.4, 0.1, 0.05, 0.05], [0.4, 0.4, 0.4, 0.5, 0.5, 0.5]
    _pair(tmp_path, 11, falls, stays, unended=-0.3)  # the RM does not punish unended rollouts: PASS
    _pair(tmp_path, 12, falls, falls, unended=-2.5)  # it does, harder than the trick: both arms end, FAIL
    _pair(tmp_path, 13, falls, falls, unended=-0.5)  # both end although the read-out is mild: FAIL
    rows = B.verdicts(tmp_path, "tiny-m", [11, 12, 13])
    for row in rows:
        k = str(row["rm_seed"])
        expect = C.claim_eos(
            [tmp_path / "eos-rm-seeds/ppo/tiny-m" / k],
            [tmp_path / "eos-rm-seeds-no-eos-trick/ppo/tiny-m" / k],
            [tmp_path / "eos-rm-seeds/reward/tiny-m" / k],
        )
        assert row["passed"] == expect["passed"]
        assert row["rm_readout_no_eos"] == expect["numbers"]["rm_readout_no_eos"]
    assert [r["passed"] for r in rows] == [True, False, False]
    assert [r["readout_below_penalty"] for r in rows] == [False, True, False]
    counts = B.tally(rows)
    assert counts == {
        "rm_seeds": 3,
        "passed": 1,
        "readout_above_penalty": {"rm_seeds": 2, "passed": 1},
        "readout_below_penalty": {"rm_seeds": 1, "passed": 0},
    }
    text = B.markdown(rows, counts)
    assert text.count("| PASS |") == 1 and text.count("| FAIL |") == 2
    assert "passes on 1 of 3 RMs: 1 of the 2 whose unended read-out is at or above" in text
    B.figure(tmp_path, "tiny-m", rows, tmp_path / "f.png")
    assert (tmp_path / "f.png").read_bytes()[:4] == b"\x89PNG"


def test_refuses_a_quickstart_without_its_sft(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["eos_trick_rm_seeds.py", "--quickstart", str(tmp_path)])
    assert B.main() == 2
    assert "no SFT run" in capsys.readouterr().err


def test_a_step_already_done_is_not_run_again(tmp_path, monkeypatch):
    ran = []
    monkeypatch.setattr(B.subprocess, "run", lambda argv, **kw: ran.append(argv[3]) or type("P", (), {"returncode": 0}))
    done = B._done(tmp_path, "tiny-m", 11)
    for step in ("reward", "rm-agreement"):
        done[step].parent.mkdir(parents=True, exist_ok=True)
        done[step].write_text("{}")
    B.run_seed(tmp_path, 1, "tiny-m", 11, tmp_path)
    assert ran == ["ppo", "ppo"]  # both PPO arms, and nothing of the finished RM
    assert (tmp_path / "eos-rm-seeds-11-ppo-no-trick.log").exists()
