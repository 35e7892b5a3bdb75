"""Tokenizer loading for every stage, with the padding convention of detail 3.

A tokenizer is named by a hub id (`EleutherAI/pythia-1b-deduped`), a local directory saved with
`save_pretrained`, or a bare `tokenizer.json` file (such as the GPT-NeoX-20B tokenizer that all Pythia
models share). The reference registers a new special token `[PAD]` right after loading and pads with
it everywhere: if PAD were EOS, masks would hide the EOS token, the SFT model would never learn to
stop, and the RM could not find the EOS to read its reward.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from rlhf_repro.io import InputError, from_hub, looks_like_hub_id

EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "[PAD]"


def load_tokenizer(name_or_path: str | os.PathLike, pad_token: str = PAD_TOKEN, revision: str | None = None):
    """Load a tokenizer, register `pad_token` as its padding token and check EOS and PAD.

    Raises InputError when the tokenizer has no EOS token or when PAD would equal EOS.
    """
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    path = Path(name_or_path)
    if path.is_file():
        if path.suffix != ".json":
            raise InputError("expected a tokenizer.json file or a tokenizer directory", path)
        tokenizer = _readable(path, lambda: PreTrainedTokenizerFast(tokenizer_file=str(path)))
        vocab = tokenizer.get_vocab()
        if EOS_TOKEN in vocab:
            # A bare tokenizer.json names no special roles; Pythia's are all <|endoftext|> (id 0).
            tokenizer.add_special_tokens({"eos_token": EOS_TOKEN, "bos_token": EOS_TOKEN, "unk_token": EOS_TOKEN})
    elif path.is_dir():
        if not (path / "tokenizer.json").exists() and not (path / "tokenizer_config.json").exists():
            raise InputError("directory has no tokenizer.json or tokenizer_config.json", path)
        tokenizer = _readable(path, lambda: AutoTokenizer.from_pretrained(str(path)))
    else:
        if not looks_like_hub_id(str(name_or_path)):
            raise InputError("no such tokenizer file or directory", name_or_path)
        tokenizer = from_hub(
            "tokenizer", str(name_or_path), AutoTokenizer.from_pretrained, str(name_or_path), revision=revision
        )
    if tokenizer.eos_token is None or tokenizer.eos_token_id is None:
        raise InputError(
            "tokenizer has no EOS token; the pipeline appends EOS to every summary (detail 3). "
            f"Use a tokenizer that defines eos_token (for Pythia: {EOS_TOKEN!r}).",
            name_or_path,
        )
    if tokenizer.pad_token != pad_token:
        tokenizer.add_special_tokens({"pad_token": pad_token})
    if tokenizer.pad_token_id == tokenizer.eos_token_id:
        raise InputError(
            f"PAD token {tokenizer.pad_token!r} has the same id ({tokenizer.pad_token_id}) as EOS: padding masks "
            "would hide EOS, so the policy never learns to stop and the RM cannot find the EOS to read its "
            f"reward (detail 3). Use a distinct padding token such as {PAD_TOKEN!r}.",
            name_or_path,
        )
    return tokenizer


def _readable(path: Path, load):
    """`load()`, with a damaged or foreign tokenizer file (any parse error of the tokenizers library or
    transformers) reported as one InputError naming it."""
    try:
        return load()
    except Exception as e:  # the Rust parser raises a bare Exception; transformers raises several types
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise InputError(f"not a readable tokenizer ({type(e).__name__}: {first[:200]})", path) from None


def tokenizer_fingerprint(tokenizer) -> str:
    """A content hash of the tokenizer's vocabulary and special tokens, for provenance records."""
    h = hashlib.sha256()
    for token, idx in sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1]):
        h.update(f"{idx}\t{token}\n".encode())
    h.update(f"eos={tokenizer.eos_token_id};pad={tokenizer.pad_token_id}".encode())
    return h.hexdigest()[:16]
