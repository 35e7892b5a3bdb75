"""Run folders: `results/<experiment>/<stage>/<model-name>/<seed>/`.

A run folder holds config.json (resolved args), provenance.json, metrics.jsonl (one JSON object per
logged step), summary.json (final numbers; its presence marks the stage done), eval tables, and
checkpoint/ for resume. Every file is written atomically, so a killed run never leaves half a file.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
from pathlib import Path

from rlhf_repro.io import InputError, atomic_write_json, atomic_write_text
from rlhf_repro.lora import GPT_NEOX_LINEAR
from rlhf_repro.provenance import is_secret_name, provenance


def run_dir(results_dir: str | os.PathLike, experiment: str, stage: str, model_name: str, seed: int) -> Path:
    return Path(results_dir) / experiment / stage / model_name.replace("/", "__") / str(seed)


def redact_config(config: dict) -> dict:
    """Config with the values of secret fields (`is_secret_name`: api_key, hf_token, password, ...)
    replaced by '***', nested dicts included; None stays None ("not set" is not a secret). Fields that
    merely mention tokens (tokenizer, pad_token, truncate_token) are kept."""
    out = {}
    for k, v in config.items():
        if isinstance(v, dict):
            out[k] = redact_config(v)
        elif is_secret_name(str(k)) and v is not None:
            out[k] = "***"
        else:
            out[k] = v
    return out


def config_dict(args) -> dict:
    if isinstance(args, dict):
        return redact_config(args)
    return redact_config(dataclasses.asdict(args) if dataclasses.is_dataclass(args) else dict(vars(args)))


def _json_safe(value):
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if hasattr(value, "item"):
        return _json_safe(value.item())
    return value


class MetricsWriter:
    """Append-only metrics.jsonl. On resume, lines logged after the checkpoint's step are dropped so
    the file ends exactly as an uninterrupted run's would."""

    def __init__(self, path: str | os.PathLike, resume_step: int | None = None, keep_lines: int | None = None):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        keep: list[str] = []
        if resume_step is not None and self.path.exists():
            keep = [line for line in self.path.read_text().splitlines() if line.strip()]
            if keep_lines is not None:  # exactly what was logged when the checkpoint was written
                keep = keep[:keep_lines]
            else:
                keep = [line for line in keep if json.loads(line).get("step", -1) <= resume_step]
        atomic_write_text(self.path, "".join(line + "\n" for line in keep))  # a kill here keeps the old file
        self.lines = len(keep)
        self._f = open(self.path, "a", encoding="utf-8")

    def log(self, metrics: dict, step: int) -> None:
        row = {"step": step, **{k: _json_safe(v) for k, v in metrics.items()}}
        self._f.write(json.dumps(row) + "\n")
        self._f.flush()
        self.lines += 1

    def close(self) -> None:
        self._f.close()


def read_metrics(path: str | os.PathLike) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


class RunFolder:
    """The files of one stage run. `start` writes config and provenance; `finish` writes summary.json."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    @property
    def summary_path(self) -> Path:
        return self.path / "summary.json"

    @property
    def checkpoint_dir(self) -> Path:
        return self.path / "checkpoint"

    def is_done(self) -> bool:
        return self.summary_path.exists()

    def start(
        self, args, inputs: dict | None = None, resume_step: int | None = None, keep_lines: int | None = None
    ) -> MetricsWriter:
        self.path.mkdir(parents=True, exist_ok=True)
        self.summary_path.unlink(missing_ok=True)
        atomic_write_json(self.path / "config.json", config_dict(args))
        atomic_write_json(self.path / "provenance.json", provenance(inputs))
        return MetricsWriter(self.path / "metrics.jsonl", resume_step=resume_step, keep_lines=keep_lines)

    def finish(self, summary: dict) -> None:
        atomic_write_json(self.summary_path, {k: _json_safe(v) for k, v in summary.items()})


# --- checkpoints ---------------------------------------------------------------------------------


def rng_state() -> dict:
    import numpy as np
    import torch

    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    import numpy as np
    import torch

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(
    directory: str | os.PathLike,
    step: int,
    model,
    optimizer=None,
    scheduler=None,
    extra: dict | None = None,
    config: dict | None = None,
) -> Path:
    """Write model, optimizer, scheduler, RNG and `extra` (e.g. data position) to directory/state.pt.

    Written to a temporary file (fsynced) and renamed, so a kill at any moment leaves a complete
    checkpoint: the new one, or the previous one, which is kept as state.prev.pt until the next save.
    """
    import torch

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {
        "step": step,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "rng": rng_state(),
        "extra": extra or {},
        "config": config,
    }
    target, previous, tmp = directory / CHECKPOINT, directory / PREVIOUS_CHECKPOINT, directory / ".state.pt.tmp"
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    if target.exists():
        os.replace(target, previous)
    os.replace(tmp, target)
    return target


CHECKPOINT, PREVIOUS_CHECKPOINT = "state.pt", "state.prev.pt"


def _read_checkpoint(directory: Path) -> tuple[Path, dict] | None:
    """The newest readable checkpoint in `directory`: state.pt, else state.prev.pt (a kill between the two
    renames of `save_checkpoint`, or a damaged file); None when there is none."""
    import torch

    (directory / ".state.pt.tmp").unlink(missing_ok=True)  # a killed, incomplete write
    damaged = []
    for name in (CHECKPOINT, PREVIOUS_CHECKPOINT):
        path = directory / name
        if not path.exists():
            continue
        try:
            return path, torch.load(path, map_location="cpu", weights_only=False)
        except Exception as e:  # truncated or corrupt file: fall back to the previous checkpoint
            damaged.append(f"{path} ({type(e).__name__}: {str(e)[:80]})")
            print(f"warning: cannot read checkpoint {path}; trying the previous one")
    if damaged:
        raise InputError(
            "no readable checkpoint: " + "; ".join(damaged) + " (remove the checkpoint folder to start over)",
            directory,
        )
    return None


# Run-config fields added after checkpoints were first written, with the value that reproduces what runs
# did before the field existed: an older checkpoint lacking one resumes under that value only.
FIELDS_ADDED_LATER = {
    "max_grad_norm": 0.0,
    "lm_head": "fused",
    "lora": {"enabled": False, "rank": 16, "alpha": 32.0, "dropout": 0.0, "target_modules": GPT_NEOX_LINEAR},
}
# Run-config fields renamed since (old name -> new): a checkpoint written under the old name resumes.
FIELDS_RENAMED = {"model_preset": "model_shape"}
# Run-config fields removed since, with the value that behaves as the code without them does: a checkpoint
# that holds one at that value resumes; at any other value it ran a feature that is gone, and is refused.
FIELDS_REMOVED = {"ptx_coef": 0.0}  # PPO-ptx (issue 20; docs/flags.md, "Removed flags")


def load_checkpoint(
    directory: str | os.PathLike, model, optimizer=None, scheduler=None, config: dict | None = None
) -> dict | None:
    """Restore a checkpoint written by `save_checkpoint`; returns its state or None when there is none.

    When `config` is given, the checkpoint must have been written under the same config.
    """
    found = _read_checkpoint(Path(directory))
    if found is None:
        return None
    path, state = found
    saved = state.get("config")
    if saved is not None:
        saved = {FIELDS_RENAMED.get(k, k): v for k, v in saved.items()}
        saved = {k: v for k, v in saved.items() if not (k in FIELDS_REMOVED and v == FIELDS_REMOVED[k])}
    if config is not None and saved is not None:
        # A checkpoint from before a flag existed ran with the behaviour its default keeps.
        saved = {**{k: v for k, v in FIELDS_ADDED_LATER.items() if k in config}, **saved}
    if config is not None and saved is not None and saved != config:
        changed = sorted(k for k in set(config) | set(saved) if config.get(k) != saved.get(k))
        raise InputError(
            f"checkpoint was written with a different config (fields {changed}); "
            "rerun with the original flags or remove the checkpoint folder",
            path,
        )
    model.load_state_dict(state["model"])
    if optimizer is not None and state["optimizer"] is not None:
        optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None and state["scheduler"] is not None:
        scheduler.load_state_dict(state["scheduler"])
    set_rng_state(state["rng"])
    return state


def model_name_of(name_or_path: str) -> str:
    """The model-name part of a run folder for a model given as a hub id or a directory.

    A stage's own output (RUN/model inside a run folder) is named after that run's model name, so
    results/x/sft/tiny-m/1/model stays "tiny-m" down the pipeline; otherwise the last path component.
    """
    p = Path(str(name_or_path).rstrip("/"))
    if p.name == "model" and (p.parent / "config.json").exists() and p.parent.parent.name:
        return p.parent.parent.name
    return p.name
