"""Supervised fine-tuning on the human reference summaries: stage 1 of the N+ pipeline (details 6-9).

    python experiments/sft.py --base-model EleutherAI/pythia-1b-deduped --run-eval   # one process
    accelerate launch --multi_gpu --num_processes 8 experiments/sft.py ...         # 8 GPUs
    torchrun --standalone --nproc_per_node 2 experiments/sft.py ...               # 2 CPU processes (gloo)

Next-token cross-entropy on every non-PAD token of query + reference (the query is not masked), AdamW
(eps 1e-5) at 3e-6 with a cosine schedule and no warmup, a global batch of 128 (micro-batch x
accumulation x processes), one epoch, dropout off. With --run-eval the model then samples exactly
53 tokens at T=0.01 for every validation and test query, truncates after the first EOS, and scores
ROUGE against the references.

Writes RESULTS_DIR/EXPERIMENT/sft/MODEL_NAME/SEED/: config.json (flags + derived sizes),
provenance.json, metrics.jsonl (`train/sft/{loss,lr}`, `{split}/sft/loss`, `{split}/sft/rouge/*`),
query_responses_{split}.csv, summary.json, checkpoint/ (for --resume) and model/ (save_pretrained
model + tokenizer, the next stage's --sft-model-path).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Literal

import torch

from rlhf_repro import rouge
from rlhf_repro.data import (
    SFT_COLUMNS,
    check_padding,
    eval_batches,
    load_processed,
    microbatch_rows,
    permutation,
    token_batch,
)
from rlhf_repro.generation import generate
from rlhf_repro.io import InputError
from rlhf_repro.lm_head import next_token_nll
from rlhf_repro.lora import LoraArgs, add_adapters, trainable
from rlhf_repro.ops import trim_left_padding, trim_right_padding, truncate_response
from rlhf_repro.runs import model_name_of
from rlhf_repro.seeding import derived_seed, local_seed
from rlhf_repro.tables import sample_rows
from rlhf_repro.training import RESUME_IGNORED as STAGE_RESUME_IGNORED
from rlhf_repro.training import StageArgs, clip_gradients, gather_objects, prepare_trained


@dataclass
class Args(StageArgs):
    # --- run -------------------------------------------------------------------------------------
    experiment: str = "sft"
    """Experiment name: the run folder is RESULTS_DIR/EXPERIMENT/sft/MODEL_NAME/SEED."""
    model_name: str | None = None
    """Model name in the run folder; default: the base model's last path component."""
    results_dir: str = "results"
    """Root of run folders."""
    seed: int = 1
    """Seed; process r uses seed + 100003*r for sampling, data order uses the seed itself (R-14)."""
    run_eval: bool = False
    """After training, sample for the validation and test splits and score ROUGE and loss."""
    eval_at_start: bool = False
    """Also evaluate the base model before the first update (logged at step 0): ROUGE before vs after SFT."""

    # --- model and data --------------------------------------------------------------------------
    base_model: str = "EleutherAI/pythia-1b-deduped"
    """Model to fine-tune: a hub id or a save_pretrained directory."""
    tokenizer: str | None = None
    """Tokenizer (hub id, directory or tokenizer.json); default: the base model's."""
    query_dataset: str = "vwxyzjn/summarize_from_feedback_tldr_3_filtered_oai_preprocessing_1706381144"
    """Processed SFT dataset: a hub id or a build_dataset.py output directory (its sft/ folder)."""

    # --- optimizer (detail 8) --------------------------------------------------------------------
    lr: float = 3e-6
    """Learning rate (the paper's one value for every stage and size)."""
    eps: float = 1e-5
    """Adam epsilon."""
    max_grad_norm: float = 0.0
    """Clip the global gradient norm to this before every optimizer step; 0: never, as the reference (R-10).
    Set on every backend: under DeepSpeed it is the config's `gradient_clipping`, which accelerate >= 1.x
    would otherwise fill with 1.0 for the reference's YAML (its accelerate 0.25 left it off)."""
    optimizer: Literal["adam", "adamw"] = "adamw"
    """Optimizer; adamw uses PyTorch's default weight decay 0.01."""
    scheduler: str = "cosine"
    """transformers `get_scheduler` name (cosine, linear, constant, ...), stepped once per update."""
    warm_up_steps: int = 0
    """Warmup updates of the scheduler."""

    # --- batch sizes (detail 9) ------------------------------------------------------------------
    num_train_epochs: int = 1
    """Epochs over the training examples (0: no training, e.g. to evaluate a model as it is)."""
    batch_size: int = 128
    """Global batch: sequences per update over all processes. Accumulation steps are derived from it:
    batch_size / (local micro-batch x processes), e.g. 16 on the reference's 8 GPUs."""
    gradient_accumulation_steps: int | None = None
    """Micro-batches per update on each process; when set, it overrides --batch-size."""
    local_micro_batch_size: int = 1
    """Sequences per micro-batch on each process (global batch = this x accumulation x processes)."""
    local_eval_batch_size: int = 4
    """Queries per evaluation batch on each process; ROUGE is aggregated per such batch (§4.3)."""
    total_episodes: int | None = None
    """Use only the first N examples of each epoch's shuffled order; default: the whole train split."""

    # --- evaluation sampling (R-03, R-04) --------------------------------------------------------
    response_length: int = 53
    """Exactly this many new tokens are sampled, then truncated after the first EOS."""
    temperature: float = 0.01
    """Sampling temperature for evaluation (near-greedy sampling; 0 means argmax)."""
    truncate_token: Literal["eos"] = "eos"
    """Token after which responses are truncated (R-06)."""
    sampler: Literal["fast", "hf"] = "fast"
    """Sampler: `hf` is HF generate as the reference configures it; `fast` is our KV-cache loop (same
    distribution, faster on CPU; see rlhf_repro/generation.py)."""
    lm_head: Literal["fused", "obvious"] = "fused"
    """How token log-probs are computed: `fused` runs the LM head on the positions read, straight into the
    log-probs (rlhf_repro/lm_head.py); `obvious` takes the model's logits at every position, log_softmax
    and gather, as the reference does (more memory and time; equal to float rounding)."""
    lora: LoraArgs = field(default_factory=LoraArgs)
    """LoRA adapters through peft instead of full fine-tuning (rlhf_repro/lora.py; the paper's "PPO w/ LoRA")."""
    max_eval_samples: int | None = None
    """Evaluate only the first N rows of each split (default: all)."""
    eval_splits: list[str] = field(default_factory=lambda: ["validation", "test"])
    """Splits to evaluate (loss, samples, ROUGE) at the end and with --eval-at-start."""


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
    "response_length",
    "temperature",
)

# Fields that do not change the training a checkpoint holds: a resumed run may change them.
RESUME_IGNORED = (*STAGE_RESUME_IGNORED, "run_eval", "eval_splits")


TABLE_COLUMNS = ["row", "batch", "id", "query", "response", "reference", "response_token_len", "eos_present"]


def evaluate(args: Args, accelerator, model, tokenizer, dataset, split: str) -> tuple[dict, object]:
    """Loss, samples and ROUGE on one split, gathered over all processes (-> metrics, table)."""
    import pandas as pd
    from tqdm.auto import tqdm

    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    rank, world = accelerator.process_index, accelerator.num_processes
    n = min(len(dataset), args.max_eval_samples or len(dataset))
    batches = eval_batches(n, args.local_eval_batch_size, world, rank)
    unwrapped = accelerator.unwrap_model(model)
    unwrapped.eval()
    meta = dataset.select_columns([c for c in ("id", "query") if c in dataset.column_names])
    rows, batch_losses = [], []
    # Sampling draws from a generator seeded by (seed, rank, split), so results do not depend on what ran before.
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(derived_seed(local_seed(args.seed, rank), {"validation": 1, "test": 2}.get(split, 3)))
        for idx in tqdm(batches, desc=f"eval {split}", disable=not (args.progress and accelerator.is_main_process)):
            queries, references = (t.to(accelerator.device) for t in token_batch(dataset, idx, *SFT_COLUMNS[:2]))
            queries = trim_left_padding(queries, pad)  # all-PAD columns: same outputs (detail 14), less work
            # The reference's eval loss: left-padded query followed by the right-padded reference (all tokens).
            query_references = trim_right_padding(torch.cat((queries, references), 1), pad)
            group = int(idx[0]) // args.local_eval_batch_size
            batch_losses.append((group, next_token_nll(unwrapped, query_references, pad, args.lm_head).item()))
            responses, _ = generate(unwrapped, queries, pad, args.response_length, args.temperature, args.sampler)
            batch_rows = sample_rows(tokenizer, meta, idx, truncate_response(responses, eos, pad), references)
            rows += [{"batch": group, **r} for r in batch_rows]
    unwrapped.train()
    rows = sorted(gather_objects(accelerator, rows), key=lambda r: r["row"])
    batch_losses = gather_objects(accelerator, batch_losses)
    table = pd.DataFrame(rows, columns=TABLE_COLUMNS)
    scores = rouge.pair_scores(table["response"].tolist(), table["reference"].tolist()) if len(table) else []
    agg = rouge.aggregate(scores, table["batch"].tolist() if len(table) else [], seed=args.seed)
    for rtype in rouge.ROUGE_TYPES:
        table[rtype] = [s[rtype].fmeasure for s in scores]
    metrics = {f"{split}/sft/loss": sum(v for _, v in batch_losses) / max(1, len(batch_losses))}
    metrics.update({f"{split}/sft/rouge/{k}": v for k, v in agg["reference"].items()})
    metrics.update({f"{split}/sft/rouge_corpus/{k}": v for k, v in agg["corpus"].items()})
    metrics[f"{split}/sft/response_token_len"] = float(table["response_token_len"].mean()) if len(table) else 0.0
    metrics[f"{split}/sft/eos_fraction"] = float(table["eos_present"].mean()) if len(table) else 0.0
    return metrics, table.drop(columns=["row"])


def main(args: Args) -> dict:
    from tqdm.auto import tqdm
    from transformers import get_scheduler

    from rlhf_repro.modeling import load_causal_lm
    from rlhf_repro.tokenization import load_tokenizer
    from rlhf_repro.training import StageRun, batch_geometry, make_optimizer, setup_stage

    accelerator, accumulation = setup_stage(args)
    rank, world = accelerator.process_index, accelerator.num_processes
    model_name = args.model_name or model_name_of(args.base_model)
    stage = StageRun(args, "sft", model_name, accelerator, RESUME_IGNORED)
    if (finished := stage.finished()) is not None:
        return finished

    # --- data and tokenizer ------------------------------------------------------------------------
    tokenizer = load_tokenizer(args.tokenizer or args.base_model)
    pad = tokenizer.pad_token_id
    splits = {"train": SFT_COLUMNS}
    if args.run_eval or args.eval_at_start:
        splits.update({split: SFT_COLUMNS for split in args.eval_splits})
    data = load_processed(args.query_dataset, splits)
    train = data["train"]
    check_padding(train, "reference_response_token", pad, "right", args.query_dataset)
    episodes = min(args.total_episodes or len(train), len(train))
    derived = batch_geometry(args.local_micro_batch_size, accumulation, world, episodes, args.num_train_epochs)
    if args.num_train_epochs > 0 and derived["num_updates"] == 0:
        raise InputError(
            f"global batch {derived['batch_size']} is larger than the {episodes} training examples; lower --batch-size",
            args.query_dataset,
        )
    num_updates, updates_per_epoch = derived["num_updates"], derived["updates_per_epoch"]

    # --- model, optimizer, schedule (details 7-9) ---------------------------------------------------
    model = load_causal_lm(args.base_model)  # dropout disabled (detail 7)
    peft_model = None
    if args.lora.enabled:  # the same model with adapters inside; only they train
        model, peft_model = add_adapters(model, args.lora)
    n_embed = model.get_input_embeddings().num_embeddings
    # PAD never reaches the model (it is replaced by 0, detail 6): every other id must have an embedding.
    largest_id = max(i for i in (len(tokenizer) - 1, len(tokenizer) - 2) if i != pad)
    if largest_id >= n_embed:
        raise InputError(
            f"tokenizer ids reach {largest_id} but the model embeds only {n_embed} tokens",
            args.tokenizer or args.base_model,
        )
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
        inputs={"base_model": args.base_model, "query_dataset": args.query_dataset, "tokenizer": args.tokenizer},
        detail_flags=DETAIL_FLAGS,
    )
    if accelerator.is_main_process:
        print(
            f"sft {model_name}: {episodes} examples x {args.num_train_epochs} epoch(s), global batch "
            f"{derived['batch_size']} ({args.local_micro_batch_size} x {accumulation} x {world} "
            f"processes) -> {num_updates} updates" + (f"; resuming from update {start}" if state else "")
        )

    summary: dict = {"model_name": model_name, **derived}
    if args.eval_at_start and state:  # evaluated before the interruption: recover the numbers
        from rlhf_repro.runs import read_metrics

        for row in read_metrics(stage.path / "metrics.jsonl"):
            if row["step"] == 0:
                summary.update({f"start/{k}": v for k, v in row.items() if k != "step"})
    elif args.eval_at_start:
        for split in args.eval_splits:
            metrics, table = evaluate(args, accelerator, model, tokenizer, data[split], split)
            stage.log(metrics, step=0)
            stage.write_table(f"query_responses_{split}_start.csv", table)
            summary.update({f"start/{k}": v for k, v in metrics.items()})

    # --- training loop ---------------------------------------------------------------------------
    model.train()
    t_train, tokens_seen, loss_value = time.time(), 0, None
    orders: dict[int, object] = {}
    bar = tqdm(
        range(start, num_updates),
        initial=start,
        total=num_updates,
        desc="sft",
        disable=not (args.progress and accelerator.is_main_process),
    )
    for update in bar:
        epoch, epoch_update = divmod(update, updates_per_epoch)
        if epoch not in orders:  # a fresh shuffle per epoch from the shared seed: the same on every rank
            orders = {epoch: permutation(len(train), derived_seed(args.seed, epoch))[:episodes]}
        losses = []
        for step in range(accumulation):
            rows = microbatch_rows(
                orders[epoch],
                args.local_micro_batch_size,
                accumulation,
                world,
                rank,
                epoch_update,
                step,
            )
            (tokens,) = token_batch(train, rows, "query_reference_response_token")
            tokens = trim_right_padding(tokens, pad).to(accelerator.device)
            with accelerator.accumulate(model):
                loss = next_token_nll(model, tokens, pad, args.lm_head)  # detail 9: every non-PAD token, query included
                accelerator.backward(loss)
                clip_gradients(accelerator, model, args.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad()
            losses.append(loss.detach())
            tokens_seen += int((tokens != pad).sum())
        scheduler.step()
        loss_value = accelerator.gather(torch.stack(losses)).mean().item()
        stage.check_finite(loss_value, "train/sft/loss", update + 1)
        done = update + 1
        stage.log(
            {
                "train/sft/loss": loss_value,
                "train/sft/lr": scheduler.get_last_lr()[0],
                "train/sft/episode": done * derived["batch_size"],
                "time/sft/tokens_per_s": tokens_seen * world / max(1e-9, time.time() - t_train),
            },
            step=done,
        )
        bar.set_postfix(loss=f"{loss_value:.3f}")
        stage.end_update(done, num_updates, model, optimizer, scheduler)
    bar.close()
    summary["train_seconds"] = round(time.time() - t_train, 2)
    summary["final_train_loss"] = loss_value

    # --- save (the next stage's --sft-model-path) ----------------------------------------------------
    stage.save_model(model, tokenizer, adapters={"adapter": peft_model})

    # --- evaluation (§4.1, §4.3) -------------------------------------------------------------------
    if args.run_eval:
        t_eval = time.time()

        def describe(split, metrics, table):
            m = {k.split("/", 2)[-1]: v for k, v in metrics.items()}
            return (
                f"{split}: loss {m['loss']:.3f}, ROUGE-L {m['rouge/rougeL']:.4f}"
                f" (corpus {m['rouge_corpus/rougeL']:.4f}), {m['response_token_len']:.1f} tokens, EOS in "
                f"{m['eos_fraction']:.0%} of {len(table)} responses"
            )

        stage.evaluate_splits(
            args.eval_splits,
            num_updates,
            summary,
            lambda split: evaluate(args, accelerator, model, tokenizer, data[split], split),
            lambda split: f"query_responses_{split}.csv",
            describe,
        )
        summary["eval_seconds"] = round(time.time() - t_eval, 2)
    return stage.complete(summary)


def cli(argv: list[str] | None = None) -> int:
    from rlhf_repro.cli import run_stage

    return run_stage(Args, main, argv, __doc__)


if __name__ == "__main__":
    sys.exit(cli())
