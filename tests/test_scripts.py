"""Every script and command through a subprocess, as a user runs them: outputs, errors, resume."""

import json
import shutil
import sys

import numpy as np
import pytest
from datasets import load_from_disk

from tests.conftest import REAL_TOKENIZER, cli, run_cmd, run_fresh

pytestmark = pytest.mark.smoke

SFT_COLUMNS = {
    "id",
    "subreddit",
    "title",
    "post",
    "summary",
    "query_token",
    "query",
    "reference_response",
    "reference_response_token",
    "reference_response_token_len",
    "query_reference_response",
    "query_reference_response_token",
    "query_reference_response_token_response_label",
    "query_reference_response_token_len",
}
PREF_COLUMNS = {
    "info",
    "summaries",
    "choice",
    "worker",
    "batch",
    "split",
    "extra",
    "query_token",
    "query",
    "query_token_len",
    "chosen",
    "rejected",
    "chosen_token",
    "rejected_token",
    "chosen_token_len",
    "rejected_token_len",
    "chosen_policy",
    "rejected_policy",
    "policies",
    "query_chosen",
    "query_rejected",
    "query_chosen_token",
    "query_rejected_token",
    "query_chosen_token_len",
    "query_rejected_token_len",
    "query_chosen_token_response_label",
    "query_rejected_token_response_label",
}


def test_sim_world_feeds_the_builder_with_no_special_case(small_datasets, small_world):
    sft = load_from_disk(str(small_datasets / "sft"))
    pref = load_from_disk(str(small_datasets / "preference"))
    assert set(sft) == {"train", "validation", "test"} and set(pref) == {"train", "validation", "validation_cnndm"}
    assert SFT_COLUMNS <= set(sft["train"].column_names)
    assert PREF_COLUMNS <= set(pref["train"].column_names)
    q = np.asarray(sft["train"]["query_token"])
    assert q.shape[1] == 256 and (q[:, -1] != 1).all()  # left padded: last column is never PAD
    cnn = pref["validation_cnndm"]
    assert len(cnn) > 0 and set(cnn["batch"]) <= {"batch0_cnndm", "cnndm0", "cnndm2"}
    assert all(t.startswith("Article:\n") for t in cnn["query"])
    assert all(c["confidence"] is not None for c in pref["validation"]["extra"])
    summary = json.loads((small_datasets / "build_summary.json").read_text())
    assert summary["sft"]["train"]["truncated_queries"] >= 0 and summary["eos_token_id"] == 0
    for png in summary["visuals"]:
        assert (small_datasets / "dataset_visuals" / png).stat().st_size > 5000


def _posts(tmp_path, rows):
    src = tmp_path / "src"
    src.mkdir(exist_ok=True)
    good = {"id": "a", "subreddit": "r", "title": "t", "post": "p\n\nq", "summary": "s"}
    for split in ("train", "valid", "test"):
        (src / f"{split}.jsonl").write_text(json.dumps({**good, "id": split}) + "\n")
    (src / "train.jsonl").write_bytes(rows)
    return src


@pytest.mark.parametrize(
    "rows, message",
    [
        (
            b'{"id": "x", "subreddit": "r", "title": "t", "post": "", "summary": "s"}\n',
            "train.jsonl:1, field 'post': empty",
        ),
        (b'{"id": "x", "subreddit": "r", "title": "t", "summary": "s"}\n', "train.jsonl:1, field 'post': missing"),
        (
            b'{"id": "x", "subreddit": "r", "title": "t", "post": 3, "summary": "s"}\n',
            "field 'post': expected a string",
        ),
        (
            b'{"id": "x", "subreddit": "r", "title": "t", "post": "\xff", "summary": "s"}\n',
            "train.jsonl:1: not valid UTF-8",
        ),
        (b'{"id": "test", "subreddit": "r", "title": "t", "post": "p", "summary": "s"}\n', "duplicate id 'test'"),
    ],
)
def test_builder_rejects_bad_posts_and_writes_nothing(tmp_path, rows, message):
    src = _posts(tmp_path, rows)
    out = tmp_path / "out"
    r = cli(
        "build-dataset",
        "--tldr-source",
        str(src),
        "--tokenizer",
        str(REAL_TOKENIZER),
        "--output-dir",
        str(out),
        "--no-check-length-correctness",
        "--no-progress",
    )
    assert r.returncode == 2, r.stderr
    assert message in r.stderr
    assert not out.exists()


def test_builder_errors_for_tokenizer_and_comparisons(tmp_path, small_world):
    src = _posts(tmp_path, b'{"id": "x", "subreddit": "r", "title": "t", "post": "p", "summary": "s"}\n')
    r = cli(
        "build-dataset",
        "--tldr-source",
        str(src),
        "--tokenizer",
        str(REAL_TOKENIZER),
        "--pad-token",
        "<|endoftext|>",
        "--output-dir",
        str(tmp_path / "o"),
        "--no-progress",
    )
    assert r.returncode == 2 and "same id (0) as EOS" in r.stderr
    comps = tmp_path / "comps"
    comps.mkdir()
    row = json.loads((small_world / "comparisons" / "train.jsonl").read_text().splitlines()[0])
    (comps / "train.jsonl").write_text(json.dumps(row) + "\n" + json.dumps({**row, "choice": 2}) + "\n")
    r = cli(
        "build-dataset",
        "--comparisons-source",
        str(comps),
        "--tokenizer",
        str(small_world / "tokenizer"),
        "--output-dir",
        str(tmp_path / "o"),
        "--no-check-length-correctness",
        "--no-progress",
    )
    assert r.returncode == 2 and "train.jsonl:2, field 'choice': expected 0 or 1, got 2" in r.stderr
    r = cli(
        "build-dataset",
        "--tldr-source",
        str(tmp_path / "nowhere"),
        "--tokenizer",
        str(REAL_TOKENIZER),
        "--output-dir",
        str(tmp_path / "o"),
    )
    assert r.returncode == 2 and "no such directory" in r.stderr


def test_failed_rebuild_keeps_the_previous_build(tmp_path, small_world):
    out = tmp_path / "out"
    args = [
        "build-dataset",
        "--tldr-source",
        str(small_world / "tldr"),
        "--tokenizer",
        str(small_world / "tokenizer"),
        "--output-dir",
        str(out),
        "--no-check-length-correctness",
        "--no-progress",
        "--max-rows-per-split",
        "20",
    ]
    assert cli(*args).returncode == 0
    before = (out / "build_summary.json").read_text()
    bad = tmp_path / "bad"
    shutil.copytree(small_world / "tldr", bad)
    with open(bad / "test.jsonl", "a") as f:
        f.write('{"id": "zz", "subreddit": "r", "title": "t", "post": "   ", "summary": "s"}\n')
    r = cli(*[str(bad) if a == str(small_world / "tldr") else a for a in args])
    assert r.returncode == 2 and "field 'post': empty" in r.stderr
    assert (out / "build_summary.json").read_text() == before


def _pretrain(world, results, *extra, **kw):
    return cli(
        "pretrain",
        "--data",
        str(world),
        "--model-shape",
        "tiny-s",
        "--steps",
        "6",
        "--batch-size",
        "4",
        "--block-size",
        "64",
        "--eval-every",
        "3",
        "--eval-blocks",
        "8",
        "--save-every",
        "3",
        "--results-dir",
        str(results),
        "--experiment",
        "t",
        "--no-progress",
        *extra,
        **kw,
    )


def test_pretrain_learns_saves_a_loadable_model_and_resumes_exactly(small_world, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    a, b = tmp_path / "a", tmp_path / "b"
    r = _pretrain(small_world, a, "--lr", "1e-2")
    assert r.returncode == 0, r.stderr
    run = a / "t" / "pretrain" / "tiny-s" / "1"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["val_loss_after"] < summary["val_loss_before"] - 0.5
    model = AutoModelForCausalLM.from_pretrained(run / "model")
    assert model.config.model_type == "gpt_neox" and (run / "model" / "tokenizer.json").exists()
    assert json.loads((run / "config.json").read_text())["steps"] == 6
    # Kill-and-restart, made deterministic: a finished run leaves its step-3 checkpoint; remove the
    # outputs after it and rerun the same command. It must end bit-identical to the first run.
    assert _pretrain(small_world, b, "--lr", "1e-2").returncode == 0
    run_b = b / "t" / "pretrain" / "tiny-s" / "1"
    shutil.rmtree(run_b / "model")
    (run_b / "summary.json").unlink()
    r = _pretrain(small_world, b, "--lr", "1e-2")
    assert r.returncode == 0 and "resuming" in r.stdout
    sd_a = AutoModelForCausalLM.from_pretrained(run / "model").state_dict()
    sd_b = AutoModelForCausalLM.from_pretrained(run_b / "model").state_dict()
    assert all(torch.equal(sd_a[k], sd_b[k]) for k in sd_a)

    def strip(p):
        return [
            {k: v for k, v in row.items() if not k.startswith("time/")}
            for row in map(json.loads, p.read_text().splitlines())
        ]

    assert strip(run / "metrics.jsonl") == strip(run_b / "metrics.jsonl")
    # a checkpoint from another config is refused
    r = _pretrain(small_world, b, "--lr", "2e-2")
    assert r.returncode != 0 and "different config" in r.stderr


def test_pretrain_tracks_to_wandb_offline(small_world, tmp_path):
    r = _pretrain(small_world, tmp_path, "--track", env={"WANDB_MODE": "offline", "WANDB_SILENT": "true"})
    assert r.returncode == 0, r.stderr
    assert list((tmp_path / "t" / "pretrain" / "tiny-s" / "1" / "wandb").glob("offline-run-*/run-*.wandb"))


@pytest.mark.parametrize(
    "args",
    [
        ["--help"],
        ["sim", "--help"],
        ["sim", "generate", "--help"],
        ["build-dataset", "--help"],
        ["pretrain", "--help"],
        ["sft", "--help"],
        ["reward", "--help"],
        ["ppo", "--help"],
        ["sim", "score-table", "--help"],
        ["quickstart", "--help"],
    ],
)
def test_every_command_has_help(args):
    r = cli(*args)
    assert r.returncode == 0 and len(r.stdout) > 200, r.stderr


def test_script_help_documents_every_flag():
    for script, flags in {
        "experiments/build_dataset.py": [
            "--tldr-params.length",
            "--check-length-correctness",
            "--cnndm-params.max-rm-query-response-length",
            "--special-tokens-in-text",
        ],
        "experiments/pretrain.py": ["--model-shape", "--resume", "--track"],
        "experiments/sft.py": [
            "--base-model",
            "--run-eval",
            "--sampler",
            "--lm-head",
            "--response-length",
            "--eval-at-start",
        ],
        "experiments/reward.py": ["--sft-model-path", "--shuffle-seed", "--eval-gather", "--norm-episodes"],
        "experiments/ppo.py": [
            "--non-eos-penalty",
            "--penalty-mode",
            "--score-position",
            "--kl-estimator",
            "--kl-after-eos",
            "--whiten-scope",
            "--ppo.whiten-rewards",
            "--ppo.kl-ctl",
            "--value-init",
            "--dropout",
            "--nminibatches",
        ],
    }.items():
        # A fresh interpreter each: the one test of every script's imports from scratch (the others fork
        # from a server that has done them, tests/forkserver.py).
        r = run_fresh([sys.executable, script, "--help"])
        assert r.returncode == 0, r.stderr[-2000:]
        for flag in flags:
            assert flag in r.stdout


def test_sim_generate_and_score_cli(tmp_path):
    r = cli("sim", "generate", "--out", str(tmp_path / "w"), "--n-posts", "200", "--no-progress", "--seed", "2")
    assert r.returncode == 0, r.stderr
    assert "gold labeler on validation comparisons" in r.stdout
    assert (tmp_path / "w" / "tokenizer" / "tokenizer.json").exists()
    r = cli(
        "sim",
        "score",
        "--post",
        "I (30 F) have known my roommate (29 M) for 2 years. Yesterday he crashed my car.",
        "--summary",
        "My roommate (29 M) crashed my car.",
    )
    assert r.returncode == 0 and json.loads(r.stdout)["covered"]["event"] == 2.0


def test_unreachable_hub_ids_fail_with_one_clear_line(tmp_path):
    # The real hub code path runs up to the network; offline it must say what failed and what to do.
    r = cli(
        "build-dataset",
        "--tldr-source",
        "vwxyzjn/summarize_from_feedback_tldr_3_filtered",
        "--tokenizer",
        "EleutherAI/pythia-1b-deduped",
        "--output-dir",
        str(tmp_path / "o"),
        env={"HF_HUB_OFFLINE": "1"},
    )
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "could not load tokenizer 'EleutherAI/pythia-1b-deduped' from the Hugging Face hub" in r.stderr
    r = cli(
        "build-dataset",
        "--tldr-source",
        "vwxyzjn/summarize_from_feedback_tldr_3_filtered",
        "--tokenizer",
        str(REAL_TOKENIZER),
        "--output-dir",
        str(tmp_path / "o"),
        env={"HF_HUB_OFFLINE": "1"},
    )
    assert r.returncode == 2 and "could not load dataset 'vwxyzjn/summarize_from_feedback_tldr_3_filtered'" in r.stderr


def test_builder_batch_size_does_not_change_output_and_empty_space_pads_with_spaces(small_world, tmp_path):
    from rlhf_repro.tokenization import load_tokenizer

    common = [
        "build-dataset",
        "--tldr-source",
        str(small_world / "tldr"),
        "--tokenizer",
        str(small_world / "tokenizer"),
        "--no-check-length-correctness",
        "--no-progress",
        "--max-rows-per-split",
        "40",
        "--tldr-params.length",
        "256",
    ]
    assert cli(*common, "--output-dir", str(tmp_path / "a"), "--batch-size", "7").returncode == 0
    assert cli(*common, "--output-dir", str(tmp_path / "b"), "--batch-size", "2048").returncode == 0
    a, b = (load_from_disk(str(tmp_path / x / "sft"))["train"] for x in "ab")
    assert a.to_dict() == b.to_dict()
    r = cli(*common, "--output-dir", str(tmp_path / "c"), "--tldr-params.padding", "empty_space")
    assert r.returncode == 0, r.stderr
    c = load_from_disk(str(tmp_path / "c" / "sft"))["train"]
    space = load_tokenizer(small_world / "tokenizer")(" ", add_special_tokens=False)["input_ids"]
    row = c[0]
    n_pad = 256 - row["query_token_len"]
    assert n_pad > 0 and row["query_token"][:n_pad] == space * n_pad and row["query"] == a[0]["query"]
    # space padding concatenates query and response tokens, as the reference does
    assert row["query_reference_response_token"][:256] == row["query_token"]


def test_an_old_flag_name_still_works_and_warns(tmp_path):
    # Issue 20: pretrain's --model-preset is now --model-shape ("preset" names the pipeline presets only).
    from rlhf_repro.cli import renamed_flags

    assert renamed_flags(["--model-preset=tiny-s", "--seed", "2"], {"--model-preset": "--model-shape"}) == [
        "--model-shape=tiny-s",
        "--seed",
        "2",
    ]
    missing = tmp_path / "no-world"
    r = run_cmd([sys.executable, "experiments/pretrain.py", "--model-preset", "tiny-xs", "--data", str(missing)])
    assert r.returncode == 2 and str(missing) in r.stderr, r.stderr[-2000:]
    assert "warning: --model-preset is now --model-shape" in r.stderr
