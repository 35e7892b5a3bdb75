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
    """Every text of a generated world: posts, titles, summaries, articles and compared summaries."""
    from rlhf_repro.io import read_jsonl

    world_dir = Path(world_dir)
    for path in sorted((world_dir / "tldr").glob("*.jsonl")):
        for _, row in read_jsonl(path):
            yield from (row["subreddit"], row["title"], row["post"], row["summary"])
    for path in sorted((world_dir / "comparisons").glob("*.jsonl")):
        for _, row in read_jsonl(path):
            yield from (s["text"] for s in row["summaries"])
            if row["info"].get("article"):
                yield row["info"]["article"]
                yield row["info"]["title"]
