"""`rlhf-repro bench ppo`: the workload both sides train on, our side end to end, TRL's where installed."""

from __future__ import annotations

import argparse
import json

import pytest
import torch

from tests.conftest import cli

pytestmark = pytest.mark.smoke

SMALL = ["--model-shape", "tiny-s", "--batch", "8", "--micro-batch", "4", "--rollout-forward-batch", "8"]
SMALL += ["--prompt-length", "24", "--response-length", "6", "--threads", "1", "--json"]


def test_workload_gives_trl_the_same_reward_model_as_ours(tmp_path):
    from benchmarks.speed.ppo import _trl_models, make_workload
    from rlhf_repro.reward_model import ScalarModel
    from rlhf_repro.tokenization import load_tokenizer

    work = make_workload(tmp_path, "tiny-s", prompt_length=12, response_length=5, n_prompts=4, seed=3)
    tok = load_tokenizer(work / "policy")
    assert (tok.eos_token_id, tok.pad_token_id) == (0, 1)
    ours = ScalarModel.from_pretrained(str(work / "reward")).eval()
    policy, ref, reward, value = _trl_models(work)
    ids = torch.randint(2, 200, (3, 9))
    with torch.no_grad():
        a = ours(input_ids=ids, attention_mask=torch.ones_like(ids))
        b = reward.score(reward.gpt_neox(input_ids=ids).last_hidden_state).squeeze(-1)
        c = value.score(value.gpt_neox(input_ids=ids).last_hidden_state).squeeze(-1)
        assert torch.allclose(a, b, atol=1e-5) and torch.equal(b, c)  # the critic starts as the RM (detail 22)
        assert torch.equal(policy(ids).logits, ref(ids).logits)
    from datasets import load_from_disk

    data = load_from_disk(str(work / "data"))
    assert len(data["train"]) == 4 and len(data["train"][0]["query_token"]) == 12


def test_bench_ppo_ours_only_reports_rate_phases_and_memory():
    r = cli("bench", "ppo", *SMALL, "--updates", "2", "--warmup", "1", "--no-trl")
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    ours = out["ours"]
    assert ours["episodes"] == 24 and len(ours["per_update_seconds"]) == 3
    # The rate counts the updates after the warm-up one; the all-updates rate stays beside it.
    assert out["ours_episodes_per_s"] == pytest.approx(16 / sum(ours["per_update_seconds"][1:]), rel=1e-2)
    assert ours["episodes_per_s_with_warmup"] == pytest.approx(24 / ours["loop_seconds"], rel=1e-2)
    assert all(ours["phases"][k] > 0 for k in ("generate", "score", "train")) and ours["peak_rss_mb"] > 50
    assert "speedup" not in out and out["trl_version"] is None


def test_bench_ppo_sweep_and_flag_errors():
    r = cli("bench", "ppo", *SMALL, "--sweep", "--lengths", "4", "6", "--batches", "8", "16")
    assert r.returncode == 0, r.stderr[-3000:]
    rows = json.loads(r.stdout.strip().splitlines()[-1])
    assert [(x["response_length"], x["batch"]) for x in rows] == [(4, 8), (6, 8), (6, 16)]
    assert all(x["seconds_per_update"] > 0 for x in rows)
    r = cli("bench", "ppo", "--batch", "10", "--micro-batch", "4")
    assert r.returncode == 2 and "not a multiple" in r.stderr
    r = cli("bench", "ppo", "--help")
    assert r.returncode == 0 and "--sweep" in r.stdout and "--no-trl" in r.stdout


def test_bench_ppo_against_trl_when_installed():
    pytest.importorskip("trl.experimental.ppo", reason='TRL is the optional extra: pip install -e ".[bench]"')
    r = cli("bench", "ppo", *SMALL, "--updates", "1", "--warmup", "0")
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["trl"]["episodes"] == out["ours"]["episodes"] == 8
    assert out["speedup"] == pytest.approx(out["ours_episodes_per_s"] / out["trl_episodes_per_s"], rel=1e-2)


def test_sweep_points_are_the_issue_grid():
    from benchmarks.speed.ppo import add_arguments

    p = argparse.ArgumentParser()
    add_arguments(p)
    args = p.parse_args([])
    assert (args.lengths, args.batches, args.batch, args.prompt_length, args.response_length) == (
        [16, 53, 128],
        [64, 256, 512],
        64,
        200,
        53,
    )


def test_lora_side_runs_our_ppo_with_adapters_at_the_given_rank():
    from pathlib import Path

    from benchmarks.speed.ppo import _child_argv, add_arguments, ours_command

    p = argparse.ArgumentParser()
    add_arguments(p)
    p.add_argument("--child-lora", action="store_true")
    plain, lora = p.parse_args(["--lora-rank", "8"]), p.parse_args(["--lora-rank", "8", "--child-lora"])
    assert "--lora.enabled" not in ours_command(Path("w"), plain, Path("r"))
    assert ours_command(Path("w"), lora, Path("r"))[-3:] == ["--lora.enabled", "--lora.rank", "8"]
    assert "--lora-rank=8" in _child_argv("ours", Path("w"), plain)  # the child gets the rank
