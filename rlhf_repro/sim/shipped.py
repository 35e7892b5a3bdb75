"""The tiny base models the repo ships, and the recipe that retrains them.

The paper starts from released Pythia weights; it does not pretrain. The `tiny` preset likewise starts
from base models pretrained once, longer than a quickstart could afford (minutes of CPU each), and kept
in `rlhf_repro/sim/base_models/<size>/` in `save_pretrained` form, so a quickstart's minutes go to SFT,
RM and PPO. Each folder holds `model/` and `recipe.json`: the world they were pretrained on (seed, posts, generator
version, the SHA-256 of its pretraining corpus and tokenizer), the exact `rlhf-repro pretrain` flags,
and the validation loss and wall-clock the recipe reached.

    rlhf-repro sim base-models --out work/base-models --check    retrain every size; compare to the shipped
    rlhf-repro sim base-models --out work/base-models --write    retrain and replace the shipped weights

A world of another seed, size or generator version is not the one the shipped models know: the
quickstart checks the world against the recipe (`check_world`) and stops with what to do, and a test
fails when the generator changes without new weights.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from rlhf_repro.io import InputError

SHIPPED_DIR = Path(__file__).with_name("base_models")
# The world the shipped models were pretrained on (the `tiny` preset's world).
WORLD_SEED, WORLD_POSTS = 1, 20000
# Pretraining flags per size (`rlhf-repro pretrain`); the recipe.json of a shipped model records them.
PRETRAIN_FLAGS = {
    "tiny-xs": ["--steps", "3000", "--lr", "3e-3", "--batch-size", "16", "--block-size", "256"],
    "tiny-s": ["--steps", "3000", "--lr", "3e-3", "--batch-size", "16", "--block-size", "256"],
    "tiny-m": ["--steps", "3000", "--lr", "3e-3", "--batch-size", "16", "--block-size", "256"],
}
# Two CPUs of this machine kind may round differently; a retrained model must land this close to the
# shipped one's validation loss (nats per token) when it is not bit-identical.
VAL_LOSS_TOLERANCE = 0.01


def shipped_sizes() -> list[str]:
    return sorted(p.parent.name for p in SHIPPED_DIR.glob("*/recipe.json"))


def shipped_model_dir(size: str) -> Path:
    """`rlhf_repro/sim/base_models/<size>/model`: loads with `from_pretrained` like a hub id."""
    if size not in shipped_sizes():
        raise InputError(f"no shipped base model for size {size!r} (shipped: {', '.join(shipped_sizes()) or 'none'})")
    return SHIPPED_DIR / size / "model"


def recipe(size: str) -> dict:
    shipped_model_dir(size)
    return json.loads((SHIPPED_DIR / size / "recipe.json").read_text())


def sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def world_fingerprint(world: str | os.PathLike) -> dict:
    """What a shipped model depends on in a world: its generator version, seed, size, pretraining
    corpus and tokenizer."""
    world = Path(world)
    info = json.loads((world / "world.json").read_text())
    return {
        "generator_version": info.get("generator_version"),
        "seed": info.get("seed"),
        "n_posts": info.get("n_posts"),
        "pretrain_corpus_sha256": sha256(world / "pretrain" / "train.jsonl"),
        "tokenizer_sha256": sha256(world / "tokenizer" / "tokenizer.json"),
    }


def check_world(world: str | os.PathLike, size: str) -> Path:
    """The shipped model of `size` when `world` is the one it was pretrained on; else an InputError that
    says what differs and what to do."""
    model = shipped_model_dir(size)
    want = recipe(size)["world"]
    try:
        got = world_fingerprint(world)
    except (OSError, json.JSONDecodeError) as e:
        raise InputError(f"not a generated world ({e})", world) from None
    diff = [k for k in want if want[k] != got.get(k)]
    if diff:
        raise InputError(
            f"this world differs from the one the shipped {size} base model was pretrained on ({', '.join(diff)}); "
            "pretrain a base model for it (`rlhf-repro reproduce ... --pretrain-base`) or, after changing the "
            "generator, retrain the shipped ones (`rlhf-repro sim base-models --write`)",
            world,
        )
    return model


def _same_weights(a: Path, b: Path) -> tuple[bool, float]:
    """(bit-identical, largest absolute difference) of two saved models' tensors."""
    from safetensors.torch import load_file

    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    if set(wa) != set(wb) or any(wa[k].shape != wb[k].shape for k in wa):
        return False, float("inf")
    diff = max(float((wa[k].double() - wb[k].double()).abs().max()) for k in wa)
    return diff == 0.0, diff


def ship(size: str, run: Path, fingerprint: dict) -> Path:
    """Copy a finished `rlhf-repro pretrain` run's model into the shipped folder with its recipe.json."""
    import datetime
    import shutil
    import sys

    import torch

    from rlhf_repro.io import atomic_directory, atomic_write_json

    summary = json.loads((run / "summary.json").read_text())
    with atomic_directory(SHIPPED_DIR / size / "model") as tmp:
        shutil.copytree(run / "model", tmp, dirs_exist_ok=True)
    atomic_write_json(
        SHIPPED_DIR / size / "recipe.json",
        {
            "size": size,
            "world": fingerprint,
            "pretrain_flags": PRETRAIN_FLAGS[size],
            "parameters": summary["parameters"],
            "val_loss_after": summary["val_loss_after"],
            "seconds": summary["seconds"],
            "trained_on": f"{os.cpu_count()} CPUs, torch {torch.__version__}, python {sys.version.split()[0]}",
            "date": datetime.date.today().isoformat(),
        },
    )
    return SHIPPED_DIR / size / "model"


def retrain(sizes: list[str], out: str | os.PathLike, write: bool = False, threads: int | None = None) -> dict:
    """Generate the recipe's world under OUT (unless it is there), pretrain each size with the recipe's
    flags, and compare with the shipped model: bit-identical weights, or else the validation loss within
    VAL_LOSS_TOLERANCE. With `write`, the new models (and their recipe.json) replace the shipped ones."""
    import subprocess
    import sys
    import time

    from rlhf_repro.sim.generate import generate_world
    from rlhf_repro.sim.tokenizer import write_world_tokenizer

    out = Path(out)
    world = out / "world"
    if not (world / "tokenizer" / "tokenizer.json").exists():
        generate_world(world, seed=WORLD_SEED, n_posts=WORLD_POSTS, progress=False)
        write_world_tokenizer(world)
    fingerprint = world_fingerprint(world)
    report = {"world": fingerprint, "sizes": {}}
    for size in sizes:
        if size not in PRETRAIN_FLAGS:
            raise InputError(f"no recipe for size {size!r} (one of {', '.join(PRETRAIN_FLAGS)})")
        flags = ["--data", str(world), "--model-shape", size, "--seed", "1", "--no-progress"]
        flags += ["--results-dir", str(out / "runs"), "--experiment", "base", *PRETRAIN_FLAGS[size]]
        flags += ["--threads", str(threads)] if threads else []
        t0 = time.time()
        rc = subprocess.run([sys.executable, "-m", "rlhf_repro.cli", "pretrain", *flags]).returncode
        if rc:
            raise RuntimeError(f"pretraining {size} failed (exit {rc})")
        run = out / "runs" / "base" / "pretrain" / size / "1"
        summary = json.loads((run / "summary.json").read_text())
        entry = {"val_loss_after": summary["val_loss_after"], "seconds": round(time.time() - t0, 1)}
        if size in shipped_sizes():
            shipped = recipe(size)
            identical, diff = _same_weights(run / "model", shipped_model_dir(size))
            loss_gap = abs(summary["val_loss_after"] - shipped["val_loss_after"])
            entry |= {
                "shipped_val_loss_after": shipped["val_loss_after"],
                "bit_identical": identical,
                "max_abs_weight_difference": diff,
                "val_loss_gap": round(loss_gap, 6),
                "same_world": shipped["world"] == fingerprint,
                "check": "PASS"
                if shipped["world"] == fingerprint and (identical or loss_gap <= VAL_LOSS_TOLERANCE)
                else "FAIL",
            }
        if write:
            ship(size, run, fingerprint)
        report["sizes"][size] = entry
    return report
