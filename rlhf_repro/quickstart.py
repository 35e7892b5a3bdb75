"""`rlhf-repro quickstart`: the simulated world end to end on this machine, in a few minutes.

Today it runs what exists: world -> processed datasets -> tiny pretrained base model. Later stages
(SFT, RM, PPO, DPO, judging) join as they land. Every step is the same code a paper run uses; only
the sources and sizes differ.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def cli(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="rlhf-repro quickstart", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default="runs/quickstart", help="folder for world/, data/ and results/")
    parser.add_argument("--seed", type=int, default=1, help="world and training seed")
    parser.add_argument("--n-posts", type=int, default=20000, help="posts in the simulated world")
    parser.add_argument("--model-preset", default="tiny-m", help="base model size (tiny-s, tiny-m, tiny-l)")
    parser.add_argument("--pretrain-steps", type=int, default=300, help="pretraining optimizer steps")
    parser.add_argument("--dry-run", action="store_true", help="print the commands without running them")
    args = parser.parse_args(argv)

    from rlhf_repro.presets import TINY_DATASET_FLAGS

    out = Path(args.out)
    world, data, results = out / "world", out / "data", out / "results"
    steps = [
        (
            "world",
            "rlhf_repro.cli",
            [
                "sim",
                "generate",
                "--out",
                str(world),
                "--seed",
                str(args.seed),
                "--n-posts",
                str(args.n_posts),
                "--no-progress",
            ],
        ),
        (
            "datasets",
            "experiments.build_dataset",
            [
                "--tldr-source",
                str(world / "tldr"),
                "--comparisons-source",
                str(world / "comparisons"),
                "--tokenizer",
                str(world / "tokenizer"),
                "--output-dir",
                str(data),
                "--no-progress",
                *TINY_DATASET_FLAGS,
            ],
        ),
        (
            "pretrain",
            "experiments.pretrain",
            [
                "--data",
                str(world),
                "--model-preset",
                args.model_preset,
                "--steps",
                str(args.pretrain_steps),
                "--seed",
                str(args.seed),
                "--results-dir",
                str(results),
                "--experiment",
                "quickstart",
                "--no-progress",
            ],
        ),
    ]
    if args.dry_run:
        for name, module, step_args in steps:
            print(f"[{name}] python -m {module} {' '.join(step_args)}")
        return 0
    import importlib

    timings = {}
    for name, module, step_args in steps:
        print(f"== {name} ==", flush=True)
        t0 = time.time()
        mod = importlib.import_module(module)
        rc = mod.main(step_args) if module == "rlhf_repro.cli" else mod.cli(step_args)
        if rc:
            print(f"quickstart: step {name!r} failed (exit {rc})", file=sys.stderr)
            return rc
        timings[name] = round(time.time() - t0, 1)

    world_info = json.loads((world / "world.json").read_text())
    build = json.loads((data / "build_summary.json").read_text())
    pre = json.loads(
        next((results / "quickstart" / "pretrain").glob(f"{args.model_preset}/*/summary.json")).read_text()
    )
    print("\n== quickstart summary ==")
    print(
        f"world        {world}: {world_info['sizes']['tldr/train']} train posts, "
        f"gold labeler accuracy {world_info['gold_accuracy_validation']['all']['accuracy']:.3f} on validation "
        f"comparisons ({timings['world']} s)"
    )
    print(
        f"datasets     {data}: sft train {build['sft']['train']['rows']} rows, preference train "
        f"{build['preference']['train']['rows']} / validation {build['preference']['validation']['rows']} / "
        f"validation_cnndm {build['preference']['validation_cnndm']['rows']} ({timings['datasets']} s)"
    )
    print(
        f"base model   {pre['model_dir']}: {pre['parameters']:,} parameters, validation loss "
        f"{pre['val_loss_before']:.3f} -> {pre['val_loss_after']:.3f} ({timings['pretrain']} s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(cli())
