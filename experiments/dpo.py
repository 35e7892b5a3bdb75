"""Direct preference optimization on the human preference pairs: the paper's DPO baseline (detail 19, R-19).

    python experiments/dpo.py --sft-model-path results/paper/sft/pythia-1b-deduped/44413/model --run-eval
    torchrun --standalone --nproc_per_node 2 experiments/dpo.py ...   # 2 CPU processes

Policy and frozen reference both start from the SFT model. A response's log-prob is the sum of its
token log-probs over the response tokens only, EOS included (R-19: the `*_response_label` columns mask
the query). The loss (--loss-type) compares h = (log pi_c - log pi_r) - (log ref_c - log ref_r):

  sigmoid         -log sigmoid(beta h)                               DPO, the reference's default
  cdpo            -(1-e) log sigmoid(beta h) - e log sigmoid(-beta h) conservative DPO, e = --label-smoothing
  ipo             (h - 1/(2 beta))^2 with summed log-probs            the reference's --ipo
  ipo_avg         the same with log-probs averaged over response tokens (the IPO paper)
  reference_free  -log sigmoid(beta (log pi_c - log pi_r))           no reference model

beta 0.05, AdamW (eps 1e-5) at 3e-6, cosine, global batch 64 pairs, one epoch, dropout disabled. The
implicit reward beta (log pi - log pi_ref) (summed, whatever the loss) is evaluated with --run-eval on
validation and validation_cnndm exactly as the RM is: `eval/rm/{split}/accuracy` by split, batch and
confidence, and the per-pair table rm_eval_{split}.csv (§4.10). Then validation (and --eval-splits) of
the SFT dataset are sampled at T=0.01 with 128 new tokens (R-04; --eval-response-length 53 matches
SFT/PPO), truncated after EOS, into query_responses_{split}.csv.

--ref-precision same (default) runs the reference model in the policy's precision (under accelerate's
bf16 autocast when mixed precision is on; in bf16 weights under DeepSpeed, which casts the policy's), so
at step 0 every implicit reward is exactly 0. `fp32`
keeps it in fp32 while the policy runs in bf16: the reference code's mismatch (R-17), which makes the
step-0 implicit rewards nonzero.

Writes RESULTS_DIR/EXPERIMENT/dpo/MODEL_NAME/SEED/: config.json, provenance.json, metrics.jsonl
(`train/rm/*`, `eval/rm/*`, `{split}/dpo/*`), rm_eval_{split}.csv, query_responses_{split}.csv,
summary.json, checkpoint/ (for --resume) and model/.
"""

from __future__ import annotations

import contextlib
import sys
import time
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F

from rlhf_repro.data import (
    PREFERENCE_EVAL_COLUMNS,
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
from rlhf_repro.lm_head import next_token_logprobs, output_head
from rlhf_repro.lora import LoraArgs, adapters_off, add_adapters, trainable
from rlhf_repro.ops import trim_left_padding, truncate_response
from rlhf_repro.pair_eval import evaluate_pairs
from rlhf_repro.runs import model_name_of
from rlhf_repro.seeding import derived_seed, local_seed
from rlhf_repro.tables import sample_rows
from rlhf_repro.training import RESUME_IGNORED as STAGE_RESUME_IGNORED
from rlhf_repro.training import StageArgs, clip_gradients, gather_objects, prepare_trained

# The columns DPO reads: query+chosen and query+rejected right-padded, and the same with the query
# positions replaced by PAD (R-19's loss mask).
DPO_COLUMNS = (
    "query_chosen_token",
    "query_chosen_token_response_label",
    "query_rejected_token",
    "query_rejected_token_response_label",
)
LOSS_TYPES = ("sigmoid", "cdpo", "ipo", "ipo_avg", "reference_free")


@dataclass
class Args(StageArgs):
    experiment: str = "dpo"
    """Experiment name: first level of the run folder."""
    model_name: str | None = None
    """Model name in the run folder; default: derived from --sft-model-path."""
    results_dir: str = "results"
    """Root of run folders: RESULTS_DIR/EXPERIMENT/dpo/MODEL_NAME/SEED/."""
    seed: int = 1
    """Seed; each process uses seed + 100003 * rank (R-14)."""
    run_eval: bool = False
    """After training: implicit-reward accuracy on validation and validation_cnndm, and sampled summaries."""

    sft_model_path: str = "EleutherAI/pythia-1b-deduped"
    """The SFT model (hub id or sft.py's RUN/model): the policy's start and the frozen reference."""
    tokenizer: str | None = None
    """Tokenizer; default: the SFT model's."""
    label_dataset: str = "vwxyzjn/summarize_from_feedback_oai_preprocessing_1706381144"
    """Processed preference dataset (hub id or build_dataset.py output directory)."""
    query_dataset: str = "vwxyzjn/summarize_from_feedback_tldr_3_filtered_oai_preprocessing_1706381144"
    """Processed SFT dataset whose queries are sampled for the evaluation tables."""

    beta: float = 0.05
    """DPO's beta (R-19); the reference's ablation `dpo_0.5` uses 0.5."""
    loss_type: Literal["sigmoid", "cdpo", "ipo", "ipo_avg", "reference_free"] = "sigmoid"
    """sigmoid (DPO), cdpo (conservative DPO with --label-smoothing), ipo (the reference's IPO on summed
    log-probs), ipo_avg (IPO on log-probs averaged over response tokens, as in the IPO paper),
    reference_free (no reference model in the loss)."""
    label_smoothing: float = 0.0
    """cDPO's assumed label-noise rate e in [0, 0.5); required > 0 by --loss-type cdpo. The reference
    applies it to sigmoid too, so sigmoid with e > 0 equals cdpo."""
    ref_precision: Literal["same", "fp32"] = "same"
    """Reference model precision: the policy's (fixed) or always fp32 (the reference code's mismatch, R-17)."""
    dropout: float = 0.0
    """Dropout of the policy while training (0: disabled, as in the reference)."""

    lr: float = 3e-6
    """Learning rate."""
    eps: float = 1e-5
    """Adam epsilon (detail 8)."""
    max_grad_norm: float = 0.0
    """Clip the global gradient norm to this before every optimizer step; 0: never, as the reference (R-10).
    Set on every backend: under DeepSpeed it is the config's `gradient_clipping`, which accelerate >= 1.x
    would otherwise fill with 1.0 for the reference's YAML (its accelerate 0.25 left it off)."""
    optimizer: Literal["adam", "adamw"] = "adamw"
    """Optimizer; AdamW uses PyTorch's default weight decay 0.01."""
    scheduler: str = "cosine"
    """Learning-rate schedule (transformers.get_scheduler name)."""
    warm_up_steps: int = 0
    """Warm-up updates."""
    num_train_epochs: int = 1
    """Epochs over the selected pairs (0: only evaluate the SFT model)."""
    batch_size: int = 64
    """Global batch: pairs per update over all processes."""
    gradient_accumulation_steps: int | None = None
    """Micro-batches per update; default: batch size / (local micro-batch x processes)."""
    local_micro_batch_size: int = 1
    """Pairs per process per forward pass."""
    local_eval_batch_size: int = 1
    """Rows per process per evaluation forward pass."""
    total_episodes: int | None = 92832
    """Pairs selected from the shuffled train split (the reference's 92,832); None: all."""
    shuffle_seed: Literal["per-rank", "shared"] = "per-rank"
    """Pair order: shuffled with each process's own seed (the reference, R-15) or one shared order."""

    eval_response_length: int = 128
    """New tokens sampled per evaluation query (R-04: DPO's hard-coded 128; 53 matches SFT and PPO)."""
    eval_temperature: float = 0.01
    """Evaluation sampling temperature (R-04)."""
    eval_splits: list[str] = field(default_factory=lambda: ["validation"])
    """SFT-dataset splits to sample for query_responses_{split}.csv."""
    sampler: Literal["fast", "hf"] = "fast"
    """Sampler for the evaluation tables (see rlhf_repro/generation.py)."""
    lm_head: Literal["fused", "obvious"] = "fused"
    """How token log-probs are computed: `fused` runs the LM head on the positions read, straight into the
    log-probs (rlhf_repro/lm_head.py); `obvious` takes the model's logits at every position, log_softmax
    and gather, as the reference does (more memory and time; equal to float rounding)."""
    lora: LoraArgs = field(default_factory=LoraArgs)
    """LoRA adapters through peft (rlhf_repro/lora.py); the reference policy is then the policy with its
    adapters switched off, not a second copy."""
    max_eval_samples: int | None = None
    """Evaluate only the first N pairs / queries of each split (default: all)."""


DETAIL_FLAGS = (
    "max_grad_norm",
    "beta",
    "loss_type",
    "label_smoothing",
    "ref_precision",
    "dropout",
    "batch_size",
    "lr",
    "eps",
    "optimizer",
    "scheduler",
    "num_train_epochs",
    "total_episodes",
    "shuffle_seed",
    "eval_response_length",
)

RESUME_IGNORED = (
    *STAGE_RESUME_IGNORED,
    "run_eval",
    "eval_response_length",
    "eval_temperature",
    "eval_splits",
    "sampler",
    "max_eval_samples",
    "local_eval_batch_size",
)


def sequence_logprobs(model, query_responses: torch.Tensor, labels: torch.Tensor, pad: int, head: str = "fused"):
    """(summed, mean) log-prob of each sequence's response tokens: positions where `labels` is not PAD
    (R-19; the appended EOS counts). Log-probs use the raw logits (no temperature), as in the reference."""
    targets = labels[:, 1:]
    mask = targets != pad
    # The LM head runs on the response positions only, and the body's last layer from the first of them on.
    token_logprobs, _ = next_token_logprobs(
        model, query_responses, pad, start=None, targets=targets, mask=mask, head=head
    )
    summed = token_logprobs.sum(-1)
    return summed, summed / mask.sum(-1).clamp(min=1)


def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float,
    loss_type: str = "sigmoid",
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """Per-pair loss from sequence log-probs (summed, or averaged for ipo_avg: the caller passes those)."""
    pi_logratios = policy_chosen - policy_rejected
    ref_logratios = torch.zeros_like(pi_logratios) if loss_type == "reference_free" else ref_chosen - ref_rejected
    h = pi_logratios - ref_logratios
    if loss_type in ("ipo", "ipo_avg"):
        return (h - 1 / (2 * beta)) ** 2
    if loss_type not in ("sigmoid", "cdpo", "reference_free"):
        raise ValueError(f"unknown loss type {loss_type!r}; one of {', '.join(LOSS_TYPES)}")
    return -(1 - label_smoothing) * F.logsigmoid(beta * h) - label_smoothing * F.logsigmoid(-beta * h)


def pair_logprobs(model, batch: list[torch.Tensor], pad: int, head: str = "fused"):
    """((chosen summed, rejected summed), (chosen mean, rejected mean)) for a batch of DPO_COLUMNS, with
    chosen and rejected in one forward pass."""
    qc, lc, qr, lr = batch
    width = max(int((qc != pad).sum(1).max()), int((qr != pad).sum(1).max()))
    sequences = torch.cat((qc[:, :width], qr[:, :width]), 0)
    labels = torch.cat((lc[:, :width], lr[:, :width]), 0)
    summed, mean = sequence_logprobs(model, sequences, labels, pad, head)
    n = len(qc)
    return (summed[:n], summed[n:]), (mean[:n], mean[n:])


def place_reference(accelerator, ref_policy, policy, ref_precision: str):
    """The reference model on the device, its weights in the prepared policy's dtype for `same`. Under
    DeepSpeed the policy's weights themselves are bf16 and accelerate's autocast() does nothing, so the
    same precision means the same weight dtype; elsewhere the policy stays fp32 and autocast does the
    rest (`ref_context`). `fp32` leaves the reference fp32 (the loaders' dtype), the reference's R-17."""
    ref_policy = ref_policy.to(accelerator.device)
    if ref_precision == "same":
        ref_policy = ref_policy.to(next(accelerator.unwrap_model(policy).parameters()).dtype)
    return ref_policy


def ref_context(accelerator, ref_precision: str):
    """Autocast state for the reference model: the policy's (`same`) or plain fp32 (`fp32`, R-17)."""
    if ref_precision == "same":
        return accelerator.autocast()
    return torch.autocast(device_type=accelerator.device.type, enabled=False)


TABLE_COLUMNS = ["row", "id", "query", "response", "reference", "response_token_len", "eos_present"]


def sample_table(args: Args, accelerator, model, tokenizer, dataset, split: str) -> tuple[dict, object]:
    """Samples at T=0.01 (R-04) on one SFT split, truncated after EOS, gathered (-> metrics, table)."""
    import pandas as pd
    from tqdm.auto import tqdm

    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    rank, world = accelerator.process_index, accelerator.num_processes
    n = min(len(dataset), args.max_eval_samples or len(dataset))
    unwrapped = accelerator.unwrap_model(model)
    unwrapped.eval()
    meta = dataset.select_columns([c for c in ("id", "query") if c in dataset.column_names])
    rows = []
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(derived_seed(local_seed(args.seed, rank), 4, args.eval_splits.index(split)))
        for idx in tqdm(
            eval_batches(n, args.local_eval_batch_size, world, rank),
            desc=f"dpo samples {split}",
            disable=not (args.progress and accelerator.is_main_process),
        ):
            queries, references = (t.to(accelerator.device) for t in token_batch(dataset, idx, *SFT_COLUMNS[:2]))
            queries = trim_left_padding(queries, pad)  # all-PAD columns: same outputs (detail 14), less work
            responses, _ = generate(
                unwrapped, queries, pad, args.eval_response_length, args.eval_temperature, args.sampler
            )
            rows += sample_rows(tokenizer, meta, idx, truncate_response(responses, eos, pad), references)
    unwrapped.train()
    rows = sorted(gather_objects(accelerator, rows), key=lambda r: r["row"])
    table = pd.DataFrame(rows, columns=TABLE_COLUMNS).drop(columns=["row"])
    metrics = {
        f"{split}/dpo/response_token_len": float(table["response_token_len"].mean()) if len(table) else 0.0,
        f"{split}/dpo/eos_fraction": float(table["eos_present"].mean()) if len(table) else 0.0,
    }
    return metrics, table


def main(args: Args) -> dict:
    from tqdm.auto import tqdm
    from transformers import get_scheduler

    from rlhf_repro.modeling import disable_dropout, load_causal_lm, set_dropout
    from rlhf_repro.tokenization import load_tokenizer
    from rlhf_repro.training import StageRun, batch_geometry, make_optimizer, setup_stage

    if args.beta <= 0:
        raise InputError(f"--beta must be positive, got {args.beta}")
    if not 0 <= args.label_smoothing < 0.5:
        raise InputError(f"--label-smoothing must be in [0, 0.5), got {args.label_smoothing}")
    if args.loss_type == "cdpo" and args.label_smoothing == 0:
        raise InputError("--loss-type cdpo needs --label-smoothing > 0 (e.g. 0.1)")
    if args.loss_type in ("ipo", "ipo_avg", "reference_free") and args.label_smoothing:
        raise InputError(f"--label-smoothing applies to sigmoid/cdpo, not --loss-type {args.loss_type}")
    accelerator, accumulation = setup_stage(args)
    rank, world = accelerator.process_index, accelerator.num_processes
    stage = StageRun(args, "dpo", args.model_name or model_name_of(args.sft_model_path), accelerator, RESUME_IGNORED)
    if (finished := stage.finished()) is not None:
        return finished
    model_name = stage.model_name

    # --- data ------------------------------------------------------------------------------------
    tokenizer = load_tokenizer(args.tokenizer or args.sft_model_path)
    pad = tokenizer.pad_token_id
    label_splits = {"train": DPO_COLUMNS}
    if args.run_eval:
        columns = DPO_COLUMNS + PREFERENCE_EVAL_COLUMNS + ("chosen_token_len", "rejected_token_len")
        label_splits.update(validation=columns, validation_cnndm=columns)
    labels = load_processed(args.label_dataset, label_splits)
    train = labels["train"]
    check_padding(train, "query_chosen_token", pad, "right", args.label_dataset)
    queries = load_processed(args.query_dataset, {s: SFT_COLUMNS for s in args.eval_splits}) if args.run_eval else {}
    episodes = min(args.total_episodes or len(train), len(train))
    derived = batch_geometry(args.local_micro_batch_size, accumulation, world, episodes, args.num_train_epochs)
    if args.num_train_epochs > 0 and derived["num_updates"] == 0:
        raise InputError(
            f"global batch {derived['batch_size']} is larger than the {episodes} selected pairs; lower --batch-size",
            args.label_dataset,
        )
    num_updates, updates_per_epoch = derived["num_updates"], derived["updates_per_epoch"]
    seed = local_seed(args.seed, rank) if args.shuffle_seed == "per-rank" else args.seed
    order = permutation(len(train), seed)[:episodes]

    # --- models ----------------------------------------------------------------------------------
    policy = load_causal_lm(args.sft_model_path)
    peft_model = ref_policy = None
    if args.lora.enabled:  # the reference is the policy with its adapters off: no second copy
        policy, peft_model = add_adapters(policy, args.lora)
    else:
        ref_policy = load_causal_lm(args.sft_model_path).eval().requires_grad_(False)
        disable_dropout(ref_policy)
    if args.dropout:
        set_dropout(policy, args.dropout)
    else:
        disable_dropout(policy)
    optimizer = make_optimizer(args.optimizer, trainable(policy), args.lr, args.eps)
    scheduler = get_scheduler(
        args.scheduler, optimizer=optimizer, num_warmup_steps=args.warm_up_steps, num_training_steps=num_updates
    )
    state = stage.restore(policy, optimizer, scheduler)
    start = stage.start_step
    policy, optimizer = prepare_trained(
        accelerator, args.local_micro_batch_size, policy, optimizer, max_grad_norm=args.max_grad_norm
    )
    if peft_model is None:
        ref_policy = place_reference(accelerator, ref_policy, policy, args.ref_precision)
    else:
        ref_policy = policy

    def reference():
        """The reference policy's precision context (and, with LoRA, its adapters off)."""
        stack = contextlib.ExitStack()
        stack.enter_context(ref_context(accelerator, args.ref_precision))
        stack.enter_context(adapters_off(peft_model))
        return stack

    stage.open(
        derived,
        inputs={
            "sft_model_path": args.sft_model_path,
            "label_dataset": args.label_dataset,
            "query_dataset": args.query_dataset,
            "tokenizer": args.tokenizer,
        },
        detail_flags=DETAIL_FLAGS,
    )
    if accelerator.is_main_process:
        print(
            f"dpo {model_name}: {episodes} pairs x {args.num_train_epochs} epoch(s), global batch "
            f"{derived['batch_size']} ({args.local_micro_batch_size} x {accumulation} x {world} processes) -> "
            f"{num_updates} updates, loss {args.loss_type}, beta {args.beta}"
            + (f"; resuming from update {start}" if state else "")
        )

    # Policy and reference take one log-prob path, so they agree bit for bit while their weights do: the fused
    # LM head (--lm-head fused) unless the prepared policy must be called through its own forward (DDP,
    # autocast; `lm_head.output_head`): then both take the model's logits.
    head = "obvious" if args.lm_head == "obvious" else "fused" if output_head(policy) is not None else "logits"

    def logprobs(model, batch, precision_context):
        with precision_context:
            return pair_logprobs(model, batch, pad, head)

    # --- training loop ---------------------------------------------------------------------------
    policy.train()
    t_train, loss_value = time.time(), None
    bar = tqdm(
        range(start, num_updates),
        initial=start,
        total=num_updates,
        desc="dpo",
        disable=not (args.progress and accelerator.is_main_process),
    )
    for update in bar:
        epoch_update = update % updates_per_epoch
        stats = []
        for step in range(accumulation):
            rows = microbatch_rows(order, args.local_micro_batch_size, accumulation, world, rank, epoch_update, step)
            batch = [t.to(accelerator.device) for t in token_batch(train, rows, *DPO_COLUMNS)]
            with accelerator.accumulate(policy):
                (pc, pr), (pc_avg, pr_avg) = logprobs(policy, batch, contextlib.nullcontext())
                with torch.no_grad():
                    (rc, rr), (rc_avg, rr_avg) = logprobs(ref_policy, batch, reference())
                if args.loss_type == "ipo_avg":
                    losses = dpo_loss(pc_avg, pr_avg, rc_avg, rr_avg, args.beta, args.loss_type)
                else:
                    losses = dpo_loss(pc, pr, rc, rr, args.beta, args.loss_type, args.label_smoothing)
                loss = losses.mean()
                accelerator.backward(loss)
                clip_gradients(accelerator, policy, args.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad()
            chosen_rewards = args.beta * (pc.detach() - rc)
            rejected_rewards = args.beta * (pr.detach() - rr)
            stats.append(
                torch.stack(
                    [
                        loss.detach(),
                        (chosen_rewards > rejected_rewards).float().mean(),
                        chosen_rewards.mean(),
                        rejected_rewards.mean(),
                        (chosen_rewards - rejected_rewards).mean(),
                        pc.detach().mean(),
                        pr.detach().mean(),
                    ]
                )
            )
        scheduler.step()
        mean = accelerator.gather(torch.stack(stats)).reshape(-1, 7).mean(0).tolist()
        loss_value = mean[0]
        done = update + 1
        stage.check_finite(loss_value, "train/rm/loss", done)
        stage.log(
            {
                "train/rm/loss": mean[0],
                "train/rm/accuracy": mean[1],
                "train/rm/reward_preferred": mean[2],
                "train/rm/reward_rejected": mean[3],
                "train/rm/reward_margin": mean[4],
                "train/rm/logps_preferred": mean[5],
                "train/rm/logps_rejected": mean[6],
                "train/rm/lr": scheduler.get_last_lr()[0],
                "train/rm/episode": done * derived["batch_size"],
            },
            step=done,
        )
        bar.set_postfix(loss=f"{mean[0]:.3f}", acc=f"{mean[1]:.2f}")
        stage.end_update(done, num_updates, policy, optimizer, scheduler)
    bar.close()
    summary: dict = {
        "model_name": model_name,
        **derived,
        "train_seconds": round(time.time() - t_train, 2),
        "final_train_loss": loss_value,
    }

    # --- save ------------------------------------------------------------------------------------
    stage.save_model(policy, tokenizer, adapters={"adapter": peft_model})

    # --- evaluation (§4.10, R-04) ------------------------------------------------------------------
    if args.run_eval:
        t_eval = time.time()
        unwrapped = accelerator.unwrap_model(policy)
        unwrapped.eval()

        def implicit_reward_eval(eval_split):
            dataset = labels[eval_split]
            if len(dataset) == 0:
                return None

            def implicit_rewards(idx):
                batch = [t.to(accelerator.device) for t in token_batch(dataset, idx, *DPO_COLUMNS)]
                (pc, pr), _ = logprobs(unwrapped, batch, accelerator.autocast())
                (rc, rr), _ = logprobs(ref_policy, batch, reference())
                return args.beta * (pc - rc), args.beta * (pr - rr)

            return evaluate_pairs(
                accelerator,
                dataset,
                eval_split,
                implicit_rewards,
                args.local_eval_batch_size,
                args.max_eval_samples,
                progress=args.progress,
            )

        stage.evaluate_splits(
            ("validation", "validation_cnndm"),
            num_updates,
            summary,
            implicit_reward_eval,
            lambda split: f"rm_eval_{split}.csv",
            lambda split, metrics, table: (
                f"{split}: implicit-reward accuracy {metrics[f'eval/rm/{split}/accuracy']:.4f} on "
                f"{metrics[f'eval/rm/{split}/n_pairs']} pairs"
            ),
        )
        stage.evaluate_splits(
            args.eval_splits,
            num_updates,
            summary,
            lambda split: sample_table(args, accelerator, policy, tokenizer, queries[split], split),
            lambda split: f"query_responses_{split}.csv",
            lambda split, metrics, table: (
                f"{split}: {len(table)} samples, {metrics[f'{split}/dpo/response_token_len']:.1f} tokens, "
                f"EOS in {metrics[f'{split}/dpo/eos_fraction']:.1%}"
            ),
        )
        summary["eval_seconds"] = round(time.time() - t_eval, 2)
    return stage.complete(summary)


def cli(argv: list[str] | None = None) -> int:
    from rlhf_repro.cli import run_stage

    return run_stage(Args, main, argv, __doc__)


if __name__ == "__main__":
    sys.exit(cli())
