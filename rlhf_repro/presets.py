"""Presets: the model family and sizes of a run. `paper` is the reference's; `tiny` is the simulated world.

The tiny world's texts are shorter than Reddit's, so its token budgets are smaller (query 256 instead
of 512). They sit above the longest texts of the default world (20,000 posts, seed 1: reference
response 72 tokens, chosen/rejected 85, query+response 331), so nothing is cut. A world of another seed
or size may differ, which is why the tiny build runs with --no-check-length-correctness and reports
over-budget rows instead.
"""

TINY_DATASET_FLAGS = [
    "--tldr-params.length",
    "256",
    "--tldr-params.max-sft-response-length",
    "80",
    "--tldr-params.max-sft-query-response-length",
    "336",
    "--tldr-params.max-rm-response-length",
    "96",
    "--tldr-params.max-rm-query-response-length",
    "352",
    "--cnndm-params.length",
    "256",
    "--cnndm-params.max-rm-response-length",
    "96",
    "--cnndm-params.max-rm-query-response-length",
    "352",
    "--no-check-length-correctness",
]

PAPER_DATASET_FLAGS = [
    "--tldr-source",
    "vwxyzjn/summarize_from_feedback_tldr_3_filtered",
    "--comparisons-source",
    "openai/summarize_from_feedback",
    "--tokenizer",
    "EleutherAI/pythia-1b-deduped",
]
