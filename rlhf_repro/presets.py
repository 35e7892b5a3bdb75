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

# Stage settings of the tiny preset. The paper's lr (3e-6) and global batches (128 SFT / 64 RM pairs)
# are for billion-parameter models and >90k examples; a ~1.4M-parameter model on 16k examples needs
# far larger steps and smaller batches to learn in minutes. Everything else (loss, schedule shape,
# read-out, normalization, evaluation protocol) is the paper's. Measured by benchmarks/sft_rm_tiny.py.
TINY_SFT_FLAGS = [
    "--lr",
    "5e-4",
    "--batch-size",
    "16",
    "--local-micro-batch-size",
    "16",
    "--local-eval-batch-size",
    "64",
    "--run-eval",
]

TINY_REWARD_FLAGS = [
    "--lr",
    "1e-4",
    "--batch-size",
    "16",
    "--local-micro-batch-size",
    "16",
    "--total-episodes",
    "8000",
    "--norm-episodes",
    "4000",
    "--local-eval-batch-size",
    "64",
    "--run-eval",
]

# PPO of the tiny preset: the paper's algorithm and switches, with a step size a ~1.4M-parameter policy
# moves at and a rollout batch this CPU turns around in seconds.
TINY_PPO_FLAGS = [
    "--lr",
    "2e-5",
    "--batch-size",
    "32",
    "--local-micro-batch-size",
    "16",
    "--local-rollout-forward-batch-size",
    "32",
    "--total-episodes",
    "1920",
    "--local-eval-batch-size",
    "16",
    "--sample-every",
    "20",
    "--run-eval",
    "--max-eval-samples",
    "500",
]

# DPO of the tiny preset: the paper's loss, beta and schedule on the same pairs and batch as the tiny RM
# (8,000 pairs, 16 per update), with the tiny RM's learning rate.
TINY_DPO_FLAGS = [
    "--lr",
    "1e-4",
    "--batch-size",
    "16",
    "--local-micro-batch-size",
    "16",
    "--total-episodes",
    "8000",
    "--local-eval-batch-size",
    "32",
    "--run-eval",
    "--max-eval-samples",
    "500",
]
