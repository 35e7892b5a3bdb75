"""Reliability of the training stages: exact resume after SIGKILL, determinism, atomic checkpoints, NaN stops.

Every stage (SFT, RM, PPO, DPO) is run three ways on the tiny fixtures: uninterrupted; again with the
same seed (identical metrics: determinism); with another seed (different metrics); and once more killed
with SIGKILL at a random point of its training and restarted with the same command, which must end with
the uninterrupted run's parameters and metrics exactly. Checkpoints go every other update, so a kill
lands between checkpoints as often as not and the restart redoes the updates after the last one.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO, run_cmd

pytestmark = pytest.mark.smoke

COMMON = ["--experiment", "t", "--model-name", "tiny", "--threads", "1", "--no-progress", "--save-every", "2"]
TIMING = ("time/", "ppo/eps", "train/eps", "eps")


def stage_cmd(stage: str, paths: dict, results: Path, seed: int = 1, *extra: str) -> list[str]:
    data = paths["data"]
    if stage == "sft":
        flags = ["--base-model", paths["base"], "--query-dataset", data / "sft", "--lr", "3e-3"]
        flags += ["--batch-size", "8", "--local-micro-batch-size", "4", "--total-episodes", "64"]
        flags += ["--response-length", "8", "--max-eval-samples", "4", "--local-eval-batch-size", "4"]
    elif stage == "reward":
        flags = ["--sft-model-path", paths["base"], "--label-dataset", data / "preference"]
        flags += ["--query-dataset", data / "sft", "--lr", "3e-3", "--batch-size", "8", "--local-micro-batch-size"]
        flags += ["4", "--total-episodes", "64", "--norm-episodes", "8", "--max-eval-samples", "8"]
        flags += ["--local-eval-batch-size", "8"]
    elif stage == "ppo":
        flags = ["--sft-model-path", paths["eos"], "--reward-model-path", paths["rm"], "--query-dataset", data / "sft"]
        flags += ["--lr", "1e-3", "--batch-size", "8", "--local-micro-batch-size", "4", "--total-episodes", "48"]
        flags += ["--response-length", "8", "--local-eval-batch-size", "4", "--max-eval-samples", "4"]
    else:
        flags = ["--sft-model-path", paths["base"], "--label-dataset", data / "preference"]
        flags += ["--query-dataset", data / "sft", "--lr", "1e-3", "--batch-size", "8", "--local-micro-batch-size"]
        flags += ["4", "--total-episodes", "48", "--max-eval-samples", "4", "--eval-response-length", "8"]
        flags += ["--local-eval-batch-size", "4"]
    script = REPO / "experiments" / f"{stage}.py"
    args = [sys.executable, str(script), *map(str, flags), "--results-dir", str(results), "--seed", str(seed)]
    return [*args, *COMMON, "--run-eval", *extra]


def run_folder(results: Path, stage: str, seed: int = 1) -> Path:
    return results / "t" / stage / "tiny" / str(seed)


def metrics(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [{k: v for k, v in r.items() if not k.startswith(TIMING)} for r in rows]


def params(run: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(run / "model" / "model.safetensors"))


def same_params(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def summary(run: Path) -> dict:
    out = json.loads((run / "summary.json").read_text())
    return {k: v for k, v in out.items() if "seconds" not in k and k not in ("model_dir",) and "eps" not in k}


def ok(cmd: list[str], **kw):
    r = run_cmd(cmd, **kw)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def kill_during_training(cmd: list[str], run: Path, after_lines: int, timeout: float = 300) -> int:
    """Start `cmd`, SIGKILL it as soon as metrics.jsonl has `after_lines` lines (mid-update, mid-checkpoint,
    wherever it is at that moment); returns the number of lines seen at the kill."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    path, seen, deadline = run / "metrics.jsonl", 0, time.time() + timeout
    try:
        while time.time() < deadline:
            if path.exists():
                seen = sum(1 for line in path.read_text().splitlines() if line.strip())
                if seen >= after_lines:
                    proc.send_signal(signal.SIGKILL)
                    break
            if proc.poll() is not None:
                raise AssertionError(f"finished before the kill: {proc.stderr.read()[-2000:]!r}")
            time.sleep(0.02)
        else:
            raise AssertionError("no kill: timed out")
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    return seen


@pytest.fixture(scope="module")
def paths(small_datasets, tiny_base_model, tiny_reward_model, eos_prone_model) -> dict:
    return {"data": small_datasets, "base": tiny_base_model, "rm": tiny_reward_model, "eos": eos_prone_model}


@pytest.fixture(scope="module")
def reference_runs(paths, tmp_path_factory) -> dict:
    """One uninterrupted run per stage (seed 1)."""
    out = {}
    for stage in ("sft", "reward", "ppo", "dpo"):
        results = tmp_path_factory.mktemp(f"ref-{stage}")
        ok(stage_cmd(stage, paths, results))
        out[stage] = run_folder(results, stage)
    return out


UPDATES = {"sft": 8, "reward": 8, "ppo": 6, "dpo": 6}


@pytest.mark.parametrize("stage", ["sft", "reward", "ppo", "dpo"])
def test_sigkill_at_a_random_update_then_rerun_ends_identical(stage, paths, reference_runs, tmp_path):
    ref = reference_runs[stage]
    assert len([r for r in metrics(ref) if r["step"] >= 1]) >= UPDATES[stage] - 1  # one line per update
    # A random update (fixed per stage so a failure reproduces), not only checkpoint boundaries.
    at = random.Random(f"kill-{stage}").randint(1, UPDATES[stage] - 1)
    cmd = stage_cmd(stage, paths, tmp_path)
    run = run_folder(tmp_path, stage)
    seen = kill_during_training(cmd, run, at)
    assert not (run / "summary.json").exists()
    r = ok(cmd)
    assert "resuming from update" in r.stdout or seen < 2, r.stdout[-2000:]  # the first checkpoint is at 2
    assert metrics(run) == metrics(ref)
    assert same_params(params(run), params(ref))
    assert summary(run) == summary(ref)
    leftovers = [p.name for p in run.rglob("*") if p.name.endswith(".tmp")]
    assert not leftovers, leftovers


@pytest.mark.parametrize("stage", ["sft", "reward", "ppo", "dpo"])
def test_same_seed_same_metrics_other_seed_other_metrics(stage, paths, reference_runs, tmp_path):
    ok(stage_cmd(stage, paths, tmp_path / "same"))
    again = run_folder(tmp_path / "same", stage)
    assert metrics(again) == metrics(reference_runs[stage])
    assert same_params(params(again), params(reference_runs[stage]))
    ok(stage_cmd(stage, paths, tmp_path / "other", 2))
    other = run_folder(tmp_path / "other", stage, 2)
    assert metrics(other) != metrics(reference_runs[stage])
    prov = json.loads((again / "provenance.json").read_text())
    assert prov["device"]["deterministic_algorithms"] is False
    if stage == "ppo":  # the switch is shared by every stage (training.StageArgs); once is enough
        ok(stage_cmd(stage, paths, tmp_path / "det", 1, "--deterministic"))
        det = run_folder(tmp_path / "det", stage)
        assert json.loads((det / "provenance.json").read_text())["device"]["deterministic_algorithms"] is True
        assert metrics(det) == metrics(reference_runs[stage])  # on CPU the deterministic kernels change nothing


@pytest.mark.parametrize("stage", ["sft", "ppo", "dpo"])
def test_the_obvious_lm_head_gives_the_fused_heads_numbers_to_rounding(stage, paths, reference_runs, tmp_path):
    # --lm-head obvious: the model's logits at every position, log_softmax, gather (lm_head.obvious_logprobs).
    ok(stage_cmd(stage, paths, tmp_path, 1, "--lm-head", "obvious"))
    run = run_folder(tmp_path, stage)
    assert json.loads((run / "config.json").read_text())["lm_head"] == "obvious"
    got, want = metrics(run), metrics(reference_runs[stage])
    assert [r["step"] for r in got] == [r["step"] for r in want]
    keys = [k for k in want[1] if not k.startswith(TIMING) and isinstance(want[1][k], float)]
    assert keys
    for a, b in zip(got, want):  # every update: the same trajectory, up to float rounding
        for k in keys:
            if k in b and b[k] is not None:
                assert a[k] == pytest.approx(b[k], rel=1e-3, abs=1e-4), (a["step"], k)
    # ... and not bit for bit: the other path ran.
    assert any(a.get(k) != b.get(k) for a, b in zip(got, want) for k in keys)


# --- checkpoints written and read atomically ----------------------------------------------------------


def _toy():
    model = torch.nn.Linear(3, 2)
    return model, torch.optim.AdamW(model.parameters(), lr=0.1)


def test_checkpoint_keeps_the_previous_one_and_survives_a_torn_or_missing_file(tmp_path):
    from rlhf_repro.io import InputError
    from rlhf_repro.runs import load_checkpoint, save_checkpoint

    model, opt = _toy()
    save_checkpoint(tmp_path, 1, model, opt, config={"lr": 1})
    first = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        model.weight.add_(1.0)
    save_checkpoint(tmp_path, 2, model, opt, config={"lr": 1})
    assert {p.name for p in tmp_path.iterdir()} == {"state.pt", "state.prev.pt"}

    # A kill in the middle of torch.save leaves the temporary file: ignored and removed.
    (tmp_path / ".state.pt.tmp").write_bytes(b"half a checkpoint")
    assert load_checkpoint(tmp_path, _toy()[0], config={"lr": 1})["step"] == 2
    assert not (tmp_path / ".state.pt.tmp").exists()

    # A damaged newest file: fall back to the previous checkpoint.
    data = (tmp_path / "state.pt").read_bytes()
    (tmp_path / "state.pt").write_bytes(data[: len(data) // 2])
    fresh = _toy()[0]
    assert load_checkpoint(tmp_path, fresh, config={"lr": 1})["step"] == 1
    assert all(torch.equal(fresh.state_dict()[k], first[k]) for k in first)

    # A kill between the two renames: only state.prev.pt is there.
    (tmp_path / "state.pt").unlink()
    assert load_checkpoint(tmp_path, _toy()[0])["step"] == 1

    # Nothing readable at all: one clear error naming the folder.
    (tmp_path / "state.prev.pt").write_bytes(b"garbage")
    with pytest.raises(InputError, match="no readable checkpoint"):
        load_checkpoint(tmp_path, _toy()[0])


def test_checkpoint_from_another_config_is_an_input_error(tmp_path):
    from rlhf_repro.io import InputError
    from rlhf_repro.runs import load_checkpoint, save_checkpoint

    model, opt = _toy()
    save_checkpoint(tmp_path, 1, model, opt, config={"lr": 1, "batch_size": 8})
    with pytest.raises(InputError, match=r"state.pt: checkpoint was written with a different config .*batch_size"):
        load_checkpoint(tmp_path, model, opt, config={"lr": 1, "batch_size": 16})


def test_a_directory_swap_killed_halfway_is_restored(tmp_path):
    from rlhf_repro.io import atomic_directory

    target = tmp_path / "model"
    with atomic_directory(target) as tmp:
        (tmp / "w").write_text("v1")
    # Simulate a kill between `path -> .path.old` and `tmp -> path`: only the old copy and a temp dir remain.
    os.replace(target, tmp_path / ".model.old")
    (tmp_path / ".model.abc.tmp").mkdir()
    with atomic_directory(target) as tmp:
        assert (target / "w").read_text() == "v1"  # restored before the new write starts
        (tmp / "w").write_text("v2")
    assert (target / "w").read_text() == "v2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_metrics_writer_truncates_atomically(tmp_path, monkeypatch):
    import rlhf_repro.runs as runs

    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"step": i}) + "\n" for i in range(1, 6)))

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(runs, "atomic_write_text", boom)
    with pytest.raises(OSError):
        runs.MetricsWriter(path, resume_step=2, keep_lines=2)
    assert len(path.read_text().splitlines()) == 5  # a failed truncation loses nothing
    monkeypatch.undo()
    writer = runs.MetricsWriter(path, resume_step=2, keep_lines=2)
    writer.log({"x": 1}, step=3)
    writer.close()
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [1, 2, 3]


# --- numerical faults -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("stage", "fault", "names"),
    [
        ("ppo", "advantages@3", ["update 3", "`advantages`"]),
        ("ppo", "values@4", ["update 4", "`values`"]),
        ("sft", "loss@3", ["update 3", "train/sft/loss"]),
        ("reward", "loss@5", ["update 5", "train/rm/loss"]),
        ("dpo", "loss@3", ["update 3", "train/rm/loss"]),
    ],
)
def test_nan_stops_the_stage_naming_step_and_tensor_and_keeps_the_last_good_checkpoint(
    stage, fault, names, paths, reference_runs, tmp_path
):
    cmd = stage_cmd(stage, paths, tmp_path)
    run = run_folder(tmp_path, stage)
    r = run_cmd(cmd, env={"RLHF_REPRO_INJECT_NAN": fault})
    assert r.returncode == 3, r.stderr[-2000:]
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and all(n in last for n in names), last
    assert "Traceback" not in r.stderr
    assert not (run / "summary.json").exists()
    step = int(fault.split("@")[1])
    good = (step - 1) // 2 * 2  # the newest checkpoint before the bad update (one every 2 updates)
    if good:
        state = torch.load(run / "checkpoint" / "state.pt", map_location="cpu", weights_only=False)
        assert state["step"] == good
    else:
        assert not (run / "checkpoint" / "state.pt").exists()
    assert len(metrics(run)) == step - 1  # nothing logged from the bad update on
    # The same command without the fault resumes from that checkpoint and ends as if nothing happened.
    ok(cmd)
    assert metrics(run) == metrics(reference_runs[stage])
    assert same_params(params(run), params(reference_runs[stage]))


def test_a_nan_on_one_process_stops_every_process(tmp_path):
    """PPO checks its rollout tensors on each rank; the check sums a flag over ranks so that the ranks
    without the NaN stop too instead of waiting in the next collective (a hang under NCCL)."""
    from rlhf_repro.training import NumericalError, check_finite_tensors

    clean = {"values": torch.zeros(2, 3), "advantages": torch.ones(2, 3)}
    dirty = {"values": torch.zeros(2, 3), "advantages": torch.tensor([[1.0, float("inf"), 1.0], [1, 1, 1]])}
    seen = []

    def reduce_with(other_rank_flag):
        def reduce(t):
            seen.append(float(t))
            return t + other_rank_flag

        return reduce

    check_finite_tensors(4, tmp_path, reduce=reduce_with(0.0), **clean)  # nowhere: no error
    with pytest.raises(NumericalError, match="update 4: another process found non-finite values"):
        check_finite_tensors(4, tmp_path, reduce=reduce_with(1.0), **clean)
    with pytest.raises(NumericalError, match=r"`advantages` has 1 non-finite of 6 values \(first at index \(0, 1\)"):
        check_finite_tensors(4, tmp_path, reduce=reduce_with(0.0), **dirty)
    assert seen == [0.0, 0.0, 1.0]  # every rank joins the sum, the one with the NaN too
    with pytest.raises(NumericalError, match="`advantages`"):
        check_finite_tensors(4, tmp_path, **dirty)  # one process: no collective


@pytest.mark.parametrize("stage", ["sft", "reward", "dpo", "ppo"])
def test_a_finished_run_is_recognised_before_any_model_or_dataset_loads(stage, tmp_path):
    # Issue 20: the lifecycle answers "already done" first. The model and dataset paths here do not exist,
    # so any load before that answer fails the command.
    missing = tmp_path / "gone"
    fake = {"data": missing / "data", "base": missing / "base", "eos": missing / "eos", "rm": missing / "rm"}
    results = tmp_path / "results"
    run = run_folder(results, stage)
    run.mkdir(parents=True)
    (run / "summary.json").write_text(json.dumps({"model_name": "tiny", "marker": 7}))
    r = run_cmd(stage_cmd(stage, fake, results))
    assert r.returncode == 0, r.stderr[-2000:]
    assert "already done" in r.stdout and json.loads((run / "summary.json").read_text())["marker"] == 7
    assert sorted(p.name for p in run.iterdir()) == ["summary.json"]  # nothing else written
    # --no-resume runs it again, so it now reaches the missing inputs and says which one.
    r = run_cmd(stage_cmd(stage, fake, results, 1, "--no-resume"))
    assert r.returncode == 2 and str(missing) in r.stderr, r.stderr[-2000:]
