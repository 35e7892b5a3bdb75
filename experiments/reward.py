"""Reward-model training on human preference pairs: stage 2 of the N+ pipeline (details 10-18).

    python experiments/reward.py --sft-model-path results/paper/sft/pythia-1b-deduped/44413/model --run-eval
    torchrun --standalone --nproc_per_node 2 experiments/reward.py ...   # 2 CPU processes

The RM is the SFT model's transformer body plus a scalar head with N(0, 1/sqrt(d+1)) weights and zero
bias (detail 11). A sequence's reward is the head's output at its last non-PAD token, the EOS the
dataset appends (detail 12). Loss -log sigmoid(r_chosen - r_rejected), AdamW (eps 1e-5) at 3e-6,
cosine, global batch 64 pairs, one epoch over 92,832 pairs (detail 10).

After training, every SFT-train reference summary is scored and the mean is stored as the model's
bias, so references average 0 (detail 15); the same pass scores each reference right-padded (the RM's
layout) and left-padded (PPO's layout) and reports how far the two disagree (detail 14). The model is
then saved and, with --run-eval, evaluated on validation and validation_cnndm: accuracy overall and by
split, batch and labeler confidence (detail 16-17), plus a per-pair table for calibration analysis.

Two reference behaviours are flags. --shuffle-seed per-rank (the default, R-15) shuffles the pairs
with each process's own seed, so with several processes some pairs are seen twice and others never;
`shared` gives every process the same order (a true epoch). --eval-gather all (the default) gathers
every process's pairs before computing accuracy; `rank0` reproduces the reference's measurement bug
before its PR #15 (R-16): accuracy from the main process's shard only.

Writes RESULTS_DIR/EXPERIMENT/reward/MODEL_NAME/SEED/: config.json, provenance.json, metrics.jsonl
(`train/rm/*`, `eval/rm/*`), rm_normalization.csv, rm_eval_{split}.csv, summary.json, checkpoint/ and
model/ (a self-contained save_pretrained directory: backbone + head + bias, R-20 fixed).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F

from rlhf_repro.data import (
    PREFERENCE_COLUMNS,
    PREFERENCE_EVAL_COLUMNS,
    SFT_COLUMNS,
    check_padding,
    eval_batches,
    load_processed,
    microbatch_rows,
    permutation,
    rows_seen,
    token_batch,
)
from rlhf_repro.io import InputError
from rlhf_repro.lora import LoraArgs, add_adapters, trainable
from rlhf_repro.ops import trim_right_padding
from rlhf_repro.pair_eval import evaluate_pairs
from rlhf_repro.reward_model import get_reward
from rlhf_repro.runs import model_name_of
from rlhf_repro.seeding import local_seed
from rlhf_repro.training import RESUME_IGNORED as STAGE_RESUME_IGNORED
from rlhf_repro.training import StageArgs, clip_gradients, gather_objects, prepare_trained

RTOL = 1e-2  # detail 14: a left/right layout difference above this counts as unexpected (hard-coded there too)


@dataclass
class Args(StageArgs):
    # --- run -------------------------------------------------------------------------------------
    experiment: str = "reward"
    """Experiment name: the run folder is RESULTS_DIR/EXPERIMENT/reward/MODEL_NAME/SEED."""
    model_name: str | None = None
    """Model name in the run folder; default: taken from --sft-model-path."""
    results_dir: str = "results"
    """Root of run folders."""
    seed: int = 1
    """Seed; process r uses seed + 100003*r (R-14)."""
    run_eval: bool = False
    """After training, evaluate accuracy on validation and validation_cnndm."""

    # --- model and data --------------------------------------------------------------------------
    sft_model_path: str = "EleutherAI/pythia-1b-deduped"
    """The SFT model whose body the RM starts from (sft.py's RUN/model directory, or a hub id)."""
    reward_model_path: str | None = None
    """Start from this saved RM instead (with --num-train-epochs 0: only normalize and evaluate it)."""
    tokenizer: str | None = None
    """Tokenizer; default: the SFT model's (or the RM's)."""
    label_dataset: str = "vwxyzjn/summarize_from_feedback_oai_preprocessing_1706381144"
    """Processed preference dataset: a hub id or build_dataset.py's preference/ directory."""
    query_dataset: str = "vwxyzjn/summarize_from_feedback_tldr_3_filtered_oai_preprocessing_1706381144"
    """Processed SFT dataset whose train references set the reward bias (detail 15)."""

    # --- optimizer (detail 8) --------------------------------------------------------------------
    lr: float = 3e-6
    """Learning rate."""
    eps: float = 1e-5
    """Adam epsilon."""
    max_grad_norm: float = 0.0
    """Clip the global gradient norm to this before every optimizer step; 0: never, as the reference (R-10).
    Set on every backend: under DeepSpeed it is the config's `gradient_clipping`, which accelerate >= 1.x
    would otherwise fill with 1.0 for the reference's YAML (its accelerate 0.25 left it off)."""
    optimizer: Literal["adam", "adamw"] = "adamw"
    """Optimizer; adamw uses PyTorch's default weight decay 0.01."""
    lora: LoraArgs = field(default_factory=LoraArgs)
    """LoRA adapters through peft on the RM's backbone; the scalar head trains in full (rlhf_repro/lora.py)."""
    scheduler: str = "cosine"
    """transformers `get_scheduler` name, stepped once per update."""
    warm_up_steps: int = 0
    """Warmup updates of the scheduler."""

    # --- batch sizes (detail 10) -----------------------------------------------------------------
    num_train_epochs: int = 1
    """Epochs over the selected pairs (0: no training)."""
    batch_size: int = 64
    """Global batch: pairs per update over all processes. Accumulation steps are derived from it:
    batch_size / (local micro-batch x processes), e.g. 8 on the reference's 8 GPUs."""
    gradient_accumulation_steps: int | None = None
    """Micro-batches per update on each process; when set, it overrides --batch-size."""
    local_micro_batch_size: int = 1
    """Pairs per micro-batch on each process (global batch = this x accumulation x processes)."""
    local_eval_batch_size: int = 1
    """Pairs (or references) per evaluation batch on each process."""
    total_episodes: int | None = 92832
    """Pairs selected from the shuffled train split (the reference's hard-coded 92,832 of 92,858);
    None or a larger number: all of them."""
    shuffle_seed: Literal["per-rank", "shared"] = "per-rank"
    """Seed of the pair shuffle (R-15): per-rank (the reference: seed + 100003*rank, so processes draw
    overlapping shards) or shared (one order for every process: each pair once per epoch)."""

    # --- evaluation ------------------------------------------------------------------------------
    eval_gather: Literal["all", "rank0"] = "all"
    """Pairs behind the reported accuracy: all processes' (fixed) or the main process's shard only
    (the reference before its PR #15, R-16)."""
    norm_episodes: int | None = None
    """Score only the first N (shuffled) SFT-train references for the bias; default: all (detail 15)."""
    max_eval_samples: int | None = None
    """Evaluate only the first N pairs of each validation split (default: all)."""


# Flags of paper details: W&B tags name those that differ from the paper's defaults.
DETAIL_FLAGS = (
    "max_grad_norm",
    "batch_size",
    "lr",
    "eps",
    "optimizer",
    "scheduler",
    "warm_up_steps",
    "num_train_epochs",
    "total_episodes",
    "shuffle_seed",
    "eval_gather",
)

# Fields that do not change the training a checkpoint holds: a resumed run may change them.
RESUME_IGNORED = (
    *STAGE_RESUME_IGNORED,
    "run_eval",
    "eval_gather",
    "norm_episodes",
    "max_eval_samples",
    "local_eval_batch_size",
)


def shuffled_order(args: Args, rank: int, n: int, keep: int | None):
    """The first `keep` rows of the order in which `rank` reads a dataset of n rows. R-15: the reference
    shuffles the pairs (and the normalization set) with the rank-local seed before selecting, so
    processes shard different permutations; `--shuffle-seed shared` gives them one order."""
    seed = local_seed(args.seed, rank) if args.shuffle_seed == "per-rank" else args.seed
    return permutation(n, seed)[: keep or n]


def pair_rewards(model, chosen: torch.Tensor, rejected: torch.Tensor, pad: int):
    """Rewards of the chosen and rejected sequences of a batch of pairs, in one forward pass."""
    query_responses = trim_right_padding(torch.cat((chosen, rejected), 0), pad)
    _, rewards, _ = get_reward(model, query_responses, pad, start=None)  # last layer from the earliest read on
    return rewards[: len(chosen)], rewards[len(chosen) :]


def normalize(args: Args, accelerator, model, dataset, pad: int) -> tuple[dict, object]:
    """Score SFT-train references in both layouts (details 14, 15); returns (metrics, per-reference table)."""
    import pandas as pd
    from tqdm.auto import tqdm

    rank, world = accelerator.process_index, accelerator.num_processes
    order = shuffled_order(args, rank, len(dataset), args.norm_episodes)
    ids = dataset.select_columns(["id"]) if "id" in dataset.column_names else None
    rows = []
    unwrapped = accelerator.unwrap_model(model)
    unwrapped.eval()
    with torch.no_grad():
        for batch in tqdm(
            eval_batches(len(order), args.local_eval_batch_size, world, rank),
            desc="rm normalization",
            disable=not (args.progress and accelerator.is_main_process),
        ):
            idx = order[batch]
            queries, references, query_references = (
                t.to(accelerator.device) for t in token_batch(dataset, idx, *SFT_COLUMNS)
            )
            # RM layout: query + reference right-padded. PPO layout: left-padded query, then the reference.
            _, right, _ = get_reward(unwrapped, trim_right_padding(query_references, pad), pad)
            left_layout = trim_right_padding(torch.cat((queries, references), 1), pad)
            _, left, _ = get_reward(unwrapped, left_layout, pad, context_length=queries.size(1))
            id_values = ids[idx.tolist()]["id"] if ids is not None else [str(i) for i in idx]
            for i in range(len(idx)):
                diff = (right[i] - left[i]).item()
                rows.append({"row": int(idx[i]), "id": id_values[i], "reward": right[i].item(), "layout_diff": diff})
    unwrapped.train()
    table = pd.DataFrame(gather_objects(accelerator, rows), columns=["row", "id", "reward", "layout_diff"])
    rewards = table["reward"]
    metrics = {
        "eval/rm/normalized_mean": float(rewards.mean()),
        "eval/rm/normalized_std": float(rewards.std()),
        "eval/rm/normalized_max": float(rewards.max()),
        "eval/rm/normalized_min": float(rewards.min()),
        # The reference's metric names, typo included, so curves line up with its W&B runs.
        "eval/rm/normalized_unexpecte_reward_diff_mean": float(table["layout_diff"].mean()),
        "eval/rm/normalized_unexpecte_reward_diff_gt_rtol_mean": float((table["layout_diff"].abs() > RTOL).mean()),
        "eval/rm/normalized_distinct_fraction": float(table["row"].nunique() / max(1, len(table))),
    }
    return metrics, table


def evaluate(args: Args, accelerator, model, dataset, eval_split: str, pad: int) -> tuple[dict, object]:
    """Accuracy on one validation split with the reference's breakdowns (detail 16); (metrics, pair table)."""
    unwrapped = accelerator.unwrap_model(model)
    unwrapped.eval()

    def rewards(idx):
        chosen, rejected = (t.to(accelerator.device) for t in token_batch(dataset, idx, *PREFERENCE_COLUMNS[1:3]))
        return pair_rewards(unwrapped, chosen, rejected, pad)

    metrics, table = evaluate_pairs(
        accelerator,
        dataset,
        eval_split,
        rewards,
        args.local_eval_batch_size,
        args.max_eval_samples,
        gather=args.eval_gather == "all",
        progress=args.progress,
    )
    unwrapped.train()
    return metrics, table


def main(args: Args) -> dict:
    from tqdm.auto import tqdm
    from transformers import get_scheduler

    from rlhf_repro.reward_model import ScalarModel, load_backbone, load_reward_model
    from rlhf_repro.tokenization import load_tokenizer
    from rlhf_repro.training import StageRun, batch_geometry, crash_point, make_optimizer, setup_stage

    accelerator, accumulation = setup_stage(args)
    rank, world = accelerator.process_index, accelerator.num_processes
    source_model = args.reward_model_path or args.sft_model_path
    stage = StageRun(args, "reward", args.model_name or model_name_of(source_model), accelerator, RESUME_IGNORED)
    if (finished := stage.finished()) is not None:
        return finished
    model_name = stage.model_name

    # --- data ------------------------------------------------------------------------------------
    tokenizer = load_tokenizer(args.tokenizer or source_model)
    pad = tokenizer.pad_token_id
    label_splits = {"train": PREFERENCE_COLUMNS}
    if args.run_eval:
        columns = PREFERENCE_COLUMNS + PREFERENCE_EVAL_COLUMNS + ("chosen_token_len", "rejected_token_len")
        label_splits.update(validation=columns, validation_cnndm=columns)
    labels = load_processed(args.label_dataset, label_splits)
    norm_set = load_processed(args.query_dataset, {"train": SFT_COLUMNS})["train"]
    train = labels["train"]
    check_padding(train, "chosen_token", pad, "right", args.label_dataset)
    check_padding(norm_set, "reference_response_token", pad, "right", args.query_dataset)
    episodes = min(args.total_episodes or len(train), len(train))
    if accelerator.is_main_process and args.total_episodes and args.total_episodes > len(train):
        print(f"--total-episodes {args.total_episodes} > {len(train)} train pairs: using all {len(train)}")
    derived = batch_geometry(args.local_micro_batch_size, accumulation, world, episodes, args.num_train_epochs)
    if args.num_train_epochs > 0 and derived["num_updates"] == 0:
        raise InputError(
            f"global batch {derived['batch_size']} is larger than the {episodes} selected pairs; lower --batch-size",
            args.label_dataset,
        )
    num_updates, updates_per_epoch = derived["num_updates"], derived["updates_per_epoch"]
    order = shuffled_order(args, rank, len(train), episodes)

    # --- model (details 10, 11) --------------------------------------------------------------------
    if args.reward_model_path:
        model = load_reward_model(args.reward_model_path)
    else:
        model = ScalarModel.from_sft(load_backbone(args.sft_model_path), source_model=args.sft_model_path)
    peft_model = None
    if args.lora.enabled:  # adapters on the backbone; the scalar head trains in full
        model.lm_backbone, peft_model = add_adapters(model.lm_backbone, args.lora)
    optimizer = make_optimizer(args.optimizer, trainable(model), args.lr, args.eps)
    scheduler = get_scheduler(
        args.scheduler, optimizer=optimizer, num_warmup_steps=args.warm_up_steps, num_training_steps=num_updates
    )
    state = stage.restore(model, optimizer, scheduler)
    start = stage.start_step
    model, optimizer = prepare_trained(
        accelerator, args.local_micro_batch_size, model, optimizer, max_grad_norm=args.max_grad_norm
    )
    stage.open(
        derived,
        inputs={
            "sft_model_path": args.sft_model_path,
            "reward_model_path": args.reward_model_path,
            "label_dataset": args.label_dataset,
            "query_dataset": args.query_dataset,
            "tokenizer": args.tokenizer,
        },
        detail_flags=DETAIL_FLAGS,
    )
    if accelerator.is_main_process:
        print(
            f"reward {model_name}: {episodes} pairs x {args.num_train_epochs} epoch(s), global batch "
            f"{derived['batch_size']} ({args.local_micro_batch_size} x {accumulation} x {world} "
            f"processes) -> {num_updates} updates, shuffle {args.shuffle_seed}"
            + (f"; resuming from update {start}" if state else "")
        )

    # --- training loop ---------------------------------------------------------------------------
    model.train()
    t_train, loss_value = time.time(), None
    bar = tqdm(
        range(start, num_updates),
        initial=start,
        total=num_updates,
        desc="reward",
        disable=not (args.progress and accelerator.is_main_process),
    )
    for update in bar:
        epoch_update = update % updates_per_epoch  # the reference repeats the same order each epoch
        stats = []
        for step in range(accumulation):
            rows = microbatch_rows(order, args.local_micro_batch_size, accumulation, world, rank, epoch_update, step)
            chosen, rejected = (t.to(accelerator.device) for t in token_batch(train, rows, *PREFERENCE_COLUMNS[1:3]))
            with accelerator.accumulate(model):
                r_chosen, r_rejected = pair_rewards(model, chosen, rejected, pad)
                loss = -F.logsigmoid(r_chosen - r_rejected).mean()
                accelerator.backward(loss)
                clip_gradients(accelerator, model, args.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad()
            stats.append(
                torch.stack(
                    [
                        loss.detach(),
                        (r_chosen > r_rejected).float().mean(),
                        r_chosen.detach().mean(),
                        r_rejected.detach().mean(),
                    ]
                )
            )
        scheduler.step()
        mean = accelerator.gather(torch.stack(stats)).reshape(-1, 4).mean(0).tolist()
        loss_value = mean[0]
        done = update + 1
        stage.check_finite(loss_value, "train/rm/loss", done)
        stage.log(
            {
                "train/rm/loss": mean[0],
                "train/rm/accuracy": mean[1],
                "train/rm/chosen_rewards": mean[2],
                "train/rm/rejected_rewards": mean[3],
                "train/rm/lr": scheduler.get_last_lr()[0],
                "train/rm/episode": done * derived["batch_size"],
            },
            step=done,
        )
        bar.set_postfix(loss=f"{mean[0]:.3f}", acc=f"{mean[1]:.2f}")
        stage.end_update(done, num_updates, model, optimizer, scheduler)
    bar.close()
    seen = {int(r) for p in range(world) for r in rows_seen(shuffled_order(args, p, len(train), episodes), derived, p)}
    summary: dict = {
        "model_name": model_name,
        **derived,
        "train_seconds": round(time.time() - t_train, 2),
        "final_train_loss": loss_value,
        # R-15 made visible: with per-rank shuffling and 2+ processes some pairs are never trained on.
        # Computed from the same per-rank orders and micro-batch assignment the loop reads its rows from.
        "train/rm/distinct_pairs_fraction": len(seen) / max(1, updates_per_epoch * derived["batch_size"]),
    }

    # --- normalization (details 14, 15) ----------------------------------------------------------
    t_norm = time.time()
    norm_metrics, norm_table = normalize(args, accelerator, model, norm_set, pad)
    unwrapped = accelerator.unwrap_model(model)
    # Scores already subtract the current bias (0 for a fresh head), so the new bias adds their mean.
    unwrapped.config.bias = float(unwrapped.config.bias + norm_metrics["eval/rm/normalized_mean"])
    norm_metrics["eval/rm/bias"] = unwrapped.config.bias
    stage.log(norm_metrics, step=num_updates)
    stage.write_table("rm_normalization.csv", norm_table)
    summary.update(norm_metrics)
    summary["normalization_seconds"] = round(time.time() - t_norm, 2)
    crash_point("normalization")
    if accelerator.is_main_process:
        print(
            f"reference rewards: mean {norm_metrics['eval/rm/normalized_mean']:.4f} -> bias "
            f"{unwrapped.config.bias:.4f}; left vs right padding: mean diff "
            f"{norm_metrics['eval/rm/normalized_unexpecte_reward_diff_mean']:.2e}, "
            f"{norm_metrics['eval/rm/normalized_unexpecte_reward_diff_gt_rtol_mean']:.1%} over rtol {RTOL}"
        )

    # --- save (PPO's --reward-model-path) --------------------------------------------------------
    stage.save_model(model, tokenizer, adapters={"adapter": peft_model})

    # --- evaluation (details 16, 17) -------------------------------------------------------------
    # detail 16: accuracy by batch and confidence; detail 17: the same RM on CNN/DM, out of domain.
    if args.run_eval:
        t_eval = time.time()

        def describe(eval_split, metrics, table):
            by_conf = {k.rsplit("/", 1)[-1]: round(v, 3) for k, v in metrics.items() if "/accuracy/confidence/" in k}
            return (
                f"{eval_split}: accuracy {metrics[f'eval/rm/{eval_split}/accuracy']:.4f} on "
                f"{metrics[f'eval/rm/{eval_split}/n_pairs']} pairs; by confidence {by_conf}"
            )

        stage.evaluate_splits(
            ("validation", "validation_cnndm"),
            num_updates,
            summary,
            lambda split: evaluate(args, accelerator, model, labels[split], split, pad) if len(labels[split]) else None,
            lambda split: f"rm_eval_{split}.csv",
            describe,
        )
        summary["eval_seconds"] = round(time.time() - t_eval, 2)
    return stage.complete(summary)


def cli(argv: list[str] | None = None) -> int:
    from rlhf_repro.cli import run_stage

    return run_stage(Args, main, argv, __doc__)


if __name__ == "__main__":
    sys.exit(cli())
