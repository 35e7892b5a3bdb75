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
`python experiments/pretrain.py --help` print the same flags.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def run_stage(args_type, main_fn, argv: list[str] | None, description: str | None) -> int:
    """Parse a stage's tyro `Args` and run its main; bad input prints one clear line and exits 2."""
    import tyro

    from rlhf_repro.io import InputError

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


def sim_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="rlhf-repro sim", description="The simulated TL;DR world.")
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser(
        "generate",
        help="write posts, comparisons, news subset and tokenizer to --out",
        description="Write a simulated TL;DR world in the real datasets' formats.",
    )
    gen.add_argument("--out", required=True, help="output directory (tldr/, comparisons/, tokenizer/, world.json)")
    gen.add_argument("--seed", type=int, default=0, help="world seed: the same seed writes byte-identical files")
    gen.add_argument("--n-posts", type=int, default=20000, help="TL;DR posts over train/valid/test (80/10/10)")
    gen.add_argument("--n-news", type=int, default=None, help="news (CNN/DM) comparisons; default n-posts/20")
    gen.add_argument(
        "--comparisons-per-post",
        type=float,
        default=1.0,
        help="mean number of comparisons drawn per train and valid post",
    )
    gen.add_argument(
        "--distractor-mean",
        type=float,
        default=3.0,
        help="mean number of irrelevant sentences per post (exponential tail)",
    )
    gen.add_argument("--vocab-size", type=int, default=4096, help="target size of the world's BPE vocabulary")
    gen.add_argument("--no-tokenizer", action="store_true", help="skip training the world tokenizer")
    gen.add_argument("--no-progress", action="store_true", help="hide progress bars")
    table = sub.add_parser(
        "score-table",
        help="gold-label a query_responses CSV (gold score, facts covered and contradicted)",
        description="Gold-label every response and reference of a stage's query_responses_*.csv.",
    )
    table.add_argument("table", help="CSV with query, response and reference columns (and id)")
    table.add_argument("--world", help="world directory: posts are looked up by id (default: parse the query)")
    table.add_argument("--out", help="write the table with gold columns here (default: TABLE with _gold suffix)")
    agree = sub.add_parser(
        "rm-agreement",
        help="how often the RM orders a policy's own samples as the gold labeler does (JSON)",
        description="Sample K responses per validation post from a policy as a PPO rollout does, score them "
        "with an RM and with the gold labeler, and report how often the RM orders two samples of one post as "
        "gold does (gold ties left out), plus the gold of the RM's best-of-K.",
    )
    agree.add_argument("--policy", required=True, help="policy model directory (sft.py's RUN/model)")
    agree.add_argument("--reward-model", required=True, help="reward model directory (reward.py's RUN/model)")
    agree.add_argument("--query-dataset", required=True, help="processed SFT dataset (its validation queries)")
    agree.add_argument("--world", required=True, help="world directory (the full posts for the gold labeler)")
    agree.add_argument("--posts", type=int, default=200, help="validation posts")
    agree.add_argument("--samples", type=int, default=4, help="samples per post (K)")
    agree.add_argument("--temperature", type=float, default=0.7, help="sampling temperature (PPO's rollouts: 0.7)")
    agree.add_argument("--response-length", type=int, default=53, help="tokens sampled per response")
    agree.add_argument(
        "--also-at-length",
        type=int,
        action="append",
        default=[],
        help="also report at this shorter response length, on the same samples cut to it (repeatable; the "
        "quickstart passes its PPO's 40)",
    )
    agree.add_argument("--seed", type=int, default=0, help="sampling seed")
    agree.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    agree.add_argument("--out", required=True, help="JSON file to write")
    check = sub.add_parser(
        "check-base",
        help="check that a world is the one the shipped base model of a size was pretrained on",
        description="Compare a world's generator version, seed, size, pretraining corpus and tokenizer with the "
        "shipped base model's recipe (rlhf_repro/sim/base_models/SIZE/recipe.json); exit 2 naming what differs.",
    )
    check.add_argument("--world", required=True, help="world directory from `sim generate`")
    check.add_argument("--size", required=True, help="model size (tiny-xs, tiny-s, tiny-m)")
    bases = sub.add_parser(
        "base-models",
        help="retrain the shipped tiny base models from their recipe and compare (or replace) them",
        description="Generate the recipe's world under --out, pretrain each size with the recipe's flags "
        "(rlhf_repro/sim/shipped.py), and compare with the shipped model: bit-identical weights, or the "
        "validation loss within the stated tolerance. Prints a JSON report; exit 1 when a check fails.",
    )
    bases.add_argument("--out", required=True, help="work folder (world/, runs/)")
    bases.add_argument("--sizes", nargs="+", default=None, help="sizes to retrain (default: every shipped one)")
    bases.add_argument("--write", action="store_true", help="replace the shipped models with the retrained ones")
    bases.add_argument("--threads", type=int, default=None, help="torch CPU threads of each pretraining run")
    score = sub.add_parser("score", help="gold-label one summary of one post (prints the score breakdown)")
    score.add_argument("--post", required=True, help="the post (or article) text")
    score.add_argument("--summary", required=True, help="the summary text")
    args = parser.parse_args(argv)

    if args.command == "score-table":
        from rlhf_repro.io import atomic_write_text
        from rlhf_repro.readers import output_file
        from rlhf_repro.sim.evaluate import score_table, world_posts

        out = output_file(args.out or str(Path(args.table).with_suffix("")) + "_gold.csv")
        rows, summary = score_table(args.table, world_posts(args.world) if args.world else None)
        if rows:
            import csv
            import io

            buf = io.StringIO()
            writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
            atomic_write_text(out, buf.getvalue())
        print(json.dumps(summary, indent=2))
        print(f"wrote {out}")
        return 0
    if args.command == "check-base":
        from rlhf_repro.sim.shipped import check_world

        model = check_world(args.world, args.size)
        print(f"{args.world} is the world the shipped {args.size} base model knows: {model}")
        return 0
    if args.command == "base-models":
        from rlhf_repro.sim.shipped import PRETRAIN_FLAGS, retrain, shipped_sizes

        report = retrain(args.sizes or shipped_sizes() or list(PRETRAIN_FLAGS), args.out, args.write, args.threads)
        print(json.dumps(report, indent=2))
        failed = [s for s, e in report["sizes"].items() if e.get("check") == "FAIL"]
        return 1 if failed and not args.write else 0
    if args.command == "rm-agreement":
        from rlhf_repro.io import atomic_write_json
        from rlhf_repro.sim.agreement import rm_policy_agreement

        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        report = rm_policy_agreement(
            args.policy,
            args.reward_model,
            args.query_dataset,
            args.world,
            posts=args.posts,
            samples=args.samples,
            temperature=args.temperature,
            response_length=args.response_length,
            seed=args.seed,
            also_at=tuple(args.also_at_length),
        )
        atomic_write_json(Path(args.out), report)
        print(json.dumps(report, indent=2))
        return 0
    if args.command == "score":
        from dataclasses import asdict

        from rlhf_repro.sim.labeler import score_detail

        print(json.dumps(asdict(score_detail(args.post, args.summary)), indent=2))
        return 0

    from rlhf_repro.sim.generate import generate_world

    t0 = time.time()
    info = generate_world(
        Path(args.out),
        seed=args.seed,
        n_posts=args.n_posts,
        n_news=args.n_news,
        comparisons_per_post=args.comparisons_per_post,
        distractor_mean=args.distractor_mean,
        progress=not args.no_progress,
    )
    if not args.no_tokenizer:
        from rlhf_repro.sim.tokenizer import write_world_tokenizer

        tok = write_world_tokenizer(Path(args.out), args.vocab_size)
        print(f"tokenizer: {len(tok)} tokens (eos={tok.eos_token_id}, pad={tok.pad_token_id}) -> {args.out}/tokenizer")
    acc = info["gold_accuracy_validation"]
    print(f"world seed {args.seed}: " + ", ".join(f"{k} {v}" for k, v in info["sizes"].items()))
    print(
        f"gold labeler on validation comparisons: accuracy {acc['all']['accuracy']:.3f} "
        f"(expected ceiling {acc['expected_ceiling']:.3f}); news: "
        f"{info['gold_accuracy_validation_cnndm']['all']['accuracy']:.3f}"
    )
    print(f"wrote {args.out} in {time.time() - t0:.1f} s")
    return 0


def _stage(module: str, argv: list[str]) -> int:
    import importlib

    return importlib.import_module(module).cli(argv)


def _sim(argv: list[str]) -> int:
    from rlhf_repro.io import InputError

    try:
        return sim_main(argv)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def _call(module: str, fn: str, argv: list[str]) -> int:
    import importlib

    return getattr(importlib.import_module(module), fn)(argv)


def _judge(argv: list[str]) -> int:
    from rlhf_repro.judge_cli import main as judge_main

    return judge_main(argv)


def _analyze(argv: list[str]) -> int:
    from analysis.cli import main as analyze_main

    return analyze_main(argv)


def _figures(argv: list[str]) -> int:
    from analysis.figures import main as figures_main

    return figures_main(argv)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = {
        "sim": ("simulated TL;DR world: generate, score, rm-agreement, base models", _sim),
        "build-dataset": ("build the SFT and preference datasets", lambda a: _stage("experiments.build_dataset", a)),
        "pretrain": ("pretrain a tiny Pythia-architecture base model", lambda a: _stage("experiments.pretrain", a)),
        "sft": ("supervised fine-tuning on the references (+ ROUGE eval)", lambda a: _stage("experiments.sft", a)),
        "reward": ("train, normalize and evaluate the reward model", lambda a: _stage("experiments.reward", a)),
        "ppo": ("PPO against the reward model, every detail a switch", lambda a: _stage("experiments.ppo", a)),
        "dpo": ("DPO and its variants on the preference pairs", lambda a: _stage("experiments.dpo", a)),
        "judge": ("judge a table of summaries against the references", lambda a: _judge(a)),
        "analyze": ("win rates, length control, calibration, agreement", lambda a: _analyze(a)),
        "figures": ("every report figure and report.md from run folders", lambda a: _figures(a)),
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
            "benchmarks: sampling (generate), PPO vs TRL (ppo), stage micro-steps (steps)",
            lambda a: _call("rlhf_repro.bench", "main", a),
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
