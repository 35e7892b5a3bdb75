"""Seeding, done once and the same way in every stage (R-14).

Each process seeds `random`, `numpy` and `torch` with `seed + 100003 * rank`, so ranks sample different
rollouts. Data order uses the shared `seed` on every rank, so shuffles agree across processes.
"""

from __future__ import annotations

import os
import random

RANK_SEED_STRIDE = 100003


def local_seed(seed: int, rank: int = 0) -> int:
    """The per-process seed: `seed + 100003 * rank` (the reference's formula)."""
    return seed + RANK_SEED_STRIDE * rank


def seed_everything(seed: int, rank: int = 0, deterministic: bool = False) -> int:
    """Seed python, numpy and torch with the rank-local seed; returns it.

    `deterministic` asks torch for deterministic algorithms (recorded in provenance by the caller).
    """
    import numpy as np
    import torch

    s = local_seed(seed, rank)
    random.seed(s)
    np.random.seed(s % 2**32)
    torch.manual_seed(s)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.deterministic = True
    return s


def derived_seed(*parts: int) -> int:
    """A seed for a sub-stream (an epoch's shuffle, one split's evaluation samples) from integer parts.

    Mixing through numpy's SeedSequence keeps streams apart: (seed 1, epoch 1) and (seed 2, epoch 0)
    do not collide the way `seed + epoch` would.
    """
    import numpy as np

    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])
