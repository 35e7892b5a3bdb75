"""Experiment tracking behind one interface: W&B when `--track` is on, a no-op stand-in otherwise.

Training loops call `tracker.log(...)` unconditionally; nothing litters them with `if track:`. The
local metrics.jsonl is written either way. With WANDB_MODE=offline, W&B writes its run files locally
and needs no server or key.
"""

from __future__ import annotations

from pathlib import Path

from rlhf_repro.runs import redact_config


class NoOpTracker:
    run = None

    def log(self, metrics: dict, step: int) -> None:
        pass

    def finish(self) -> None:
        pass


class WandbTracker:
    def __init__(
        self,
        project: str,
        entity: str | None,
        name: str,
        group: str | None,
        job_type: str | None,
        tags: list[str] | None,
        config: dict,
        directory: str | Path,
    ):
        import wandb

        Path(directory).mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(
            project=project,
            entity=entity,
            name=name,
            group=group,
            job_type=job_type,
            tags=tags or None,
            config=redact_config(config),
            dir=str(directory),
            reinit="finish_previous",
        )

    def log(self, metrics: dict, step: int) -> None:
        self.run.log(metrics, step=step)

    def finish(self) -> None:
        self.run.finish()


def make_tracker(
    track: bool,
    *,
    project: str = "rlhf-repro",
    entity: str | None = None,
    name: str = "run",
    group: str | None = None,
    job_type: str | None = None,
    tags: list[str] | None = None,
    config: dict | None = None,
    directory: str | Path = ".",
) -> NoOpTracker | WandbTracker:
    if not track:
        return NoOpTracker()
    return WandbTracker(project, entity, name, group, job_type, tags, config or {}, directory)
