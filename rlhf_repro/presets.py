"""The tiny preset's stage flags, as Python lists, read from their one source: `rlhf_repro/experiments.toml`
(`[presets.tiny.flags]`), which `rlhf-repro reproduce` reads too. Tests and benchmarks import them here.

The tiny world's texts are shorter than Reddit's, so its token budgets are smaller (query 256 instead
of 512). They sit above the longest texts of the default world (20,000 posts, seed 1: reference
response 72 tokens, chosen/rejected 85, query+response 331), so nothing is cut. A world of another seed
or size may differ, which is why the tiny build runs with --no-check-length-correctness and reports
over-budget rows instead. The paper's lr (3e-6) and global batches (128 SFT / 64 RM pairs) are for
billion-parameter models and >90k examples; a ~1.4M-parameter model on 16k examples needs far larger
steps and smaller batches to learn in minutes. Everything else (loss, schedule shape, read-out,
normalization, evaluation protocol) is the paper's.
"""

from __future__ import annotations

from pathlib import Path

import tomllib


def tiny_flags(stage: str) -> list[str]:
    """The tiny preset's flags of `stage` (datasets, sft, reward, ppo, dpo) from experiments.toml."""
    registry = tomllib.loads((Path(__file__).with_name("experiments.toml")).read_text())
    return list(registry["presets"]["tiny"]["flags"][stage])


TINY_DATASET_FLAGS = tiny_flags("datasets")
TINY_SFT_FLAGS = tiny_flags("sft")
TINY_REWARD_FLAGS = tiny_flags("reward")
TINY_PPO_FLAGS = tiny_flags("ppo")
TINY_DPO_FLAGS = tiny_flags("dpo")
