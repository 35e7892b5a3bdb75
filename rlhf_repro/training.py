"""What the training stages (SFT, RM, DPO, PPO) share around their loops: the accelerator, the optimizer
of detail 8, the batch geometry, one run lifecycle (`StageRun`: "already done?", resume, logging, checkpoints,
NaN checks, the closing summary), and checkpoints that span processes.

The loops themselves stay in the stage scripts.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
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
    run_dir,
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
    """One training stage's life, from "already done?" to summary.json: every stage script runs it the same way.

        stage = StageRun(args, "sft", model_name, accelerator, RESUME_IGNORED)
        if (done := stage.finished()) is not None:  # before any model or dataset loads
            return done
        ...                                          # data, model, optimizer, scheduler
        state = stage.restore(model, optimizer, scheduler)   # model, optimizer, scheduler, RNG; None: fresh
        stage.open(derived, inputs={...}, detail_flags=DETAIL_FLAGS)
        for update in range(stage.start_step, num_updates):  # the data position is the update number
            ...
            stage.check_finite(loss, "train/sft/loss", update + 1)
            stage.log({...}, step=update + 1)
            stage.end_update(update + 1, num_updates, model, optimizer, scheduler)
        stage.save_model(model, tokenizer)
        stage.evaluate_splits(args.eval_splits, num_updates, summary, evaluate_one, table_name)
        return stage.complete(summary)

    It owns the run folder (`RunFolder`: config, provenance, metrics.jsonl, tables, summary.json), the
    W&B run, the checkpoint (`save_training_state` / `load_training_state`, with the metrics lines written
    so far, so a resumed metrics.jsonl ends as an uninterrupted run's), the NaN checks and the fault
    injection points. Files are written by the main process only.
    """

    def __init__(self, args, job: str, model_name: str, accelerator, resume_ignored=(), extra_config=None):
        self.args, self.job, self.model_name, self.accelerator = args, job, model_name, accelerator
        self.main = accelerator.is_main_process
        self.folder = RunFolder(run_dir(args.results_dir, args.experiment, job, model_name, args.seed))
        self.path = self.folder.path
        self.checkpoint_dir = self.folder.checkpoint_dir
        # The config a checkpoint must match to be resumed: every flag but those that cannot change the
        # trained weights (evaluation, progress, tracking), plus the process count.
        self.config = {
            k: dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v
            for k, v in vars(args).items()
            if k not in resume_ignored
        }
        self.config |= {"world_size": accelerator.num_processes, **(extra_config or {})}
        self.state: dict | None = None
        self.metrics = None
        self.tracker = NoOpTracker()
        self.t_start = time.time()

    # --- before anything loads ------------------------------------------------------------------------

    def finished(self) -> dict | None:
        """The summary of a finished run (its summary.json exists and --resume is on), else None."""
        if not (getattr(self.args, "resume", True) and self.folder.is_done()):
            return None
        if self.main:
            print(f"already done: {self.path} (its summary.json exists; pass --no-resume to run it again)")
        return json.loads(self.folder.summary_path.read_text())

    # --- resume and start ---------------------------------------------------------------------------

    def restore(self, model, optimizer, scheduler=None) -> dict | None:
        """Load the newest checkpoint into model, optimizer, scheduler and the RNGs (before
        `accelerator.prepare`); its state, or None for a fresh start (or --no-resume)."""
        if getattr(self.args, "resume", True):
            self.state = load_training_state(
                self.accelerator, self.checkpoint_dir, model, optimizer, scheduler, self.config
            )
        return self.state

    @property
    def start_step(self) -> int:
        """Updates done before this process started (0 on a fresh start)."""
        return self.state["step"] if self.state else 0

    def resumed(self, key: str, default=None):
        """A value saved with the checkpoint by `end_update(..., key=value)` (e.g. PPO's KL coefficient)."""
        return self.state["extra"].get(key, default) if self.state else default

    def open(self, derived: dict, inputs: dict, detail_flags: tuple[str, ...] = ()) -> None:
        """Write config.json and provenance.json, open metrics.jsonl (cut back to the checkpoint on a
        resume) and the W&B run."""
        if not self.main:
            return
        args = self.args
        config = {**config_dict(args), "derived": derived}
        self.metrics = self.folder.start(
            config,
            inputs=inputs,
            resume_step=self.start_step if self.state else None,
            keep_lines=self.resumed("metrics_lines"),
        )
        self.tracker = make_tracker(
            args.track,
            project=args.wandb_project,
            entity=args.wandb_entity,
            name=f"{args.experiment}-{self.job}-{self.path.parent.name}-{self.path.name}",
            group=args.experiment,
            job_type=self.job,
            tags=changed_details(args, detail_flags),
            config=config,
            directory=self.path,
        )

    # --- during training ----------------------------------------------------------------------------

    @property
    def lines(self) -> int:
        """metrics.jsonl lines written so far (stored in checkpoints: a resume truncates back to it)."""
        return self.metrics.lines if self.main and self.metrics is not None else 0

    def log(self, row: dict, step: int) -> None:
        if self.main and self.metrics is not None:
            self.metrics.log(row, step=step)
            self.tracker.log(row, step=step)

    def write_table(self, name: str, frame) -> None:
        if self.main:
            atomic_write_text(self.path / name, frame.to_csv(index=False))

    def check_finite(self, value: float, what: str, step: int, key: str = "loss") -> None:
        check_finite(value, what, step, self.checkpoint_dir, key=key)

    def check_finite_tensors(self, step: int, reduce=None, **tensors) -> None:
        check_finite_tensors(step, self.checkpoint_dir, reduce=reduce, **tensors)

    def end_update(self, done: int, num_updates: int, model, optimizer, scheduler=None, **extra) -> None:
        """After update `done`: checkpoint after the last update and every --save-every updates (with
        the metrics lines written so far and `extra`), then the crash-test hook `crash_point`."""
        args = self.args
        if done == num_updates or (args.save_every and done % args.save_every == 0):
            save_training_state(
                self.accelerator,
                self.checkpoint_dir,
                done,
                model,
                optimizer,
                scheduler,
                self.config,
                {"metrics_lines": self.lines, **extra},
            )
            crash_point(done)

    # --- after training -----------------------------------------------------------------------------

    @property
    def model_dir(self) -> Path:
        return self.path / "model"

    def save_model(self, model, tokenizer, also: dict | None = None, adapters: dict | None = None) -> None:
        """RUN/model (the next stage's input) and RUN/<name> for each of `also` (e.g. PPO's critic), each
        written whole or not at all, by the main process. A model with LoRA adapters inside is saved merged
        (`lora.merged_state_dict`: a plain model again; the live model keeps its adapters), and `adapters`
        maps a folder name to a peft model whose adapter alone is saved there in peft's format."""
        from rlhf_repro.io import atomic_directory
        from rlhf_repro.lora import merged_state_dict, save_adapter

        accelerator = self.accelerator
        accelerator.wait_for_everyone()
        if self.main:
            for name, peft_model in (adapters or {}).items():
                if peft_model is not None:
                    save_adapter(peft_model, self.path / name)
            for directory, m, tok in [(self.model_dir, model, tokenizer)] + [
                (self.path / name, other, None) for name, other in (also or {}).items()
            ]:
                m = accelerator.unwrap_model(m)
                with atomic_directory(directory) as tmp:
                    m.save_pretrained(str(tmp), state_dict=merged_state_dict(m))
                    if tok is not None:
                        tok.save_pretrained(str(tmp))
        accelerator.wait_for_everyone()

    def evaluate_splits(self, splits, step: int, summary: dict, evaluate, table_name, describe=None) -> None:
        """The shared evaluation loop: for each split, `evaluate(split) -> (metrics, table)` (None to
        skip the split), logged at `step`, the table written as `table_name(split)`, the metrics added
        to `summary`, `describe(split, metrics, table)` printed, then the crash point `eval-<split>`."""
        for split in splits:
            result = evaluate(split)
            if result is None:
                continue
            metrics, table = result
            self.log(metrics, step=step)
            self.write_table(table_name(split), table)
            summary.update(metrics)
            crash_point(f"eval-{split}")
            if describe is not None and self.main:
                print(describe(split, metrics, table))

    def complete(self, summary: dict) -> dict:
        """The last lines: total time and model path into summary.json (marking the run done)."""
        summary["seconds"] = round(time.time() - self.t_start, 2)
        summary["model_dir"] = str(self.model_dir)
        if self.main:
            self.folder.finish(summary)
            if self.metrics is not None:
                self.metrics.close()
            self.tracker.finish()
            print(f"{self.job} done in {summary['seconds']} s; model -> {self.model_dir}")
        self.accelerator.end_training()
        return summary


class PhaseTimer:
    """Seconds per named phase of one update, summed over repeats (`time/ppo/generate`, ...):

    timer = PhaseTimer("time/ppo/")
    with timer("generate"): ...        # or timer.start("train") ... timer.stop("train")
    row.update(timer.seconds)          # in the order the phases first ended
    """

    def __init__(self, prefix: str = ""):
        self.prefix = prefix
        self.seconds: dict[str, float] = {}
        self._started: dict[str, float] = {}

    def start(self, name: str) -> None:
        self._started[name] = time.perf_counter()

    def stop(self, name: str) -> None:
        key = self.prefix + name
        self.seconds[key] = self.seconds.get(key, 0.0) + time.perf_counter() - self._started.pop(name)

    @contextlib.contextmanager
    def __call__(self, name: str):
        self.start(name)
        try:
            yield
        finally:
            self.stop(name)


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


def crash_point(where: int | str) -> None:
    """Fault injection for resume tests: exit abruptly (code 17, nothing flushed or cleaned up, like a
    kill) when RLHF_REPRO_CRASH_AT names this point: an update number (right after its checkpoint) or
    a phase name such as "normalization" or "eval"."""
    if os.environ.get(CRASH_ENV) == str(where):
        os._exit(17)
