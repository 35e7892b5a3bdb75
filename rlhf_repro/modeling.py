"""Model construction and loading: Pythia-architecture model shapes, hub/local loading, dropout off (detail 7)."""

from __future__ import annotations

import os
from pathlib import Path

from rlhf_repro.io import InputError, from_hub, looks_like_hub_id

# GPT-NeoX shapes with Pythia's architecture: rotary on 25% of head dims, parallel residual, untied
# input/output embeddings. `vocab_size` None means: the tokenizer's size rounded up to 128, the way
# Pythia's embedding table is larger than its tokenizer's vocabulary (detail 3).
MODEL_SHAPES = {
    "tiny-xs": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128, vocab_size=None),
    "tiny-s": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=256, vocab_size=None),
    "tiny-m": dict(hidden_size=128, num_hidden_layers=4, num_attention_heads=4, intermediate_size=512, vocab_size=None),
    "tiny-l": dict(
        hidden_size=256, num_hidden_layers=6, num_attention_heads=8, intermediate_size=1024, vocab_size=None
    ),
    # The shape of EleutherAI/pythia-14m (random weights), for benchmarks at Pythia's vocabulary size.
    "pythia-14m": dict(
        hidden_size=128, num_hidden_layers=6, num_attention_heads=4, intermediate_size=512, vocab_size=50304
    ),
}


def padded_vocab_size(n_tokens: int, multiple: int = 128) -> int:
    return -(-n_tokens // multiple) * multiple


def shape_config(name: str, tokenizer_size: int, eos_token_id: int = 0, max_positions: int = 2048):
    """A GPTNeoXConfig for a named model shape, sized to hold `tokenizer_size` tokens."""
    from transformers import GPTNeoXConfig

    if name not in MODEL_SHAPES:
        raise InputError(f"unknown model shape {name!r}; one of {', '.join(MODEL_SHAPES)}")
    shape = dict(MODEL_SHAPES[name])
    vocab = shape.pop("vocab_size") or padded_vocab_size(tokenizer_size)
    if vocab < tokenizer_size:
        raise InputError(f"model shape {name!r} has {vocab} embeddings but the tokenizer has {tokenizer_size} tokens")
    return GPTNeoXConfig(
        vocab_size=vocab,
        rotary_pct=0.25,
        use_parallel_residual=True,
        tie_word_embeddings=False,
        max_position_embeddings=max_positions,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        bos_token_id=eos_token_id,
        eos_token_id=eos_token_id,
        **shape,
    )


def set_dropout(model, p: float) -> None:
    """Set every dropout rate of `model` to p: each `nn.Dropout`, the float rates some attention modules
    read directly (transformers 5's GPT-NeoX attention keeps `attention_dropout` as a number) and the
    config's `*dropout*` fields, so a saved model reloads with the same rates."""
    import torch

    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = p
        for name in ("attention_dropout", "dropout"):
            if isinstance(getattr(module, name, None), float):
                setattr(module, name, p)
        config = getattr(module, "config", None)
        for key, value in list(vars(config).items()) if config is not None else ():
            if "dropout" in key and isinstance(value, float):
                setattr(config, key, p)


def disable_dropout(model) -> None:
    """Dropout off everywhere (detail 7): log-probs must be reproducible for PPO ratios."""
    set_dropout(model, 0.0)


def check_model_source(name_or_path: str | os.PathLike) -> None:
    p = Path(name_or_path)
    if p.exists():
        if not (p / "config.json").exists():
            raise InputError("not a model directory (no config.json); save models with save_pretrained", p)
    elif not looks_like_hub_id(str(name_or_path)):
        raise InputError("no such model directory", name_or_path)


def check_architecture(directory: str | os.PathLike, suffix: str, wanted: str) -> None:
    """Stop when a local model directory's config.json names architectures that are not `*{suffix}`
    (e.g. a reward model where a policy belongs), before transformers drops or invents weights."""
    import json

    path = Path(directory) / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise InputError(f"unreadable model config ({type(e).__name__}: {e})", path) from None
    if not isinstance(config, dict) or "model_type" not in config:
        raise InputError("not a transformers model config (no model_type)", path, field="model_type")
    archs = config.get("architectures") or []
    if archs and not any(str(a).endswith(suffix) for a in archs):
        raise InputError(f"architectures {archs}: expected {wanted}", path, field="architectures")


def load_causal_lm(name_or_path: str | os.PathLike, revision: str | None = None, dtype="float32"):
    """AutoModelForCausalLM from a hub id or a local save_pretrained directory, dropout disabled.

    In fp32 by default, whatever the checkpoint's dtype: transformers 5 would keep Pythia's fp16 or a bf16
    save as they are, where the reference (transformers 4) trained fp32 weights and left precision to the
    launcher (R-17). `dtype="auto"` keeps the checkpoint's."""
    from transformers import AutoModelForCausalLM

    check_model_source(name_or_path)
    kwargs = {"revision": revision} if revision else {}
    if dtype is not None:
        kwargs["dtype"] = dtype  # transformers takes "float32", "auto" or a torch.dtype
    if Path(name_or_path).exists():
        check_architecture(name_or_path, "ForCausalLM", "a causal language model (a pretrain, SFT or PPO model/)")
        model = AutoModelForCausalLM.from_pretrained(str(name_or_path), **kwargs)
    else:
        model = from_hub("model", str(name_or_path), AutoModelForCausalLM.from_pretrained, str(name_or_path), **kwargs)
    disable_dropout(model)
    return model


def count_parameters(model, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
