"""API keys and tokens never reach config.json, provenance, metrics, logs, W&B files or judge outputs.

The redaction rule is tested both ways (secret names masked, tokenizer-like names kept); then a unique
fake secret is planted in every variable a user would set (OPENAI_API_KEY, WANDB_API_KEY, HF_TOKEN, ...)
and on the command line, a training stage (W&B offline) and a judge run go through the CLI as
subprocesses, and every byte they wrote or printed is searched for it."""

from __future__ import annotations

import csv
import json
import os
import sys
import uuid
from pathlib import Path

import pytest

from rlhf_repro.provenance import is_secret_name, redact_argv
from rlhf_repro.runs import RunFolder, redact_config
from tests.conftest import cli, run_cmd
from tests.test_judge import ROWS, ChatServer

pytestmark = pytest.mark.unit

SECRET_NAMES = [
    "api_key",
    "openai_api_key",
    "OPENAI_API_KEY",
    "WANDB_API_KEY",
    "wandb_key",
    "openaiApiKey",
    "--api-key",
    "secret",
    "client_secret",
    "password",
    "db_password",
    "token",
    "hf_token",
    "HF_TOKEN",
    "HUGGING_FACE_HUB_TOKEN",
    "hub_token",
    "wandb_token",
    "auth_token",
    "use_auth_token",
    "access_token",
    "GITHUB_TOKEN",
    "aws_session_token",
    "AWS_SECRET_ACCESS_KEY",
    "HFToken",
    "--hf-token",
]
HARMLESS_NAMES = [
    "tokenizer",
    "--tokenizer",
    "tokenizer_name",
    "truncate_token",
    "--truncate-token",
    "pad_token",
    "eos_token",
    "query_token",
    "reference_response_token",
    "max_tokens",
    "num_tokens",
    "token_budget",
    "tokens_per_second",
    "api_key_env",
    "--api-key-env",
    "key_column",
    "keyword",
    "monkey",
    "PWD",
]


@pytest.mark.parametrize("name", SECRET_NAMES)
def test_secret_names_are_redacted(name):
    assert is_secret_name(name)
    assert redact_config({name: "s3cr3t", "lr": 1.0}) == {name: "***", "lr": 1.0}


@pytest.mark.parametrize("name", HARMLESS_NAMES)
def test_tokenizer_like_names_are_kept(name):
    assert not is_secret_name(name)
    assert redact_config({name: "EleutherAI/pythia-1b", "nested": {name: "x"}}) == {
        name: "EleutherAI/pythia-1b",
        "nested": {name: "x"},
    }


def test_redact_argv_masks_secret_flags_in_both_forms_and_keeps_the_rest():
    argv = ["x", "--openai-api-key", "sk-1", "--hf_token=hf_2", "--tokenizer", "tok", "--truncate-token=eos"]
    argv += ["--api-key-env", "MY_KEY", "--pad-token", "[PAD]", "--token", "t3", "--lr", "1"]
    assert redact_argv(argv) == [
        "x",
        "--openai-api-key",
        "***",
        "--hf_token=***",
        "--tokenizer",
        "tok",
        "--truncate-token=eos",
        "--api-key-env",
        "MY_KEY",
        "--pad-token",
        "[PAD]",
        "--token",
        "***",
        "--lr",
        "1",
    ]


def test_nested_secrets_are_redacted_and_unset_ones_stay_none(tmp_path):
    config = {"derived": {"hf_token": "hf_x", "tokenizer": "t"}, "api_key": None, "judge": {"api_key": "k"}}
    assert redact_config(config) == {
        "derived": {"hf_token": "***", "tokenizer": "t"},
        "api_key": None,
        "judge": {"api_key": "***"},
    }
    run = RunFolder(tmp_path / "run")
    run.start({"tokenizer": "EleutherAI/pythia-1b", "truncate_token": "eos", "hf_token": "hf_x"}).close()
    written = json.loads((run.path / "config.json").read_text())
    assert written == {"tokenizer": "EleutherAI/pythia-1b", "truncate_token": "eos", "hf_token": "***"}


def planted_env(secret: str) -> dict:
    """The secret in every variable a user would set for the APIs this suite talks to."""
    names = ("OPENAI_API_KEY", "WANDB_API_KEY", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "MY_JUDGE_KEY")
    return {name: secret for name in names}


def leaks(secret: str, *roots: Path, texts: tuple[str, ...] = ()) -> list[str]:
    """Every file under `roots` (recursively, as bytes) and every text that contains the secret."""
    found = [f"output #{i}" for i, t in enumerate(texts) if secret in t]
    for root in roots:
        for path in Path(root).rglob("*"):
            if path.is_file() and not path.is_symlink() and secret.encode() in path.read_bytes():
                found.append(str(path))
    return found


def test_a_tracked_training_stage_writes_no_secret(small_world, tmp_path):
    secret = f"sk-test-{uuid.uuid4().hex}"
    results, wandb_dir = tmp_path / "results", tmp_path / "wandb"
    env = planted_env(secret) | {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_DIR": str(wandb_dir)}
    env["WANDB_CACHE_DIR"] = env["WANDB_CONFIG_DIR"] = str(tmp_path / "wandb-home")
    r = cli(
        "pretrain",
        "--data",
        str(small_world),
        "--model-shape",
        "tiny-s",
        "--steps",
        "2",
        "--batch-size",
        "2",
        "--block-size",
        "32",
        "--eval-every",
        "2",
        "--eval-blocks",
        "2",
        "--save-every",
        "2",
        "--results-dir",
        str(results),
        "--experiment",
        "secrets",
        "--tokenizer",
        str(small_world / "tokenizer"),
        "--no-progress",
        "--track",
        env=env,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    run = results / "secrets" / "pretrain" / "tiny-s" / "1"
    assert {"config.json", "provenance.json", "metrics.jsonl", "summary.json"} <= {p.name for p in run.iterdir()}
    assert list(run.glob("wandb/offline-run-*/run-*.wandb"))  # W&B did write its files (config included)
    assert not leaks(secret, results, wandb_dir, tmp_path / "wandb-home", texts=(r.stdout, r.stderr))
    # Redaction must not blind the record either: the tokenizer setting is readable.
    assert json.loads((run / "config.json").read_text())["tokenizer"] == str(small_world / "tokenizer")


def test_a_judge_run_writes_no_secret_even_when_the_server_echoes_it(tmp_path):
    secret = f"sk-test-{uuid.uuid4().hex}"
    server = ChatServer()
    try:
        # A hostile server: the first answer is a 401 quoting the Authorization header (as a misconfigured
        # proxy would), another echoes the key in the answer text.
        server.script = [("echo_auth", 401), f"Comparison: key {secret}\nPreferred: A"]
        table, out, cache = tmp_path / "in.csv", tmp_path / "out" / "judged.csv", tmp_path / "cache" / "c.jsonl"
        with open(table, "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=["query", "response", "reference"])
            w.writeheader()
            w.writerows(ROWS[:4])
        args = [sys.executable, "-m", "rlhf_repro.cli", "judge", "--input", str(table), "--out", str(out)]
        args += ["--base-url", server.url, "--api-key-env", "MY_JUDGE_KEY", "--cache", str(cache)]
        args += ["--concurrency", "1", "--no-progress", "--max-failed-fraction", "0.5"]
        r = run_cmd(args, env=planted_env(secret))
        assert r.returncode == 0, r.stderr
        assert server.auth[0] == f"Bearer {secret}"  # the key from the environment did reach the server
        summary = json.loads(r.stdout)
        assert summary["failures"] == {"client_error": 1} and summary["n_verdict"] == 3
        assert not leaks(secret, out.parent, cache.parent, texts=(r.stdout, r.stderr))
    finally:
        server.close()


def test_provenance_argv_never_carries_a_secret_flag(tmp_path, monkeypatch):
    secret = f"sk-test-{uuid.uuid4().hex}"
    monkeypatch.setattr("sys.argv", ["x", "--openai-api-key", secret, f"--hf-token={secret}", "--tokenizer", "t"])
    for name, value in planted_env(secret).items():
        monkeypatch.setenv(name, value)
    run = RunFolder(tmp_path / "run")
    run.start({"lr": 1.0, "tokenizer": "t", "wandb_api_key": secret}).close()
    run.finish({"acc": 0.5})
    assert not leaks(secret, tmp_path)
    assert json.loads((run.path / "provenance.json").read_text())["argv"][-2:] == ["--tokenizer", "t"]
    assert os.environ["OPENAI_API_KEY"] == secret  # planted, yet nowhere in the files
