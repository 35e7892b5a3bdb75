"""Train the simulated world's tokenizer: byte-level BPE like Pythia's, `<|endoftext|>` = 0, `[PAD]` = 1."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from rlhf_repro.tokenization import EOS_TOKEN, PAD_TOKEN


def train_world_tokenizer(texts: Iterable[str], vocab_size: int = 4096):
    """A `PreTrainedTokenizerFast` trained on `texts` (EOS id 0 as in Pythia, PAD distinct)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS_TOKEN, PAD_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tk.train_from_iterator(texts, trainer)
    # padding_side must be a constructor argument to be saved (stack-notes §2).
    return PreTrainedTokenizerFast(
        tokenizer_object=tk,
        eos_token=EOS_TOKEN,
        bos_token=EOS_TOKEN,
        unk_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        padding_side="left",
        model_max_length=2048,
    )


def world_texts(world_dir: Path) -> Iterable[str]:
    """The texts the world's tokenizer learns from: the pretraining corpus (posts, titles, summaries) and
    the news articles. Not the references nor the compared summaries, so that changing how references
    or comparisons are written leaves the tokenizer, and the base models pretrained with it, as they are."""
    from rlhf_repro.io import read_jsonl

    world_dir = Path(world_dir)
    for path in sorted((world_dir / "pretrain").glob("*.jsonl")):
        for _, row in read_jsonl(path):
            yield from (row["subreddit"], row["title"], row["post"], row["summary"])
    for path in sorted((world_dir / "comparisons").glob("*.jsonl")):
        for _, row in read_jsonl(path):
            if row["info"].get("article"):
                yield row["info"]["article"]
                yield row["info"]["title"]


def write_world_tokenizer(world_dir: Path, vocab_size: int = 4096):
    """Train the world's tokenizer on `world_texts` and save it to WORLD/tokenizer (atomically)."""
    from rlhf_repro.io import atomic_directory

    tok = train_world_tokenizer(world_texts(Path(world_dir)), vocab_size=vocab_size)
    with atomic_directory(Path(world_dir) / "tokenizer") as tmp:
        tok.save_pretrained(str(tmp))
    return tok
