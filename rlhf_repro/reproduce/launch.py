"""Launchers: each plan node as a `rlhf-repro` command, an `accelerate launch`, or a Slurm job array; the
local launcher runs them in dependency order, several at once."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

from rlhf_repro.reproduce.plan import Node
from rlhf_repro.reproduce.registry import RegistryError


def rlhf_command(node: Node) -> list[str]:
    return ["rlhf-repro", *node.argv]


def accelerate_command(node: Node, num_processes: int | None) -> list[str]:
    """`accelerate launch` of a training stage's module with the preset's config (others run as is)."""
    if not node.training:
        return rlhf_command(node)
    cmd = ["accelerate", "launch"]
    if node.accelerate_config:
        cmd += ["--config_file", node.accelerate_config]
    if num_processes:
        cmd += ["--num_processes", str(num_processes)]
    return cmd + ["-m", f"experiments.{node.stage}", *node.argv[1:]]


def _local_argv(cmd: list[str]) -> list[str]:
    """Run `rlhf-repro ...` with this interpreter (works without the console script on PATH)."""
    if cmd[0] == "rlhf-repro":
        return [sys.executable, "-m", "rlhf_repro.cli", *cmd[1:]]
    if cmd[:2] == ["accelerate", "launch"]:
        return [sys.executable, "-m", "accelerate.commands.launch", *cmd[2:]]
    return cmd


def _last_step(metrics: Path) -> int | None:
    """The `step` of the last complete line of a run's metrics.jsonl (read from its tail), or None."""
    import json

    try:
        with open(metrics, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 65536))
            tail = f.read().decode("utf-8", errors="replace")
    except OSError:
        return None
    for line in reversed(tail.splitlines()[1:] if size > 65536 else tail.splitlines()):
        try:
            step = json.loads(line).get("step")
        except (ValueError, AttributeError):
            continue
        if isinstance(step, int):
            return step
    return None


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def stage_progress(node: Node, started: float, now: float, seen: dict | None = None) -> str:
    """One running node's state: `update 120/200 (60%), ETA 1m05s` for a training stage whose run folder
    shows its progress (config.json's derived num_updates, metrics.jsonl's last step), `evaluating` once
    every update is done, else the time it has run. The ETA extrapolates the pace since the first step this
    launcher saw (`seen`: node key -> (step, time), kept across calls), so the updates of an earlier attempt
    that this one resumed from do not count as done in this one's time; without `seen`, since the start."""
    import json

    elapsed = now - started
    run = node.marker.parent if node.training and node.marker is not None else None
    total = None
    if run is not None:
        try:
            total = json.loads((run / "config.json").read_text())["derived"]["num_updates"]
        except (OSError, ValueError, KeyError, TypeError):
            total = None
    step = _last_step(run / "metrics.jsonl") if run is not None and total else None
    if not total:
        return f"{node.key} {_duration(elapsed)}" + (" (loading)" if node.training else "")
    if seen is None:
        seen = {node.key: (0, started)}
    elif node.key not in seen and not step:
        seen[node.key] = (0, started)  # a fresh run: its pace counts from the start
    if not step:
        return f"{node.key} update 0/{total}, {_duration(elapsed)}"
    step = min(step, total)
    if step >= total:
        return f"{node.key} update {total}/{total}, evaluating, {_duration(elapsed)}"
    first, since = seen.setdefault(node.key, (step, now))
    text = f"{node.key} update {step}/{total} ({step / total:.0%})"
    if step <= first or now <= since:
        return f"{text}, {_duration(elapsed)}"  # no pace measured yet
    return f"{text}, ETA {_duration((now - since) * (total - step) / (step - first))}"


class ProgressLine:
    """The running stages' progress, refreshed every `every` seconds. On a terminal each running stage
    has its own line, redrawn in place (and cleared before any other line is printed); elsewhere (a log,
    CI) one plain `[running] a; b; c` line is printed at most every `every` seconds, so logs keep only
    plain lines."""

    def __init__(self, every: float | None, tty: bool | None = None):
        self.every = every
        self.tty = sys.stdout.isatty() if tty is None else tty
        self.last = 0.0
        self.shown = 0  # lines drawn on the terminal and not yet cleared
        self.seen: dict = {}

    def clear(self) -> None:
        if self.shown:
            # Clear the cursor's line, then each line above it that this drew (cursor ends at the first).
            sys.stdout.write("\r\033[K" + "\033[F\033[K" * (self.shown - 1))
            sys.stdout.flush()
            self.shown = 0

    def update(self, running: dict[str, tuple[Node, float]]) -> None:
        now = time.time()
        if not self.every or not running or now - self.last < self.every:
            return
        self.last = now
        states = [stage_progress(node, t0, now, self.seen) for node, t0 in running.values()]
        if self.tty:
            width = shutil.get_terminal_size((120, 20)).columns
            self.clear()
            sys.stdout.write("\n".join(f"[running] {text}"[: width - 1] for text in states))
            self.shown = len(states)
        else:
            sys.stdout.write(f"[running] {'; '.join(states)}\n")
        sys.stdout.flush()


def run_local(
    nodes: list[Node],
    commands: dict[str, list[str]],
    jobs: int,
    logs: Path,
    stream: bool,
    auto_threads: bool = False,
    progress_every: float | None = None,
) -> int:
    """Run pending nodes in dependency order, `jobs` at a time; skip done ones; stop scheduling on the
    first failure (running ones finish) and return its exit code. With `auto_threads`, each training
    process gets the machine's cores divided by the number of processes sharing them at its start. With
    `progress_every` (seconds), a progress line of the running stages (`ProgressLine`)."""
    done = {n.key for n in nodes if n.done()}
    for n in nodes:
        if n.key in done:
            print(f"[skip] {n.key}: {n.marker} exists", flush=True)
    pending = [n for n in nodes if n.key not in done]
    running: dict[str, tuple[subprocess.Popen, float, object]] = {}
    by_key = {n.key: n for n in nodes}
    # A stage streaming to this terminal (one job, not quiet) prints its own output (its progress bar, or
    # its lines with --no-progress) between ours: no line of ours then.
    progress = ProgressLine(None if (stream and jobs == 1) else progress_every)
    failed = 0
    total, started = len(pending), 0
    logs.mkdir(parents=True, exist_ok=True)
    while pending or running:
        ready = [n for n in pending if all(d in done for d in n.deps)] if not failed else []
        while ready and len(running) < jobs:
            n = ready.pop(0)
            pending.remove(n)
            started += 1
            shown = list(commands[n.key])
            if auto_threads and (n.training or n.stage == "pretrain") and "--threads" not in shown:
                # Split the cores among the processes about to share them: a stage running alone gets all.
                share = max(1, (os.cpu_count() or 1) // max(1, min(jobs, len(running) + 1 + len(ready))))
                shown += ["--threads", str(share)]
            cmd = _local_argv(shown)
            progress.clear()
            print(f"[{started}/{total}] {n.key}: {shlex.join(shown)}", flush=True)
            if stream and jobs == 1:
                proc, fh = subprocess.Popen(cmd), None
            else:
                fh = open(logs / (n.key.replace("/", "__") + ".log"), "w")
                proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT)
            running[n.key] = (proc, time.time(), fh)
        if not running:
            break
        time.sleep(0.2)
        progress.update({key: (by_key[key], t0) for key, (_, t0, _) in running.items()})
        for key, (proc, t0, fh) in list(running.items()):
            rc = proc.poll()
            if rc is None:
                continue
            del running[key]
            progress.clear()
            if fh:
                fh.close()
            if rc == 0:
                done.add(key)
                print(f"[done] {key} in {time.time() - t0:.0f} s", flush=True)
            else:
                failed = failed or rc
                log = logs / (key.replace("/", "__") + ".log")
                where = f"; log: {log}" if fh else ""
                print(f"[FAILED] {key} (exit {rc}){where}", file=sys.stderr, flush=True)
                if fh and log.exists():
                    sys.stderr.write("".join(log.read_text().splitlines(True)[-30:]))
    if failed:
        left = [n.key for n in pending]
        if left:
            print(f"not started because of the failure: {', '.join(left)}", file=sys.stderr)
        print("rerun the same command to resume: finished stages are skipped", file=sys.stderr)
    return failed


def slurm_groups(nodes: list[Node]) -> list[tuple[str, list[Node]]]:
    """One Slurm job per (experiment, stage, size), an array over its seeds; others alone."""
    groups: dict[str, list[Node]] = {}
    for n in nodes:
        if n.seed is not None and n.stage != "pretrain":
            gid = n.key.rsplit("/", 1)[0]
        else:
            gid = n.key
        groups.setdefault(gid, []).append(n)
    return list(groups.items())


def _job_name(gid: str) -> str:
    return gid.replace("/", "_")


def slurm_scripts(
    nodes: list[Node], preset: dict, commands: dict[str, list[str]], logs: Path
) -> tuple[dict[str, str], str]:
    """The sbatch file of each group and a submit.sh chaining them with --dependency=afterok."""
    groups = slurm_groups(nodes)
    group_of = {n.key: gid for gid, ns in groups for n in ns}
    files: dict[str, str] = {}
    submit = [
        "#!/usr/bin/env bash",
        "# Submit every stage job; each waits for its inputs (afterok).",
        "set -euo pipefail",
    ]
    submit.append("# Run it from the directory `rlhf-repro reproduce` ran in: the jobs' paths are relative to it.")
    submit.append('HERE="$(dirname "$0")"')
    for gid, ns in groups:
        name = _job_name(gid)
        lines = ["#!/usr/bin/env bash", f"#SBATCH --job-name={name}"]
        header = preset.get("slurm", []) if ns[0].training else preset.get("slurm_cpu", preset.get("slurm", []))
        lines += [f"#SBATCH {h}" for h in header]
        lines += [f"#SBATCH --output={logs}/{name}_" + ("%A_%a.out" if len(ns) > 1 else "%j.out")]
        if len(ns) > 1:
            lines += [f"#SBATCH --array=0-{len(ns) - 1}"]
        lines += ["set -euo pipefail"]
        if len(ns) > 1:
            seeds = " ".join(str(n.seed) for n in ns)
            lines += [f"SEEDS=({seeds})", "SEED=${SEEDS[$SLURM_ARRAY_TASK_ID]}"]
            cmd = _seed_template(commands[ns[0].key], ns[0].seed)
            for other in ns[1:]:
                if _seed_template(commands[other.key], other.seed) != cmd:
                    raise RegistryError(f"{gid}: seeds' commands differ beyond the seed; cannot share one array job")
            marker = _seed_template([str(ns[0].marker)], ns[0].seed)[0] if ns[0].marker else None
        else:
            cmd, marker = commands[ns[0].key], str(ns[0].marker) if ns[0].marker else None
        if marker:
            lines += [f'if [ -f "{marker}" ]; then echo "done already: {marker}"; exit 0; fi']
        run = " ".join(_quote_keep_vars(a) for a in cmd)
        lines += [("srun " if ns[0].training else "") + run, ""]
        files[f"{name}.sbatch"] = "\n".join(lines)
        deps = sorted({group_of[d] for n in ns for d in n.deps if d in group_of and group_of[d] != gid})
        var = "JOB_" + "".join(c if c.isalnum() else "_" for c in name)
        dep = ""
        if deps:
            ids = ":".join("${JOB_" + "".join(c if c.isalnum() else "_" for c in _job_name(d)) + "}" for d in deps)
            dep = f" --dependency=afterok:{ids}"
        submit.append(f'{var}=$(sbatch --parsable{dep} "$HERE/{name}.sbatch")')
        submit.append(f'echo "{name}: ${{{var}}}"')
    return files, "\n".join(submit) + "\n"


def _seed_template(cmd: list[str], seed: int) -> list[str]:
    """The command with its seed (the --seed value and the /SEED/ run-folder level) as ${SEED}."""
    out = []
    for i, a in enumerate(cmd):
        if i > 0 and cmd[i - 1] == "--seed" and a == str(seed):
            out.append("${SEED}")
        else:
            out.append(re.sub(rf"/{seed}(?=/|$)", "/${SEED}", a))
    return out


def _quote_keep_vars(a: str) -> str:
    """Shell-quote an argument but let ${SEED} expand (double quotes)."""
    if "${SEED}" in a:
        return '"' + a.replace('"', '\\"') + '"'
    return shlex.quote(a)
