"""Pretrain a tiny Pythia-architecture base model on the simulated world's text.

    python experiments/pretrain.py --data WORLD_DIR --model-shape tiny-m --steps 300

Pythia knows English before SFT starts; the tiny models of the `tiny` preset must know the world's
language the same way. Documents are the world's pretraining corpus (WORLD/pretrain/*.jsonl: posts that
are not in the SFT data, each preceded by a summary written by "many people" under an "In short:" line:
the model learns the world's facts and how people summarize them, but not the SFT template, nor to write
a summary after a post, so the base model loses to the references and SFT has something to learn),
separated by EOS and packed into fixed blocks. News articles are left out: the CNN/DM subset stays out
of domain. The quickstart does not run this: it starts from the shipped base models
(rlhf_repro/sim/base_models/, `rlhf-repro sim base-models` retrains and checks them).

Writes results/<experiment>/pretrain/<model-shape>/<seed>/: config.json, provenance.json, metrics.jsonl,
summary.json (parameters, losses before/after, time), checkpoint/ (for --resume) and model/, a
`save_pretrained` directory (model + tokenizer) that AutoModelForCausalLM loads like a hub id.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from rlhf_repro.io import InputError, atomic_directory, read_jsonl
from rlhf_repro.modeling import count_parameters, disable_dropout, shape_config
from rlhf_repro.runs import RunFolder, config_dict, load_checkpoint, run_dir, save_checkpoint
from rlhf_repro.seeding import seed_everything
from rlhf_repro.tokenization import load_tokenizer
from rlhf_repro.tracking import make_tracker


@dataclass
class Args:
    data: str = "work/world"
    """World directory from `rlhf-repro sim generate` (reads pretrain/train.jsonl and pretrain/valid.jsonl)."""
    tokenizer: str | None = None
    """Tokenizer (hub id, directory or tokenizer.json); default: DATA/tokenizer."""
    model_shape: Literal["tiny-xs", "tiny-s", "tiny-m", "tiny-l", "pythia-14m"] = "tiny-m"
    """Architecture size (see rlhf_repro/modeling.py MODEL_SHAPES). `--model-preset`, its old name, still
    works and warns."""
    results_dir: str = "results"
    """Root of run folders."""
    experiment: str = "quickstart"
    """Experiment name: the run folder is RESULTS_DIR/EXPERIMENT/pretrain/MODEL_SHAPE/SEED."""
    seed: int = 1
    """Seed of initialization and data order."""
    steps: int = 300
    """Optimizer steps (budget by steps, not wall time, so runs are reproducible)."""
    batch_size: int = 16
    """Blocks per step."""
    block_size: int = 256
    """Tokens per block (documents are packed, separated by EOS)."""
    lr: float = 3e-3
    """Peak learning rate (AdamW), reached after the warmup and decayed by cosine to 10%."""
    warmup_steps: int = 20
    """Linear warmup steps."""
    weight_decay: float = 0.01
    """AdamW weight decay."""
    eval_every: int = 100
    """Evaluate validation loss every N steps (and before and after training)."""
    eval_blocks: int = 64
    """Validation blocks used for the loss."""
    save_every: int = 100
    """Write a checkpoint every N steps (model, optimizer, scheduler, RNG, step)."""
    resume: bool = True
    """Continue from RUN/checkpoint when one exists (a killed run picks up where it stopped)."""
    threads: int | None = None
    """torch CPU threads (default: torch's choice)."""
    track: bool = False
    """Log to Weights & Biases (set WANDB_MODE=offline to write runs locally)."""
    wandb_project: str = "rlhf-repro"
    """W&B project."""
    wandb_entity: str | None = None
    """W&B entity (team or user)."""
    progress: bool = True
    """Show a progress bar."""


def documents(path: Path, eos: str) -> list[str]:
    docs = []
    for lineno, row in read_jsonl(path):
        for key in ("title", "post", "summary"):
            if not isinstance(row.get(key), str):
                raise InputError("missing or not a string", path, lineno, key)
        # The summary comes first, as an abstract: the model learns the world's language and to copy facts
        # between a summary and its post, but never sees a summary follow a post, so before SFT it does
        # not answer a TL;DR prompt with one (the pretrained-only model loses to the references).
        docs.append(f"In short: {row['summary']}\n\n{row['title']}\n\n{row['post']}{eos}")
    if not docs:
        raise InputError("no documents", path)
    return docs


def pack(tokenizer, docs: list[str], block_size: int) -> torch.Tensor:
    """Concatenate tokenized documents and cut them into (n_blocks, block_size) blocks."""
    ids = tokenizer(docs, add_special_tokens=False)["input_ids"]
    flat = np.fromiter((t for doc in ids for t in doc), dtype=np.int64)
    n = len(flat) // block_size
    if n == 0:
        raise InputError(f"only {len(flat)} tokens, fewer than one block of {block_size}")
    return torch.from_numpy(flat[: n * block_size].reshape(n, block_size).copy())


@torch.no_grad()
def eval_loss(model, blocks: torch.Tensor, batch_size: int) -> float:
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(blocks), batch_size):
        batch = blocks[i : i + batch_size]
        logits = model(input_ids=batch).logits[:, :-1]
        loss = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.size(-1)), batch[:, 1:].reshape(-1), reduction="sum"
        )
        total += loss.item()
        count += batch[:, 1:].numel()
    model.train()
    return total / count


def lr_at(step: int, args: Args) -> float:
    if step < args.warmup_steps:
        return args.lr * (step + 1) / args.warmup_steps
    progress = (step - args.warmup_steps) / max(1, args.steps - args.warmup_steps)
    return args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def main(args: Args) -> dict:
    from tqdm.auto import tqdm
    from transformers import GPTNeoXForCausalLM

    if args.threads:
        torch.set_num_threads(args.threads)
    data = Path(args.data)
    tokenizer = load_tokenizer(args.tokenizer or data / "tokenizer")
    run = RunFolder(run_dir(args.results_dir, args.experiment, "pretrain", args.model_shape, args.seed))
    seed_everything(args.seed)

    # --- data -------------------------------------------------------------------------------------
    train_blocks = pack(tokenizer, documents(data / "pretrain" / "train.jsonl", tokenizer.eos_token), args.block_size)
    valid_blocks = pack(tokenizer, documents(data / "pretrain" / "valid.jsonl", tokenizer.eos_token), args.block_size)[
        : args.eval_blocks
    ]
    order = torch.randperm(len(train_blocks), generator=torch.Generator().manual_seed(args.seed))

    # --- model and optimizer ------------------------------------------------------------------------
    config = shape_config(
        args.model_shape, len(tokenizer), eos_token_id=tokenizer.eos_token_id, max_positions=max(2048, args.block_size)
    )
    model = GPTNeoXForCausalLM(config)
    disable_dropout(model)
    n_params = count_parameters(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=args.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_at(s, args) / args.lr)
    resume_config = {k: v for k, v in config_dict(args).items() if k not in ("resume", "progress", "threads", "track")}

    state = (
        load_checkpoint(run.checkpoint_dir, model, optimizer, scheduler, config=resume_config) if args.resume else None
    )
    start = state["step"] if state else 0
    metrics = run.start(
        args,
        inputs={"data": str(data), "tokenizer": args.tokenizer or str(data / "tokenizer")},
        resume_step=start if state else None,
    )
    tracker = make_tracker(
        args.track,
        project=args.wandb_project,
        entity=args.wandb_entity,
        name=f"pretrain-{args.model_shape}-{args.seed}",
        group=args.experiment,
        job_type="pretrain",
        config=config_dict(args),
        directory=run.path,
    )
    if state:
        untrained, before = state["extra"]["untrained_loss"], state["extra"]["val_loss_before"]
        print(f"resuming {run.path} from step {start}")
    else:
        untrained = math.log(len(tokenizer))
        before = eval_loss(model, valid_blocks, args.batch_size)
        metrics.log({"eval/pretrain/loss": before}, step=0)
    print(
        f"{args.model_shape}: {n_params:,} parameters ({n_params - 2 * config.vocab_size * config.hidden_size:,} "
        f"outside embeddings), {len(train_blocks)} train blocks of {args.block_size}; "
        f"validation loss {before:.3f} (uniform: {untrained:.3f})"
    )

    # --- loop ------------------------------------------------------------------------------------
    t0, tokens_seen = time.time(), 0
    model.train()
    bar = tqdm(range(start, args.steps), initial=start, total=args.steps, desc="pretrain", disable=not args.progress)
    for step in bar:
        idx = [order[(step * args.batch_size + j) % len(order)] for j in range(args.batch_size)]
        batch = train_blocks[torch.stack(idx)]
        logits = model(input_ids=batch).logits[:, :-1]
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), batch[:, 1:].reshape(-1))
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"step {step + 1}: pretraining loss is {loss.item()}; last good checkpoint kept in {run.checkpoint_dir}"
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        tokens_seen += batch.numel()
        done = step + 1
        row = {
            "pretrain/loss": loss.item(),
            "pretrain/lr": scheduler.get_last_lr()[0],
            "time/tokens_per_s": tokens_seen / max(1e-9, time.time() - t0),
        }
        if done % args.eval_every == 0 or done == args.steps:
            row["eval/pretrain/loss"] = eval_loss(model, valid_blocks, args.batch_size)
        metrics.log(row, step=done)
        tracker.log(row, step=done)
        bar.set_postfix(loss=f"{loss.item():.3f}")
        if done % args.save_every == 0 and done < args.steps:
            save_checkpoint(
                run.checkpoint_dir,
                done,
                model,
                optimizer,
                scheduler,
                config=resume_config,
                extra={"untrained_loss": untrained, "val_loss_before": before},
            )
    bar.close()

    after = eval_loss(model, valid_blocks, args.batch_size)
    with atomic_directory(run.path / "model") as tmp:
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
    summary = {
        "model_shape": args.model_shape,
        "parameters": n_params,
        "steps": args.steps,
        "tokens": args.steps * args.batch_size * args.block_size,
        "seconds": round(time.time() - t0, 2),
        "untrained_loss_uniform": untrained,
        "val_loss_before": before,
        "val_loss_after": after,
        "model_dir": str(run.path / "model"),
    }
    run.finish(summary)
    metrics.close()
    tracker.finish()
    print(f"validation loss {before:.3f} -> {after:.3f} in {summary['seconds']} s; model -> {run.path / 'model'}")
    return summary


RENAMED_FLAGS = {"--model-preset": "--model-shape"}  # issue 20: "preset" names the pipeline presets only


def cli(argv: list[str] | None = None) -> int:
    from rlhf_repro.cli import renamed_flags, run_stage

    return run_stage(Args, main, renamed_flags(sys.argv[1:] if argv is None else argv, RENAMED_FLAGS), __doc__)


if __name__ == "__main__":
    sys.exit(cli())
