"""`rlhf-repro bench gpu`: the paper's four stages on one GPU at Pythia-1B shape: speed, memory, MFU and
correctness, as one JSON report (scripts/gpu_check.sh runs it in one device call).

    rlhf-repro bench gpu --out gpu_report.json                        # CUDA, Pythia-1B shape, bf16
    rlhf-repro bench gpu --device cpu --tiny --out /tmp/report.json   # the same code path on CPU, in seconds

What runs, per stage, on a randomly initialized GPT-NeoX of `--model-shape` (Pythia's shapes below; no hub
needed), with the per-process micro-batch geometry the `paper` preset launches at 1B on 8 GPUs
(rlhf_repro/experiments.toml): one warm-up update, then `--updates` timed updates, each exactly what one of
the 8 data-parallel processes computes per update (the gradient all-reduce between them is not measured):
- sft: 16 micro-steps of 1 sequence of 562 tokens (query + reference), the next-token loss over non-PAD
  tokens (`lm_head.next_token_nll`), one AdamW step;
- rm: 8 micro-steps of 1 pair (chosen and rejected, 638 tokens each, in one forward), the reward read at
  the EOS, the pairwise loss, one AdamW step;
- dpo: 8 micro-steps of 1 pair: summed response log-probs of the policy (with gradients) and of the frozen
  reference (without), the sigmoid loss at beta 0.05, one AdamW step;
- ppo: one rollout of 64 queries of 512 tokens (one chunk of 64, plus the 8-query validation batch in the
  same decode loop) sampling 53 tokens; scoring: reference log-probs, critic values, the RM's score; then
  4 epochs x 4 micro-steps of 16 (`PolicyAndValue`, clipped policy and value losses; the score enters at
  the last token, a simplification that costs the same), one AdamW step per epoch (one minibatch, as
  ppo.py). Reported per phase: generate / score / train.
Precision: `--precision bf16` (the default on CUDA) runs the stages under `torch.autocast(bfloat16)` with
fp32 master weights, as `accelerate --mixed_precision bf16` does; DeepSpeed ZeRO-2 (the preset's config)
would shard the optimizer state over the 8 processes, which one process cannot show: the memory here holds
the full AdamW state (an upper bound of the preset's per-GPU memory). `deepspeed` is reported as found or
not; this command never needs it.

Reported per stage: seconds per update (best and median of the timed ones), tokens per second, peak GPU
memory (torch.cuda.max_memory_allocated, reset per stage; on CPU the process's peak RSS, which only grows),
and MFU = counted FLOPs per second / the GPU's bf16 dense peak (`--peak-tflops`, or a table by device name;
none on CPU). Counted FLOPs: 6 N per trained token (forward + backward) and 2 N per token of a forward
without gradients, N the parameters less the input embedding (a lookup), attention's own FLOPs left out;
the last-layer and LM-head cuts of this code base do less than that count, so MFU is the nominal model's.
The PPO rollout counts 2 N per prompt and sampled token.

Checks on the device (the report's `checks`, each with its numbers and `ok`):
- fused_head: the fused LM head's token log-probs equal the obvious full-logits computation (|diff| < 0.05
  under bf16, 1e-4 in fp32);
- ppo_first_ratio: the first PPO micro-step's probability ratio against the sampling pass's log-probs is 1
  (|ratio - 1| mean < 0.02 under bf16, 1e-4 in fp32);
- dpo_step0_rewards: DPO's implicit rewards are 0 at step 0 when the reference runs at the policy's precision
  (`--ref-precision same`): |reward| max <= 1e-6;
- sampler: our sampler's draws on the device follow softmax(logits / T): a chi-square test over 20,000 draws
  from one row of 2,000 logits (z = (chi2 - df) / sqrt(2 df) < 5).
Also `generate`: `bench generate` (ours against HF `generate`) at this shape on the device.

`project` in the report turns the measured 1B seconds per update into hours per stage and GPU-hours per
seed of the paper's full runs (docs/measurements.md, "Projecting the paper's runs").
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from pathlib import Path

# Pythia's (deduped) shapes: https://huggingface.co/EleutherAI config.json files (hidden, layers, heads, MLP).
GPU_SHAPES = {
    "pythia-1b": dict(hidden_size=2048, num_hidden_layers=16, num_attention_heads=8, intermediate_size=8192),
    "pythia-2.8b": dict(hidden_size=2560, num_hidden_layers=32, num_attention_heads=32, intermediate_size=10240),
    "pythia-6.9b": dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, intermediate_size=16384),
    # the --tiny stand-in: seconds on a CPU
    "tiny": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=256),
}
PARAMETERS = {"pythia-1b": 1_011_781_632, "pythia-2.8b": 2_775_208_960, "pythia-6.9b": 6_857_302_016}
# The FLOP count's N of each (less the input embedding: vocabulary 50,304 x hidden; 50,432 at 6.9B).
COUNTED = {"pythia-1b": 908_759_040, "pythia-2.8b": 2_646_430_720, "pythia-6.9b": 6_650_732_544}
# Per-process geometry: the paper preset at 1B on 8 processes (global batches 128 / 64 / 64 / 512).
GEOMETRY = {
    "paper": dict(
        vocab=50304,
        sft=dict(micro=1, accumulation=16, length=562),
        rm=dict(micro=1, accumulation=8, length=638),
        dpo=dict(micro=1, accumulation=8, length=638, prompt=512),
        ppo=dict(batch=64, micro=16, chunk=64, validation=8, query=512, response=53, epochs=4),
    ),
    "tiny": dict(
        vocab=512,
        sft=dict(micro=2, accumulation=2, length=40),
        rm=dict(micro=2, accumulation=2, length=40),
        dpo=dict(micro=2, accumulation=2, length=40, prompt=24),
        ppo=dict(batch=8, micro=4, chunk=8, validation=2, query=24, response=8, epochs=2),
    ),
}
# The paper's updates per run (n-plus-details §5, "Compute"): SFT 911, RM 1,450, DPO 1,450, PPO 1,953.
PAPER_UPDATES = {"sft": 911, "rm": 1450, "dpo": 1450, "ppo": 1953}
# bf16 dense peak TFLOP/s by device name (vendor data sheets, without sparsity).
# Looked up in this order: the first name found in the device's name wins (the PCIe H100 before the SXM one).
PEAK_TFLOPS = {"H200": 989.0, "H100 PCIe": 756.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 125.0,
               "L4": 121.0}  # fmt: skip
PAD, EOS = 1, 0


def _sync(device):
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_memory_mb(device) -> float:
    import resource

    import torch

    if device.type == "cuda":
        return round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def _reset_memory(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _config(shape: str, vocab: int):
    from transformers import GPTNeoXConfig

    return GPTNeoXConfig(vocab_size=vocab, rotary_pct=0.25, use_parallel_residual=True, tie_word_embeddings=False,
                         max_position_embeddings=2048, hidden_dropout=0.0, attention_dropout=0.0,
                         bos_token_id=EOS, eos_token_id=EOS, pad_token_id=PAD, **GPU_SHAPES[shape])  # fmt: skip


def counted_parameters(model) -> int:
    """N of the FLOP count: every parameter but the input embedding's (a lookup, no multiply-adds)."""
    embed = model.get_input_embeddings().weight.numel()
    return sum(p.numel() for p in model.parameters()) - embed


def _tokens(rows: int, length: int, vocab: int, generator, device, response: int | None = None):
    """Random tokens >= 2; with `response`, each row's response part ends in an EOS and PAD follows it."""
    import torch

    t = torch.randint(2, vocab, (rows, length), generator=generator).to(device)
    if response:
        prompt = length - response
        ends = torch.randint(response // 2, response + 1, (rows,), generator=generator)
        for i, n in enumerate(ends.tolist()):
            t[i, prompt + n - 1] = EOS
            t[i, prompt + n :] = PAD
    return t


def _timed(device, run, updates: int) -> list[float]:
    """Seconds of each of `updates` timed calls of run(), after one warm-up call."""
    run()
    seconds = []
    for _ in range(updates):
        _sync(device)
        t0 = time.perf_counter()
        run()
        _sync(device)
        seconds.append(time.perf_counter() - t0)
    return seconds


def _update(optimizer, batches: list, loss_of):
    """One update: the loss of each micro-batch (already divided by the accumulation), backward, then one
    optimizer step."""

    def run():
        for batch in batches:
            loss_of(batch).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return run


def _row(seconds: list[float], tokens: int, flops: float, peak: float | None, memory: float) -> dict:
    best = min(seconds)
    row = {
        "seconds_per_update": round(best, 4),
        "seconds_per_update_median": round(statistics.median(seconds), 4),
        "tokens_per_update": tokens,
        "tokens_per_s": round(tokens / best, 1),
        "counted_tflops_per_update": round(flops / 1e12, 3),
        "achieved_tflops": round(flops / best / 1e12, 3),
        "peak_memory_mb": memory,
    }
    row["mfu"] = round(flops / best / (peak * 1e12), 4) if peak else None
    return row


def bench_gpu(args) -> dict:
    import torch
    import torch.nn.functional as F
    from transformers import GPTNeoXForCausalLM

    from experiments.ppo import PolicyAndValue
    from rlhf_repro import lm_head, rl
    from rlhf_repro.generation import generate_many
    from rlhf_repro.reward_model import ScalarModel, get_reward
    from rlhf_repro.training import make_optimizer

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda but torch sees no CUDA device (use --device cpu --tiny on a CPU)")
    shape = "tiny" if args.tiny else args.model_shape
    geometry = GEOMETRY["tiny" if args.tiny else "paper"]
    vocab = geometry["vocab"]
    precision = args.precision or ("bf16" if device.type == "cuda" else "fp32")
    if args.threads:
        torch.set_num_threads(args.threads)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    peak = args.peak_tflops or next((v for k, v in PEAK_TFLOPS.items() if k in name), None)

    def autocast():
        if precision == "bf16":
            return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    torch.manual_seed(args.seed)
    g = torch.Generator().manual_seed(args.seed)
    config = _config(shape, vocab)
    with torch.device(device):
        policy = GPTNeoXForCausalLM(config)
    n = counted_parameters(policy)
    report: dict = {
        "device": name,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "model_shape": shape,
        "parameters": sum(p.numel() for p in policy.parameters()),
        "counted_parameters": n,
        "precision": precision,
        "peak_tflops": peak,
        "updates_timed": args.updates,
        "geometry": geometry,
        "stages": {},
        "checks": {},
    }
    try:
        import deepspeed  # noqa: F401

        report["deepspeed"] = "found (not used: one process; see --help)"
    except Exception as e:  # noqa: BLE001 (an ImportError or a broken install)
        report["deepspeed"] = f"not available ({type(e).__name__})"

    def stage(name, run, tokens, flops):
        seconds = _timed(device, run, args.updates)
        report["stages"][name] = _row(seconds, tokens, flops, peak, _peak_memory_mb(device))

    # --- SFT ---------------------------------------------------------------------------------------
    geo = geometry["sft"]
    _reset_memory(device)
    optimizer = make_optimizer("adamw", list(policy.parameters()), 1e-6, 1e-5)
    batches = [_tokens(geo["micro"], geo["length"], vocab, g, device, response=geo["length"] // 4)
               for _ in range(geo["accumulation"])]  # fmt: skip

    def sft_loss(tokens):
        with autocast():
            return lm_head.next_token_nll(policy, tokens, PAD) / geo["accumulation"]

    tokens = geo["micro"] * geo["accumulation"] * geo["length"]
    stage("sft", _update(optimizer, batches, sft_loss), tokens, 6 * n * tokens)
    del optimizer

    # --- checks on the policy: the fused head against the obvious computation -------------------------
    tokens = _tokens(2, 64 if not args.tiny else 16, vocab, g, device)
    start = tokens.size(1) // 2
    with torch.no_grad(), autocast():
        fused, _ = lm_head.next_token_logprobs(policy, tokens, PAD, start=start, head="fused")
        obvious, _ = lm_head.next_token_logprobs(policy, tokens, PAD, start=start, head="obvious")
    diff = (fused.float() - obvious.float()).abs().max().item()
    bound = 0.05 if precision == "bf16" else 1e-4
    report["checks"]["fused_head"] = {"max_abs_diff": diff, "bound": bound, "ok": diff < bound}

    # --- RM ------------------------------------------------------------------------------------------
    geo = geometry["rm"]
    _reset_memory(device)
    with torch.device(device):  # the RM starts as a copy of the SFT body (detail 12)
        rm = ScalarModel.from_sft(policy.gpt_neox)
    optimizer = make_optimizer("adamw", list(rm.parameters()), 1e-6, 1e-5)
    pairs = [_tokens(2 * geo["micro"], geo["length"], vocab, g, device, response=geo["length"] // 5)
             for _ in range(geo["accumulation"])]  # fmt: skip

    def rm_loss(both):
        with autocast():
            scores = get_reward(rm, both, PAD, start=None)[1].float()
        chosen, rejected = scores[: geo["micro"]], scores[geo["micro"] :]
        return -F.logsigmoid(chosen - rejected).mean() / geo["accumulation"]

    n_rm = counted_parameters(rm.lm_backbone) + sum(p.numel() for p in rm.scalar_head.parameters())
    report["counted_parameters_rm"] = n_rm  # no LM head: the scalar head instead
    tokens = 2 * geo["micro"] * geo["accumulation"] * geo["length"]
    stage("rm", _update(optimizer, pairs, rm_loss), tokens, 6 * n_rm * tokens)
    del optimizer

    # --- DPO -----------------------------------------------------------------------------------------
    geo = geometry["dpo"]
    _reset_memory(device)
    with torch.device(device):
        reference = GPTNeoXForCausalLM(config)
    reference.load_state_dict(policy.state_dict())
    reference.eval().requires_grad_(False)
    optimizer = make_optimizer("adamw", list(policy.parameters()), 1e-6, 1e-5)
    pairs = [_tokens(2 * geo["micro"], geo["length"], vocab, g, device, response=geo["length"] - geo["prompt"])
             for _ in range(geo["accumulation"])]  # fmt: skip

    def summed(model, both):
        targets = both[:, 1:].clone()
        targets[:, : geo["prompt"] - 1] = PAD  # response tokens only
        mask = targets != PAD
        return lm_head.next_token_logprobs(model, both, PAD, start=None, targets=targets, mask=mask)[0].sum(-1)

    with torch.no_grad(), autocast():  # step 0: the reference at the policy's precision (--ref-precision same)
        both = pairs[0]
        rewards = 0.05 * (summed(policy, both).float() - summed(reference, both).float())
    biggest = rewards.abs().max().item()
    report["checks"]["dpo_step0_rewards"] = {"max_abs_reward": biggest, "bound": 1e-6, "ok": biggest <= 1e-6}

    def dpo_loss(both):
        with autocast():
            with torch.no_grad():
                ref = summed(reference, both).float()
            logp = summed(policy, both).float()
        margin = 0.05 * ((logp - ref)[: geo["micro"]] - (logp - ref)[geo["micro"] :])
        return -F.logsigmoid(margin).mean() / geo["accumulation"]

    tokens = 2 * geo["micro"] * geo["accumulation"] * geo["length"]
    stage("dpo", _update(optimizer, pairs, dpo_loss), tokens, 8 * n * tokens)  # policy 6 N + reference 2 N
    del optimizer

    # --- PPO -----------------------------------------------------------------------------------------
    geo = geometry["ppo"]
    _reset_memory(device)
    with torch.device(device):  # the critic starts as a copy of the RM (detail 22)
        critic = ScalarModel.from_sft(rm.lm_backbone)
    rm.eval().requires_grad_(False)
    model = PolicyAndValue(policy, critic)
    optimizer = make_optimizer("adamw", list(model.parameters()), 1e-6, 1e-5)
    temperature = 0.7 + 1e-7
    queries = _tokens(geo["batch"], geo["query"], vocab, g, device)
    validation = _tokens(geo["validation"], geo["query"], vocab, g, device)
    phases: dict[str, list[float]] = {"generate": [], "score": [], "train": []}
    first_ratio: list[float] = []

    def phase(name, fn):
        _sync(device)
        t0 = time.perf_counter()
        out = fn()
        _sync(device)
        phases[name].append(time.perf_counter() - t0)
        return out

    def rollout():
        with torch.no_grad(), autocast():
            parts = [(queries[i : i + geo["chunk"]], 0.7) for i in range(0, geo["batch"], geo["chunk"])]
            sampled = generate_many(policy, [parts[0], (validation, 0.01)], PAD, geo["response"])[:1]
            sampled += [generate_many(policy, [p], PAD, geo["response"])[0] for p in parts[1:]]
        responses = torch.cat([r for r, _ in sampled])
        return responses, torch.cat([lp for _, lp in sampled]).float()

    def score(responses):
        full = torch.cat((queries, responses), 1)
        with torch.no_grad(), autocast():
            ref, _ = lm_head.next_token_logprobs(reference, full, PAD, start=geo["query"] - 1, temperature=temperature)
            values = get_reward(critic, full, PAD, geo["query"], start=geo["query"] - 1)[0][:, :-1]
            scores = get_reward(rm, full, PAD, geo["query"], start=geo["query"] - 1)[1]
        return full, ref.float(), values.float(), scores.float()

    def train(full, logprobs, ref, values, scores):
        kl = logprobs - ref
        rewards = -0.05 * kl
        rewards[:, -1] += scores
        advantages, returns = rl.gae(rewards, values, 1.0, 0.95)
        advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
        accumulation = geo["batch"] // geo["micro"]  # one minibatch per epoch: one optimizer step
        for epoch in range(geo["epochs"]):
            order = torch.randperm(geo["batch"], generator=g).to(device)
            for k, i in enumerate(range(0, geo["batch"], geo["micro"])):
                mb = order[i : i + geo["micro"]]
                with autocast():
                    new, _, vpred = model(full[mb], PAD, geo["query"], temperature)
                new = new.float()
                ratio = torch.exp(new - logprobs[mb])
                if epoch == 0 and k == 0:
                    first_ratio.append((ratio - 1).abs().mean().item())
                pg = torch.max(-advantages[mb] * ratio, -advantages[mb] * ratio.clamp(0.8, 1.2)).mean()
                vf = 0.5 * (vpred[:, :-1].float() - returns[mb]).square().mean()
                ((pg + 0.1 * vf) / accumulation).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    def ppo_update():
        responses, logprobs = phase("generate", rollout)
        full, ref, values, scores = phase("score", lambda: score(responses))
        phase("train", lambda: train(full, logprobs, ref, values, scores))

    ppo_update()  # warm-up
    for values in phases.values():
        values.clear()
    first_ratio.clear()
    seconds = []
    for _ in range(args.updates):
        t0 = time.perf_counter()
        ppo_update()
        seconds.append(time.perf_counter() - t0)
    sequence = geo["query"] + geo["response"]
    rollout_tokens = (geo["batch"] + geo["validation"]) * sequence
    scored = geo["batch"] * sequence  # by each of the reference policy (N), the critic and the RM (n_rm each)
    trained = geo["epochs"] * geo["batch"] * sequence  # by the policy (N) and the critic (n_rm)
    flops = 2 * n * rollout_tokens + 2 * (n + 2 * n_rm) * scored + 6 * (n + n_rm) * trained
    report["stages"]["ppo"] = _row(seconds, geo["batch"] * sequence, flops, peak, _peak_memory_mb(device))
    report["stages"]["ppo"]["phases_seconds"] = {k: round(min(v), 4) for k, v in phases.items()}
    report["stages"]["ppo"]["episodes_per_s"] = round(geo["batch"] / min(seconds), 3)
    bound = 0.02 if precision == "bf16" else 1e-4
    worst = max(first_ratio)
    report["checks"]["ppo_first_ratio"] = {"mean_abs_ratio_minus_1": worst, "bound": bound, "ok": worst < bound}

    # --- the sampler's distribution on the device ----------------------------------------------------
    report["checks"]["sampler"] = sampler_check(device, args.seed)

    # --- bench generate at this shape --------------------------------------------------------------
    if not args.no_generate:
        report["generate"] = generate_check(policy, geo, vocab, device, autocast, g)
    report["project"] = project(report) if not args.tiny else project(report, assume_shape="pythia-1b")
    report["ok"] = all(c["ok"] for c in report["checks"].values())
    return report


def sampler_check(device, seed: int, vocab: int = 2000, draws: int = 20_000, temperature: float = 0.7) -> dict:
    """Chi-square of our sampler's draws from one row of logits against softmax(logits / T)."""
    import torch

    from rlhf_repro.generation import TEMPERATURE_EPS, _sample

    g = torch.Generator(device=device).manual_seed(seed)
    logits = (torch.randn(vocab, generator=torch.Generator().manual_seed(seed)) * 2).to(device)
    tokens, _ = _sample(logits.expand(draws, vocab).contiguous(), temperature, generator=g)
    p = torch.softmax(logits.double() / (temperature + TEMPERATURE_EPS), -1).cpu()
    counts = torch.bincount(tokens.cpu(), minlength=vocab).double()
    expected = p * draws
    keep = expected >= 5  # bins with too few expected draws pooled into one
    observed = torch.cat([counts[keep], counts[~keep].sum().view(1)])
    wanted = torch.cat([expected[keep], expected[~keep].sum().view(1)])
    chi2 = float(((observed - wanted) ** 2 / wanted.clamp_min(1e-12)).sum())
    df = int(keep.sum())  # bins - 1 (the pooled bin makes it bins + 1 - 1)
    z = (chi2 - df) / (2 * df) ** 0.5
    return {"draws": draws, "bins": df + 1, "chi2": round(chi2, 2), "df": df, "z": round(z, 3), "ok": z < 5}


def generate_check(policy, geo, vocab, device, autocast, g) -> dict:
    """Ours against HF `generate` at the rollout's geometry (one chunk), best of 3 each, alternating."""
    import torch
    from transformers import GenerationConfig

    from rlhf_repro.generation import TEMPERATURE_EPS, generate

    queries = _tokens(geo["chunk"], geo["query"], vocab, g, device)
    config = GenerationConfig(max_new_tokens=geo["response"], min_new_tokens=geo["response"], do_sample=True,
                              temperature=0.7 + TEMPERATURE_EPS, top_k=0, top_p=1.0, eos_token_id=None,
                              pad_token_id=None)  # fmt: skip
    policy.generation_config.eos_token_id = policy.generation_config.pad_token_id = None
    mask = torch.ones_like(queries)
    samplers = {
        "ours": lambda: generate(policy, queries, PAD, geo["response"], 0.7, "fast"),
        "hf_generate": lambda: policy.generate(input_ids=queries, attention_mask=mask, generation_config=config),
    }
    times = {k: [] for k in samplers}
    with torch.no_grad(), autocast():
        for fn in samplers.values():
            fn()
        for _ in range(3):
            for k, fn in samplers.items():
                _sync(device)
                t0 = time.perf_counter()
                fn()
                _sync(device)
                times[k].append(time.perf_counter() - t0)
    tokens = geo["chunk"] * geo["response"]
    out = {f"{k}_tokens_per_s": round(tokens / min(v), 1) for k, v in times.items()}
    out["speedup"] = round(out["ours_tokens_per_s"] / out["hf_generate_tokens_per_s"], 2)
    return out


def project(report: dict, assume_shape: str | None = None, processes: int = 8, overhead: float = 0.15) -> dict:
    """Hours per stage and GPU-hours per seed of the paper's runs, from the measured seconds per update.

    Method: each of the preset's 8 processes computes per update what was timed here (data parallel), so
    a stage's wall-clock is updates x measured seconds x (1 + `overhead`), the overhead standing for the
    gradient all-reduce and the ZeRO-2 bookkeeping one process does not see (an assumption: 15%). Larger
    sizes at the same per-process tokens cost in proportion to their counted parameters at the same MFU
    (the preset splits their batches into smaller micro-batches, which this keeps the token count of, and
    6.9B PPO's CPU offload of the frozen models adds time this cannot estimate: flagged). Evaluation and
    checkpoint saves are left out. GPU-hours = hours x 8."""
    n_measured = COUNTED.get(assume_shape or report["model_shape"], report["counted_parameters"])
    out: dict = {"method": project.__doc__.split("\n\n", 1)[1].strip(), "processes": processes,
                 "overhead": overhead, "sizes": {}}  # fmt: skip
    if assume_shape:
        out["note"] = f"measured on {report['model_shape']}, read as if {assume_shape}: the arithmetic only"
    for size, params in COUNTED.items():
        scale = params / n_measured
        stages = {}
        for stage, updates in PAPER_UPDATES.items():
            seconds = report["stages"][stage]["seconds_per_update"] * scale * (1 + overhead)
            stages[stage] = round(updates * seconds / 3600, 3)
        hours = round(sum(stages.values()), 3)
        out["sizes"][size] = {
            "hours_per_stage": stages,
            "hours_per_seed": hours,
            "gpu_hours_per_seed": round(hours * processes, 2),
            **({"caveat": "PPO with --offload: CPU offload time not included"} if size == "pythia-6.9b" else {}),
        }
    return out


def add_arguments(p: argparse.ArgumentParser) -> None:
    from benchmarks.speed.bench import positive_int

    p.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    p.add_argument("--tiny", action="store_true", help="a tiny shape and geometry: the CPU check of this code")
    p.add_argument("--model-shape", choices=[s for s in GPU_SHAPES if s != "tiny"], default="pythia-1b")
    p.add_argument("--precision", choices=("bf16", "fp32"), default=None, help="default: bf16 on cuda, fp32 on cpu")
    p.add_argument("--updates", type=positive_int, default=3, help="timed updates per stage (after one warm-up)")
    p.add_argument("--peak-tflops", type=float, default=None, help="the device's bf16 dense peak (default: by name)")
    p.add_argument("--no-generate", action="store_true", help="skip `bench generate` at this shape")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--seed", type=int, default=0, help="seed of the weights and the data")
    p.add_argument("--out", default=None, help="write the JSON report here (it is printed either way)")


def table(report: dict) -> str:
    lines = [
        f"{report['device']}, {report['model_shape']} ({report['parameters']:,} parameters), "
        f"{report['precision']}, torch {report['torch']}",
        "| stage | s/update | tokens/s | TFLOP/s | MFU | peak memory (MB) |",
        "|---|---|---|---|---|---|",
    ]
    for stage, row in report["stages"].items():
        mfu = f"{row['mfu']:.1%}" if row["mfu"] is not None else "-"
        lines.append(f"| {stage} | {row['seconds_per_update']} | {row['tokens_per_s']} | {row['achieved_tflops']} | "
                     f"{mfu} | {row['peak_memory_mb']} |")  # fmt: skip
    lines.append(f"PPO phases (s): {report['stages']['ppo']['phases_seconds']}")
    lines += [f"check {k}: {'ok' if v['ok'] else 'FAILED'} {v}" for k, v in report["checks"].items()]
    return "\n".join(lines)


def run(args) -> int:
    report = bench_gpu(args)
    text = json.dumps(report, indent=1)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    print(table(report), file=sys.stderr)
    print(text)
    return 0 if report["ok"] else 1
