"""`rlhf-repro bench generate` and `bench steps` run and report what they promise (benchmarks: numbers are not
asserted)."""

import json

import pytest

from tests.conftest import cli

pytestmark = pytest.mark.smoke


def test_bench_generate_json():
    r = cli(
        "bench", "generate", "--model-shape", "tiny-s", "--batch", "4", "--prompt-length", "16",
        "--response-length", "8", "--repeats", "1", "--threads", "1", "--json",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    for key in ("ours_tokens_per_s", "hf_generate_tokens_per_s", "speedup"):
        assert out[key] > 0, key
    # Best call per sampler in the main keys, medians beside them (one repeat: the same call).
    for name in ("ours", "hf_generate"):
        assert out[f"{name}_tokens_per_s_median"] == pytest.approx(out[f"{name}_tokens_per_s"], rel=1e-3)
    assert out["repeats"] == 1 and out["speedup_median"] > 0
    assert out["speedup"] == pytest.approx(out["ours_tokens_per_s"] / out["hf_generate_tokens_per_s"], rel=0.02)
    assert out["batch"] == 4 and out["response_length"] == 8 and out["threads"] == 1


def test_bench_table_and_help():
    r = cli("bench", "generate", "--model-shape", "tiny-s", "--batch", "2", "--prompt-length", "8",
            "--response-length", "4", "--repeats", "1")  # fmt: skip
    assert r.returncode == 0 and "speedup" in r.stdout and "| HF generate(do_sample=True) |" in r.stdout
    assert "--model-shape" in cli("bench", "generate", "--help").stdout


def test_bench_steps_json_table_and_help():
    small = ["--model-shape", "tiny-s", "--micro-batch", "2", "--prompt-length", "8", "--response-length", "6"]
    r = cli("bench", "steps", *small, "--repeats", "1", "--threads", "1", "--json")
    assert r.returncode == 0, r.stderr[-2000:]  # it also stops if ours and the obvious version disagree
    out = json.loads(r.stdout.strip().splitlines()[-1])
    for name in ("sft", "rm", "dpo", "ppo", "optimizer"):
        row = out[name]
        assert row["obvious_seconds"] > 0 and row["ours_seconds"] > 0, name
        assert row["speedup"] == pytest.approx(row["obvious_seconds"] / row["ours_seconds"], rel=0.05), name
    assert out["micro_batch"] == 2 and out["threads"] == 1 and out["repeats"] == 1
    r = cli("bench", "steps", *small, "--repeats", "1", "--threads", "1")
    assert r.returncode == 0 and "| dpo |" in r.stdout and "best of 1" in r.stdout
    assert "--micro-batch" in cli("bench", "steps", "--help").stdout


def test_bench_validation_json_table_and_help():
    small = ["--model-shape", "tiny-s", "--batch", "4", "--eval-batch", "2", "--prompt-length", "8"]
    r = cli("bench", "validation", *small, "--response-length", "6", "--repeats", "2", "--threads", "1", "--json")
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    for name in ("chunk_only", "apart", "together"):
        assert 0 < out[f"{name}_seconds"] <= out[f"{name}_seconds_median"], name
    assert out["saved_seconds"] == pytest.approx(out["apart_seconds"] - out["together_seconds"], abs=2e-4)
    assert out["saved_fraction_of_apart"] == pytest.approx(out["saved_seconds"] / out["apart_seconds"], abs=2e-3)
    assert out["batch"] == 4 and out["eval_batch"] == 2 and out["repeats"] == 2
    r = cli("bench", "validation", *small, "--response-length", "4", "--repeats", "1")
    assert r.returncode == 0 and "co-sampling saves" in r.stdout
    assert "| together: one decode loop (ppo.py) |" in r.stdout
    assert "--eval-batch" in cli("bench", "validation", "--help").stdout


def test_gpu_check_script_on_cpu_tiny_reports_every_stage_its_checks_and_the_projection(tmp_path):
    """scripts/gpu_check.sh is what one device call runs (issue 23); `--device cpu --tiny` is the same code
    path at a tiny shape, so it cannot rot while no GPU is lent."""
    import os
    import subprocess
    import sys

    from benchmarks.speed.gpu import COUNTED, PAPER_UPDATES
    from tests.conftest import REPO

    env = {**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable}
    r = subprocess.run(["bash", "scripts/gpu_check.sh", "--device", "cpu", "--tiny", "--threads", "1", "--updates",
                        "2"], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    report = json.loads((tmp_path / "gpu_report.json").read_text())
    assert "| ppo |" in (tmp_path / "gpu_check.log").read_text()
    assert report["model_shape"] == "tiny" and report["precision"] == "fp32" and report["ok"]
    for stage in ("sft", "rm", "dpo", "ppo"):
        row = report["stages"][stage]
        assert 0 < row["seconds_per_update"] <= row["seconds_per_update_median"], stage
        assert row["tokens_per_s"] == pytest.approx(row["tokens_per_update"] / row["seconds_per_update"], rel=0.01)
        assert row["mfu"] is None and row["peak_memory_mb"] > 0  # no bf16 peak on a CPU
    phases = report["stages"]["ppo"]["phases_seconds"]
    assert set(phases) == {"generate", "score", "train"} and all(v > 0 for v in phases.values())
    assert set(report["checks"]) == {"fused_head", "dpo_step0_rewards", "ppo_first_ratio", "sampler"}
    assert report["generate"]["ours_tokens_per_s"] > 0 and report["generate"]["hf_generate_tokens_per_s"] > 0
    # The projection: updates x measured s/update x (parameters / 1B) x (1 + overhead), in hours.
    project = report["project"]
    for size, params in COUNTED.items():
        for stage, updates in PAPER_UPDATES.items():
            s = report["stages"][stage]["seconds_per_update"] * params / COUNTED["pythia-1b"] * 1.15
            assert project["sizes"][size]["hours_per_stage"][stage] == pytest.approx(updates * s / 3600, abs=1e-3)
        hours = project["sizes"][size]["hours_per_seed"]
        assert project["sizes"][size]["gpu_hours_per_seed"] == pytest.approx(8 * hours, abs=0.01)
    assert "all-reduce" in project["method"]
    assert "--peak-tflops" in cli("bench", "gpu", "--help").stdout


def test_gpu_checks_have_teeth(monkeypatch):
    """A sampler that ignores the logits fails the on-device distribution check."""
    import torch

    from benchmarks.speed import gpu
    from rlhf_repro import generation

    assert gpu.sampler_check(torch.device("cpu"), 0)["ok"]

    def uniform(logits, temperature, generator=None, scratch=None):
        rows, vocab = logits.shape
        return torch.randint(0, vocab, (rows,), generator=generator), torch.zeros(rows)

    monkeypatch.setattr(generation, "_sample", uniform)
    assert not gpu.sampler_check(torch.device("cpu"), 0)["ok"]


def test_bench_counts_must_be_positive():
    for argv in (("bench", "gpu", "--updates", "0"), ("bench", "validation", "--repeats", "0")):
        r = cli(*argv)
        assert r.returncode == 2 and "at least 1" in r.stderr, argv
