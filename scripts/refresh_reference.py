"""Refresh results/reference/ from run folders: the small, diffable files of each run, never weights.

    python scripts/refresh_reference.py --source runs/quickstart --experiments quickstart quickstart-no-eos-trick
    python scripts/refresh_reference.py --source runs/tiny-scaling --experiments tiny-scaling --headline tiny-scaling
    python scripts/refresh_reference.py --rerun runs/reference      # every reference run, then the refresh

SOURCE is a `rlhf-repro quickstart` / `reproduce` output folder (SOURCE/results/, SOURCE/world/). For every
finished run folder SOURCE/results/<experiment>/<stage>/<model>/<seed>/ of the named experiments, this
replaces DEST/<experiment>/<stage>/<model>/<seed>/ (nothing stale survives) with:
- config.json, provenance.json (it names the commit that produced the run), summary.json, metrics.jsonl;
- the validation samples: judged_validation.csv (and its .summary.json) when the run was judged, else
  query_responses_validation.csv; both without the `query` column (the post, which the world holds by
  `id`), as the figures and the report never read it;
- rm_eval_validation.csv of RM runs (the calibration figure; accuracies are in summary.json);
- model_info.json: the saved model's parameter count, read from its safetensors headers (the figures'
  size axis; the weights are not copied).
Per experiment: SOURCE/results/<experiment>/{claims.json, claims.md, controls.json, summary.json} go to
DEST/<experiment>/claims_seed<S>.json etc. (S: the seed of the experiment's runs; each quickstart seed writes
its own). SOURCE/world/world.json goes to DEST/world/world.json (a different world is refused: one reference
folder, one world). DEST/index.json lists every run with its commit. DEST/figures.json holds the headline
experiments (--headline, kept from the last call when not given) and the world, so that `rlhf-repro figures
DEST` needs no flags; it is then run, writing DEST/report/ (figures, numbers.json, report.md, report.html).
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RUN_FILES = ("config.json", "provenance.json", "summary.json", "metrics.jsonl")
RM_TABLES = ("rm_eval_validation.csv",)  # the calibration figure's; accuracies come from summary.json
EXPERIMENT_FILES = ("claims.json", "claims.md", "controls.json", "summary.json")
DROPPED_COLUMNS = ("query",)
# Fields that measure time, not the run: never compared (as in scripts/same_numbers.py).
TIMING = ("time/", "tokens_per_s", "seconds", "ppo/eps", "train/eps", "model_dir", "_path")


def machine() -> dict:
    """What decides float rounding on a CPU: torch's version and the vector ISA its kernels dispatch to."""
    import torch

    return {"torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability()}


def _close(a, b, rel: float, abs_: float) -> bool:
    if isinstance(a, bool) or isinstance(b, bool) or not isinstance(a, (int, float)) or not isinstance(b, (int, float)):
        return a == b
    return abs(a - b) <= max(abs_, rel * max(abs(a), abs(b)))


def _diff(a, b, where: str, rel: float, abs_: float, out: list[str]) -> None:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            if any(t in key for t in TIMING):
                continue
            if key not in a or key not in b:
                out.append(f"{where}: {key!r} only in the {'reference' if key in a else 'run'}")
            else:
                _diff(a[key], b[key], f"{where} {key}", rel, abs_, out)
    elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b)):
            _diff(x, y, f"{where}[{i}]", rel, abs_, out)
    elif not _close(a, b, rel, abs_):
        out.append(f"{where}: reference {a!r}, run {b!r}")


def compare(reference: Path, results: Path, keys: list[str], rel: float, abs_: float) -> list[str]:
    """Differences between reference run folders and a fresh run's (keys: <experiment>/<stage>/<model>/<seed>):
    summary.json field by field and metrics.jsonl update by update, timing fields left out, numbers equal
    within max(abs_, rel x magnitude)."""
    from rlhf_repro.runs import read_metrics

    out: list[str] = []
    for key in keys:
        ref, run = reference / key, results / key
        missing = [
            f"{key}/{name}: missing in the {where}"
            for name in ("summary.json", "metrics.jsonl")
            for where, folder in (("reference", ref), ("run", run))
            if not (folder / name).is_file()
        ]
        if missing:
            out += missing
            continue
        _diff(json.loads((ref / "summary.json").read_text()), json.loads((run / "summary.json").read_text()),
              f"{key}/summary.json", rel, abs_, out)  # fmt: skip
        a, b = list(read_metrics(ref / "metrics.jsonl")), list(read_metrics(run / "metrics.jsonl"))
        if len(a) != len(b):
            out.append(f"{key}/metrics.jsonl: {len(a)} rows in the reference, {len(b)} in the run")
        for x, y in zip(a, b):
            _diff(x, y, f"{key}/metrics.jsonl step {x.get('step')}", rel, abs_, out)
    return out


def copy_table(src: Path, dst: Path) -> None:
    """A CSV table without DROPPED_COLUMNS, written with the same dialect as the stages write it."""
    csv.field_size_limit(sys.maxsize)
    with open(src, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        keep = [c for c in reader.fieldnames or [] if c not in DROPPED_COLUMNS]
        rows = [{c: row[c] for c in keep} for row in reader]
    with open(dst, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=keep)
        writer.writeheader()
        writer.writerows(rows)


def copy_run(src: Path, dst: Path) -> dict:
    from analysis.figures import parameter_count

    if dst.exists():
        shutil.rmtree(dst)
    dst.mkdir(parents=True)
    for name in RUN_FILES:
        if (src / name).is_file():
            shutil.copy2(src / name, dst / name)
    samples = "judged_validation.csv" if (src / "judged_validation.csv").is_file() else "query_responses_validation.csv"
    if (src / samples).is_file():
        copy_table(src / samples, dst / samples)
        if (src / f"{samples}.summary.json").is_file():
            shutil.copy2(src / f"{samples}.summary.json", dst / f"{samples}.summary.json")
    for name in RM_TABLES if src.parent.parent.name == "reward" else ():
        if (src / name).is_file():
            copy_table(src / name, dst / name)
    params = parameter_count(src / "model")
    if params:
        (dst / "model_info.json").write_text(json.dumps({"parameters": params}) + "\n")
    provenance = json.loads((src / "provenance.json").read_text()) if (src / "provenance.json").is_file() else {}
    git = provenance.get("git") or {}
    return {"commit": git.get("sha"), "dirty": git.get("dirty"), "parameters": params}


# Every reference run, as (output folder under --rerun, the command that makes it, experiments to copy).
# The quickstart seeds write one folder each (their claims are per seed); the over-optimization and LoRA
# runs reuse seed 1's SFT and RM.
RERUN = [
    ("quickstart-seed1", ["quickstart", "--seed", "1"], ["quickstart", "quickstart-no-eos-trick"]),
    ("quickstart-seed1", ["reproduce", "overoptimization", "--jobs", "2"], ["overoptimization"]),
    ("quickstart-seed1", ["reproduce", "quickstart-ppo-lora", "--jobs", "2"], ["quickstart-ppo-lora"]),
    ("quickstart-seed2", ["quickstart", "--seed", "2"], ["quickstart", "quickstart-no-eos-trick"]),
    ("quickstart-seed3", ["quickstart", "--seed", "3"], ["quickstart", "quickstart-no-eos-trick"]),
    ("tiny-scaling", ["reproduce", "tiny-scaling", "--jobs", "2"], ["tiny-scaling"]),
]


def rerun(out: Path, dest: Path, dry_run: bool) -> int:
    """Run every reference experiment (RERUN) under `out`, then refresh `dest` from each: the one command
    after a change to the world or a stage (about two and a half hours on 2 CPU cores: three quickstarts,
    tiny-scaling about an hour, over-optimization about 15 minutes). Finished stages are skipped on a rerun."""
    import shlex
    import subprocess

    for folder, command, experiments in RERUN:
        cmd = [sys.executable, "-m", "rlhf_repro.cli", *command, "--out", str(out / folder)]
        copy = [sys.executable, __file__, "--source", str(out / folder), "--dest", str(dest), "--no-figures",
                "--experiments", *experiments]  # fmt: skip
        print("rlhf-repro " + shlex.join(cmd[3:]), flush=True)
        if not dry_run and (subprocess.run(cmd).returncode or subprocess.run(copy).returncode):
            return 1
    config = dest / "figures.json"
    if not dry_run:
        config.write_text(json.dumps({**json.loads(config.read_text()), "headline": ["tiny-scaling"]}, indent=1) + "\n")
        return draw(dest)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", help="a quickstart / reproduce --out folder (holds results/, world/)")
    p.add_argument("--experiments", nargs="+", help="experiments whose run folders are copied")
    p.add_argument("--rerun", metavar="OUT", help="run every reference experiment under OUT, then refresh from each")
    p.add_argument("--dry-run", action="store_true", help="with --rerun: print the commands only")
    p.add_argument("--dest", default=str(REPO / "results" / "reference"), help="default: results/reference")
    p.add_argument("--headline", nargs="+", default=None, help="the headline experiments of DEST's figures")
    p.add_argument("--no-figures", action="store_true", help="copy only; do not regenerate DEST/report/")
    args = p.parse_args(argv)
    if args.rerun:
        return rerun(Path(args.rerun), Path(args.dest), args.dry_run)
    if not args.source or not args.experiments:
        p.error("give --source and --experiments (or --rerun OUT)")
    source, dest = Path(args.source), Path(args.dest)
    results = source / "results"
    if not results.is_dir():
        print(f"error: {results}: not a directory (--source must be a quickstart / reproduce output)", file=sys.stderr)
        return 2
    dest.mkdir(parents=True, exist_ok=True)
    index_path = dest / "index.json"
    index = json.loads(index_path.read_text()) if index_path.is_file() else {"runs": {}}
    world_src = source / "world" / "world.json"
    if world_src.is_file():
        world_dst = dest / "world" / "world.json"
        if world_dst.is_file() and world_dst.read_bytes() != world_src.read_bytes():
            print(f"error: {world_src} differs from {world_dst}: one reference folder holds one world", file=sys.stderr)
            return 2
        world_dst.parent.mkdir(exist_ok=True)
        shutil.copy2(world_src, world_dst)
    plan = {}
    for experiment in args.experiments:  # everything is checked before anything in DEST is replaced
        runs = sorted(p.parent for p in (results / experiment).glob("*/*/*/summary.json"))
        if not runs:
            print(f"error: {results / experiment}: no finished run folder", file=sys.stderr)
            return 2
        seeds = {run.name for run in runs}
        shared = [name for name in EXPERIMENT_FILES if (results / experiment / name).is_file()]
        if shared and len(seeds) != 1:
            print(f"error: {results / experiment / shared[0]}: whose seed? its runs have seeds {sorted(seeds)} "
                  "(a quickstart's --out holds one seed)", file=sys.stderr)  # fmt: skip
            return 2
        plan[experiment] = (runs, seeds, shared)
    copied = 0
    for experiment, (runs, seeds, shared) in plan.items():
        for run in runs:
            key = str(run.relative_to(results))
            index["runs"][key] = copy_run(run, dest / key)
            copied += 1
        for name in shared:
            stem, _, ext = name.partition(".")
            shutil.copy2(results / experiment / name, dest / experiment / f"{stem}_seed{min(seeds)}.{ext}")
    index["runs"] = dict(sorted(index["runs"].items()))
    index["machine"] = machine()  # of the refresh, which ran the runs (tests compare strictly only on its ISA)
    index_path.write_text(json.dumps(index, indent=1) + "\n")
    config_path = dest / "figures.json"
    config = json.loads(config_path.read_text()) if config_path.is_file() else {}
    if args.headline:
        config["headline"] = args.headline
    if (dest / "world" / "world.json").is_file():
        config["world"] = "world"
    config_path.write_text(json.dumps(config, indent=1) + "\n")
    print(f"{copied} run folders -> {dest}")
    if args.no_figures:
        return 0
    return draw(dest)


def draw(dest: Path) -> int:
    """`rlhf-repro figures DEST`, named relative to the working directory when DEST is below it, so that the
    report's "regenerate with" line holds no machine's absolute path."""
    import os

    from analysis.figures import main as figures

    name = os.path.relpath(dest) if dest.resolve().is_relative_to(Path.cwd().resolve()) else str(dest)
    return figures([name])


if __name__ == "__main__":
    sys.exit(main())
