"""Preference accuracy of any pair scorer (the RM, DPO's implicit reward) with the reference's breakdowns.

Both stages write the same per-pair table (`rm_eval_{split}.csv`) and the same `eval/rm/{split}/...`
metrics (§4.4, §4.10), so calibration and agreement analyses treat an explicit and an implicit RM alike.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from rlhf_repro.data import PREFERENCE_EVAL_COLUMNS, eval_batches
from rlhf_repro.training import gather_objects

EVAL_COLUMNS = [
    "row",
    "id",
    "split",
    "batch",
    "confidence",
    "choice",
    "chosen_policy",
    "rejected_policy",
    "chosen_reward",
    "rejected_reward",
    "chosen_token_len",
    "rejected_token_len",
    "accuracy",
]


def accuracy_metrics(table, prefix: str) -> dict:
    """Accuracy overall and by split, batch and labeler confidence (detail 16)."""
    metrics = {f"{prefix}/accuracy": float(table["accuracy"].mean()), f"{prefix}/n_pairs": len(table)}
    for column in ("split", "batch", "confidence"):
        for value, acc in table.groupby(column)["accuracy"].mean().items():
            metrics[f"{prefix}/accuracy/{column}/{value}"] = float(acc)
    return metrics


def evaluate_pairs(
    accelerator,
    dataset,
    eval_split: str,
    pair_rewards: Callable[[np.ndarray], tuple[torch.Tensor, torch.Tensor]],
    batch_size: int,
    max_samples: int | None = None,
    gather: bool = True,
    progress: bool = True,
    prefix: str = "eval/rm",
) -> tuple[dict, object]:
    """Score every pair of `dataset` (this process's share of its first `max_samples` rows) with
    `pair_rewards(rows) -> (chosen rewards, rejected rewards)`; (metrics, per-pair table).

    gather=False keeps the main process's shard only: the reference's measurement before its PR #15 (R-16).
    """
    import pandas as pd
    from tqdm.auto import tqdm

    rank, world = accelerator.process_index, accelerator.num_processes
    n = min(len(dataset), max_samples or len(dataset))
    meta = dataset.select_columns(list(PREFERENCE_EVAL_COLUMNS) + ["chosen_token_len", "rejected_token_len"])
    rows = []
    with torch.no_grad():
        for idx in tqdm(
            eval_batches(n, batch_size, world, rank),
            desc=f"{prefix.split('/')[-1]} eval {eval_split}",
            disable=not (progress and accelerator.is_main_process),
        ):
            r_chosen, r_rejected = pair_rewards(idx)
            info = meta[idx.tolist()]
            for i, row in enumerate(idx.tolist()):
                rows.append(
                    {
                        "row": row,
                        "id": info["info"][i]["id"],
                        "split": info["split"][i],
                        "batch": info["batch"][i],
                        "confidence": (info["extra"][i] or {}).get("confidence"),
                        "choice": info["choice"][i],
                        "chosen_policy": info["chosen_policy"][i],
                        "rejected_policy": info["rejected_policy"][i],
                        "chosen_reward": r_chosen[i].item(),
                        "rejected_reward": r_rejected[i].item(),
                        "chosen_token_len": info["chosen_token_len"][i],
                        "rejected_token_len": info["rejected_token_len"][i],
                        # Strict: a tie counts as wrong (§4.4).
                        "accuracy": float(r_chosen[i].item() > r_rejected[i].item()),
                    }
                )
    if gather:
        rows = gather_objects(accelerator, rows)
    table = pd.DataFrame(rows, columns=EVAL_COLUMNS).sort_values("row").drop(columns=["row"]).reset_index(drop=True)
    return accuracy_metrics(table, f"{prefix}/{eval_split}"), table
