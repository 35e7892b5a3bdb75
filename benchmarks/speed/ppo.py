"""`rlhf-repro bench ppo`: our PPO against TRL's PPO trainer on one identical configuration, on this machine.

    rlhf-repro bench ppo --model-shape pythia-14m --json          # ours vs TRL (needs the `bench` extra)
    rlhf-repro bench ppo --model-shape tiny --no-trl              # ours only
    rlhf-repro bench ppo --sweep --model-shape tiny               # time per update vs length and batch

Both sides train the same randomly initialized GPT-NeoX policy (a copy of it as the reference policy), the
same reward model and a critic initialized from it, on the same random prompts of `--prompt-length`
tokens, saved to a temporary folder first. The algorithm is the same: `--batch` episodes per update in
micro-batches of `--micro-batch` (gradient accumulation over one minibatch), 4 PPO epochs, T = 0.7,
exactly `--response-length` sampled tokens truncated after the first EOS, the reward read at the EOS and
placed one step after it, k1 KL at beta 0.05 on every token, GAE (gamma 1, lambda 0.95), whitened
advantages, clip 0.2 for policy and value, value loss x 0.1, one AdamW (lr 3e-6, eps 1e-5) with linear
decay, fp32. The missing-EOS penalty is TRL's (subtract 1 from the score; ours with
`--penalty-mode subtract`), so both shape rewards alike. Ours also samples and scores one validation batch
per update (R-05, the reference's `objective/validation_score`); TRL does not, so that work counts
against ours.

Each side runs in its own subprocess (so peak memory is its own): ours is `experiments/ppo.py` itself;
TRL is `trl.experimental.ppo.PPOTrainer` from trl 1.0-1.12 (removed in 1.13), installed by
`pip install -e ".[bench]"`. Each side runs `--warmup` (1) update and then `--updates` (2) timed ones.
Reported per side: episodes per second over the timed updates (and over all of them, warm-up included, as
`episodes_per_s_with_warmup`), seconds per phase (generate / score: reference, value and reward forwards /
train: the PPO epochs) summed over all updates, and peak resident memory. `--json` prints one object with
`ours_episodes_per_s`, `trl_episodes_per_s` and `speedup` (absent when TRL is not installed or `--no-trl`).

`--sweep` times our PPO alone for response lengths 16 / 53 / 128 at `--batch` (64) and rollout batches
64 / 256 / 512 at `--response-length` (53) (`--lengths`, `--batches`), one update each, and prints seconds
per update and per phase. A benchmark, not a test: the numbers depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rlhf_repro.modeling import MODEL_SHAPES

PAD, EOS = "[PAD]", "<|endoftext|>"
TINY_TOKENIZER_SIZE = 2489  # the quickstart world's tokenizer: tiny shapes are sized for it


# --- the shared workload -------------------------------------------------------------------------------


def _tokenizer(size: int):
    """A word-level tokenizer with `size` entries: EOS (id 0), PAD (id 1) and plain words; the prompts are
    random ids, so only the size and the special tokens matter."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {EOS: 0, PAD: 1, **{f"w{i}": i for i in range(2, size)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token=EOS))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, bos_token=EOS, unk_token=EOS, pad_token=PAD)


def make_workload(out: Path, shape: str, prompt_length: int, response_length: int, n_prompts: int, seed: int):
    """Write policy/ (causal LM + tokenizer), reward/ (our ScalarModel) and data/ (a processed SFT dataset
    of random prompts) under `out`."""
    import numpy as np
    import torch
    from datasets import Dataset, DatasetDict
    from transformers import GPTNeoXForCausalLM

    from rlhf_repro.modeling import MODEL_SHAPES, shape_config
    from rlhf_repro.reward_model import ScalarModel

    size = MODEL_SHAPES[shape]["vocab_size"] or TINY_TOKENIZER_SIZE
    tokenizer = _tokenizer(size)
    config = shape_config(shape, size, max_positions=max(2048, prompt_length + 2 * response_length))
    config.pad_token_id = 1
    torch.manual_seed(seed)
    policy = GPTNeoXForCausalLM(config)
    policy.save_pretrained(str(out / "policy"))
    tokenizer.save_pretrained(str(out / "policy"))
    reward = ScalarModel.from_sft(policy.gpt_neox)
    reward.save_pretrained(str(out / "reward"))
    tokenizer.save_pretrained(str(out / "reward"))

    rng = np.random.default_rng(seed)
    queries = rng.integers(2, size, (n_prompts, prompt_length)).tolist()
    refs = []
    for _ in range(n_prompts):  # right-padded references (only the padding check and evaluation read them)
        n = int(rng.integers(1, response_length))
        refs.append(rng.integers(2, size, n).tolist() + [0] + [1] * (response_length - n - 1))
    split = Dataset.from_dict(
        {"query_token": queries, "reference_response_token": refs, "query_reference_response_token": queries}
    )
    DatasetDict(train=split, validation=split, test=split).save_to_disk(str(out / "data"))
    return out


def total_updates(args) -> int:
    """Updates each side runs: the warm-up ones, then the timed ones."""
    return getattr(args, "warmup", 0) + args.updates


def ours_command(work: Path, args, results: Path) -> list[str]:
    episodes = args.batch * total_updates(args)
    return [
        sys.executable,
        str(Path(__file__).resolve().parent.parent / "experiments" / "ppo.py"),
        "--sft-model-path", str(work / "policy"),
        "--reward-model-path", str(work / "reward"),
        "--query-dataset", str(work / "data"),
        "--results-dir", str(results),
        "--experiment", "bench",
        "--seed", str(args.seed),
        "--batch-size", str(args.batch),
        "--local-micro-batch-size", str(args.micro_batch),
        "--local-rollout-forward-batch-size", str(args.rollout_forward_batch),
        "--total-episodes", str(episodes),
        "--response-length", str(args.response_length),
        "--penalty-mode", "subtract",
        "--no-run-eval",
        "--sample-every", "0",
        "--save-every", "0",
        "--no-resume",
        "--no-progress",
        "--threads", str(args.threads),
        *(["--lora.enabled", "--lora.rank", str(args.lora_rank)] if getattr(args, "child_lora", False) else []),
    ]  # fmt: skip


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _run_child(argv: list[str]) -> dict:
    r = subprocess.run(argv, capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:4])} ... failed ({r.returncode}):\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


# --- ours ----------------------------------------------------------------------------------------------


def child_ours(work: Path, args) -> dict:
    """Run experiments/ppo.py in this process and read its per-update phase times from metrics.jsonl."""
    import tyro

    from experiments import ppo as module
    from rlhf_repro.runs import read_metrics

    results = Path(tempfile.mkdtemp(prefix="ours-", dir=work))
    argv = ours_command(work, args, results)[2:]
    stage_args = tyro.cli(module.Args, args=argv)
    t0 = time.perf_counter()
    module.main(stage_args)
    total = time.perf_counter() - t0
    rows = read_metrics(next(results.rglob("metrics.jsonl")))
    phases = {
        "generate": sum(r["time/ppo/generate"] for r in rows),
        "score": sum(r["time/ppo/score"] for r in rows),
        "rollout": sum(r["time/ppo/rollout"] for r in rows),
        "train": sum(r["time/ppo/train"] for r in rows),
    }
    loop = phases["rollout"] + phases["train"]
    return {
        "episodes": int(rows[-1]["ppo/episode"]),
        "loop_seconds": loop,
        "episodes_per_s": rows[-1]["ppo/episode"] / loop,
        "stage_seconds": total,
        "phases": phases,
        "per_update_seconds": [r["time/ppo/rollout"] + r["time/ppo/train"] for r in rows],
        "peak_rss_mb": _peak_rss_mb(),
    }


# --- TRL -----------------------------------------------------------------------------------------------


def _trl_models(work: Path):
    """The same four models for TRL: policy and reference from policy/, reward and value as
    GPTNeoXForSequenceClassification carrying our RM's body and head (head bias 0, RM bias 0: same function)."""
    import torch
    from transformers import AutoModelForCausalLM, GPTNeoXConfig, GPTNeoXForSequenceClassification

    from rlhf_repro.reward_model import ScalarModel

    policy = AutoModelForCausalLM.from_pretrained(str(work / "policy"))
    ref = AutoModelForCausalLM.from_pretrained(str(work / "policy"))
    ours = ScalarModel.from_pretrained(str(work / "reward"))
    assert float(ours.scalar_head.bias.detach().abs().max()) == 0.0 and ours.config.bias == 0.0
    config = GPTNeoXConfig(**{**ours.config.backbone_config().to_dict(), "num_labels": 1})

    def classifier():
        model = GPTNeoXForSequenceClassification(config)
        model.gpt_neox.load_state_dict(ours.lm_backbone.state_dict())
        with torch.no_grad():
            model.score.weight.copy_(ours.scalar_head.weight)
        return model

    return policy, ref, classifier(), classifier()


def child_trl(work: Path, args) -> dict:
    import torch
    import trl.experimental.ppo.ppo_trainer as trl_ppo
    from datasets import load_from_disk
    from transformers import TrainerCallback
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    from rlhf_repro.tokenization import load_tokenizer

    torch.set_num_threads(args.threads)
    tokenizer = load_tokenizer(work / "policy")
    tokenizer.padding_side = "left"  # TRL pads prompts with the tokenizer and generates after them
    policy, ref, reward, value = _trl_models(work)
    policy.generation_config.pad_token_id = tokenizer.pad_token_id
    n = args.batch * total_updates(args)
    train = load_from_disk(str(work / "data"))["train"].select(range(n))
    train = train.rename_column("query_token", "input_ids").select_columns(["input_ids"])
    config = PPOConfig(
        output_dir=str(work / "trl-out"),
        use_cpu=True,
        bf16=False,  # TRL defaults to bf16; fp32 like ours
        report_to="none",
        save_strategy="no",
        eval_strategy="no",
        num_sample_generations=0,
        logging_steps=1,
        disable_tqdm=True,
        seed=args.seed,
        per_device_train_batch_size=args.micro_batch,
        gradient_accumulation_steps=args.batch // args.micro_batch,
        num_mini_batches=1,
        local_rollout_forward_batch_size=args.rollout_forward_batch,
        total_episodes=n,
        response_length=args.response_length,
        stop_token="eos",
        missing_eos_penalty=1.0,
        temperature=0.7,
        num_ppo_epochs=4,
        kl_coef=0.05,
        kl_estimator="k1",
        cliprange=0.2,
        cliprange_value=0.2,
        vf_coef=0.1,
        gamma=1.0,
        lam=0.95,
        whiten_rewards=False,
        learning_rate=3e-6,
        adam_epsilon=1e-5,
        weight_decay=0.01,
        lr_scheduler_type="linear",
    )
    phases = {"generate": 0.0, "score": 0.0}

    def timed(name, fn):
        def wrapper(*a, **k):
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                phases[name] += time.perf_counter() - t0

        return wrapper

    # train() looks these names up in its module at call time, so wrapping them there times each phase.
    trl_ppo.batch_generation = timed("generate", trl_ppo.batch_generation)
    trl_ppo.get_reward = timed("score", trl_ppo.get_reward)
    forward = trl_ppo.forward

    def ref_forward(model, *a, **k):  # the no-grad forwards are the rollout's reference policy
        if torch.is_grad_enabled():
            return forward(model, *a, **k)
        return timed("score", forward)(model, *a, **k)

    trl_ppo.forward = ref_forward
    updates = []

    class Clock(TrainerCallback):
        def on_train_begin(self, *a, **k):
            self.t = time.perf_counter()

        def on_step_end(self, *a, **k):
            now = time.perf_counter()
            updates.append(now - self.t)
            self.t = now

    trainer = PPOTrainer(
        args=config,
        processing_class=tokenizer,
        model=policy,
        ref_model=ref,
        reward_model=reward,
        value_model=value,
        train_dataset=train,
        eval_dataset=train.select(range(min(8, n))),
        callbacks=[Clock()],
    )
    t0 = time.perf_counter()
    trainer.train()
    loop = time.perf_counter() - t0
    phases["train"] = loop - phases["generate"] - phases["score"]
    return {
        "episodes": int(trainer.state.episode),
        "loop_seconds": loop,
        "episodes_per_s": trainer.state.episode / loop,
        "phases": phases,
        "per_update_seconds": updates,
        "peak_rss_mb": _peak_rss_mb(),
    }


# --- driver --------------------------------------------------------------------------------------------


def trl_available() -> str | None:
    """The installed trl version when it has the PPO trainer (1.0-1.12), else None."""
    try:
        import trl
        from trl.experimental.ppo import PPOTrainer  # noqa: F401
    except Exception:
        return None
    return trl.__version__


def _child_argv(kind: str, work: Path, args) -> list[str]:
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items() if k in CHILD_FLAGS]
    return [sys.executable, "-m", "benchmarks.speed.ppo", "--child", kind, "--work", str(work), *flags]


CHILD_FLAGS = (
    "model_shape", "batch", "micro_batch", "rollout_forward_batch", "prompt_length", "response_length",
    "updates", "warmup", "threads", "seed", "lora_rank",
)  # fmt: skip


def bench_ppo(args) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-ppo-") as tmp:
        work = make_workload(
            Path(tmp),
            args.model_shape,
            args.prompt_length,
            args.response_length,
            args.batch * total_updates(args),
            args.seed,
        )
        out = {k: getattr(args, k) for k in CHILD_FLAGS}
        out["ours"] = _run_child(_child_argv("ours", work, args))
        version = None if args.no_trl else trl_available()
        out["trl_version"] = version
        if version:
            out["trl"] = _run_child(_child_argv("trl", work, args))
        if args.lora:  # ours again with LoRA adapters (the reference policy: the policy, adapters off)
            out["ours_lora"] = _run_child(_child_argv("ours", work, args) + ["--child-lora"])
    for side in ("ours", "trl", "ours_lora"):
        if side in out:
            steady(out[side], args.batch, args.warmup)
            out[f"{side}_episodes_per_s"] = round(out[side]["episodes_per_s"], 3)
    if "trl" in out:
        out["speedup"] = round(out["ours_episodes_per_s"] / out["trl_episodes_per_s"], 2)
    return out


def steady(side: dict, batch: int, warmup: int) -> dict:
    """Episodes per second over the updates after the first `warmup` (both sides alike: the first update
    also pays for first-touch allocations, optimizer state and kernel warm-up); the all-updates figure stays
    as `episodes_per_s_with_warmup`."""
    side["episodes_per_s_with_warmup"] = side["episodes_per_s"]
    timed = side["per_update_seconds"][warmup:]
    if timed:
        side["episodes_per_s"] = batch * len(timed) / sum(timed)
    return side


def sweep(args) -> list[dict]:
    points = [(length, args.batch) for length in args.lengths]  # response length at the rollout batch
    points += [(args.response_length, b) for b in args.batches if (args.response_length, b) not in points]
    rows = []
    for length, batch in points:
        point = argparse.Namespace(
            **{**vars(args), "response_length": length, "batch": batch, "updates": 1, "warmup": 0}
        )
        point.rollout_forward_batch = min(args.rollout_forward_batch, batch)
        with tempfile.TemporaryDirectory(prefix="bench-ppo-") as tmp:
            work = make_workload(Path(tmp), args.model_shape, args.prompt_length, length, batch, args.seed)
            res = _run_child(_child_argv("ours", work, point))
        rows.append(
            {
                "response_length": length,
                "batch": batch,
                "seconds_per_update": res["loop_seconds"],
                **{f"{k}_seconds": v for k, v in res["phases"].items()},
                "peak_rss_mb": res["peak_rss_mb"],
            }
        )
    return rows


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model-shape", choices=(*MODEL_SHAPES, "tiny"), default="pythia-14m")
    p.add_argument("--batch", type=int, default=64, help="episodes per update (rollout batch)")
    p.add_argument("--micro-batch", type=int, default=16, help="sequences per forward/backward in the PPO epochs")
    p.add_argument("--rollout-forward-batch", type=int, default=64, help="queries per rollout forward chunk")
    p.add_argument("--prompt-length", type=int, default=200, help="tokens per prompt")
    p.add_argument("--response-length", type=int, default=53, help="tokens sampled per prompt")
    p.add_argument("--updates", type=int, default=2, help="timed PPO updates per side")
    p.add_argument("--warmup", type=int, default=1, help="untimed PPO updates per side before them (not with --sweep)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads of each side")
    p.add_argument("--seed", type=int, default=1, help="seed of the weights, prompts and training")
    p.add_argument("--no-trl", action="store_true", help="time ours only (also when trl is not installed)")
    p.add_argument("--sweep", action="store_true", help="ours only: time per update vs response length and batch")
    p.add_argument("--lengths", type=int, nargs="+", default=[16, 53, 128], help="response lengths of --sweep")
    p.add_argument("--batches", type=int, nargs="+", default=[64, 256, 512], help="rollout batches of --sweep")
    p.add_argument("--json", action="store_true", help="print one JSON object (a list with --sweep)")
    p.add_argument(
        "--lora",
        action="store_true",
        help="also time ours with LoRA adapters (--lora.enabled): its episodes/s and peak memory beside full PPO",
    )
    p.add_argument("--lora-rank", type=int, default=16, help="adapter rank of --lora")


def run(args) -> int:
    if args.model_shape == "tiny":
        args.model_shape = "tiny-m"
    if args.batch % args.micro_batch:
        print(f"error: --batch {args.batch} is not a multiple of --micro-batch {args.micro_batch}", file=sys.stderr)
        return 2
    if args.sweep:
        rows = sweep(args)
        if args.json:
            print(json.dumps(rows))
            return 0
        print("| response length | batch | s/update | generate s | score s | train s | peak MB |\n" + "|---" * 7 + "|")
        for r in rows:
            print(
                f"| {r['response_length']} | {r['batch']} | {r['seconds_per_update']:.1f} "
                f"| {r['generate_seconds']:.1f} | {r['score_seconds']:.1f} | {r['train_seconds']:.1f} "
                f"| {r['peak_rss_mb']:.0f} |"
            )
        return 0
    out = bench_ppo(args)
    if args.json:
        print(json.dumps(out))
        return 0
    print("| PPO | episodes/s | generate s | score s | train s | peak MB |\n|---|---|---|---|---|---|")
    for side in ("ours", "trl", "ours_lora"):
        if side in out:
            r = out[side]
            ph = r["phases"]
            print(
                f"| {side} | {r['episodes_per_s']:.3f} | {ph['generate']:.1f} | {ph['score']:.1f} | {ph['train']:.1f} "
                f"| {r['peak_rss_mb']:.0f} |"
            )
    if "speedup" in out:
        print(
            f"speedup {out['speedup']}x (trl {out['trl_version']}; {args.model_shape}, batch {args.batch}, "
            f"{args.prompt_length}+{args.response_length} tokens, {args.updates} timed updates after {args.warmup} "
            f"warm-up, {args.threads} threads)"
        )
    else:
        print("TRL not timed: " + ("--no-trl" if args.no_trl else 'install it with pip install -e ".[bench]"'))
    return 0


def _child_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="benchmarks.speed.ppo")
    p.add_argument("--child", choices=("ours", "trl"), required=True)
    p.add_argument("--work", required=True)
    p.add_argument("--child-lora", action="store_true")
    add_arguments(p)
    args = p.parse_args(argv)
    fn = child_ours if args.child == "ours" else child_trl
    print(json.dumps(fn(Path(args.work), args)))
    return 0


if __name__ == "__main__":
    sys.exit(_child_main(sys.argv[1:]))
