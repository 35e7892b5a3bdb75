"""LoRA for every stage, through peft: `--lora.enabled` (with `--lora.rank`, `--lora.alpha`, `--lora.dropout`,
`--lora.target-modules`) on SFT, RM, PPO and DPO.

Defaults and why (the reference's LoRA branch, PR #13, is not in the spec we hold, so these are our choice):
- rank 16, alpha 32 (scale alpha / rank = 2): peft's own default rank is 8 with alpha 8; 16 / 32 is the
  setting most TL;DR RLHF recipes with LoRA use for 1B-7B models;
- dropout 0.0: the reference disables dropout everywhere (detail 7), so the adapters do too;
- every linear layer of the GPT-NeoX blocks (`query_key_value`, `dense`, `dense_h_to_4h`, `dense_4h_to_h`),
  not the embeddings or the LM head;
- peft's initialization (A random, B zero), so a model with fresh adapters computes exactly what its base
  does: step 0 of a LoRA run is the base model's (tested).

What gets adapters: the causal LM of SFT, DPO and PPO's policy; the backbone of the RM and of PPO's
critic, whose scalar heads train in full. PPO and DPO take their reference policy from the policy itself
with the adapters switched off (`adapters_off`), so no second copy of the model is held.

Saved: RUN/adapter (peft's format: `PeftModel.from_pretrained(base, RUN/adapter)` loads it; for the RM and
the critic, the backbone's adapter, without the head), and RUN/model, the merged model, which every later
stage and analysis command reads like any other. The issue asked for the merged model behind a
`--merge-and-save` flag; a LoRA run always writes both here, because every later stage reads RUN/model.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch loads only where a model does (runs.py imports this module for its defaults)
    import torch

GPT_NEOX_LINEAR = ("query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h")


@dataclass
class LoraArgs:
    enabled: bool = False
    """Train low-rank adapters (peft LoRA) instead of every weight; the scalar heads of the RM and the critic
    train in full."""
    rank: int = 16
    """Adapter rank r."""
    alpha: float = 32.0
    """LoRA alpha: the adapters' output is scaled by alpha / r."""
    dropout: float = 0.0
    """Dropout on the adapters' input (0, as the reference disables dropout: detail 7)."""
    target_modules: tuple[str, ...] = field(default_factory=lambda: GPT_NEOX_LINEAR)
    """Module names that get adapters (GPT-NeoX: every linear layer of the blocks)."""


def add_adapters(model: torch.nn.Module, cfg: LoraArgs):
    """Wrap `model` (a causal LM or a backbone) with fresh LoRA adapters; its base weights are frozen.

    Returns (inner, peft_model): `inner` is `model` itself with the adapter layers inside (what the stage
    computes with: same class, same forward, fused LM head included), `peft_model` the peft wrapper that
    saves the adapter, switches it off and merges it."""
    from peft import LoraConfig, get_peft_model

    if cfg.rank < 1:
        raise ValueError(f"--lora.rank must be at least 1, got {cfg.rank}")
    config = LoraConfig(
        r=cfg.rank,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=list(cfg.target_modules),
        bias="none",
    )
    peft_model = get_peft_model(model, config)
    return peft_model.base_model.model, peft_model


@contextlib.contextmanager
def adapters_off(*peft_models):
    """Within: every given peft model computes as its base (the reference policy of PPO and DPO)."""
    with contextlib.ExitStack() as stack:
        for m in peft_models:
            if m is not None:
                stack.enter_context(m.disable_adapter())
        yield


def trainable(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The parameters the optimizer updates (all of them without LoRA)."""
    return [p for p in model.parameters() if p.requires_grad]


def save_adapter(peft_model, directory) -> None:
    """The adapter alone, in peft's format, written whole or not at all."""
    from rlhf_repro.io import atomic_directory

    with atomic_directory(directory) as tmp:
        peft_model.save_pretrained(str(tmp))


def merged_state_dict(model: torch.nn.Module) -> dict | None:
    """`model`'s state dict with every LoRA adapter inside it added into its base weight (W + scale B A), under
    the plain model's names: what `merge_and_unload` would save, computed without touching the model (the
    adapters stay, so PPO's and DPO's reference, the adapters switched off, is still the base). None when
    `model` holds no adapter."""
    from peft.tuners.lora import LoraLayer

    deltas = {
        f"{name}.base_layer.weight": module.get_delta_weight(module.active_adapters[0])
        for name, module in model.named_modules()
        if isinstance(module, LoraLayer)
    }
    if not deltas:
        return None
    out = {}
    for key, value in model.state_dict().items():
        if "lora_" in key:
            continue
        if key in deltas:
            value = value + deltas[key].to(value.dtype)
        out[key.replace(".base_layer.", ".")] = value
    return out
