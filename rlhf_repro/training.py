"""What the training stages (SFT, RM, DPO, PPO) share around their loops: the accelerator, the optimizer
of detail 8, the batch geometry, the main-process run folder, and checkpoints that span processes.

The loops themselves stay in the stage scripts.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from rlhf_repro.io import InputError, atomic_write_text
from rlhf_repro.runs import (
    RunFolder,
    config_dict,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from rlhf_repro.tracking import NoOpTracker, make_tracker


@dataclass
class StageArgs:
    """Flags every training stage shares: how a run is checkpointed, threaded, tracked and shown. They
    never change the numbers a run computes (so a resumed run may change them)."""

    save_every: int = 100
    """Write a checkpoint every N updates (and after the last one); 0 writes only the last."""
    resume: bool = True
    """Continue from RUN/checkpoint when one exists (a killed run picks up where it stopped)."""
    threads: int | None = None
    """torch CPU threads per process (default: torch's choice)."""
    deterministic: bool = False
    """Ask torch for deterministic algorithms (recorded in provenance)."""
    track: bool = False
    """Log to Weights & Biases (WANDB_MODE=offline writes runs locally)."""
    wandb_project: str = "rlhf-repro"
    """W&B project."""
    wandb_entity: str | None = None
    """W&B entity (team or user)."""
    progress: bool = True
    """Show progress bars."""


# StageArgs fields plus per-stage ones that may differ between a run and its resumption.
RESUME_IGNORED = ("save_every", "resume", "progress", "threads", "track", "wandb_project", "wandb_entity")


def launched_world_size() -> int:
    """Processes of this launch, as torchrun / accelerate launch announce them (1 when run directly)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def resolve_accumulation(batch_size: int, accumulation: int | None, micro_batch: int, world_size: int) -> int:
    """Accumulation steps per update: given explicitly, or derived so that the global batch is
    `batch_size` = micro-batch x accumulation x processes (the paper's 128 / 64 on any process count)."""
    if accumulation is not None:
        if accumulation < 1:
            raise InputError(f"--gradient-accumulation-steps must be >= 1, got {accumulation}")
        return accumulation
    per_step = micro_batch * world_size
    if batch_size < 1 or batch_size % per_step:
        raise InputError(
            f"--batch-size {batch_size} is not a multiple of local micro-batch {micro_batch} x {world_size} "
            "process(es); change one of them or pass --gradient-accumulation-steps"
        )
    return batch_size // per_step


def make_accelerator(gradient_accumulation_steps: int = 1):
    """An `Accelerator` that also works with 2+ CPU processes.

    Without a GPU it must be told `cpu=True`: launched by torchrun (or `accelerate launch --multi_gpu`)
    it then runs DDP over gloo. `accelerate launch --cpu --num_processes 2` starts one process only
    (accelerate 1.15; stack-notes §5).
    """
    from accelerate import Accelerator
    from accelerate.utils import DistributedType

    accelerator = Accelerator(
        cpu=not torch.cuda.is_available(), gradient_accumulation_steps=gradient_accumulation_steps
    )
    if accelerator.num_processes != launched_world_size():
        raise RuntimeError(
            f"launched as {launched_world_size()} process(es) but accelerate sees {accelerator.num_processes}"
        )
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        # Rank 0's optimizer state is only its ZeRO partition: our checkpoints cannot restore it.
        print("note: checkpoint/resume is not supported under DeepSpeed yet; this run saves its final model only")
    return accelerator


def setup_stage(args, minibatches: int = 1, seed: int | None = None):
    """Every training stage's first lines: accumulation from the global batch, the accelerator, CPU
    threads and the per-rank seeds (R-14) from `seed` (default `args.seed`). Returns (accelerator,
    accumulation steps).

    With `minibatches` > 1 (PPO) each of the batch's minibatches is one optimizer step, so accumulation
    covers batch_size / minibatches.
    """
    from rlhf_repro.seeding import seed_everything

    if args.batch_size % minibatches:
        raise InputError(f"--batch-size {args.batch_size} is not a multiple of {minibatches} minibatches")
    accumulation = resolve_accumulation(
        args.batch_size // minibatches,
        args.gradient_accumulation_steps,
        args.local_micro_batch_size,
        launched_world_size(),
    )
    accelerator = make_accelerator(accumulation)
    if args.threads:
        torch.set_num_threads(args.threads)
    seed_everything(args.seed if seed is None else seed, accelerator.process_index, args.deterministic)
    return accelerator, accumulation


def prepare_trained(accelerator, micro_batch_size: int, *objects, max_grad_norm: float = 0.0):
    """`accelerator.prepare` for a stage's trained model and optimizer. Under DeepSpeed, accelerate takes
    the per-GPU micro-batch from a prepared dataloader; the stages batch by hand and prepare none, so the
    micro-batch goes into the DeepSpeed config first, as the reference's scripts set it (R-17). Without
    it, `prepare` stops with "requires you to pass at least one of training or evaluation dataloaders".

    `max_grad_norm` becomes DeepSpeed's `gradient_clipping` (0: off). The reference's YAML names no
    clipping, which its accelerate 0.25 left out of the DeepSpeed config (no clipping, R-10); accelerate
    >= 1.x writes "auto" there and fills it with 1.0, so it is always set here."""
    from accelerate.utils import DistributedType

    if max_grad_norm < 0:
        raise InputError(f"--max-grad-norm must be >= 0 (0: no clipping), got {max_grad_norm}")
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        config = accelerator.state.deepspeed_plugin.deepspeed_config
        config["train_micro_batch_size_per_gpu"] = micro_batch_size
        config["gradient_clipping"] = float(max_grad_norm)
    return accelerator.prepare(*objects)


def clip_gradients(accelerator, model, max_grad_norm: float) -> None:
    """Clip the global gradient norm before an optimizer step that will happen (`sync_gradients`), on the
    backends where the stage steps the optimizer itself. DeepSpeed clips inside its own step, to the
    `gradient_clipping` that `prepare_trained` set (accelerate's clip_grad_norm_ would not clip there)."""
    from accelerate.utils import DistributedType

    if not max_grad_norm or accelerator.distributed_type == DistributedType.DEEPSPEED:
        return
    if accelerator.sync_gradients:
        accelerator.clip_grad_norm_(model.parameters(), max_grad_norm)


def frozen_deepspeed_config(micro_batch_size: int, offload: bool, bf16: bool = True) -> dict:
    """The DeepSpeed config of PPO's frozen models, the reference policy and the RM (R-17).

    The reference wraps them in a separate inference config (bf16, no ZeRO sharding); with its `--offload`
    (set for Pythia 6.9B) they go to ZeRO stage 3 with their parameters offloaded to CPU, each layer
    gathered to the GPU when it runs, and parameters under 1e4 elements kept resident."""
    config = {
        "train_micro_batch_size_per_gpu": micro_batch_size,
        "bf16": {"enabled": bool(bf16)},
        "prescale_gradients": False,
        "wall_clock_breakdown": False,
    }
    if offload:
        config["zero_optimization"] = {
            "stage": 3,
            "stage3_param_persistence_threshold": 1e4,
            "offload_param": {"device": "cpu"},
        }
    return config


def prepare_frozen(accelerator, model, micro_batch_size: int, offload: bool = False):
    """Put a frozen model where the trained one runs (R-17): under DeepSpeed, a DeepSpeed inference engine
    with `frozen_deepspeed_config` (the engine's forward is the model's); otherwise the model itself,
    moved to the accelerator's device (`offload` then does nothing, as the reference's flag)."""
    from accelerate.utils import DistributedType

    if accelerator.distributed_type != DistributedType.DEEPSPEED:
        if offload:  # as the reference: without --deepspeed its frozen models simply go to the device
            print("note: --offload applies under DeepSpeed only; the frozen models go to the device")
        return model.to(accelerator.device)
    import deepspeed

    config = frozen_deepspeed_config(micro_batch_size, offload, bf16=accelerator.mixed_precision == "bf16")
    engine, *_ = deepspeed.initialize(model=model, config=config)
    engine.eval()
    return engine


def checkpoints_supported(accelerator) -> bool:
    from accelerate.utils import DistributedType

    return accelerator.distributed_type != DistributedType.DEEPSPEED


def make_optimizer(name: str, params, lr: float, eps: float):
    """Detail 8: AdamW(eps 1e-5) with PyTorch's defaults for betas (0.9, 0.999) and weight decay (0.01).

    PyTorch's fused implementation (one kernel over all parameters; the same update rule, equal to the
    for-loop one up to float rounding, tested) where the parameters are float CPU/CUDA tensors: on this
    CPU it steps a pythia-14m policy and critic in ~15 ms instead of ~70-100 ms."""
    if name not in ("adam", "adamw"):
        raise InputError(f"unknown optimizer {name!r}; one of adam, adamw")
    params = list(params)
    cls = torch.optim.AdamW if name == "adamw" else torch.optim.Adam
    fused = all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params) or None
    return cls(params, lr=lr, eps=eps, fused=fused)


def batch_geometry(
    local_micro_batch_size: int, gradient_accumulation_steps: int, world_size: int, episodes: int, epochs: int
) -> dict:
    """The reference's derived sizes (`parse_args`), plus the number of optimizer updates.

    Rows past the last full batch of an epoch are dropped.
    """
    micro_batch_size = local_micro_batch_size * world_size
    local_batch_size = local_micro_batch_size * gradient_accumulation_steps
    batch_size = local_batch_size * world_size
    updates_per_epoch = episodes // batch_size
    return {
        "world_size": world_size,
        "local_micro_batch_size": local_micro_batch_size,
        "gradient_accumulation_steps": gradient_accumulation_steps,
        "micro_batch_size": micro_batch_size,
        "local_batch_size": local_batch_size,
        "batch_size": batch_size,
        "episodes_per_epoch": episodes,
        "updates_per_epoch": updates_per_epoch,
        "num_updates": updates_per_epoch * epochs,
    }


class StageRun:
    """The run folder, metrics.jsonl and W&B of one stage, written by the main process only."""

    def __init__(
        self,
        accelerator,
        path: Path,
        args,
        derived: dict,
        inputs: dict,
        resume_step: int | None,
        job: str,
        detail_flags: tuple[str, ...] = (),
        keep_lines: int | None = None,
    ):
        self.main = accelerator.is_main_process
        self.folder = RunFolder(path)
        self.path = self.folder.path
        self.metrics = None
        self.tracker = NoOpTracker()
        if self.main:
            config = {**config_dict(args), "derived": derived}
            self.metrics = self.folder.start(config, inputs=inputs, resume_step=resume_step, keep_lines=keep_lines)
            self.tracker = make_tracker(
                args.track,
                project=args.wandb_project,
                entity=args.wandb_entity,
                name=f"{args.experiment}-{job}-{path.parent.name}-{path.name}",
                group=args.experiment,
                job_type=job,
                tags=changed_details(args, detail_flags),
                config=config,
                directory=path,
            )

    @property
    def lines(self) -> int:
        """metrics.jsonl lines written so far (stored in checkpoints: a resume truncates back to it)."""
        return self.metrics.lines if self.main else 0

    def log(self, row: dict, step: int) -> None:
        if self.main:
            self.metrics.log(row, step=step)
            self.tracker.log(row, step=step)

    def write_table(self, name: str, frame) -> None:
        if self.main:
            atomic_write_text(self.path / name, frame.to_csv(index=False))

    def finish(self, summary: dict) -> None:
        if self.main:
            self.folder.finish(summary)
            self.metrics.close()
            self.tracker.finish()

    def complete(self, accelerator, summary: dict, t_start: float, model_dir: Path, job: str) -> dict:
        """A stage's last lines: total time and model path into summary.json (marking the run done)."""
        summary["seconds"] = round(time.time() - t_start, 2)
        summary["model_dir"] = str(model_dir)
        self.finish(summary)
        if self.main:
            print(f"{job} done in {summary['seconds']} s; model -> {model_dir}")
        accelerator.end_training()
        return summary


def changed_details(args, fields: tuple[str, ...]) -> list[str]:
    """`field=value` for each listed detail flag that differs from the paper's default (W&B tags)."""
    import operator

    defaults = type(args)()
    out = []
    for f in fields:  # dotted names reach nested groups: "ppo.kl_coef"
        value, default = operator.attrgetter(f)(args), operator.attrgetter(f)(defaults)
        if value != default:
            out.append(f"{f}={value}")
    return out


NAN_ENV = "RLHF_REPRO_INJECT_NAN"


class NumericalError(FloatingPointError):
    """A NaN/inf in a loss, reward, value or advantage: the stage stops with the update and the tensor
    named; nothing after the last good checkpoint is kept, so a rerun resumes from it."""


def inject_nan(name: str, step: int, value):
    """Fault injection for tests: when RLHF_REPRO_INJECT_NAN is "<name>@<step>", return `value` (a float
    or a tensor) with a NaN in it (the first element of a tensor, on a copy); otherwise `value` itself."""
    if os.environ.get(NAN_ENV) != f"{name}@{step}":
        return value
    if isinstance(value, torch.Tensor):
        value = value.detach().clone()
        value.view(-1)[0] = float("nan")
        return value
    return float("nan")


def _advice(checkpoint_dir: Path) -> str:
    return (
        f"the last good checkpoint is in {checkpoint_dir} (lower --lr or check the data, then rerun the same "
        "command to resume from it)"
    )


def check_finite(value: float, what: str, step: int, checkpoint_dir: Path, key: str = "loss") -> None:
    """Stop on a NaN/inf loss, pointing at the last good checkpoint (nothing after it is kept).
    `key` names the value for the fault-injection hook (`inject_nan`)."""
    value = inject_nan(key, step, value)
    if not math.isfinite(value):
        raise NumericalError(f"update {step}: {what} is {value}; {_advice(checkpoint_dir)}")


def check_finite_tensors(step: int, checkpoint_dir: Path, reduce=None, **tensors) -> None:
    """Stop when any named tensor holds a NaN/inf, naming the tensor, how many entries and the first one.

    `reduce` (a sum over processes) makes every process stop when any one finds a non-finite value: a
    rank that stopped alone would leave the others waiting in the next collective until its timeout."""
    found = None
    for name, tensor in tensors.items():
        tensor = inject_nan(name, step, tensor)
        bad = ~torch.isfinite(tensor.detach())
        if bad.any() and found is None:
            found = (name, tensor, bad)
    if reduce is not None:
        device = next(iter(tensors.values())).device
        anywhere = int(reduce(torch.tensor(float(found is not None), device=device)).item())
    else:
        anywhere = int(found is not None)
    if found is not None:
        name, tensor, bad = found
        first = tuple(int(i) for i in bad.nonzero()[0].tolist())
        raise NumericalError(
            f"update {step}: `{name}` has {int(bad.sum())} non-finite of {tensor.numel()} values "
            f"(first at index {first}: {tensor[first].item()}); {_advice(checkpoint_dir)}"
        )
    if anywhere:
        raise NumericalError(f"update {step}: another process found non-finite values; {_advice(checkpoint_dir)}")


def save_training_state(accelerator, directory: Path, step: int, model, optimizer, scheduler, config, extra=None):
    """Checkpoint at `step`: model, optimizer, scheduler and rank-0 RNG from the main process, plus each
    other rank's RNG in rng_rank{r}.pt, written before the main state so a complete state.pt always has
    its rank files."""
    directory = Path(directory)
    if not checkpoints_supported(accelerator):
        return
    accelerator.wait_for_everyone()
    if accelerator.process_index > 0:
        directory.mkdir(parents=True, exist_ok=True)
        tmp = directory / f".rng_rank{accelerator.process_index}.pt.tmp"
        torch.save({"step": step, "rng": rng_state()}, tmp)
        os.replace(tmp, directory / f"rng_rank{accelerator.process_index}.pt")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(model)
        save_checkpoint(directory, step, unwrapped, optimizer, scheduler, extra=extra, config=config)
    accelerator.wait_for_everyone()


def load_training_state(accelerator, directory: Path, model, optimizer, scheduler, config) -> dict | None:
    """Restore a `save_training_state` checkpoint on every rank (before `accelerator.prepare`)."""
    if not checkpoints_supported(accelerator):
        return None
    state = load_checkpoint(directory, model, optimizer, scheduler, config=config)
    if state is None or accelerator.process_index == 0:
        return state
    path = Path(directory) / f"rng_rank{accelerator.process_index}.pt"
    rank_state = torch.load(path, map_location="cpu", weights_only=False) if path.exists() else None
    if rank_state is not None and rank_state["step"] == state["step"]:
        set_rng_state(rank_state["rng"])
    else:
        print(
            f"warning: rank {accelerator.process_index} has no RNG state for update {state['step']} in {directory}; "
            "it continues from rank 0's, so its later samples differ from an uninterrupted run"
        )
    return state


def gather_objects(accelerator, objects: list) -> list:
    """All ranks' lists, concatenated in rank order (a plain copy with one process)."""
    if accelerator.num_processes == 1:
        return list(objects)
    from accelerate.utils import gather_object

    return gather_object(objects)


CRASH_ENV = "RLHF_REPRO_CRASH_AT"


def checkpoint_if_due(
    args, accelerator, run, ckpt: Path, done: int, num_updates: int, model, optimizer, scheduler, config, **extra
) -> None:
    """Every stage's end of update: checkpoint after the last update and every --save-every updates
    (with the metrics lines written so far and any `extra` state), then the test hook `crash_point`."""
    if done == num_updates or (args.save_every and done % args.save_every == 0):
        save_training_state(
            accelerator, ckpt, done, model, optimizer, scheduler, config, {"metrics_lines": run.lines, **extra}
        )
        crash_point(done)


def crash_point(where: int | str) -> None:
    """Fault injection for resume tests: exit abruptly (code 17, nothing flushed or cleaned up, like a
    kill) when RLHF_REPRO_CRASH_AT names this point: an update number (right after its checkpoint) or
    a phase name such as "normalization" or "eval"."""
    if os.environ.get(CRASH_ENV) == str(where):
        os._exit(17)
