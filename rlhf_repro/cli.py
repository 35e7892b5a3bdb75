"""`rlhf-repro`: one entry point for the suite's commands.

    rlhf-repro sim generate --out DIR [--seed S] [--n-posts N]   simulated TL;DR world (+ its tokenizer)
    rlhf-repro sim score-table TABLE [--world DIR]               gold-label a query_responses CSV
    rlhf-repro sim rm-agreement --policy P --reward-model RM ...   RM vs gold on a policy's own samples
    rlhf-repro sim check-base --world DIR --size S                 is DIR the world the shipped base knows?
    rlhf-repro sim base-models --out DIR [--write]                 retrain the shipped base models, compare
    rlhf-repro build-dataset ...                                 experiments/build_dataset.py
    rlhf-repro pretrain ...                                      experiments/pretrain.py
    rlhf-repro sft ...                                           experiments/sft.py
    rlhf-repro reward ...                                        experiments/reward.py
    rlhf-repro ppo ...                                           experiments/ppo.py
    rlhf-repro dpo ...                                           experiments/dpo.py
    rlhf-repro judge --input TABLE --backend openai|rm|gold --out OUT   judge summaries vs references
    rlhf-repro analyze win-rate|length-control|calibration|agreement ...  statistics and figures
    rlhf-repro figures RESULTS_DIR                               every report figure + report.md
    rlhf-repro list                                              presets and named experiments
    rlhf-repro reproduce EXPERIMENT [--preset P] [--launcher local|accelerate|slurm] [--dry-run]
    rlhf-repro compare RESULTS_DIR                               ablation table (mean +- CI over seeds)
    rlhf-repro claims RESULTS_DIR --experiment E                 the paper's claims, PASS/FAIL with numbers
    rlhf-repro bench generate [--model-shape pythia-14m] [--json] sampling tokens/s: ours vs HF generate
    rlhf-repro bench ppo [--model-shape pythia-14m] [--json]      PPO episodes/s: ours vs TRL's PPO trainer
    rlhf-repro bench steps [--model-shape pythia-14m] [--json]    each stage's micro-step: obvious vs ours
    rlhf-repro quickstart [--out DIR]                            reproduce quickstart --preset tiny

Stage commands forward their arguments to the stage script, so `rlhf-repro pretrain --help` and
`python experiments/pretrain.py --help` print the same flags. This module only dispatches: each command's
module (the library's, a stage script in experiments/, analysis/, benchmarks/) is imported by name when
that command runs, and no other library module imports experiments/, analysis/ or benchmarks/.
"""

from __future__ import annotations

import sys


def run_stage(
    args_type, main_fn, argv: list[str] | None, description: str | None, removed: dict[str, str] | None = None
) -> int:
    """Parse a stage's tyro `Args` and run its main; bad input prints one clear line and exits 2, and so
    does a flag of `removed` (old name -> why it went and what to use instead)."""
    import tyro

    from rlhf_repro.io import InputError

    for arg in sys.argv[1:] if argv is None else argv:
        if (name := arg.partition("=")[0]) in (removed or {}):
            print(f"error: {name} was removed: {removed[name]}", file=sys.stderr)
            return 2
    args = tyro.cli(args_type, args=argv, description=description)
    try:
        main_fn(args)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except FloatingPointError as e:  # NaN/inf in a loss or a rollout tensor (training.NumericalError)
        print(f"error: {e}", file=sys.stderr)
        return 3
    return 0


def renamed_flags(argv: list[str], renamed: dict[str, str]) -> list[str]:
    """argv with each old flag name (`--old` or `--old=value`) replaced by its new one, warning once per
    flag on stderr."""
    out = []
    for arg in argv:
        name, eq, value = arg.partition("=")
        if name in renamed:
            print(f"warning: {name} is now {renamed[name]}; the old name will go in a later release", file=sys.stderr)
            arg = renamed[name] + eq + value
        out.append(arg)
    return out


def _stage(module: str, argv: list[str]) -> int:
    import importlib

    return importlib.import_module(module).cli(argv)


def _call(module: str, fn: str, argv: list[str]) -> int:
    import importlib

    return getattr(importlib.import_module(module), fn)(argv)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = {
        "sim": (
            "simulated TL;DR world: generate, score, rm-agreement, base models",
            lambda a: _call("rlhf_repro.sim.cli", "main", a),
        ),
        "build-dataset": ("build the SFT and preference datasets", lambda a: _stage("experiments.build_dataset", a)),
        "pretrain": ("pretrain a tiny Pythia-architecture base model", lambda a: _stage("experiments.pretrain", a)),
        "sft": ("supervised fine-tuning on the references (+ ROUGE eval)", lambda a: _stage("experiments.sft", a)),
        "reward": ("train, normalize and evaluate the reward model", lambda a: _stage("experiments.reward", a)),
        "ppo": ("PPO against the reward model, every detail a switch", lambda a: _stage("experiments.ppo", a)),
        "dpo": ("DPO and its variants on the preference pairs", lambda a: _stage("experiments.dpo", a)),
        "judge": (
            "judge a table of summaries against the references",
            lambda a: _call("rlhf_repro.judge_cli", "main", a),
        ),
        "analyze": ("win rates, length control, calibration, agreement", lambda a: _call("analysis.cli", "main", a)),
        "figures": (
            "every report figure and report.md from run folders",
            lambda a: _call("analysis.figures", "main", a),
        ),
        "list": ("presets and named experiments", lambda a: _call("rlhf_repro.reproduce", "list_main", a)),
        "reproduce": (
            "run a named experiment: local, accelerate or slurm",
            lambda a: _call("rlhf_repro.reproduce", "main", a),
        ),
        "compare": ("ablation table over seeds (CSV + Markdown)", lambda a: _call("analysis.compare", "main", a)),
        "claims": (
            "check the paper's qualitative claims on run folders",
            lambda a: _call("analysis.claims", "main", a),
        ),
        "bench": (
            "benchmarks: sampling (generate), validation co-sampling, PPO vs TRL (ppo), micro-steps (steps)",
            lambda a: _call("benchmarks.speed.bench", "main", a),
        ),
        "quickstart": (
            "the simulated world end to end: = reproduce quickstart --preset tiny",
            lambda a: _stage("rlhf_repro.quickstart", a),
        ),
    }
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        print("\ncommands:")
        for name, (help_text, _) in commands.items():
            print(f"  {name:14s} {help_text}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in commands:
        print(f"rlhf-repro: unknown command {name!r}; one of {', '.join(commands)}", file=sys.stderr)
        return 2
    return commands[name][1](rest)


if __name__ == "__main__":
    sys.exit(main())
