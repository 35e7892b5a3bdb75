"""PPO's model-state memory with and without LoRA, counted: weights, gradients and AdamW's two moments of
every model a PPO run holds, in fp32, per process.

    python benchmarks/lora_memory.py                      # tiny-m, pythia-14m and Pythia-1B shapes
    python benchmarks/lora_memory.py --rank 16 --json

Full PPO holds the policy, the critic (backbone + value head), the frozen reference policy and the frozen
RM; it trains the policy and the critic (gradients and two AdamW moments for each weight). PPO with LoRA
(`--lora.enabled`) holds the policy and the critic with adapters inside, the RM, and no reference (the
policy with its adapters off is the reference); only the adapters and the value head train. Counted on
the `meta` device (no memory is allocated), so the 1B shape costs nothing here. Activations are not
counted: they depend on the batch geometry, are the same with and without LoRA for the forward, and
dominate at tiny shapes (`rlhf-repro bench ppo --lora` measures the peak resident memory of both).
"""

from __future__ import annotations

import argparse
import json
import sys

SHAPES = {
    # name: GPTNeoXConfig fields (Pythia's own for 1B: EleutherAI/pythia-1b-deduped's config)
    "pythia-1b": dict(hidden_size=2048, num_hidden_layers=16, num_attention_heads=8, intermediate_size=8192),
}


def config_of(name: str):
    from transformers import GPTNeoXConfig

    from rlhf_repro.modeling import MODEL_SHAPES, shape_config

    if name in MODEL_SHAPES:
        return shape_config(name, 2489 if MODEL_SHAPES[name]["vocab_size"] is None else 50304)
    return GPTNeoXConfig(**SHAPES[name], vocab_size=50304, rotary_pct=0.25, use_parallel_residual=True)


def counts(name: str, rank: int) -> dict:
    """Parameter counts of one PPO run's models at shape `name`, and of its LoRA adapters at `rank`."""
    import torch
    from transformers import AutoModel, AutoModelForCausalLM

    from rlhf_repro.lora import LoraArgs, add_adapters

    config = config_of(name)
    with torch.device("meta"):
        policy = AutoModelForCausalLM.from_config(config)
        backbone = AutoModel.from_config(config)
        n_policy = sum(p.numel() for p in policy.parameters())
        n_backbone = sum(p.numel() for p in backbone.parameters())
        n_head = config.hidden_size + 1  # the scalar head: a (1, H) weight and a bias
        add_adapters(policy, LoraArgs(rank=rank))
        n_policy_lora = sum(p.numel() for n, p in policy.named_parameters() if "lora_" in n)
        add_adapters(backbone, LoraArgs(rank=rank))
        n_backbone_lora = sum(p.numel() for n, p in backbone.named_parameters() if "lora_" in n)
    return {
        "policy": n_policy,
        "critic": n_backbone + n_head,
        "rm": n_backbone + n_head,
        "value_head": n_head,
        "policy_adapter": n_policy_lora,
        "critic_adapter": n_backbone_lora,
    }


def state_mb(c: dict, lora: bool) -> dict:
    """fp32 bytes of weights, gradients and AdamW moments (MB)."""
    if lora:  # no reference copy; the adapters and the value head train
        held = c["policy"] + c["policy_adapter"] + c["critic"] + c["critic_adapter"] + c["rm"]
        trained = c["policy_adapter"] + c["critic_adapter"] + c["value_head"]
    else:
        held = 2 * c["policy"] + c["critic"] + c["rm"]  # the reference policy is a second copy
        trained = c["policy"] + c["critic"]
    return {"weights": 4 * held / 2**20, "grads_and_adam": 4 * 3 * trained / 2**20}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", default=["tiny-m", "pythia-14m", "pythia-1b"], help="model shapes")
    parser.add_argument("--rank", type=int, default=16, help="LoRA rank (the default of --lora.rank)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--dry-run", action="store_true", help="name what would be counted, count nothing")
    args = parser.parse_args(argv)
    if args.dry_run:
        print(f"would count PPO's model state, full and with LoRA rank {args.rank}, at: {', '.join(args.shapes)}")
        return 0
    out = {}
    for name in args.shapes:
        c = counts(name, args.rank)
        out[name] = {"counts": c, "full": state_mb(c, False), "lora": state_mb(c, True)}
    if args.json:
        print(json.dumps(out))
        return 0
    head = f"| shape | parameters (policy) | adapters (policy + critic, r={args.rank}) | full PPO state MB"
    print(head + " | LoRA PPO state MB | ratio |")
    print("|---|---|---|---|---|---|")
    for name, r in out.items():
        full, lora = sum(r["full"].values()), sum(r["lora"].values())
        c = r["counts"]
        print(
            f"| {name} | {c['policy']:,} | {c['policy_adapter'] + c['critic_adapter']:,} | {full:,.0f} | {lora:,.0f} "
            f"| {lora / full:.2f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
