"""experiments/dpo.py through a subprocess: every loss variant for one update on a tiny model, the
implicit-reward evaluation in the RM's format, reference precision, 2 processes, exact resume."""

from __future__ import annotations

import csv
import json
import math
import sys

import pytest
import torch

from tests.conftest import run_cmd

pytestmark = pytest.mark.smoke

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]


def dpo(datasets, sft_model, results, *extra, launcher=None, **kw):
    return run_cmd(
        [
            *(launcher or [sys.executable]),
            "experiments/dpo.py",
            "--sft-model-path",
            str(sft_model),
            "--label-dataset",
            str(datasets / "preference"),
            "--query-dataset",
            str(datasets / "sft"),
            "--results-dir",
            str(results),
            "--experiment",
            "t",
            "--model-name",
            "tiny",
            "--lr",
            "1e-3",
            "--batch-size",
            "8",
            "--local-micro-batch-size",
            "4",
            "--total-episodes",
            "16",
            "--local-eval-batch-size",
            "4",
            "--threads",
            "1",
            "--no-progress",
            *extra,
        ],
        **kw,
    )


def run_ok(*args, **kw) -> list[dict]:
    r = dpo(*args, **kw)
    assert r.returncode == 0, r.stderr[-3000:]
    path = args[2] / "t" / "dpo" / "tiny" / "1" / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def train_rows(rows):
    return [r for r in rows if "train/rm/loss" in r]


@pytest.fixture(scope="module")
def default_run(small_datasets, tiny_base_model, tmp_path_factory):
    results = tmp_path_factory.mktemp("dpo")
    flags = ("--run-eval", "--max-eval-samples", "8", "--eval-response-length", "12", "--save-every", "1")
    return results, run_ok(small_datasets, tiny_base_model, results, *flags)


def test_dpo_logs_reference_names_and_writes_rm_format_tables(default_run, tiny_base_model, tmp_path):
    results, rows = default_run
    run = results / "t" / "dpo" / "tiny" / "1"
    train = train_rows(rows)
    assert [r["step"] for r in train] == [1, 2]
    for key in ("loss", "accuracy", "reward_preferred", "reward_rejected", "reward_margin", "lr"):
        assert f"train/rm/{key}" in train[0], key
    # Update 1 scores every micro-batch before the optimizer steps: the policy is still the reference.
    assert train[0]["train/rm/reward_margin"] == 0.0 and train[0]["train/rm/loss"] == pytest.approx(math.log(2))
    assert train[1]["train/rm/reward_margin"] != 0.0
    summary = json.loads((run / "summary.json").read_text())
    for split in ("validation", "validation_cnndm"):
        assert summary[f"eval/rm/{split}/n_pairs"] == 8
        with open(run / f"rm_eval_{split}.csv", newline="") as f:
            table = list(csv.DictReader(f))
        from rlhf_repro.pair_eval import EVAL_COLUMNS

        assert list(table[0]) == EVAL_COLUMNS[1:]  # the RM's per-pair table, column for column
    with open(run / "query_responses_validation.csv", newline="") as f:
        samples = list(csv.DictReader(f))
    assert len(samples) == 8 and all(int(s["response_token_len"]) <= 12 for s in samples)
    assert "validation/dpo/eos_fraction" in summary
    from safetensors.torch import load_file

    a, b = load_file(str(tiny_base_model / "model.safetensors")), load_file(str(run / "model" / "model.safetensors"))
    assert any(not torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(
    "loss_type,flags,first_loss",
    [
        ("cdpo", ("--label-smoothing", "0.2"), math.log(2)),
        ("ipo", (), 100.0),  # (0 - 1/(2 * 0.05))^2 at h = 0
        ("ipo_avg", (), 100.0),
        ("ipo", ("--beta", "0.5"), 1.0),  # --beta reaches the loss: (1/(2 * 0.5))^2
        ("reference_free", (), None),  # h = log pi_c - log pi_r: not 0 at the start
    ],
)
def test_every_loss_variant_runs_and_starts_where_its_formula_says(
    small_datasets, tiny_base_model, tmp_path, loss_type, flags, first_loss
):
    row = train_rows(run_ok(small_datasets, tiny_base_model, tmp_path, "--loss-type", loss_type, *flags))[0]
    if first_loss is None:
        assert row["train/rm/loss"] != pytest.approx(math.log(2))
    else:
        assert row["train/rm/loss"] == pytest.approx(first_loss, rel=1e-5)


def test_bad_loss_settings_stop_with_a_message(small_datasets, tiny_base_model, tmp_path):
    r = dpo(small_datasets, tiny_base_model, tmp_path, "--loss-type", "cdpo")
    assert r.returncode == 2 and "--label-smoothing" in r.stderr
    r = dpo(small_datasets, tiny_base_model, tmp_path, "--loss-type", "ipo", "--label-smoothing", "0.1")
    assert r.returncode == 2 and "sigmoid/cdpo" in r.stderr


def test_reference_precision_same_vs_fp32_under_bf16(small_datasets, tiny_base_model, tmp_path):
    env = {"ACCELERATE_MIXED_PRECISION": "bf16"}
    same = train_rows(run_ok(small_datasets, tiny_base_model, tmp_path / "same", env=env))[0]
    assert same["train/rm/reward_margin"] == 0.0  # both models under the same bf16 autocast
    fp32 = train_rows(run_ok(small_datasets, tiny_base_model, tmp_path / "fp32", "--ref-precision", "fp32", env=env))
    assert fp32[0]["train/rm/reward_margin"] != 0.0  # bf16 policy against an fp32 reference


def test_dpo_two_processes(small_datasets, tiny_base_model, tmp_path):
    rows = train_rows(
        run_ok(small_datasets, tiny_base_model, tmp_path, launcher=TORCHRUN, env={"OMP_NUM_THREADS": "1"})
    )
    assert [r["step"] for r in rows] == [1, 2] and rows[0]["train/rm/reward_margin"] == 0.0


def test_dpo_resumes_bit_identical_after_a_crash(small_datasets, tiny_base_model, tmp_path, default_run):
    flags = ("--run-eval", "--max-eval-samples", "8", "--eval-response-length", "12", "--save-every", "1")
    r = dpo(small_datasets, tiny_base_model, tmp_path, *flags, env={"RLHF_REPRO_CRASH_AT": "1"})
    assert r.returncode == 17
    r = dpo(small_datasets, tiny_base_model, tmp_path, *flags)
    assert r.returncode == 0 and "resuming from update 1" in r.stdout, r.stderr[-2000:]

    def strip(rows):
        return [{k: v for k, v in row.items() if not k.startswith("time/")} for row in rows]

    assert strip(run_ok(small_datasets, tiny_base_model, tmp_path)) == strip(default_run[1])


def test_dropout_eval_temperature_and_splits_switches(small_datasets, tiny_base_model, tmp_path):
    # Dropout on: the policy's forward no longer matches the reference's at update 1.
    row = train_rows(run_ok(small_datasets, tiny_base_model, tmp_path / "drop", "--dropout", "0.3"))[0]
    assert row["train/rm/reward_margin"] != 0.0
    flags = ("--run-eval", "--max-eval-samples", "6", "--eval-response-length", "12", "--num-train-epochs", "0")
    run_ok(small_datasets, tiny_base_model, tmp_path / "cold", *flags, "--eval-splits", "validation", "test")
    hot = tmp_path / "hot"
    run_ok(small_datasets, tiny_base_model, hot, *flags, "--eval-temperature", "5.0")

    def responses(root, split="validation"):
        with open(root / "t" / "dpo" / "tiny" / "1" / f"query_responses_{split}.csv", newline="") as f:
            return [r["response"] for r in csv.DictReader(f)]

    assert len(responses(tmp_path / "cold", "test")) == 6  # --eval-splits adds the test split's table
    assert responses(hot) != responses(tmp_path / "cold")  # T = 5 samples differ from near-greedy ones
