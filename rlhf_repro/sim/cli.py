"""`rlhf-repro sim`: the simulated TL;DR world's commands (generate, score-table, rm-agreement, check-base,
base-models). Bad input prints one line naming the file and exits 2."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def commands(argv: list[str]) -> int:
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


def main(argv: list[str] | None = None) -> int:
    from rlhf_repro.io import InputError

    try:
        return commands(list(sys.argv[1:] if argv is None else argv))
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
