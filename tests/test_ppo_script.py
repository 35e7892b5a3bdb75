"""experiments/ppo.py through a subprocess: every switch for one or two updates on a tiny model, checking
that it changes what it claims; the first-epoch ratio invariant; 2 processes; exact resume."""

from __future__ import annotations

import csv
import json
import re
import sys

import pytest
import torch

from tests.conftest import run_cmd

pytestmark = pytest.mark.smoke

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]


def ppo(datasets, sft_model, rm, results, *extra, launcher=None, **kw):
    r = run_cmd(
        [
            *(launcher or [sys.executable]),
            "experiments/ppo.py",
            "--sft-model-path",
            str(sft_model),
            "--reward-model-path",
            str(rm),
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
            "--response-length",
            "12",
            "--local-eval-batch-size",
            "4",
            "--sample-every",
            "1",
            "--threads",
            "1",
            "--no-progress",
            *extra,
        ],
        **kw,
    )
    return r


def metrics(results):
    path = results / "t" / "ppo" / "tiny" / "1" / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def run_ok(*args, **kw) -> list[dict]:
    r = ppo(*args, **kw)
    assert r.returncode == 0, r.stderr[-3000:]
    return metrics(args[3])


def state_dict(path):
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


REFERENCE_METRICS = (
    "objective/kl",
    "objective/entropy",
    "objective/non_score_reward",
    "objective/rlhf_reward",
    "objective/scores",
    "objective/validation_score",
    "ppo/policy/approxkl_avg",
    "ppo/policy/clipfrac_avg",
    "ppo/policy/entropy_avg",
    "ppo/loss/policy_avg",
    "ppo/loss/value_avg",
    "ppo/val/clipfrac_avg",
    "ppo/val/ratio",
    "ppo/val/ratio_var",
    "ppo/val/num_eos_tokens",
    "ppo/lr",
    "ppo/episode",
    "ppo/eps",
    "ppo/val/no_eos_fraction",
    "ppo/val/response_length",
    "time/ppo/generate",
    "time/ppo/score",
    "time/ppo/train",
)


@pytest.fixture(scope="module")
def default_run(small_datasets, eos_prone_model, tiny_reward_model, tmp_path_factory):
    results = tmp_path_factory.mktemp("ppo")
    rows = run_ok(small_datasets, eos_prone_model, tiny_reward_model, results, "--run-eval", "--max-eval-samples", "8")
    return results, rows


def test_ppo_logs_the_reference_metrics_and_saves_policy_critic_and_tables(
    default_run, eos_prone_model, tiny_reward_model
):
    results, rows = default_run
    run = results / "t" / "ppo" / "tiny" / "1"
    train = [r for r in rows if "objective/kl" in r]
    assert [r["step"] for r in train] == [1, 2]
    for key in REFERENCE_METRICS:
        assert key in train[0], key
    assert train[0]["ppo/lr"] == 1e-3 and train[1]["ppo/lr"] == pytest.approx(5e-4)  # linear decay
    assert train[1]["ppo/episode"] == 16
    assert 0 < train[0]["ppo/val/no_eos_fraction"] < 1  # the EOS-prone model: some responses lack an EOS
    # The policy and the critic trained; the critic started from the RM (detail 22).
    assert any(
        not torch.equal(a, b) for a, b in zip(state_dict(eos_prone_model).values(), state_dict(run / "model").values())
    )
    rm, critic = state_dict(tiny_reward_model), state_dict(run / "critic")
    assert set(rm) == set(critic) and any(not torch.equal(rm[k], critic[k]) for k in rm)
    assert (run / "samples" / "validation_update_1.csv").exists()
    with open(run / "query_responses_validation.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert len(table) == 8 and {"response", "reference", "score", "reference_score", "eos_present"} <= set(table[0])
    summary = json.loads((run / "summary.json").read_text())
    assert "validation/ppo/rm_win_rate" in summary and summary["num_updates"] == 2


def test_first_ppo_epoch_has_ratio_one_and_dropout_breaks_it(
    small_datasets, tiny_base_model, tiny_reward_model, tmp_path
):
    # One update, one epoch, one micro-batch: the policy that scores the batch is the one that sampled it.
    one_step = ("--ppo.noptepochs", "1", "--local-micro-batch-size", "8", "--total-episodes", "8")
    row = run_ok(small_datasets, tiny_base_model, tiny_reward_model, tmp_path / "a", *one_step)[0]
    assert abs(row["ppo/val/ratio"] - 1) < 1e-5 and row["ppo/policy/approxkl_avg"] < 1e-9
    assert row["ppo/policy/clipfrac_avg"] == 0.0
    # Detail 7: with dropout on, the same computation no longer reproduces the sampler's log-probs.
    row = run_ok(small_datasets, tiny_base_model, tiny_reward_model, tmp_path / "b", *one_step, "--dropout", "0.3")[0]
    assert row["ppo/policy/approxkl_avg"] > 1e-4


def test_eos_trick_replace_subtract_and_off(small_datasets, eos_prone_model, tiny_reward_model, tmp_path, default_run):
    replace = default_run[1][0]
    assert replace["objective/no_eos_scores"] == -1.0  # the reference: score replaced by -1
    raw = replace["objective/no_eos_raw_scores"]
    subtract = run_ok(
        small_datasets,
        eos_prone_model,
        tiny_reward_model,
        tmp_path / "s",
        "--penalty-mode",
        "subtract",
        "--penalty-reward-value",
        "0.5",
    )[0]
    assert subtract["objective/no_eos_scores"] == pytest.approx(raw - 0.5)  # TRL's missing_eos_penalty
    off = run_ok(small_datasets, eos_prone_model, tiny_reward_model, tmp_path / "o", "--no-non-eos-penalty")[0]
    assert off["objective/no_eos_scores"] == pytest.approx(raw)  # the RM's own scores
    assert off["objective/scores"] == pytest.approx(off["objective/raw_scores"])


def test_score_position_kl_and_value_switches_change_what_they_claim(
    small_datasets, eos_prone_model, tiny_reward_model, tmp_path, default_run
):
    base = default_run[1][:2]

    def rows(name, *flags):
        return run_ok(small_datasets, eos_prone_model, tiny_reward_model, tmp_path / name, *flags)

    # Same seed, same first rollout: the scores agree, what the switch touches does not.
    eos = rows("eos", "--score-position", "eos")
    assert eos[0]["objective/scores"] == pytest.approx(base[0]["objective/scores"])
    assert eos[0]["ppo/loss/value_avg"] != pytest.approx(base[0]["ppo/loss/value_avg"])  # returns moved
    k3 = rows("k3", "--kl-estimator", "k3")
    assert k3[1]["objective/kl"] >= 0 and k3[1]["objective/kl"] != pytest.approx(base[1]["objective/kl"])
    after = rows("after", "--kl-after-eos")
    # Post-EOS log-probs keep their values instead of the fill 1.0, so the entropy estimate changes.
    assert after[0]["objective/entropy"] != pytest.approx(base[0]["objective/entropy"])
    whiten = rows("whiten", "--ppo.whiten-rewards")
    assert whiten[0]["ppo/loss/value_avg"] != pytest.approx(base[0]["ppo/loss/value_avg"])
    sft_critic = rows("sftcritic", "--value-init", "sft")
    assert sft_critic[0]["ppo/loss/value_avg"] != pytest.approx(base[0]["ppo/loss/value_avg"])


def test_schedule_minibatch_and_adaptive_kl_switches(small_datasets, eos_prone_model, tiny_reward_model, tmp_path):
    flags = ("--lr-schedule", "constant", "--nminibatches", "2", "--ppo.kl-ctl", "adaptive")
    rows = run_ok(small_datasets, eos_prone_model, tiny_reward_model, tmp_path, *flags)
    assert rows[0]["ppo/lr"] == rows[1]["ppo/lr"] == 1e-3
    assert rows[0]["objective/kl_coef"] == 0.05 and rows[1]["objective/kl_coef"] != 0.05  # steered toward 6
    assert not any(k.startswith("ppo/loss/ptx") for k in rows[0])  # PPO-ptx left in issue 20
    config = json.loads((tmp_path / "t" / "ppo" / "tiny" / "1" / "config.json").read_text())
    assert config["derived"]["local_mini_batch_size"] == 4 and config["derived"]["gradient_accumulation_steps"] == 1


def test_the_removed_ptx_flag_exits_2_and_says_why(tmp_path):
    r = run_cmd([sys.executable, "experiments/ppo.py", "--ptx-coef=1.0", "--sft-model-path", str(tmp_path)])
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "--ptx-coef was removed" in r.stderr and "docs/flags.md" in r.stderr


def test_ppo_two_processes_with_global_whitening(small_datasets, eos_prone_model, tiny_reward_model, tmp_path):
    rows = run_ok(
        small_datasets,
        eos_prone_model,
        tiny_reward_model,
        tmp_path,
        "--whiten-scope",
        "global",
        "--ppo.whiten-rewards",
        launcher=TORCHRUN,
        env={"OMP_NUM_THREADS": "1"},
    )
    config = json.loads((tmp_path / "t" / "ppo" / "tiny" / "1" / "config.json").read_text())
    assert config["derived"]["world_size"] == 2 and config["derived"]["local_batch_size"] == 4
    assert [r["step"] for r in rows] == [1, 2]


def test_ppo_resumes_bit_identical_after_a_crash(
    small_datasets, eos_prone_model, tiny_reward_model, tmp_path, default_run
):
    flags = ("--run-eval", "--max-eval-samples", "8", "--save-every", "1")
    r = ppo(small_datasets, eos_prone_model, tiny_reward_model, tmp_path, *flags, env={"RLHF_REPRO_CRASH_AT": "1"})
    assert r.returncode == 17
    r = ppo(small_datasets, eos_prone_model, tiny_reward_model, tmp_path, *flags)
    assert r.returncode == 0 and "resuming from update 1" in r.stdout, r.stderr[-2000:]

    def strip(rows):
        return [{k: v for k, v in row.items() if not k.startswith(("time/", "ppo/eps"))} for row in rows]

    assert strip(metrics(tmp_path)) == strip(default_run[1])
    a = state_dict(default_run[0] / "t" / "ppo" / "tiny" / "1" / "model")
    b = state_dict(tmp_path / "t" / "ppo" / "tiny" / "1" / "model")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_classifier_reward_scores_a_named_label(tiny_classifier):
    from rlhf_repro.io import InputError
    from rlhf_repro.reward_sources import ClassifierReward

    texts = [" I (24 M) and my mom.", " hello"]
    logit = ClassifierReward(tiny_classifier, "POSITIVE")([""] * 2, texts)
    prob = ClassifierReward(tiny_classifier, "POSITIVE", output="probability")([""] * 2, texts)
    both = ClassifierReward(tiny_classifier, "NEGATIVE")([""] * 2, texts)
    assert torch.allclose(prob, torch.sigmoid(logit - both), atol=1e-5)  # softmax over the two labels
    with pytest.raises(InputError, match="not one of"):
        ClassifierReward(tiny_classifier, "NEUTRAL")
    with pytest.raises(InputError, match="choose one"):
        ClassifierReward(tiny_classifier)


def test_ppo_with_a_classifier_reward(small_datasets, eos_prone_model, tiny_classifier, tmp_path):
    flags = ("--reward-source", "classifier", "--reward-classifier", str(tiny_classifier))
    flags += ("--reward-label", "POSITIVE", "--reward-output", "probability", "--value-init", "sft")
    rows = run_ok(small_datasets, eos_prone_model, "", tmp_path, *flags)
    assert all(0 <= r["objective/raw_scores"] <= 1 for r in rows)  # probabilities
    r = ppo(small_datasets, eos_prone_model, "", tmp_path / "x", "--reward-source", "classifier")
    assert r.returncode == 2 and "--reward-classifier" in r.stderr


def test_rollout_chunking_does_not_change_the_rollout(small_datasets, eos_prone_model, tiny_reward_model, tmp_path):
    # Near-greedy sampling makes the samples independent of how the RNG stream is split across chunks, so
    # chunked rollout forwards (generation, reference log-probs, values, scores) must agree with one chunk.
    flags = ("--temperature", "0.01", "--total-episodes", "8", "--ppo.noptepochs", "1")
    whole = run_ok(small_datasets, eos_prone_model, tiny_reward_model, tmp_path / "a", *flags)[0]
    chunked = run_ok(
        small_datasets,
        eos_prone_model,
        tiny_reward_model,
        tmp_path / "b",
        *flags,
        "--local-rollout-forward-batch-size",
        "3",
    )[0]
    for key in (
        "objective/scores",
        "objective/kl",
        "objective/entropy",
        "ppo/val/response_length",
        "ppo/loss/value_avg",
    ):
        assert chunked[key] == pytest.approx(whole[key], rel=1e-4, abs=1e-5), key


def test_numeric_ppo_hyperparameters_reach_the_losses(small_datasets, eos_prone_model, tiny_reward_model, tmp_path):
    one = ("--total-episodes", "8", "--ppo.noptepochs", "2")
    base = run_ok(small_datasets, eos_prone_model, tiny_reward_model, tmp_path / "base", *one)[0]

    def row(name, *flags):
        return run_ok(small_datasets, eos_prone_model, tiny_reward_model, tmp_path / name, *one, *flags)[0]

    # Same first rollout (same seed): the returns depend on gamma and lambda, the value loss with them.
    for name, flags in {"gamma": ("--ppo.gamma", "0.5"), "lam": ("--ppo.lam", "0.5")}.items():
        r = row(name, *flags)
        assert r["objective/scores"] == pytest.approx(base["objective/scores"])
        assert r["ppo/loss/value_avg"] != pytest.approx(base["ppo/loss/value_avg"]), name
    # A value clip range of ~0 clips every value update after the first step.
    tight = row("clipv", "--ppo.cliprange-value", "1e-8")
    assert tight["ppo/val/clipfrac_avg"] > base["ppo/val/clipfrac_avg"]
    tight = row("clip", "--ppo.cliprange", "1e-8")
    assert tight["ppo/policy/clipfrac_avg"] > base["ppo/policy/clipfrac_avg"]
    # vf_coef 0 leaves the critic with a zero gradient: only AdamW's weight decay touches it.
    novf = row("novf", "--ppo.vf-coef", "0")
    assert novf["ppo/loss/value_avg"] > 0
    rm = state_dict(tiny_reward_model)
    for name, moved in (("novf", False), ("base", True)):
        critic = state_dict(tmp_path / name / "t" / "ppo" / "tiny" / "1" / "critic")
        assert any(not torch.allclose(rm[k], critic[k], rtol=1e-4, atol=1e-7) for k in rm) == moved, name
    epochs = row("epochs", "--ppo.noptepochs", "3")
    assert epochs["ppo/policy/approxkl_avg"] != pytest.approx(base["ppo/policy/approxkl_avg"])


def test_gold_reward_scores_the_decoded_summary_against_the_post_in_the_query(small_world):
    from rlhf_repro.io import read_jsonl
    from rlhf_repro.reward_sources import GoldReward
    from rlhf_repro.sim.labeler import gold_score

    row = next(r for _, r in read_jsonl(small_world / "tldr" / "valid.jsonl"))
    query = f"SUBREDDIT: r/{row['subreddit']}\n\nTITLE: {row['title']}\n\nPOST: {row['post']}\n\nTL;DR:"
    wrong = re.sub(r"\(\d{1,2} ", "(99 ", row["summary"], count=1)  # a contradicted age
    scores = GoldReward(scale=0.5)([query, query], [" " + row["summary"], " " + wrong])
    assert scores.tolist() == pytest.approx(
        [0.5 * gold_score(row["post"], row["summary"]), 0.5 * gold_score(row["post"], wrong)]
    )
    assert scores[0] > scores[1]


def test_ppo_with_the_gold_reward(small_datasets, small_world, eos_prone_model, tmp_path):
    from rlhf_repro.io import read_jsonl
    from rlhf_repro.sim.labeler import gold_score

    flags = ("--reward-source", "gold", "--value-init", "sft", "--no-non-eos-penalty", "--gold-metrics")
    rows = run_ok(small_datasets, eos_prone_model, "", tmp_path, *flags)
    # The offset is the mean gold score of the first 1,000 SFT-train references (detail 15), computed here
    # from the built dataset's text columns (the query as the policy sees it: the post it reads may be
    # truncated, so the world's own rows give a slightly different mean).
    from datasets import load_from_disk

    from rlhf_repro.sim.evaluate import post_from_query

    train = load_from_disk(str(small_datasets / "sft"))["train"]
    rows_ = train.select(range(min(1000, len(train))))
    offset = sum(gold_score(post_from_query(q), s.strip()) for q, s in zip(rows_["query"], rows_["summary"]))
    offset /= len(rows_)
    refs = [r for _, r in read_jsonl(small_world / "tldr" / "train.jsonl")][:1000]
    assert offset == pytest.approx(sum(gold_score(r["post"], r["summary"]) for r in refs) / len(refs), abs=0.05)
    config = json.loads((tmp_path / "t" / "ppo" / "tiny" / "1" / "summary.json").read_text())
    assert config["gold_reward_offset"] == pytest.approx(offset, abs=1e-4)
    # --gold-metrics logs the same rollouts' gold scores: the reward is exactly them minus the offset.
    for r in rows:
        assert r["objective/raw_scores"] == pytest.approx(r["gold/scores"] - offset, abs=1e-4)
    # An explicit --gold-reward-offset replaces the references' mean, and the scale multiplies (gold - offset).
    given = ("--gold-reward-scale", "0.5", "--gold-reward-offset", "2.5")
    scaled = run_ok(small_datasets, eos_prone_model, "", tmp_path / "scaled", *flags, *given)
    summary = json.loads((tmp_path / "scaled" / "t" / "ppo" / "tiny" / "1" / "summary.json").read_text())
    assert summary["gold_reward_offset"] == 2.5 and scaled
    for r in scaled:
        assert r["objective/raw_scores"] == pytest.approx(0.5 * (r["gold/scores"] - 2.5), abs=1e-4)
    r = ppo(small_datasets, eos_prone_model, "", tmp_path / "x", "--reward-source", "gold")
    assert r.returncode == 2 and "--value-init" in r.stderr


def test_negated_reward_is_the_control_it_claims_to_be(
    small_datasets, eos_prone_model, tiny_reward_model, tmp_path, default_run
):
    # Update 1 samples from the same policy with the same seed: the scores are the default run's, negated.
    first = default_run[1][0]
    neg = run_ok(small_datasets, eos_prone_model, tiny_reward_model, tmp_path, "--negate-reward")[0]
    assert neg["objective/raw_scores"] == pytest.approx(-first["objective/raw_scores"], rel=1e-5)
    assert neg["objective/no_eos_scores"] == -1.0  # the EOS trick still replaces the (negated) score


def test_length_reward_and_seed_offset(small_datasets, eos_prone_model, tmp_path):
    from rlhf_repro.reward_sources import length_reward

    responses = torch.tensor([[5, 6, 0, 1, 1], [5, 6, 7, 8, 9]])  # EOS 0 at index 2; PAD 1
    assert length_reward(responses, 1, target=4).tolist() == pytest.approx([-0.1, -0.1])
    # With a target above every possible length the mean reward is -(target - mean length) / 10.
    flags = ("--reward-source", "length", "--target-length", "40", "--value-init", "sft")
    rows = run_ok(small_datasets, eos_prone_model, "", tmp_path / "a", *flags)
    for r in rows:
        assert r["objective/raw_scores"] == pytest.approx(-(40 - r["ppo/val/response_length"]) / 10, abs=1e-5)
    # --seed-offset changes only the sampling seed: seed 1 + offset 1000 runs as seed 1001 does.
    shifted = run_ok(small_datasets, eos_prone_model, "", tmp_path / "b", *flags, "--seed-offset", "1000")
    r = ppo(small_datasets, eos_prone_model, "", tmp_path / "c", *flags, "--seed", "1001")
    assert r.returncode == 0, r.stderr[-2000:]
    path = tmp_path / "c" / "t" / "ppo" / "tiny" / "1001" / "metrics.jsonl"
    other = [json.loads(line) for line in path.read_text().splitlines()]

    def numbers(rows):
        return [{k: v for k, v in x.items() if not k.startswith(("time/", "ppo/eps"))} for x in rows]

    assert numbers(shifted) == numbers(other) and numbers(shifted) != numbers(rows)


def test_eval_splits_pick_the_evaluated_tables_in_ppo_and_sft(
    small_datasets, eos_prone_model, tiny_reward_model, tmp_path
):
    from tests.test_sft_reward_scripts import sft

    flags = ("--run-eval", "--max-eval-samples", "4", "--total-episodes", "8", "--eval-splits", "validation")
    run_ok(small_datasets, eos_prone_model, tiny_reward_model, tmp_path / "p", *flags)
    run = tmp_path / "p" / "t" / "ppo" / "tiny" / "1"
    assert (run / "query_responses_validation.csv").exists() and not (run / "query_responses_test.csv").exists()
    summary = json.loads((run / "summary.json").read_text())
    assert "validation/ppo/score" in summary and not any(k.startswith("test/") for k in summary)
    r = ppo(small_datasets, eos_prone_model, tiny_reward_model, tmp_path / "bad", *flags[:-1], "nope")
    assert r.returncode == 2 and "no split 'nope'" in r.stderr

    extra = ("--total-episodes", "8", "--batch-size", "8", "--local-micro-batch-size", "4", "--run-eval")
    r = sft(small_datasets, eos_prone_model, tmp_path / "s", *extra, "--eval-at-start", "--eval-splits", "test")
    assert r.returncode == 0, r.stderr[-2000:]
    run = tmp_path / "s" / "t" / "sft" / "tiny" / "1"
    tables = sorted(p.name for p in run.glob("query_responses_*.csv"))
    assert tables == ["query_responses_test.csv", "query_responses_test_start.csv"]
