"""LoRA (issue 21, rlhf_repro/lora.py): fresh adapters compute the base model exactly; switched off they are
the base again (PPO's and DPO's reference); the saved adapter loads with peft and the saved merged model
equals the adapter model; every stage trains with --lora.enabled; the invariants hold; resume is exact."""

from __future__ import annotations

import json
import math

import pytest
import torch

from rlhf_repro.lm_head import next_token_logprobs
from rlhf_repro.lora import LoraArgs, adapters_off, add_adapters, merged_state_dict, trainable
from tests import test_dpo_script, test_ppo_script
from tests.conftest import run_cmd
from tests.test_reliability import kill_during_training, metrics, run_folder, same_params, stage_cmd
from tests.test_reliability import params as run_params

PAD = 0


def _model(seed=0):
    from transformers import GPTNeoXForCausalLM

    from rlhf_repro.modeling import shape_config

    torch.manual_seed(seed)
    return GPTNeoXForCausalLM(shape_config("tiny-s", 300)).eval()


@pytest.mark.unit
def test_fresh_adapters_are_the_base_exactly_and_switched_off_they_are_the_base_again():
    model = _model()
    tokens = torch.randint(1, 300, (3, 14), generator=torch.Generator().manual_seed(1))
    base, _ = next_token_logprobs(model, tokens, PAD, start=5)
    inner, peft_model = add_adapters(model, LoraArgs(rank=4))
    assert inner is model  # the same module, adapters inside: the fused head and the tail layer still apply
    got, _ = next_token_logprobs(inner, tokens, PAD, start=5)
    assert torch.equal(got, base)  # B = 0 at the start (peft's initialization)
    n_trainable = sum(p.numel() for p in trainable(inner))
    assert 0 < n_trainable < sum(p.numel() for p in inner.parameters()) / 5
    assert all("lora_" in n for n, p in inner.named_parameters() if p.requires_grad)
    for name, p in inner.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, 0.2, generator=torch.Generator().manual_seed(2))
    trained, _ = next_token_logprobs(inner, tokens, PAD, start=5)
    assert not torch.allclose(trained, base, atol=1e-3)
    with adapters_off(peft_model):
        off, _ = next_token_logprobs(inner, tokens, PAD, start=5)
    assert torch.equal(off, base)
    # The merged weights are what the adapter model computes (to rounding), under the plain model's names.
    merged = _model(seed=5)
    merged.load_state_dict(merged_state_dict(inner))
    again, _ = next_token_logprobs(merged, tokens, PAD, start=5)
    assert (again - trained).abs().max() < 1e-5
    assert merged_state_dict(_model()) is None  # no adapter, nothing to merge


@pytest.mark.unit
def test_bad_rank_is_refused():
    with pytest.raises(ValueError, match="rank"):
        add_adapters(_model(), LoraArgs(rank=0))


LORA = ("--lora.enabled", "--lora.rank", "4")


@pytest.mark.smoke
def test_sft_rm_ppo_dpo_with_lora_save_an_adapter_and_a_merged_model(
    small_datasets, tiny_base_model, tiny_reward_model, tmp_path
):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    for stage, base in (("sft", tiny_base_model), ("reward", tiny_base_model), ("dpo", tiny_base_model)):
        paths = {"data": small_datasets, "base": base, "rm": tiny_reward_model, "eos": tiny_base_model}
        r = run_cmd(stage_cmd(stage, paths, tmp_path, 1, *LORA))
        assert r.returncode == 0, r.stderr[-3000:]
        run = run_folder(tmp_path, stage)
        assert (run / "adapter" / "adapter_config.json").exists() and (run / "model" / "config.json").exists()
        config = json.loads((run / "config.json").read_text())
        assert config["lora"]["enabled"] is True and config["lora"]["rank"] == 4
    # The causal LMs: the adapter loads with peft on the base, and equals the merged model.
    tokens = torch.randint(3, 90, (2, 10), generator=torch.Generator().manual_seed(3))
    for stage in ("sft", "dpo"):
        run = run_folder(tmp_path, stage)
        merged = AutoModelForCausalLM.from_pretrained(run / "model")
        with_adapter = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_base_model), run / "adapter")
        a, _ = next_token_logprobs(merged, tokens, PAD, start=2)
        b, _ = next_token_logprobs(with_adapter.base_model.model, tokens, PAD, start=2)
        base, _ = next_token_logprobs(AutoModelForCausalLM.from_pretrained(tiny_base_model), tokens, PAD, start=2)
        assert (a - b).abs().max() < 1e-4 and (a - base).abs().max() > 1e-4, stage
    # The RM's head trained in full beside the backbone's adapter; its merged model loads as any RM.
    from rlhf_repro.reward_model import load_reward_model

    rm = load_reward_model(run_folder(tmp_path, "reward") / "model")
    assert not any("lora" in k for k in rm.state_dict())


@pytest.mark.smoke
def test_dpo_with_lora_starts_at_zero_implicit_rewards(small_datasets, tiny_base_model, tmp_path):
    rows = test_dpo_script.run_ok(small_datasets, tiny_base_model, tmp_path, *LORA)
    first = test_dpo_script.train_rows(rows)[0]
    # The reference is the policy with its adapters off, so before any step both are the same model.
    assert first["train/rm/loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert first["train/rm/reward_margin"] == 0.0 and first["train/rm/reward_preferred"] == 0.0


@pytest.mark.smoke
def test_ppo_with_lora_first_epoch_ratio_is_one_and_kl_starts_at_zero(
    small_datasets, tiny_base_model, tiny_reward_model, tmp_path
):
    one_step = ("--ppo.noptepochs", "1", "--local-micro-batch-size", "8", "--total-episodes", "8")
    row = test_ppo_script.run_ok(small_datasets, tiny_base_model, tiny_reward_model, tmp_path, *one_step, *LORA)[0]
    assert abs(row["ppo/val/ratio"] - 1) < 1e-5 and row["ppo/policy/approxkl_avg"] < 1e-9
    assert abs(row["objective/kl"]) < 1e-4  # the reference (adapters off) is the policy at step 0
    run = tmp_path / "t" / "ppo" / "tiny" / "1"
    assert {"adapter", "critic_adapter", "model", "critic"} <= {p.name for p in run.iterdir()}


@pytest.mark.smoke
def test_ppo_with_lora_killed_at_an_update_resumes_bit_identical(
    small_datasets, tiny_base_model, tiny_reward_model, eos_prone_model, tmp_path
):
    paths = {"data": small_datasets, "base": tiny_base_model, "rm": tiny_reward_model, "eos": eos_prone_model}
    ref = tmp_path / "ref"
    r = run_cmd(stage_cmd("ppo", paths, ref, 1, *LORA))
    assert r.returncode == 0, r.stderr[-3000:]
    cmd = stage_cmd("ppo", paths, tmp_path / "killed", 1, *LORA)
    run = run_folder(tmp_path / "killed", "ppo")
    kill_during_training(cmd, run, 3)
    assert not (run / "summary.json").exists()
    r = run_cmd(cmd)
    assert r.returncode == 0 and "resuming from update" in r.stdout, r.stderr[-3000:]
    assert metrics(run) == metrics(run_folder(ref, "ppo"))
    assert same_params(run_params(run), run_params(run_folder(ref, "ppo")))


@pytest.mark.unit
def test_the_memory_count_matches_the_models_and_the_lora_formula():
    from benchmarks.lora_memory import counts, state_mb
    from rlhf_repro.modeling import MODEL_SHAPES

    c = counts("tiny-m", 4)
    shape = MODEL_SHAPES["tiny-m"]
    h, i, layers = shape["hidden_size"], shape["intermediate_size"], shape["num_hidden_layers"]
    # r (in + out) per adapted linear: query_key_value (h -> 3h), dense (h -> h), h -> 4h, 4h -> h
    per_layer = 4 * ((h + 3 * h) + (h + h) + (h + i) + (i + h))
    assert c["policy_adapter"] == c["critic_adapter"] == layers * per_layer
    assert c["policy"] == 1_448_704  # the model table of docs/world.md
    full, lora = state_mb(c, False), state_mb(c, True)
    assert full["weights"] == pytest.approx(4 * (2 * c["policy"] + 2 * c["critic"]) / 2**20)
    assert lora["grads_and_adam"] < full["grads_and_adam"] / 5 and lora["weights"] < full["weights"]


@pytest.mark.unit
def test_alpha_dropout_and_target_modules_reach_the_adapters():
    from peft.tuners.lora import LoraLayer

    inner, peft_model = add_adapters(_model(), LoraArgs(rank=2, alpha=6.0, dropout=0.25, target_modules=("dense",)))
    layers = {n: m for n, m in inner.named_modules() if isinstance(m, LoraLayer)}
    # "dense" names the attention output only (not dense_h_to_4h / dense_4h_to_h): one per block
    assert layers and all(n.endswith("attention.dense") for n in layers)
    layer = next(iter(layers.values()))
    assert layer.scaling["default"] == pytest.approx(6.0 / 2)  # alpha / rank
    assert layer.lora_dropout["default"].p == 0.25
    assert layer.r["default"] == 2
