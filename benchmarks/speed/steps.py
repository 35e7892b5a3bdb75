"""`rlhf-repro bench steps`: one training micro-step of each stage, the obvious implementation against ours.

    rlhf-repro bench steps --model-shape pythia-14m --json

What the PPO profile showed (`bench ppo`) holds in every stage that trains a policy: at Pythia's 50k
vocabulary the LM head and the (rows, vocab) tensors around it cost as much as the transformer bodies, and
each fresh vocabulary-sized tensor costs page faults on top. Each row below times the forward + backward
of one micro-batch of `--micro-batch` random sequences of `--prompt-length` + `--response-length` tokens
(responses of random length, right-padded; queries full) on a randomly initialized GPT-NeoX of
`--model-shape`, two ways:
- `sft`: the next-token loss over every non-PAD token. Obvious: the model's logits at every position,
  then `F.cross_entropy`. Ours: `lm_head.next_token_nll` (the head on the non-PAD rows, chunked into
  reused buffers).
- `rm`: the reward read at each sequence's EOS. Obvious: the scalar head on every position. Ours:
  `get_reward(start=None)`: the body's last layer from the earliest EOS on only.
- `dpo`: summed response log-probs of chosen and rejected (one forward, policy with gradients, reference
  without). Obvious: full logits, `log_softmax`, gather. Ours: the head on response rows only, and the
  last layer from the first response position.
- `ppo`: the policy's new log-probs and entropy plus the critic's values. Obvious: the head on the
  response positions (`logits_to_keep`), then `log_softmax` and a separate softmax for the entropy, the
  critic's last layer on every position. Ours: `PolicyAndValue` (`lm_head`, last layers on the response
  positions only).
- `optimizer`: one AdamW step over a PPO policy and critic: PyTorch's for-loop implementation against the
  fused one `training.make_optimizer` picks.
Both sides of a row compute the same numbers (checked here to 1e-4 and in tests/test_lm_head_unit.py).
After one warm-up each, the two are timed alternately `--repeats` times; the table gives the best time of
each (load from other processes only ever adds time). A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import json
import time

from rlhf_repro.modeling import MODEL_SHAPES


def _models(shape: str, seed: int):
    import torch
    from transformers import GPTNeoXForCausalLM

    from rlhf_repro.modeling import disable_dropout, shape_config
    from rlhf_repro.reward_model import ScalarModel

    config = shape_config(shape, 2489)
    config.pad_token_id = 1
    torch.manual_seed(seed)
    policy = GPTNeoXForCausalLM(config)
    disable_dropout(policy)
    ref = GPTNeoXForCausalLM(config).eval().requires_grad_(False)
    critic = ScalarModel.from_sft(GPTNeoXForCausalLM(config).gpt_neox)
    return policy.train(), ref, critic.train(), config.vocab_size


def _batch(rows: int, prompt: int, response: int, vocab: int, seed: int):
    """(query_responses (rows, prompt + response), response lengths): random tokens >= 2, EOS (0) ending each
    response, PAD (1) after it."""
    import torch

    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(2, vocab, (rows, prompt + response), generator=g)
    lengths = torch.randint(max(1, response // 4), response + 1, (rows,), generator=g)
    for i, n in enumerate(lengths.tolist()):
        tokens[i, prompt + n - 1] = 0
        tokens[i, prompt + n :] = 1
    return tokens


def cases(args):
    """{name: (obvious step, our step)}; each step runs forward + backward and returns the numbers compared."""
    import torch
    import torch.nn.functional as F

    from experiments.ppo import PolicyAndValue
    from rlhf_repro import lm_head, ops
    from rlhf_repro.reward_model import get_reward

    policy, ref, critic, vocab = _models(args.model_shape, args.seed)
    pad, prompt, response = 1, args.prompt_length, args.response_length
    tokens = _batch(args.micro_batch, prompt, response, vocab, args.seed)
    pairs = _batch(2 * args.micro_batch, prompt, response, vocab, args.seed + 1)
    labels = pairs.clone()
    labels[:, :prompt] = pad  # DPO labels: the response tokens only
    full = tokens.clone()  # PPO: the raw sampled responses (no PAD)
    full[full == pad] = 2
    temperature = 0.7 + 1e-7

    def zero():
        for m in (policy, critic):
            m.zero_grad(set_to_none=True)

    def sft_obvious():
        zero()
        loss = ops.next_token_loss(ops.forward(policy, tokens, pad).logits, tokens, pad)
        loss.backward()
        return loss.detach()

    def sft_ours():
        zero()
        loss = lm_head.next_token_nll(policy, tokens, pad)
        loss.backward()
        return loss.detach()

    def rm_obvious():
        zero()
        scores = get_reward(critic, tokens, pad, start=0)[1]
        scores.sum().backward()
        return scores.detach()

    def rm_ours():
        zero()
        scores = get_reward(critic, tokens, pad, start=None)[1]
        scores.sum().backward()
        return scores.detach()

    targets = labels[:, 1:]
    mask = targets != pad

    def dpo_step(summed):
        """Summed response log-probs of the policy (with gradients) and the reference (without)."""

        def run():
            zero()
            with torch.no_grad():
                reference = summed(ref)
            out = summed(policy)
            (out - reference).sum().backward()
            return out.detach()

        return run

    def summed_obvious(model):
        logits = ops.forward(model, pairs, pad).logits[:, :-1].float()
        return (ops.logprobs_from_logits(logits, targets.masked_fill(~mask, 0)) * mask).sum(-1)

    def summed_ours(model):
        return lm_head.next_token_logprobs(model, pairs, pad, start=None, targets=targets, mask=mask)[0].sum(-1)

    def ppo_obvious():
        zero()
        logits = ops.forward(policy, full, pad, logits_to_keep=response + 1).logits[:, :-1]
        scaled = logits.float() / temperature
        logp = F.log_softmax(scaled, -1).gather(-1, full[:, prompt:].unsqueeze(-1)).squeeze(-1)
        with torch.no_grad():
            p = torch.softmax(scaled, -1)
            entropy = torch.logsumexp(scaled, -1) - (p * scaled).sum(-1)
        values = ops.forward(critic, full, pad)[:, prompt - 1 : -1]
        (logp.sum() + 0.1 * values.square().sum()).backward()
        return torch.cat((logp.detach(), entropy, values.detach()), 1)

    model = PolicyAndValue(policy, critic)

    def ppo_ours():
        zero()
        logp, entropy, values = model(full, pad, prompt, temperature)
        values = values[:, :-1]
        (logp.sum() + 0.1 * values.square().sum()).backward()
        return torch.cat((logp.detach(), entropy, values.detach()), 1)

    params = list(model.parameters())
    for p in params:
        p.grad = torch.randn_like(p) * 1e-3
    loop = torch.optim.AdamW(params, lr=1e-6, eps=1e-5, foreach=False)
    fused = torch.optim.AdamW([torch.nn.Parameter(p.detach().clone()) for p in params], lr=1e-6, eps=1e-5, fused=True)
    for q, p in zip(fused.param_groups[0]["params"], params):
        q.grad = p.grad.clone()

    def step(optimizer):
        def run():
            optimizer.step()
            return optimizer.param_groups[0]["params"][0].detach()[:1]

        return run

    return {
        "sft": (sft_obvious, sft_ours),
        "rm": (rm_obvious, rm_ours),
        "dpo": (dpo_step(summed_obvious), dpo_step(summed_ours)),
        "ppo": (ppo_obvious, ppo_ours),
        "optimizer": (step(loop), step(fused)),
    }


def bench_steps(args) -> dict:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    out = {
        "model_shape": args.model_shape,
        "micro_batch": args.micro_batch,
        "prompt_length": args.prompt_length,
        "response_length": args.response_length,
        "threads": torch.get_num_threads(),
        "repeats": args.repeats,
    }
    for name, (obvious, ours) in cases(args).items():
        a, b = obvious(), ours()  # warm-up, and the check that both compute the same numbers
        if name != "optimizer" and not torch.allclose(a.float(), b.float(), atol=1e-4, rtol=1e-4):
            raise AssertionError(f"{name}: ours differs from the obvious version by {(a - b).abs().max().item()}")
        times = {"obvious": [], "ours": []}
        for _ in range(args.repeats):
            for side, fn in (("obvious", obvious), ("ours", ours)):
                t0 = time.perf_counter()
                fn()
                times[side].append(time.perf_counter() - t0)
        best = {side: min(v) for side, v in times.items()}
        out[name] = {
            "obvious_seconds": round(best["obvious"], 4),
            "ours_seconds": round(best["ours"], 4),
            "speedup": round(best["obvious"] / best["ours"], 2),
        }
    return out


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model-shape", choices=tuple(MODEL_SHAPES), default="pythia-14m")
    p.add_argument("--micro-batch", type=int, default=16, help="sequences per step (DPO: pairs)")
    p.add_argument("--prompt-length", type=int, default=200, help="query tokens per sequence")
    p.add_argument("--response-length", type=int, default=53, help="largest response length")
    p.add_argument("--repeats", type=int, default=5, help="timed steps per side (after one warm-up)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--seed", type=int, default=0, help="seed of the weights and tokens")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def run(args) -> int:
    out = bench_steps(args)
    if args.json:
        print(json.dumps(out))
        return 0
    print("| step | obvious s | ours s | speedup |\n|---|---|---|---|")
    for name in ("sft", "rm", "dpo", "ppo", "optimizer"):
        r = out[name]
        print(f"| {name} | {r['obvious_seconds']} | {r['ours_seconds']} | {r['speedup']}x |")
    print(
        f"({out['model_shape']}, micro-batch {out['micro_batch']}, {out['prompt_length']}+{out['response_length']} "
        f"tokens, {out['threads']} threads, best of {out['repeats']})"
    )
    return 0
