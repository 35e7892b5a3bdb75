"""Unit tests of the pieces the SFT and RM stages stand on: the scalar RM, ROUGE, batching across ranks."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import torch

from rlhf_repro import rouge
from rlhf_repro.data import eval_batches, load_processed, microbatch_rows, permutation, rows_seen
from rlhf_repro.io import InputError
from rlhf_repro.training import batch_geometry

pytestmark = pytest.mark.unit

PAD = 1


@pytest.fixture()
def sft_dir(tmp_path):
    """A tiny GPT-NeoX causal LM saved like sft.py saves its model."""
    from transformers import GPTNeoXForCausalLM

    from rlhf_repro.modeling import shape_config

    torch.manual_seed(0)
    model = GPTNeoXForCausalLM(shape_config("tiny-l", 100, eos_token_id=0, max_positions=64))
    model.save_pretrained(tmp_path / "sft")
    return tmp_path / "sft"


def test_reward_head_init_and_self_contained_save(sft_dir, tmp_path):
    from transformers import AutoModel

    from rlhf_repro.reward_model import ScalarModel, get_reward, load_backbone, load_reward_model

    torch.manual_seed(1)
    rm = ScalarModel.from_sft(load_backbone(sft_dir), source_model=str(sft_dir))
    d = rm.config.hidden_size
    assert d == 256
    # Detail 11: N(0, 1/sqrt(d+1)) weights, zero bias.
    w = rm.scalar_head.weight.detach().flatten()
    assert abs(w.std().item() - 1 / math.sqrt(d + 1)) < 0.15 / math.sqrt(d + 1)
    assert rm.scalar_head.bias.item() == 0.0
    # The body carries the SFT weights.
    body = AutoModel.from_pretrained(sft_dir)
    assert torch.equal(rm.lm_backbone.embed_in.weight, body.embed_in.weight)

    rm.config.bias = 0.75
    batch = torch.tensor([[5, 6, 7, 0, PAD], [5, 6, 7, 8, 0]])
    with torch.no_grad():
        scores, rewards, _ = get_reward(rm, batch, PAD)
        # The bias is subtracted from every position (detail 15).
        raw = rm.scalar_head(body(input_ids=batch.masked_fill(batch == PAD, 0), attention_mask=batch != PAD)[0])
    assert torch.allclose(scores, raw.squeeze(-1) - 0.75, atol=1e-5)
    rm.save_pretrained(tmp_path / "rm")
    # the saved RM does not need the SFT model: remove it, then load through both entry points.
    shutil.rmtree(sft_dir)
    config = json.loads((tmp_path / "rm" / "config.json").read_text())
    assert config["model_type"] == "rlhf_repro_scalar" and config["bias"] == 0.75
    for loaded in (load_reward_model(tmp_path / "rm"), AutoModel.from_pretrained(tmp_path / "rm")):
        with torch.no_grad():
            assert torch.allclose(get_reward(loaded, batch, PAD)[1], rewards, atol=1e-6)


def test_reward_readout_equals_the_references_last_hidden_state(sft_dir):
    # The reference reads `hidden_states[-1]` (output_hidden_states=True); we read last_hidden_state.
    from transformers import AutoModel

    body = AutoModel.from_pretrained(sft_dir)
    ids = torch.tensor([[5, 6, 7, 8]])
    out = body(input_ids=ids, output_hidden_states=True)
    assert torch.equal(out.hidden_states[-1], out.last_hidden_state)


def test_load_reward_model_refuses_a_causal_lm(sft_dir):
    from rlhf_repro.reward_model import load_reward_model

    with pytest.raises(InputError, match="not a reward model saved by reward.py"):
        load_reward_model(sft_dir)


def test_rouge_is_configured_as_evaluates_default():
    # evaluate's "rouge" uses no stemmer: "cats" and "cat" do not match.
    s = rouge.pair_scores(["the cats sat"], ["the cat sat"])[0]
    assert s["rouge1"].fmeasure == pytest.approx(2 / 3)
    assert set(s) == set(rouge.ROUGE_TYPES)
    # The default tokenizer lowercases and drops punctuation.
    assert rouge.pair_scores(["The CAT, sat!"], ["the cat sat"])[0]["rougeL"].fmeasure == pytest.approx(1.0)


def test_rouge_batch_value_is_the_bootstrap_aggregators_mid():
    from rouge_score import scoring

    scores = rouge.pair_scores(["a b c d", "a x", "b c", "q r s"], ["a b c", "a b", "a b c", "q s"])
    np.random.seed(11)
    agg = scoring.BootstrapAggregator()
    for s in scores:
        agg.add_scores(s)
    expected = agg.aggregate()
    got = rouge.batch_value(scores, seed=11)
    assert all(got[k] == pytest.approx(expected[k].mid.fmeasure) for k in rouge.ROUGE_TYPES)


def test_rouge_aggregations():
    preds = ["a b c", "a b", "x y", "a"]
    refs = ["a b c", "a c", "a b", "a b"]
    scores = rouge.pair_scores(preds, refs)
    f = [s["rouge1"].fmeasure for s in scores]
    agg = rouge.aggregate(scores, [0, 0, 1, 1], seed=0)
    assert agg["corpus"]["rouge1"] == pytest.approx(np.mean(f))
    # The reference's value: per batch, the bootstrap's mid; then the mean over batches. Reproducible.
    assert agg == rouge.aggregate(scores, [0, 0, 1, 1], seed=0)
    same = rouge.pair_scores(["a b"] * 3, ["a b"] * 3)
    assert rouge.aggregate(same, [0, 0, 0])["reference"]["rougeL"] == pytest.approx(1.0)
    # The bootstrap does not touch the caller's numpy RNG.
    np.random.seed(7)
    before = np.random.rand()
    np.random.seed(7)
    rouge.aggregate(scores, [0, 1, 2, 3], seed=3)
    assert np.random.rand() == before


def test_one_process_with_accumulation_covers_the_same_rows_as_two_processes():
    order = permutation(64, seed=3)
    for update in range(4):
        one = np.concatenate([microbatch_rows(order, 2, 4, 1, 0, update, s) for s in range(4)])
        two = np.concatenate([microbatch_rows(order, 2, 2, 2, r, update, s) for r in range(2) for s in range(2)])
        assert sorted(one.tolist()) == sorted(two.tolist()) and len(set(one.tolist())) == 8
    # An epoch visits every row once.
    geo = batch_geometry(2, 2, 2, 64, 1)
    assert geo["batch_size"] == 8 and geo["num_updates"] == 8
    seen = np.concatenate([rows_seen(order, geo, r) for r in range(2)])
    assert sorted(seen.tolist()) == list(range(64))


def test_per_rank_shuffle_makes_ranks_overlap():
    # each rank shards its own permutation, so the union misses pairs and repeats others.
    geo = batch_geometry(1, 4, 2, 400, 1)
    shared = np.concatenate([rows_seen(permutation(400, 1), geo, r) for r in range(2)])
    per_rank = np.concatenate([rows_seen(permutation(400, 1 + 100003 * r), geo, r) for r in range(2)])
    assert len(set(shared.tolist())) == 400
    assert 0.65 < len(set(per_rank.tolist())) / 400 < 0.85  # about 3/4 expected with two ranks


def test_accumulation_is_derived_from_the_global_batch():
    from rlhf_repro.training import resolve_accumulation

    assert resolve_accumulation(128, None, 1, 8) == 16  # the paper's SFT on 8 GPUs
    assert resolve_accumulation(64, None, 1, 8) == 8  # the paper's RM
    assert resolve_accumulation(128, None, 4, 1) == 32
    assert resolve_accumulation(128, 3, 4, 1) == 3  # explicit accumulation wins
    with pytest.raises(InputError, match="not a multiple"):
        resolve_accumulation(100, None, 8, 1)


def test_derived_seeds_do_not_collide_across_seeds_and_epochs():
    from rlhf_repro.seeding import derived_seed

    assert derived_seed(1, 1) != derived_seed(2, 0)
    assert derived_seed(1, 1) == derived_seed(1, 1)


def test_disable_dropout_reaches_modules_attention_rates_and_config(tmp_path):
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    from rlhf_repro.modeling import disable_dropout
    from rlhf_repro.reward_model import ScalarModel, load_backbone

    config = GPTNeoXConfig(
        vocab_size=64,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        attention_dropout=0.3,
        hidden_dropout=0.3,
    )
    model = GPTNeoXForCausalLM(config)
    disable_dropout(model)
    assert all(m.p == 0 for m in model.modules() if isinstance(m, torch.nn.Dropout))
    assert all(getattr(m, "attention_dropout", 0.0) == 0.0 for m in model.modules())
    assert model.config.attention_dropout == 0.0 and model.config.hidden_dropout == 0.0
    # A fresh RM body is built from the config; dropout must be off there too.
    GPTNeoXForCausalLM(config).save_pretrained(tmp_path / "m")
    rm = ScalarModel.from_sft(load_backbone(tmp_path / "m"))
    assert all(m.p == 0 for m in rm.modules() if isinstance(m, torch.nn.Dropout))
    assert all(getattr(m, "attention_dropout", 0.0) == 0.0 for m in rm.modules())


def test_metrics_writer_resumes_to_the_checkpoints_line_count(tmp_path):
    from rlhf_repro.runs import MetricsWriter, read_metrics

    w = MetricsWriter(tmp_path / "m.jsonl")
    for step in (0, 1, 2, 2, 2):  # e.g. eval rows logged at the last update's step
        w.log({"x": step}, step=step)
    w.close()
    MetricsWriter(tmp_path / "m.jsonl", resume_step=2, keep_lines=3).close()
    assert [r["step"] for r in read_metrics(tmp_path / "m.jsonl")] == [0, 1, 2]


def test_eval_batches_partition_rows_without_repeats():
    parts = [eval_batches(10, 3, 2, r) for r in range(2)]
    assert [b.tolist() for b in parts[0]] == [[0, 1, 2], [6, 7, 8]]
    assert [b.tolist() for b in parts[1]] == [[3, 4, 5], [9]]
    assert eval_batches(0, 3, 2, 0) == []


def test_load_processed_names_the_missing_split_and_column(tmp_path):
    from datasets import Dataset, DatasetDict

    DatasetDict({"train": Dataset.from_dict({"query_token": [[1, 2]]})}).save_to_disk(str(tmp_path / "d"))
    with pytest.raises(InputError, match="lacks column\\(s\\) reference_response_token"):
        load_processed(tmp_path / "d", {"train": ("query_token", "reference_response_token")})
    with pytest.raises(InputError, match="no split 'validation'"):
        load_processed(tmp_path / "d", {"validation": ("query_token",)})
    with pytest.raises(InputError, match="not a dataset saved with save_to_disk"):
        load_processed(tmp_path, {"train": ()})


def test_frozen_models_follow_the_reference_deepspeed_setup(monkeypatch):
    """R-17: PPO's reference policy and RM get their own DeepSpeed inference config (bf16); with --offload
    (the reference's 6.9B setting) ZeRO-3 with CPU parameter offload; without DeepSpeed, the device."""
    import sys
    import types

    from accelerate.utils import DistributedType

    from rlhf_repro.training import frozen_deepspeed_config, prepare_frozen

    plain = frozen_deepspeed_config(16, offload=False)
    assert plain == {
        "train_micro_batch_size_per_gpu": 16,
        "bf16": {"enabled": True},
        "prescale_gradients": False,
        "wall_clock_breakdown": False,
    }
    off = frozen_deepspeed_config(1, offload=True, bf16=False)
    assert off["zero_optimization"] == {
        "stage": 3,
        "stage3_param_persistence_threshold": 1e4,
        "offload_param": {"device": "cpu"},
    }
    assert off["bf16"] == {"enabled": False} and off["train_micro_batch_size_per_gpu"] == 1

    calls = []

    class Engine(torch.nn.Module):
        def __init__(self, module, config):
            super().__init__()
            self.module, self.config = module, config

    def initialize(model, config):
        calls.append(config)
        return Engine(model, config), None, None, None

    monkeypatch.setitem(sys.modules, "deepspeed", types.SimpleNamespace(initialize=initialize))
    model = torch.nn.Linear(2, 2).requires_grad_(False)
    ds = types.SimpleNamespace(distributed_type=DistributedType.DEEPSPEED, mixed_precision="bf16", device="cpu")
    engine = prepare_frozen(ds, model, 4, offload=True)
    assert isinstance(engine, Engine) and engine.module is model and not engine.training
    assert calls == [frozen_deepspeed_config(4, offload=True)]
    assert prepare_frozen(ds, model, 4).config == frozen_deepspeed_config(4, offload=False)

    local = types.SimpleNamespace(distributed_type=DistributedType.NO, mixed_precision="no", device="cpu")
    assert prepare_frozen(local, model, 4) is model and len(calls) == 2
    assert prepare_frozen(local, model, 4, offload=True) is model and len(calls) == 2  # the reference's fallback


def test_trained_models_tell_deepspeed_their_micro_batch():
    """No stage prepares a dataloader, so under DeepSpeed accelerate's prepare() would stop for want of a
    micro-batch size: every stage goes through prepare_trained, which writes it into the config first."""
    import re
    import types
    from pathlib import Path

    from accelerate.utils import DistributedType

    from rlhf_repro.training import prepare_trained

    config = {"train_micro_batch_size_per_gpu": "auto", "zero_optimization": {"stage": 2}}
    prepared = []
    ds = types.SimpleNamespace(
        distributed_type=DistributedType.DEEPSPEED,
        state=types.SimpleNamespace(deepspeed_plugin=types.SimpleNamespace(deepspeed_config=config)),
        prepare=lambda *objects: (prepared.append(dict(config)), objects)[1],
    )
    assert prepare_trained(ds, 4, "model", "optimizer") == ("model", "optimizer")
    assert prepared == [
        {"train_micro_batch_size_per_gpu": 4, "zero_optimization": {"stage": 2}, "gradient_clipping": 0.0}
    ]
    local = types.SimpleNamespace(distributed_type=DistributedType.NO, prepare=lambda *objects: objects)
    assert prepare_trained(local, 4, "m") == ("m",)

    root = Path(__file__).resolve().parent.parent / "experiments"
    for stage in ("sft", "reward", "ppo", "dpo"):
        source = (root / f"{stage}.py").read_text()
        assert "accelerator.prepare(" not in source, stage
        assert re.search(
            r"= prepare_trained\(\s*accelerator, args\.local_micro_batch_size, .*max_grad_norm=args\.max_grad_norm",
            source,
        ), stage
        assert re.search(r"clip_gradients\(accelerator, \w+, args\.max_grad_norm\)\n\s+optimizer\.step\(\)", source), (
            stage
        )
    ppo = (root / "ppo.py").read_text()  # both frozen models go through prepare_frozen with --offload
    assert "ref_policy = prepare_frozen(accelerator, ref_policy, args.local_micro_batch_size, args.offload)" in ppo
    assert "reward_model = prepare_frozen(accelerator, reward_model, args.local_micro_batch_size, args.offload)" in ppo


def test_gradient_clipping_is_off_as_in_the_reference_unless_set():
    """The reference (accelerate 0.25) ran its DeepSpeed YAML without clipping (R-10). accelerate 1.x fills
    the same YAML's `gradient_clipping: auto` with 1.0, so every stage writes --max-grad-norm (default 0,
    off) into the DeepSpeed config; without DeepSpeed a value > 0 clips before the step."""
    import types

    from accelerate.utils import DistributedType

    from rlhf_repro.training import clip_gradients, prepare_trained

    def deepspeed(config):
        state = types.SimpleNamespace(deepspeed_plugin=types.SimpleNamespace(deepspeed_config=config))
        return types.SimpleNamespace(distributed_type=DistributedType.DEEPSPEED, state=state, prepare=lambda *o: o)

    config = {"gradient_clipping": "auto"}
    prepare_trained(deepspeed(config), 2, "m")
    assert config["gradient_clipping"] == 0.0
    prepare_trained(deepspeed(config), 2, "m", max_grad_norm=0.5)
    assert config["gradient_clipping"] == 0.5
    with pytest.raises(InputError, match="--max-grad-norm must be >= 0"):
        prepare_trained(deepspeed(config), 2, "m", max_grad_norm=-1.0)  # would flip the gradients' sign

    def model_with_grads():
        model = torch.nn.Linear(4, 3)
        for p in model.parameters():
            p.grad = torch.full_like(p, 2.0)
        return model

    def norm(model):
        return float(torch.sqrt(sum((p.grad**2).sum() for p in model.parameters())))

    local = types.SimpleNamespace(
        distributed_type=DistributedType.NO, sync_gradients=True, clip_grad_norm_=torch.nn.utils.clip_grad_norm_
    )
    unclipped = norm(model_with_grads())
    assert unclipped == pytest.approx(2.0 * math.sqrt(15))
    for value, expected in ((0.0, unclipped), (1.0, 1.0), (100.0, unclipped)):
        model = model_with_grads()
        clip_gradients(local, model, value)
        assert norm(model) == pytest.approx(expected, rel=1e-5), value
    model = model_with_grads()
    clip_gradients(types.SimpleNamespace(**{**vars(local), "sync_gradients": False}), model, 1.0)
    assert norm(model) == pytest.approx(unclipped)  # mid-accumulation: the step comes later
    model = model_with_grads()
    clip_gradients(deepspeed({}), model, 1.0)
    assert norm(model) == pytest.approx(unclipped)  # DeepSpeed clips in its own step


def test_models_load_in_fp32_whatever_dtype_they_were_saved_in(tmp_path):
    """transformers 5 loads in the checkpoint's dtype by default (Pythia's hub weights are fp16; a DeepSpeed
    bf16 run saves bf16). The reference (transformers 4) trained fp32 weights and left precision to the
    launcher (R-17), so every loader asks for fp32, and a reward model built on a bf16 body is fp32 too."""
    from transformers import GPTNeoXForCausalLM

    from rlhf_repro.modeling import load_causal_lm, shape_config
    from rlhf_repro.reward_model import ScalarModel, load_backbone, load_reward_model

    GPTNeoXForCausalLM(shape_config("tiny-xs", 100, max_positions=64)).to(torch.bfloat16).save_pretrained(
        tmp_path / "lm"
    )
    assert '"dtype": "bfloat16"' in (tmp_path / "lm" / "config.json").read_text()
    assert {p.dtype for p in load_causal_lm(tmp_path / "lm").parameters()} == {torch.float32}
    backbone = load_backbone(tmp_path / "lm")
    assert {p.dtype for p in backbone.parameters()} == {torch.float32}
    bf16_body = backbone.to(torch.bfloat16)
    bf16_body.config.dtype = torch.bfloat16
    rm = ScalarModel.from_sft(bf16_body)
    assert {p.dtype for p in rm.parameters()} == {torch.float32}
    rm.to(torch.bfloat16).save_pretrained(tmp_path / "rm")
    assert {p.dtype for p in load_reward_model(tmp_path / "rm").parameters()} == {torch.float32}
    # Loaded directly, in the checkpoint's dtype: body and head agree, and it runs.
    direct = ScalarModel.from_pretrained(tmp_path / "rm")
    assert {p.dtype for p in direct.parameters()} == {torch.bfloat16}
    assert direct(input_ids=torch.tensor([[2, 3, 4]])).dtype == torch.bfloat16


@pytest.mark.parametrize("n,b,world", [(10, 2, 3), (6447, 8, 8), (5, 8, 4), (12, 4, 3), (1, 1, 2)])
def test_lockstep_eval_batches_give_every_rank_the_same_count_and_each_row_once(n, b, world):
    from rlhf_repro.data import lockstep_eval_batches

    per_rank = [lockstep_eval_batches(n, b, world, r) for r in range(world)]
    assert len({len(batches) for batches in per_rank}) == 1  # lockstep: ZeRO-3 forwards pair up
    real = [idx for batches in per_rank for idx, padding in batches if not padding]
    assert sorted(np.concatenate(real).tolist()) == list(range(n))  # rows once each, as eval_batches
    for r, batches in enumerate(per_rank):
        assert [idx.tolist() for idx, padding in batches if not padding] == [
            idx.tolist() for idx in eval_batches(n, b, world, r)
        ]
        assert all(len(idx) and idx.max() < n for idx, _ in batches)


def test_phase_timer_sums_repeats_in_the_order_phases_first_end(monkeypatch):
    from rlhf_repro import training

    clock = iter([0.0, 1.0, 1.5, 4.0, 10.0, 10.25, 20.0, 20.5])
    monkeypatch.setattr(training.time, "perf_counter", lambda: next(clock))
    timer = training.PhaseTimer("time/ppo/")
    with timer("rollout"):
        for _ in range(2):
            with timer("generate"):
                pass
    timer.start("train")
    timer.stop("train")
    # generate: (1.5 - 1.0) + (10.0 - 4.0); rollout 0 -> 10.25; train 20 -> 20.5 (the clock's calls in order)
    assert timer.seconds == {"time/ppo/generate": 6.5, "time/ppo/rollout": 10.25, "time/ppo/train": 0.5}
    assert list(timer.seconds) == ["time/ppo/generate", "time/ppo/rollout", "time/ppo/train"]
