"""`rlhf-repro list` and `rlhf-repro reproduce` (the package docstring is the latter's --help)."""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import time
from pathlib import Path

from rlhf_repro.reproduce import __doc__ as REPRODUCE_DOC
from rlhf_repro.reproduce.launch import accelerate_command, rlhf_command, run_local, slurm_scripts
from rlhf_repro.reproduce.plan import Layout, PlanOptions, plan
from rlhf_repro.reproduce.registry import RegistryError, load_registry


def list_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rlhf-repro list", description="Presets and named experiments.")
    parser.add_argument("--registry", default=None, help="experiments.toml to read (default: the packaged one)")
    args = parser.parse_args(argv)
    try:
        reg = load_registry(args.registry)
    except RegistryError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print("presets:")
    for name, p in reg.presets.items():
        sizes = ", ".join(p.get("all_sizes", p["sizes"]))
        print(f"  {name:24s} {p['description']}")
        print(f"  {'':24s} sizes {sizes} (default {', '.join(p['sizes'])}); seeds {' '.join(map(str, p['seeds']))}")
    print("experiments:")
    for name, e in reg.experiments.items():
        extra = []
        if e.get("base"):
            extra.append(f"base {e['base']}")
        if e.get("flags"):
            extra.append("; ".join(f"{s}: {' '.join(f)}" for s, f in e["flags"].items()))
        if e.get("presets"):
            extra.append("preset " + "/".join(e["presets"]))
        print(f"  {name:24s} {e['description']}")
        if extra:
            print(f"  {'':24s} ({'; '.join(extra)})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="rlhf-repro reproduce", description=REPRODUCE_DOC, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("experiment", help="a named experiment (`rlhf-repro list`)")
    p.add_argument("--preset", default="tiny", help="model family and batch geometry: tiny (default) or paper")
    p.add_argument("--launcher", choices=("local", "accelerate", "slurm"), default="local", help="how stages run")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="seeds (default: the experiment's or preset's)")
    p.add_argument("--sizes", nargs="+", default=None, help="model sizes (default: the experiment's or preset's)")
    p.add_argument("--out", default=None, help="root of world/, data/, base/, results/, logs/, slurm/ (default runs)")
    p.add_argument("--dry-run", action="store_true", help="print the commands (or sbatch files) without running")
    p.add_argument("--jobs", type=int, default=1, help="local launcher: stages run at once when their inputs are ready")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads per stage process (default: torch's; with --jobs > 1, the cores split among running "
        "stages)",
    )
    p.add_argument("--num-processes", type=int, default=None, help="accelerate: processes per stage (default preset)")
    p.add_argument(
        "--pretrain-base",
        action="store_true",
        help="tiny preset: pretrain the base models on this world (pretrain_steps) instead of starting from the "
        "shipped ones (rlhf_repro/sim/base_models/), e.g. for another world seed",
    )
    p.add_argument("--track", action="store_true", help="log every training stage to W&B (group = experiment)")
    p.add_argument("--wandb-project", default="rlhf-repro", help="W&B project with --track")
    p.add_argument("--wandb-entity", default=None, help="W&B entity with --track")
    p.add_argument("--quiet", action="store_true", help="local launcher: write stage output to logs/ only")
    p.add_argument(
        "--progress-every",
        type=float,
        default=None,
        metavar="SECONDS",
        help="local launcher: a line of the running stages (update n/N and ETA) every SECONDS; default 2 on a "
        "terminal (one line per running stage, redrawn in place), 30 otherwise (plain lines); 0: none",
    )
    p.add_argument("--registry", default=None, help="experiments.toml to read (default: the packaged one)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        reg = load_registry(args.registry)
        layout = Layout(Path(args.out or "runs"))
        opts = PlanOptions(
            args.preset,
            args.sizes,
            args.seeds,
            args.track,
            args.wandb_project,
            args.wandb_entity,
            args.threads,
            args.pretrain_base,
        )
        nodes = plan(reg, args.experiment, layout, opts)
    except RegistryError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    preset = reg.presets[args.preset]
    logs = layout.out / "logs"
    if args.launcher in ("accelerate", "slurm"):
        nproc = args.num_processes or preset.get("num_processes")
        commands = {n.key: accelerate_command(n, nproc) for n in nodes}
    else:
        commands = {n.key: rlhf_command(n) for n in nodes}

    if args.launcher == "slurm":
        todo = [n for n in nodes if not n.done()]
        keep = {n.key for n in todo}
        for n in todo:
            n.deps = [d for d in n.deps if d in keep]
        files, submit = slurm_scripts(todo, preset, commands, logs)
        if args.dry_run:
            for name, text in files.items():
                print(f"==> slurm/{name} <==\n{text}")
            print(f"==> slurm/submit.sh <==\n{submit}")
            return 0
        folder = layout.out / "slurm"
        folder.mkdir(parents=True, exist_ok=True)
        logs.mkdir(parents=True, exist_ok=True)
        for name, text in files.items():
            (folder / name).write_text(text)
        (folder / "submit.sh").write_text(submit)
        print(f"wrote {len(files)} sbatch files and submit.sh to {folder}; submitting", flush=True)
        return subprocess.run(["bash", str(folder / "submit.sh")]).returncode

    if args.dry_run:
        for n in nodes:
            state = "done, skipped" if n.done() else "to run"
            after = f" (after {', '.join(n.deps)})" if n.deps else ""
            print(f"# {n.key}: {state}{after}")
            print(shlex.join(commands[n.key]))
        return 0
    t0 = time.time()
    jobs = max(1, args.jobs)
    every = args.progress_every if args.progress_every is not None else (2.0 if sys.stdout.isatty() else 30.0)
    rc = run_local(
        nodes,
        commands,
        jobs,
        logs,
        stream=not args.quiet,
        auto_threads=jobs > 1 and not args.threads,
        progress_every=every or None,
    )
    print(f"reproduce {args.experiment}: {'failed' if rc else 'finished'} in {time.time() - t0:.0f} s", flush=True)
    return rc
