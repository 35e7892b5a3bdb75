"""ROUGE as the reference computes it (n-plus-details.md §4.3), without HF `evaluate`.

The reference calls `evaluate.load("rouge").compute(predictions, references)` once per evaluation
batch; that metric script cannot be fetched offline. Its defaults are reproduced here on the same
backend (`rouge-score`): rouge1/rouge2/rougeL/rougeLsum, the default tokenizer, no stemmer, F-measure,
and the `BootstrapAggregator`'s mid value per batch. The per-batch values are then averaged (a mean
of batch means). Alongside, `corpus` is the plain mean of per-pair F-measures over the whole split,
which does not depend on how rows were batched or on the bootstrap's random draws.
"""

from __future__ import annotations

import numpy as np

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")


def pair_scores(predictions: list[str], references: list[str]) -> list[dict]:
    """rouge_score `Score` tuples per pair: [{rouge_type: Score(precision, recall, fmeasure)}]."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=False)
    return [scorer.score(ref, pred) for pred, ref in zip(predictions, references)]


def batch_value(scores: list[dict], seed: int) -> dict[str, float]:
    """What `evaluate`'s rouge returns for one batch: the bootstrap aggregator's mid F-measure.

    The aggregator resamples with numpy's global RNG; it is seeded here (and the global state restored)
    so that the number is reproducible.
    """
    from rouge_score import scoring

    state = np.random.get_state()
    np.random.seed(seed % 2**32)
    try:
        agg = scoring.BootstrapAggregator()
        for s in scores:
            agg.add_scores(s)
        result = agg.aggregate()
    finally:
        np.random.set_state(state)
    return {k: float(result[k].mid.fmeasure) for k in ROUGE_TYPES}


def aggregate(scores: list[dict], groups: list[int], seed: int = 0) -> dict[str, dict[str, float]]:
    """{"reference": mean over batches of batch_value, "corpus": mean per-pair F} for each rouge type.

    `groups[i]` names the evaluation batch of pair i (the reference's per-rank batch of
    `local_eval_batch_size` rows).
    """
    if not scores:
        return {"reference": {}, "corpus": {}}
    by_group: dict[int, list[dict]] = {}
    for s, g in zip(scores, groups):
        by_group.setdefault(g, []).append(s)
    per_batch = [batch_value(by_group[g], seed + g) for g in sorted(by_group)]
    return {
        "reference": {k: float(np.mean([b[k] for b in per_batch])) for k in ROUGE_TYPES},
        "corpus": {k: float(np.mean([s[k].fmeasure for s in scores])) for k in ROUGE_TYPES},
    }
