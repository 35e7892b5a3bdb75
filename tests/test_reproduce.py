"""`rlhf-repro reproduce`, `list`: the registry, the plan, the launchers (golden dry runs), skip and resume."""

import csv
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from rlhf_repro import reproduce as R
from tests.conftest import cli

pytestmark = pytest.mark.unit
GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("RLHF_REPRO_UPDATE_GOLDEN") == "1"


def _golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if UPDATE:
        path.parent.mkdir(exist_ok=True)
        path.write_text(text)
    assert text == path.read_text(), f"{name} changed; rerun with RLHF_REPRO_UPDATE_GOLDEN=1 if intended"


def test_every_experiment_and_preset_parses_and_plans(tmp_path):
    reg = R.load_registry()
    assert {"paper", "tiny"} <= set(reg.presets)
    for name in [
        "paper",
        "eos-trick-off",
        "whiten-rewards",
        "score-at-eos",
        "kl-0.07",
        "kl-0.1",
        "kl-k3",
        "value-init-sft",
        "ppo-128",
        "dpo-beta-0.5",
        "global-whitening",
        "quickstart",
        "tiny-scaling",
        "ablations",
    ]:
        assert name in reg.experiments
    for name, e in reg.experiments.items():
        for preset in e.get("presets", list(reg.presets)):
            nodes = R.plan(reg, name, R.Layout(tmp_path), R.PlanOptions(preset=preset))
            assert nodes, (name, preset)
            keys = [n.key for n in nodes]
            assert len(keys) == len(set(keys))
            seen = set()
            for n in nodes:  # topological: every dependency comes first
                assert all(d in seen for d in n.deps), (name, n.key)
                seen.add(n.key)


def test_paper_plan_shape_and_ablation_shares_the_base_runs(tmp_path):
    reg = R.load_registry()
    nodes = R.plan(reg, "paper", R.Layout(tmp_path), R.PlanOptions(preset="paper"))
    stages = [n.stage for n in nodes]
    # 3 sizes x 4 seeds x (sft, reward, ppo, dpo, 3 judges) + figures; no world/pretrain on the paper preset.
    assert stages.count("sft") == 12 and stages.count("ppo") == 12 and stages.count("judge") == 36
    assert stages.count("figures") == 1 and "world" not in stages and "pretrain" not in stages
    ppo = next(n for n in nodes if n.key == "paper/ppo/6.9b/77713")
    assert ppo.deps == ["paper/sft/6.9b/77713", "paper/reward/6.9b/77713"]
    # 6.9B runs in the same ZeRO-2 job; only PPO's frozen models go to ZeRO-3 offload (--offload).
    assert ppo.accelerate_config.endswith("deepspeed_zero2.yaml") and "--offload" in ppo.argv
    assert not any("--offload" in n.argv for n in nodes if n.key.startswith("paper/ppo/1b/"))
    a = ppo.argv
    assert a[a.index("--local-micro-batch-size") + 1] == "1" and a[a.index("--gradient-accumulation-steps") + 1] == "64"
    assert a[a.index("--sft-model-path") + 1] == str(tmp_path / "results/paper/sft/6.9b/77713/model")

    abl = R.plan(reg, "eos-trick-off", R.Layout(tmp_path), R.PlanOptions(preset="paper", sizes=["1b"], seeds=[1]))
    keys = [n.key for n in abl]
    assert "eos-trick-off/ppo/1b/1" in keys and "paper/sft/1b/1" in keys and "paper/reward/1b/1" in keys
    assert not any(k.startswith("paper/dpo") or k.startswith("eos-trick-off/sft") for k in keys)
    ppo = next(n for n in abl if n.key == "eos-trick-off/ppo/1b/1")
    assert "--no-non-eos-penalty" in ppo.argv and "--experiment" in ppo.argv
    assert ppo.argv[ppo.argv.index("--reward-model-path") + 1] == str(tmp_path / "results/paper/reward/1b/1/model")
    assert ppo.argv[ppo.argv.index("--experiment") + 1] == "eos-trick-off"


def test_quickstart_plan_uses_the_world_and_overrides_preset_flags(tmp_path):
    from rlhf_repro.sim.shipped import shipped_model_dir

    reg = R.load_registry()
    nodes = {n.key: n for n in R.plan(reg, "quickstart", R.Layout(tmp_path), R.PlanOptions())}
    assert list(nodes)[:3] == ["world", "datasets", "base/tiny-m"]
    # The shipped base model, checked against the plan's world, is what SFT starts from.
    assert nodes["base/tiny-m"].argv == ["sim", "check-base", "--world", str(tmp_path / "world"), "--size", "tiny-m"]
    sft = nodes["quickstart/sft/tiny-m/1"]
    assert sft.argv[sft.argv.index("--base-model") + 1] == str(shipped_model_dir("tiny-m"))
    assert "base/tiny-m" in sft.deps and "--eval-at-start" in sft.argv
    ppo = nodes["quickstart/ppo/tiny-m/1"].argv
    assert ppo.count("--total-episodes") == 1 and ppo[ppo.index("--total-episodes") + 1] == "512"
    assert ppo[ppo.index("--response-length") + 1] == "40" and "--gold-metrics" in ppo
    no_trick = nodes["quickstart-no-eos-trick/ppo/tiny-m/1"].argv
    assert "--no-non-eos-penalty" in no_trick and no_trick[no_trick.index("--response-length") + 1] == "40"
    agreement = nodes["quickstart/rm-agreement/tiny-m/1"]
    assert agreement.argv[:2] == ["sim", "rm-agreement"] and agreement.deps == ["quickstart/reward/tiny-m/1"]
    assert agreement.marker == tmp_path / "results/quickstart/reward/tiny-m/1/rm_policy_agreement.json"
    # At the paper's 53 tokens (the tool's default) and, on the same samples, at PPO's own 40.
    assert "--response-length" not in agreement.argv
    assert agreement.argv[agreement.argv.index("--also-at-length") + 1] == "40"
    assert "judge-base" in " ".join(nodes)  # the base model's samples (--eval-at-start) are judged too
    figures = nodes["figures"].argv
    assert figures[figures.index("--world") + 1] == str(tmp_path / "world")
    assert figures[figures.index("--headline") + 1] == "quickstart" and figures.count("--headline") == 1
    # The claims run before the figures, whose report carries their table.
    assert nodes["figures"].deps[-1] == "quickstart/claims" and "figures" not in nodes["quickstart/claims"].deps
    assert "--control" not in nodes["quickstart/claims"].argv  # controls only when they are planned
    assert "quickstart-no-eos-trick/claims" not in nodes
    with pytest.raises(R.RegistryError, match="only with preset"):
        R.plan(reg, "quickstart", R.Layout(tmp_path), R.PlanOptions(preset="paper"))


def test_quickstart_controls_plan_reuses_sft_and_rm_and_reports_the_controls(tmp_path):
    reg = R.load_registry()
    nodes = {n.key: n for n in R.plan(reg, "quickstart-controls", R.Layout(tmp_path), R.PlanOptions())}
    for name, flag in (
        ("control-negated-reward", "--negate-reward"),
        ("control-frozen-policy", "--ppo.kl-coef"),
        ("control-no-eos-trick-2", "--seed-offset"),
    ):
        ppo = nodes[f"{name}/ppo/tiny-m/1"].argv
        assert flag in ppo, name
        assert ppo[ppo.index("--sft-model-path") + 1] == str(tmp_path / "results/quickstart/sft/tiny-m/1/model")
        assert f"{name}/sft/tiny-m/1" not in nodes
    frozen = nodes["control-frozen-policy/ppo/tiny-m/1"].argv
    assert frozen[frozen.index("--ppo.kl-coef") + 1] == "1000"
    assert "--no-non-eos-penalty" in nodes["control-no-eos-trick-2/ppo/tiny-m/1"].argv
    claims = nodes["quickstart/claims"].argv
    got = [claims[i + 1] for i, a in enumerate(claims) if a == "--control"]
    assert got == ["control-negated-reward:2", "control-frozen-policy:2", "control-no-eos-trick-2:3"]


def test_pretrain_base_plans_a_pretraining_stage_instead_of_the_shipped_model(tmp_path):
    reg = R.load_registry()
    nodes = {n.key: n for n in R.plan(reg, "quickstart", R.Layout(tmp_path), R.PlanOptions(pretrain_base=True))}
    assert "pretrain/tiny-m" in nodes and "base/tiny-m" not in nodes
    pre = nodes["pretrain/tiny-m"].argv
    assert pre[pre.index("--steps") + 1] == "3000"
    sft = nodes["quickstart/sft/tiny-m/1"].argv
    assert sft[sft.index("--base-model") + 1].startswith(str(tmp_path / "base"))


def test_merge_flags_keeps_the_last_setting_in_place():
    assert R.merge_flags(["--lr", "1", "--run-eval", "--lr", "2", "--no-x", "--x"]) == [
        "--lr",
        "2",
        "--run-eval",
        "--x",
    ]
    assert R.merge_flags(["--ppo.whiten-rewards", "--ppo.no-whiten-rewards"]) == ["--ppo.no-whiten-rewards"]
    assert R.merge_flags(["--eval-splits", "validation", "test"]) == ["--eval-splits", "validation", "test"]


@pytest.mark.parametrize(
    "text,match",
    [
        ('[experiments.x]\ndescription = "d"\nstages = ["sft", "rl"]\n', r"\[experiments.x\]: unknown stage 'rl'"),
        ('[experiments.x]\ndescription = "d"\nstage = ["sft"]\n', r"\[experiments.x\]: unknown key 'stage'"),
        ('[experiments.x]\ndescription = "d"\nbase = "y"\n', r"base 'y' is not an experiment"),
        (
            '[experiments.x]\ndescription = "d"\nbase = "y"\n[experiments.y]\ndescription = "d"\nbase = "x"\n',
            "base chain loops",
        ),
        ('[experiments.x]\ndescription = "d"\nstages = ["sft"]\nflags.sft = "--lr 1"\n', "must be a list of strings"),
        ('[presets.p]\ndescription = "d"\nsizes = []\nseeds = [1]\n', r"\[presets.p\]: sizes must be a non-empty"),
        ("[experiments.x\n", "experiments.toml"),
    ],
)
def test_registry_errors_name_the_table_and_key(tmp_path, text, match):
    path = tmp_path / "experiments.toml"
    path.write_text(text)
    with pytest.raises(R.RegistryError, match=match):
        R.load_registry(path)
    r = cli("list", "--registry", str(path))
    assert r.returncode == 2 and "error:" in r.stderr


def test_list_and_help():
    r = cli("list")
    assert r.returncode == 0
    for name in ("paper", "tiny", "eos-trick-off", "quickstart", "tiny-scaling", "--no-non-eos-penalty"):
        assert name in r.stdout
    r = cli("reproduce", "--help")
    assert r.returncode == 0 and "--launcher" in r.stdout and "--dry-run" in r.stdout and "--track" in r.stdout


def test_paper_slurm_dry_run_golden():
    r = cli("reproduce", "paper", "--preset", "paper", "--launcher", "slurm", "--dry-run", "--out", "runs")
    assert r.returncode == 0, r.stderr
    _golden("paper_slurm.txt", r.stdout)
    out = r.stdout
    # One array job per (stage, size) over the four seeds, chained with afterok.
    assert out.count("#SBATCH --array=0-3") == 3 * 7
    assert "SEEDS=(44413 55513 66613 77713)" in out
    assert (
        "JOB_paper_reward_2_8b=$(sbatch --parsable --dependency=afterok:${JOB_paper_sft_2_8b} "
        '"$HERE/paper_reward_2.8b.sbatch")' in out
    )
    assert "--dependency=afterok:${JOB_paper_reward_1b}:${JOB_paper_sft_1b} " in out
    assert "srun accelerate launch --config_file configs/accelerate/deepspeed_zero2.yaml" in out
    assert 'if [ -f "runs/results/paper/ppo/1b/${SEED}/summary.json" ]; then' in out


def test_paper_accelerate_dry_run_golden():
    r = cli("reproduce", "paper", "--preset", "paper", "--launcher", "accelerate", "--dry-run", "--out", "runs")
    assert r.returncode == 0, r.stderr
    _golden("paper_accelerate.txt", r.stdout)
    lines = r.stdout.splitlines()
    sft = next(line for line in lines if line.startswith("accelerate launch") and "experiments.sft" in line)
    assert sft.startswith(
        "accelerate launch --config_file configs/accelerate/deepspeed_zero2.yaml --num_processes 8 -m"
    )
    assert "# paper/ppo/1b/44413: to run (after paper/sft/1b/44413, paper/reward/1b/44413)" in lines
    assert any(line.startswith("rlhf-repro judge --input runs/results/paper/ppo/1b/44413/") for line in lines)


def test_shipped_accelerate_configs_are_the_references():
    import yaml

    root = Path(__file__).resolve().parent.parent / "configs" / "accelerate"
    z2 = yaml.safe_load((root / "deepspeed_zero2.yaml").read_text())
    assert z2["deepspeed_config"]["zero_stage"] == 2 and z2["mixed_precision"] == "bf16"
    assert z2["num_processes"] == 8 and z2["deepspeed_config"]["offload_param_device"] == "none"
    assert [p.name for p in root.glob("*.yaml")] == ["deepspeed_zero2.yaml"]


def test_a_size_may_name_its_own_accelerate_config(tmp_path):
    path = tmp_path / "experiments.toml"
    path.write_text(
        '[presets.p]\ndescription = "d"\nsizes = ["s", "l"]\nseeds = [1]\nmodel = "org/m-{size}"\n'
        'accelerate_config = "base.yaml"\n[presets.p.sizes_flags.l]\naccelerate_config = "big.yaml"\n'
        'sft = ["--lr", "1"]\n[experiments.x]\ndescription = "d"\nstages = ["sft"]\n'
    )
    reg = R.load_registry(path)
    nodes = {n.key: n for n in R.plan(reg, "x", R.Layout(tmp_path), R.PlanOptions(preset="p"))}
    assert nodes["x/sft/s/1"].accelerate_config == "base.yaml" and "--lr" not in nodes["x/sft/s/1"].argv
    assert nodes["x/sft/l/1"].accelerate_config == "big.yaml" and "--lr" in nodes["x/sft/l/1"].argv


def test_dry_run_marks_finished_stages_as_skipped(tmp_path):
    run = tmp_path / "results" / "paper" / "sft" / "1b" / "44413"
    run.mkdir(parents=True)
    (run / "summary.json").write_text("{}")
    r = cli(
        "reproduce",
        "paper",
        "--preset",
        "paper",
        "--sizes",
        "1b",
        "--seeds",
        "44413",
        "--dry-run",
        "--out",
        str(tmp_path),
    )
    assert r.returncode == 0
    assert "# paper/sft/1b/44413: done, skipped" in r.stdout
    assert "# paper/reward/1b/44413: to run (after paper/sft/1b/44413)" in r.stdout
    # Slurm: a finished stage gets no job and its dependents no dependency on it.
    r = cli(
        "reproduce", "paper", "--preset", "paper", "--sizes", "1b", "--seeds", "44413", "--launcher", "slurm",
        "--dry-run", "--out", str(tmp_path),
    )  # fmt: skip
    assert "paper_sft_1b.sbatch" not in r.stdout
    assert 'JOB_paper_reward_1b=$(sbatch --parsable "$HERE/paper_reward_1b.sbatch")' in r.stdout


def test_track_flags_reach_training_stages_only(tmp_path):
    reg = R.load_registry()
    opts = R.PlanOptions(preset="paper", sizes=["1b"], seeds=[1], track=True, wandb_entity="team")
    for n in R.plan(reg, "eos-trick-off", R.Layout(tmp_path), opts):
        if n.training:
            i = n.argv.index("--track")
            assert n.argv[i : i + 5] == ["--track", "--wandb-project", "rlhf-repro", "--wandb-entity", "team"]
        else:
            assert "--track" not in n.argv


def test_wandb_tags_name_the_switches_that_differ_from_the_paper():
    from experiments.ppo import DETAIL_FLAGS, Args
    from rlhf_repro.training import changed_details

    args = Args()
    assert changed_details(args, DETAIL_FLAGS) == []
    args.non_eos_penalty = False
    args.ppo.kl_coef = 0.1
    assert changed_details(args, DETAIL_FLAGS) == ["non_eos_penalty=False", "ppo.kl_coef=0.1"]


def _node(tmp_path, key, deps=(), fail=False, sleep=0.0):
    marker = tmp_path / f"{key}.done"
    code = f"import time, pathlib; time.sleep({sleep}); " + (
        "raise SystemExit(3)" if fail else f"pathlib.Path({str(marker)!r}).write_text('ok')"
    )
    n = R.Node(key, "figures", None, None, None, [], marker, list(deps))
    return n, [sys.executable, "-c", code]


def test_local_launcher_runs_in_order_skips_done_and_resumes_after_failure(tmp_path, capsys):
    a, ca = _node(tmp_path, "a")
    b, cb = _node(tmp_path, "b", deps=["a"], fail=True)
    c, cc = _node(tmp_path, "c", deps=["b"])
    d, cd = _node(tmp_path, "d", deps=["a"], sleep=0.5)
    nodes, cmds = [a, b, c, d], {"a": ca, "b": cb, "c": cc, "d": cd}
    rc = R.run_local(nodes, cmds, jobs=2, logs=tmp_path / "logs", stream=False)
    out = capsys.readouterr()
    assert rc == 3 and "[FAILED] b (exit 3)" in out.err and "not started because of the failure: c" in out.err
    assert a.done() and d.done() and not c.done()  # d ran beside b; c waits on b
    _, cb_ok = _node(tmp_path, "b", deps=["a"])
    cmds["b"] = cb_ok
    rc = R.run_local(nodes, cmds, jobs=1, logs=tmp_path / "logs", stream=False)
    out = capsys.readouterr().out
    assert rc == 0 and "[skip] a" in out and "[skip] d" in out and c.done()
    assert out.index("] b:") < out.index("] c:")


def test_slurm_launcher_submits_with_dependencies(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    sbatch = bin_dir / "sbatch"
    log = tmp_path / "sbatch.log"
    sbatch.write_text(
        f'#!/usr/bin/env bash\ntouch {log}\nn=$(( $(wc -l < {log}) + 100 ))\necho "$n $*" >> {log}\necho "$n"\n'
    )
    sbatch.chmod(sbatch.stat().st_mode | stat.S_IEXEC)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    r = subprocess.run(
        [sys.executable, "-m", "rlhf_repro.cli", "reproduce", "paper", "--preset", "paper", "--sizes", "1b",
         "--seeds", "1", "2", "--launcher", "slurm", "--out", str(tmp_path / "runs")],
        capture_output=True, text=True, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    calls = log.read_text().splitlines()
    ids = {line.split()[-1].rsplit("/", 1)[-1]: line.split()[0] for line in calls}
    assert len(calls) == 8  # sft, reward, ppo, dpo, 3 judges, figures
    reward = next(line for line in calls if line.endswith("paper_reward_1b.sbatch"))
    assert f"--dependency=afterok:{ids['paper_sft_1b.sbatch']}" in reward
    sbatch_file = (tmp_path / "runs" / "slurm" / "paper_ppo_1b.sbatch").read_text()
    assert "#SBATCH --array=0-1" in sbatch_file and "SEEDS=(1 2)" in sbatch_file


def test_unknown_experiment_and_size_are_clear_errors(tmp_path):
    r = cli("reproduce", "nope", "--dry-run", "--out", str(tmp_path))
    assert r.returncode == 2 and "unknown experiment 'nope'" in r.stderr
    r = cli("reproduce", "paper", "--sizes", "7b", "--dry-run", "--out", str(tmp_path))
    assert r.returncode == 2 and "no size '7b'" in r.stderr


def test_quickstart_dry_run_prints_every_stage(tmp_path):
    r = cli("quickstart", "--out", str(tmp_path / "qs"), "--dry-run")
    assert r.returncode == 0, r.stderr
    keys = ["world", "datasets", "base/tiny-m", "quickstart/sft/tiny-m/1", "quickstart/dpo/tiny-m/1"]
    keys += ["quickstart/rm-agreement/tiny-m/1", "quickstart-no-eos-trick/ppo/tiny-m/1"]
    keys += ["quickstart/judge-ppo/tiny-m/1", "figures", "quickstart/claims"]
    for key in keys:
        assert f"# {key}: to run" in r.stdout, key
    assert "control-" not in r.stdout
    r = cli("quickstart", "--out", str(tmp_path / "qs"), "--dry-run", "--controls")
    assert r.returncode == 0 and "# control-negated-reward/ppo/tiny-m/1: to run" in r.stdout


def test_quickstart_size_seed_and_track_reach_the_stages(tmp_path):
    r = cli("quickstart", "--out", str(tmp_path / "qs"), "--size", "tiny-s", "--seed", "7", "--track", "--dry-run")
    assert r.returncode == 0, r.stderr
    assert "# quickstart/sft/tiny-s/7: to run" in r.stdout and "tiny-m" not in r.stdout
    sft = next(line for line in r.stdout.splitlines() if line.startswith("rlhf-repro sft "))
    assert "--track" in sft and "--seed 7" in sft
    assert "rlhf-repro sim check-base --world " in r.stdout and "--size tiny-s" in r.stdout
    r = cli("quickstart", "--out", str(tmp_path / "qs"), "--size", "tiny-s", "--track", "--pretrain-base", "--dry-run")
    pretrain = next(line for line in r.stdout.splitlines() if line.startswith("rlhf-repro pretrain "))
    assert "--model-shape tiny-s" in pretrain and "--track" not in pretrain


def test_num_processes_threads_and_quiet_do_what_they_say(tmp_path):
    r = cli("reproduce", "paper", "--preset", "paper", "--sizes", "1b", "--seeds", "1", "--launcher", "accelerate",
            "--num-processes", "2", "--dry-run", "--out", "runs")  # fmt: skip
    assert (
        r.returncode == 0 and "--num_processes 2 -m experiments.sft" in r.stdout and "--num_processes 8" not in r.stdout
    )
    reg = R.load_registry()
    for n in R.plan(reg, "quickstart", R.Layout(tmp_path), R.PlanOptions(threads=3)):
        assert ("--threads" in n.argv) == (n.training or n.stage == "pretrain"), n.key
        if "--threads" in n.argv:
            assert n.argv[n.argv.index("--threads") + 1] == "3"
    a, ca = _node(tmp_path, "a")
    R.run_local([a], {"a": ca + ["print-this"]}, jobs=1, logs=tmp_path / "logs", stream=False)
    assert (tmp_path / "logs" / "a.log").exists()  # --quiet: output goes to logs/ even with one job


def test_claims_ablation_and_out_and_compare_stages(tmp_path):
    from tests.test_claims_compare import _run

    _run(tmp_path, "qs", "reward", 1, {"eval/rm/validation/accuracy": 0.7})
    _run(tmp_path, "qs", "ppo", 1, {}, [{"ppo/val/no_eos_fraction": 0.8}] * 3 + [{"ppo/val/no_eos_fraction": 0.1}] * 3)
    _run(tmp_path, "other", "ppo", 1, {}, [{"ppo/val/no_eos_fraction": 0.8}] * 6)
    out = tmp_path / "elsewhere"
    r = cli("claims", str(tmp_path), "--experiment", "qs", "--ablation", "other", "--out", str(out))
    assert r.returncode == 0, r.stderr
    eos = json.loads((out / "claims.json").read_text())[2]["numbers"]
    assert eos["without_trick_last"] == 0.8 and eos["with_trick_last"] == 0.1
    assert not (tmp_path / "qs" / "claims.json").exists()
    r = cli("compare", str(tmp_path), "--stages", "reward", "--out", str(out))
    assert r.returncode == 0
    assert {row["stage"] for row in csv.DictReader(open(out / "compare.csv"))} == {"reward"}


def test_stage_progress_reads_the_run_folder_and_extrapolates_an_eta(tmp_path):
    from rlhf_repro.reproduce.launch import stage_progress

    run = tmp_path / "q" / "sft" / "m" / "1"
    node = R.Node("q/sft/m/1", "sft", "q", "m", 1, [], run / "summary.json")
    assert stage_progress(node, 100.0, 130.0) == "q/sft/m/1 30s (loading)"  # no run folder yet
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"derived": {"num_updates": 200}}))
    assert stage_progress(node, 100.0, 130.0) == "q/sft/m/1 update 0/200, 30s"
    (run / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "loss": 1.0}) + "\n" for s in (10, 50)))
    # 50 of 200 updates in 60 s: 150 more at the same pace take 180 s.
    assert stage_progress(node, 100.0, 160.0) == "q/sft/m/1 update 50/200 (25%), ETA 3m00s"
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 60, "lo')  # a line being written is not read
    assert "update 50/200" in stage_progress(node, 100.0, 160.0)
    (run / "metrics.jsonl").write_text("".join(json.dumps({"step": s}) + "\n" for s in (10, 200)))
    assert stage_progress(node, 100.0, 160.0) == "q/sft/m/1 update 200/200, evaluating, 1m00s"
    # A resumed run: 150 updates were done by an earlier attempt; the pace counts from what this one saw.
    seen = {}
    (run / "metrics.jsonl").write_text(json.dumps({"step": 150}) + "\n")
    assert stage_progress(node, 100.0, 110.0, seen) == "q/sft/m/1 update 150/200 (75%), 10s"
    (run / "metrics.jsonl").write_text(json.dumps({"step": 160}) + "\n")
    # 10 updates in 20 s since then: the 40 left take 80 s (not 150 in 30 s extrapolated).
    assert stage_progress(node, 100.0, 130.0, seen) == "q/sft/m/1 update 160/200 (80%), ETA 1m20s"
    figures = R.Node("figures", "figures", None, None, None, [], tmp_path / "x")
    assert stage_progress(figures, 0.0, 75.0) == "figures 1m15s"


def test_progress_on_a_terminal_gives_each_running_stage_its_own_line_and_clears_them_all(capsys, monkeypatch):
    from rlhf_repro.reproduce.launch import ProgressLine

    monkeypatch.setattr(
        "rlhf_repro.reproduce.launch.shutil.get_terminal_size", lambda fallback: os.terminal_size((40, 20))
    )
    nodes = {k: (R.Node(k, "judge", "e", "m", 1, [], None), 0.0) for k in ("e/judge-sft/m/1", "e/judge-ppo/m/1")}
    line = ProgressLine(every=0.01, tty=True)
    line.update(nodes)
    out = capsys.readouterr().out
    drawn = out.split("\n")
    assert len(drawn) == 2 and all(d.startswith("[running] e/judge-") for d in drawn) and not out.endswith("\n")
    assert all(len(d) <= 39 for d in drawn)  # cut to the terminal's width, one stage per line
    line.clear()
    # The cursor's line and the one above it are cleared, and the cursor is left at the first.
    assert capsys.readouterr().out == "\r\033[K\033[F\033[K"
    line.clear()
    assert capsys.readouterr().out == ""  # nothing drawn, nothing to clear
    line.last = 0.0
    line.update({k: v for k, v in list(nodes.items())[:1]})
    assert "\n" not in capsys.readouterr().out
    line.clear()
    assert capsys.readouterr().out == "\r\033[K"


def test_local_launcher_prints_live_progress_lines_of_running_stages(tmp_path, capsys):
    run = tmp_path / "e" / "sft" / "m" / "1"
    code = (
        f"import json, pathlib, time; run = pathlib.Path({str(run)!r}); run.mkdir(parents=True); "
        "(run / 'config.json').write_text(json.dumps({'derived': {'num_updates': 4}})); "
        "f = open(run / 'metrics.jsonl', 'w')\n"
        "for s in range(1, 5):\n"
        "    f.write(json.dumps({'step': s}) + '\\n'); f.flush(); time.sleep(0.4)\n"
        "(run / 'summary.json').write_text('{}')"
    )
    node = R.Node("e/sft/m/1", "sft", "e", "m", 1, [], run / "summary.json")
    rc = R.run_local([node], {node.key: [sys.executable, "-c", code]}, jobs=2, logs=tmp_path / "logs", stream=False,
                     progress_every=0.3)  # fmt: skip
    out = capsys.readouterr().out
    assert rc == 0, (tmp_path / "logs" / "e__sft__m__1.log").read_text()
    lines = [line for line in out.splitlines() if line.startswith("[running] e/sft/m/1 update")]
    assert any("ETA" in line for line in lines), out  # plain lines when not on a terminal
    assert "\r" not in out and "\033" not in out
    assert out.index("[1/1] e/sft/m/1") < out.index("[running]") < out.index("[done] e/sft/m/1")
    # Off when asked, and when one stage streams to the terminal (it draws its own progress bar).
    run_again = R.Node("e/sft/m/2", "sft", "e", "m", 2, [], tmp_path / "e2" / "summary.json")
    code2 = code.replace(str(run), str(tmp_path / "e2"))
    R.run_local([run_again], {run_again.key: [sys.executable, "-c", code2]}, jobs=2, logs=tmp_path / "logs",
                stream=False, progress_every=None)  # fmt: skip
    assert "[running]" not in capsys.readouterr().out


def test_progress_every_reaches_the_local_launcher(tmp_path, monkeypatch):
    """--progress-every N is the launcher's interval; 0 turns the lines off; the default is 30 s off a terminal."""
    from rlhf_repro.reproduce import cli as rcli

    seen = []
    monkeypatch.setattr(rcli, "run_local", lambda *a, **k: seen.append(k["progress_every"]) or 0)
    base = ["quickstart", "--out", str(tmp_path), "--jobs", "2"]
    for extra in (["--progress-every", "5"], ["--progress-every", "0"], []):
        assert rcli.main(base + extra) == 0
    assert seen == [5.0, None, 30.0]
