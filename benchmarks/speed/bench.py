"""`rlhf-repro bench generate`: rollout sampling speed, our KV-cache sampler against HF `generate`;
`rlhf-repro bench validation`: PPO's per-update validation batch sampled with a rollout chunk or alone.

    rlhf-repro bench generate --model-shape pythia-14m --json
    rlhf-repro bench generate --model-shape tiny --batch 64 --prompt-length 200 --response-length 53

Both draw `--response-length` tokens after each of `--batch` random prompts of `--prompt-length` tokens
from the same randomly initialized GPT-NeoX (shapes of `rlhf_repro.modeling.MODEL_SHAPES`: `pythia-14m` is
hidden 128, 6 layers, 4 heads, vocabulary 50,304), at T = 0.7 with top-k 0 and top-p 1 and no stop at
EOS (R-03):
- ours: `rlhf_repro.generation.generate(sampler="fast")`: a KV cache written in place, the LM head on the
  last position only, two-level inverse-CDF draws, and the sampled tokens' log-probs returned (R-02);
- HF: `model.generate(do_sample=True, ...)` with the same settings, returning tokens only (its cheapest
  path; the reference also asked it for scores).
After one warm-up call each, the two are timed alternately, `--repeats` calls each; tokens/s and speedup
count each sampler's fastest call (load from other processes only ever adds time), and the `_median` keys
give the medians. Prints a table, or with --json one object with ours_tokens_per_s,
hf_generate_tokens_per_s and speedup. A benchmark, not a test: that the two draw from one distribution is
tested in tests/test_ops_unit.py.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

from rlhf_repro.modeling import MODEL_SHAPES


def _model(shape: str, seed: int):
    import torch
    from transformers import GPTNeoXForCausalLM

    from rlhf_repro.modeling import shape_config

    # pythia-14m carries its own 50,304-token vocabulary; the tiny shapes get the world tokenizer's size.
    config = shape_config(shape, 2489)
    torch.manual_seed(seed)
    model = GPTNeoXForCausalLM(config).eval()
    return model, config


def _setup(args, *rows: int):
    """The model, its PAD id, a generator, and one batch of random prompts per entry of `rows`."""
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    model, config = _model(args.model_shape, args.seed)
    g = torch.Generator().manual_seed(args.seed)
    prompts = [torch.randint(2, config.vocab_size - 2, (n, args.prompt_length), generator=g) for n in rows]
    return model, config, config.vocab_size - 1, g, prompts


def bench_generate(args) -> dict:
    import torch
    from transformers import GenerationConfig

    from rlhf_repro.generation import TEMPERATURE_EPS, generate

    model, config, pad, g, (queries,) = _setup(args, args.batch)
    hf_config = GenerationConfig(
        max_new_tokens=args.response_length,
        min_new_tokens=args.response_length,
        do_sample=True,
        temperature=args.temperature + TEMPERATURE_EPS,
        top_k=0,
        top_p=1.0,
        eos_token_id=None,
        pad_token_id=None,
    )
    model.generation_config.eos_token_id = model.generation_config.pad_token_id = None
    mask = torch.ones_like(queries)

    def ours():
        generate(model, queries, pad, args.response_length, args.temperature, "fast", g)

    @torch.no_grad()
    def hf():
        model.generate(input_ids=queries, attention_mask=mask, generation_config=hf_config)

    samplers = {"ours": ours, "hf_generate": hf}
    for fn in samplers.values():
        fn()  # warm-up
    # Alternate the two samplers, so that load from other processes on a shared machine hits both alike, and
    # count each one's fastest call: other work can only add time to a call, never take it away.
    runs = {name: [] for name in samplers}
    for _ in range(args.repeats):
        for name, fn in samplers.items():
            t0 = time.perf_counter()
            fn()
            runs[name].append(time.perf_counter() - t0)
    tokens = args.batch * args.response_length
    out = {
        "model_shape": args.model_shape,
        "parameters": sum(p.numel() for p in model.parameters()),
        "batch": args.batch,
        "prompt_length": args.prompt_length,
        "response_length": args.response_length,
        "threads": torch.get_num_threads(),
        "repeats": args.repeats,
    }
    for name, seconds in runs.items():
        out[f"{name}_seconds"] = round(min(seconds), 4)
        out[f"{name}_tokens_per_s"] = round(tokens / min(seconds), 1)
        out[f"{name}_tokens_per_s_median"] = round(tokens / statistics.median(seconds), 1)
    out["speedup"] = round(out["ours_tokens_per_s"] / out["hf_generate_tokens_per_s"], 2)
    out["speedup_median"] = round(out["ours_tokens_per_s_median"] / out["hf_generate_tokens_per_s_median"], 2)
    return out


VALIDATION_DOC = """`rlhf-repro bench validation`: what PPO saves by sampling its validation batch with a rollout chunk.

    rlhf-repro bench validation --model-shape pythia-14m --json
    rlhf-repro bench validation --model-shape tiny-m --batch 32 --eval-batch 16 --prompt-length 120 --response-length 40

PPO samples one validation batch at T = 0.01 every update (R-05). `experiments/ppo.py` draws it in the same
decode loop as the first rollout chunk (`generation.generate_many`: one prefill and one decode loop, each row
at its own temperature) instead of a second `generate` call. This times both ways, `--repeats` times each,
alternately, on a randomly initialized GPT-NeoX of `--model-shape`:
- apart: `generate(chunk, T=0.7)` then `generate(validation, T=0.01)`;
- together: `generate_many([(chunk, 0.7), (validation, 0.01)])`.
The defaults are the paper preset's per-process geometry: a rollout chunk of 64 queries
(--local-rollout-forward-batch-size), a validation batch of 8 (--local-eval-batch-size), 53 sampled tokens;
the prompt width is the trimmed width of a typical TL;DR query batch. `saved_fraction_of_rollout` is the
time saved over the chunk's own sampling time (the cost of the validation batch that co-sampling avoids, as
a share of the rollout's generation). That the two ways draw from the same distributions is tested in
tests/test_lm_head_unit.py."""


def bench_validation(args) -> dict:
    import torch

    from rlhf_repro.generation import generate, generate_many

    model, config, pad, g, (chunk, val) = _setup(args, args.batch, args.eval_batch)
    n = args.response_length
    ways = {
        "chunk_only": lambda: generate(model, chunk, pad, n, args.temperature, "fast", g),
        "apart": lambda: (
            generate(model, chunk, pad, n, args.temperature, "fast", g),
            generate(model, val, pad, n, args.eval_temperature, "fast", g),
        ),
        "together": lambda: generate_many(
            model, [(chunk, args.temperature), (val, args.eval_temperature)], pad, n, "fast", g
        ),
    }
    runs = {name: [] for name in ways}
    with torch.no_grad():
        for fn in ways.values():
            fn()  # warm-up
        for _ in range(args.repeats):
            for name, fn in ways.items():
                t0 = time.perf_counter()
                fn()
                runs[name].append(time.perf_counter() - t0)
    best = {name: min(seconds) for name, seconds in runs.items()}
    out = {
        "model_shape": args.model_shape,
        "parameters": sum(p.numel() for p in model.parameters()),
        "batch": args.batch,
        "eval_batch": args.eval_batch,
        "prompt_length": args.prompt_length,
        "response_length": n,
        "threads": torch.get_num_threads(),
        "repeats": args.repeats,
        **{f"{name}_seconds": round(s, 4) for name, s in best.items()},
        **{f"{name}_seconds_median": round(statistics.median(s), 4) for name, s in runs.items()},
    }
    out["saved_seconds"] = round(best["apart"] - best["together"], 4)
    out["saved_fraction_of_apart"] = round(out["saved_seconds"] / best["apart"], 3)
    out["saved_fraction_of_rollout"] = round(out["saved_seconds"] / best["chunk_only"], 3)
    return out


def positive_int(text: str) -> int:
    """An argparse type: an integer of at least 1 (a count of timed calls)."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text}: at least 1")
    return value


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="rlhf-repro bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = p.add_subparsers(dest="what", required=True)
    gen = sub.add_parser("generate", help="sampling tokens/s: ours vs HF generate", description=__doc__)
    gen.add_argument("--model-shape", choices=(*MODEL_SHAPES, "tiny"), default="pythia-14m")
    gen.add_argument("--batch", type=int, default=64, help="prompts per call")
    gen.add_argument("--prompt-length", type=int, default=200, help="tokens per prompt")
    gen.add_argument("--response-length", type=int, default=53, help="tokens sampled per prompt")
    gen.add_argument("--temperature", type=float, default=0.7, help="sampling temperature (R-01)")
    gen.add_argument("--repeats", type=positive_int, default=5, help="timed calls per sampler (after one warm-up)")
    gen.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    gen.add_argument("--seed", type=int, default=0, help="seed of the weights, prompts and draws")
    gen.add_argument("--json", action="store_true", help="print one JSON object")
    val = sub.add_parser(
        "validation",
        help="PPO's validation batch: sampled with a rollout chunk vs alone",
        description=VALIDATION_DOC,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    val.add_argument("--model-shape", choices=(*MODEL_SHAPES, "tiny"), default="pythia-14m")
    val.add_argument("--batch", type=int, default=64, help="queries of the rollout chunk")
    val.add_argument("--eval-batch", type=int, default=8, help="queries of the validation batch")
    val.add_argument("--prompt-length", type=int, default=200, help="tokens per prompt")
    val.add_argument("--response-length", type=int, default=53, help="tokens sampled per prompt")
    val.add_argument("--temperature", type=float, default=0.7, help="rollout temperature (R-01)")
    val.add_argument("--eval-temperature", type=float, default=0.01, help="validation temperature (R-04)")
    val.add_argument("--repeats", type=positive_int, default=5, help="timed calls per way (after one warm-up)")
    val.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    val.add_argument("--seed", type=int, default=0, help="seed of the weights, prompts and draws")
    val.add_argument("--json", action="store_true", help="print one JSON object")
    from benchmarks.speed import gpu as bench_gpu
    from benchmarks.speed import ppo as bench_ppo
    from benchmarks.speed import steps as bench_steps

    for name, module, help_ in (
        ("gpu", bench_gpu, "the four stages at Pythia-1B shape on a GPU: s/update, memory, MFU, checks"),
        ("ppo", bench_ppo, "PPO episodes/s: ours vs TRL's PPO trainer; --sweep: time per update vs length and batch"),
        (
            "steps",
            bench_steps,
            "one training micro-step of SFT, RM, DPO, PPO and the optimizer: the obvious way vs ours",
        ),
    ):
        module.add_arguments(
            sub.add_parser(
                name, help=help_, description=module.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
            )
        )
    args = p.parse_args(argv)
    if args.what == "gpu":
        return bench_gpu.run(args)
    if args.what == "ppo":
        return bench_ppo.run(args)
    if args.what == "steps":
        return bench_steps.run(args)
    if args.model_shape == "tiny":
        args.model_shape = "tiny-m"
    if args.what == "validation":
        out = bench_validation(args)
        if args.json:
            print(json.dumps(out))
            return 0
        print("| validation batch | seconds (best) | seconds (median) |\n|---|---|---|")
        for name, label in (
            ("chunk_only", "none (the rollout chunk alone)"),
            ("apart", "apart: a second generate call"),
            ("together", "together: one decode loop (ppo.py)"),
        ):
            print(f"| {label} | {out[f'{name}_seconds']} | {out[f'{name}_seconds_median']} |")
        print(
            f"co-sampling saves {out['saved_seconds']} s per update ({out['saved_fraction_of_apart']:.0%} of apart, "
            f"{out['saved_fraction_of_rollout']:.0%} of the chunk's own sampling; {out['model_shape']}, chunk "
            f"{out['batch']} + validation {out['eval_batch']}, prompt {out['prompt_length']}, response "
            f"{out['response_length']}, {out['threads']} threads, best of {out['repeats']})"
        )
        return 0
    out = bench_generate(args)
    if args.json:
        print(json.dumps(out))
    else:
        print("| sampler | seconds (best) | tokens/s (best) | tokens/s (median) |\n|---|---|---|---|")
        for name, label in (("ours", "ours (KV cache, inverse CDF)"), ("hf_generate", "HF generate(do_sample=True)")):
            best, median = out[f"{name}_tokens_per_s"], out[f"{name}_tokens_per_s_median"]
            print(f"| {label} | {out[f'{name}_seconds']} | {best} | {median} |")
        print(
            f"speedup {out['speedup']}x (median {out['speedup_median']}x; {out['model_shape']}, {out['parameters']:,} "
            f"parameters, batch {out['batch']}, prompt {out['prompt_length']}, response {out['response_length']}, "
            f"{out['threads']} threads, best of {out['repeats']})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
