"""PPO against the reward model: stage 3 of the N+ pipeline (details 20-25, R-01..R-13).

    python experiments/ppo.py --sft-model-path SFT_RUN/model --reward-model-path RM_RUN/model --run-eval
    torchrun --standalone --nproc_per_node 2 experiments/ppo.py ...   # 2 CPU processes (gloo)

Each update (the reference's numbered steps):
  rollout  sample exactly 53 tokens per SFT-train query at T=0.7 (R-03); keep the sampler's log-probs
           (R-02); reference-policy log-probs at the same temperature (R-01); critic values
  1.       truncate each response after its first EOS (R-06)
  2.       score the truncated response with the frozen RM (read at its EOS, detail 12)
  3.       responses without an EOS get score -1 (the EOS trick, detail 23)
  4.       per-token rewards: -beta * KL (k1, 0 after the EOS; R-07) plus the score one step after the
           EOS (R-08)
  5.       optional reward whitening (off in the paper, detail 24)
  6.       GAE (gamma 1, lambda 0.95; R-09), returns, masked advantage whitening (detail 25)
  then 4 PPO epochs over the batch (1 minibatch): clipped policy loss + 0.1 x clipped value loss with
  one AdamW for policy and critic (detail 22, R-10, R-11); lr decays linearly (R-12).

Every detail is a flag; defaults are the paper's. Writes RESULTS_DIR/EXPERIMENT/ppo/MODEL_NAME/SEED/:
config.json, provenance.json, metrics.jsonl (the reference's `objective/*`, `ppo/*` names), samples
every --sample-every updates, query_responses_{split}.csv with --run-eval, summary.json, checkpoint/,
model/ (the policy) and critic/.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch

from rlhf_repro import rl
from rlhf_repro.data import check_padding, eval_batches, load_processed, lockstep_eval_batches, permutation, token_batch
from rlhf_repro.generation import TEMPERATURE_EPS, generate, generate_many
from rlhf_repro.io import InputError
from rlhf_repro.lm_head import next_token_logprobs
from rlhf_repro.lora import LoraArgs, adapters_off, add_adapters, trainable
from rlhf_repro.ops import forward, trim_left_padding, truncate_response
from rlhf_repro.reward_model import get_reward
from rlhf_repro.runs import model_name_of
from rlhf_repro.seeding import derived_seed, local_seed
from rlhf_repro.tables import sample_rows
from rlhf_repro.training import RESUME_IGNORED as STAGE_RESUME_IGNORED
from rlhf_repro.training import StageArgs, clip_gradients, gather_objects, prepare_frozen, prepare_trained


@dataclass
class PpoHParams:
    noptepochs: int = 4
    """PPO epochs over each rollout batch (R-11)."""
    vf_coef: float = 0.1
    """Weight of the value loss in the joint loss (R-10)."""
    cliprange: float = 0.2
    """Policy ratio clip range (R-10)."""
    cliprange_value: float = 0.2
    """Value clip range around the rollout values (R-10)."""
    gamma: float = 1.0
    """Discount (R-09)."""
    lam: float = 0.95
    """GAE lambda (R-09)."""
    whiten_rewards: bool = False
    """Whiten the per-token rewards (keeping their mean) before GAE (detail 24; off in the paper)."""
    kl_coef: float = 0.05
    """beta of the per-token KL penalty (R-07); the starting value with --ppo.kl-ctl adaptive."""
    kl_ctl: Literal["fixed", "adaptive"] = "fixed"
    """fixed beta (the paper) or lm-human-preferences' adaptive controller (off in the reference, R-07)."""
    kl_target: float = 6.0
    """Adaptive controller: the summed per-response KL it steers toward."""
    kl_horizon: int = 10000
    """Adaptive controller: episodes over which a 20% error changes beta by 20%."""


@dataclass
class Args(StageArgs):
    # --- run -------------------------------------------------------------------------------------
    experiment: str = "ppo"
    """Experiment name: the run folder is RESULTS_DIR/EXPERIMENT/ppo/MODEL_NAME/SEED."""
    model_name: str | None = None
    """Model name in the run folder; default: taken from --sft-model-path."""
    results_dir: str = "results"
    """Root of run folders."""
    seed: int = 1
    """Seed; process r samples with seed + 100003*r (R-14); the prompt order uses the seed itself."""
    seed_offset: int = 0
    """Added to --seed for sampling and the prompt order (the run folder keeps --seed's name): two runs of one
    configuration that differ only by chance, as the EOS-trick negative control compares."""
    run_eval: bool = False
    """After training, sample for validation and test at T=0.01 and score policy and references with the RM."""

    # --- models and data -------------------------------------------------------------------------
    sft_model_path: str = "EleutherAI/pythia-1b-deduped"
    """The SFT model: the policy's start and the frozen reference policy (sft.py's RUN/model or a hub id)."""
    reward_model_path: str = ""
    """The trained RM (reward.py's RUN/model): the frozen reward and, by default, the critic's start."""
    tokenizer: str | None = None
    """Tokenizer; default: the SFT model's."""
    query_dataset: str = "vwxyzjn/summarize_from_feedback_tldr_3_filtered_oai_preprocessing_1706381144"
    """Processed SFT dataset: PPO's prompts are its train queries, cycled (detail 21)."""
    reward_source: Literal["rm", "classifier", "gold", "length"] = "rm"
    """Where scores come from: our RM (--reward-model-path, the paper), a sequence classifier's label, the
    simulated world's gold labeler (an oracle reward: what PPO reaches when the reward is the truth), or
    -|response tokens - --target-length| / 10 (a sanity check any correct PPO passes in minutes)."""
    reward_classifier: str | None = None
    """With --reward-source classifier: an AutoModelForSequenceClassification (hub id or directory)."""
    reward_label: str | None = None
    """The classifier label whose logit or probability is the score (optional for a one-logit classifier)."""
    reward_output: Literal["logit", "probability"] = "logit"
    """Score = the label's logit or its softmax probability."""
    reward_text: Literal["response", "query_response"] = "response"
    """Text the classifier reads: the decoded response, or query text followed by it."""
    gold_reward_scale: float = 1.0
    """With --reward-source gold: score = scale x (gold score - offset); the gold score's maximum is 8."""
    gold_reward_offset: float | None = None
    """With --reward-source gold: the offset; default: the mean gold score of the first 1,000 SFT-train
    references, so that references average 0 as the RM's do (detail 15)."""
    target_length: int = 20
    """With --reward-source length: the response length (tokens, EOS included) that scores 0."""
    negate_reward: bool = False
    """NEGATIVE CONTROL ONLY: PPO maximizes minus the score (of the RM, classifier, gold or length
    reward), so it learns what the reward calls worse. A check that PPO improved the policy must FAIL on
    such a run (the quickstart's controls); never use it for a real run."""
    gold_metrics: bool = False
    """Simulated world only: also score every update's rollouts and validation batch with the gold
    labeler, logged as gold/scores and gold/validation_score (never used for training): the truth beside
    the proxy reward, for over-optimization curves."""
    value_init: Literal["reward", "sft"] = "reward"
    """Critic start (detail 22): a copy of the RM (the paper) or the SFT body with a fresh head."""
    dropout: float = 0.0
    """Dropout rate of the policy and critic while training (detail 7: 0, disabled). Any other value shows
    why it is disabled: log-probs stop being reproducible and the first epoch's ratio leaves 1."""

    # --- optimizer (detail 8, R-12) ------------------------------------------------------------------
    lr: float = 3e-6
    """Learning rate of the one optimizer shared by policy and critic."""
    eps: float = 1e-5
    """Adam epsilon."""
    max_grad_norm: float = 0.0
    """Clip the global gradient norm to this before every optimizer step; 0: never, as the reference (R-10).
    Set on every backend: under DeepSpeed it is the config's `gradient_clipping`, which accelerate >= 1.x
    would otherwise fill with 1.0 for the reference's YAML (its accelerate 0.25 left it off)."""
    optimizer: Literal["adam", "adamw"] = "adamw"
    """Optimizer; adamw uses PyTorch's default weight decay 0.01."""
    lr_schedule: Literal["linear", "constant"] = "linear"
    """linear: lr x (1 - update/num_updates), set by hand each update as the reference does (R-12)."""

    # --- batch sizes (R-11) ----------------------------------------------------------------------
    # detail 20: 512 rollouts per update, 4 PPO epochs (PpoHParams.noptepochs), one minibatch, ~1M episodes.
    total_episodes: int = 1_000_000
    """Episodes (sampled responses) in total: num_updates = total_episodes // batch_size (detail 21)."""
    batch_size: int = 512
    """Global rollout batch per update, over all processes."""
    nminibatches: int = 1
    """Minibatches per PPO epoch, one optimizer step each (this flag works, unlike the reference's
    `--ppo.nminibatches`)."""
    local_micro_batch_size: int = 16
    """Sequences per forward/backward on each process."""
    gradient_accumulation_steps: int | None = None
    """Micro-batches per minibatch on each process; derived from the batch sizes when not set."""
    local_rollout_forward_batch_size: int = 64
    """Queries per generation / no-grad forward chunk during the rollout (R-18)."""
    offload: bool = False
    """R-17: under DeepSpeed, keep the frozen reference policy and RM in ZeRO stage 3 with their parameters
    offloaded to CPU (the reference sets it for Pythia 6.9B). Without it they run in the reference's
    separate bf16 inference config; without DeepSpeed they simply move to the device."""
    ppo: PpoHParams = field(default_factory=PpoHParams)

    # --- sampling (R-01, R-03, R-06) -------------------------------------------------------------
    response_length: int = 53
    """Exactly this many tokens are sampled per response, then truncated after the first EOS."""
    temperature: float = 0.7
    """Rollout temperature, also applied to every log-prob computation (R-01)."""
    truncate_token: Literal["eos"] = "eos"
    """Token after which responses are truncated (R-06)."""
    sampler: Literal["fast", "hf"] = "fast"
    """`hf`: HF generate as the reference sets it up; `fast`: our KV-cache loop (same distribution)."""
    lm_head: Literal["fused", "obvious"] = "fused"
    """How token log-probs are computed: `fused` runs the LM head on the positions read, straight into the
    log-probs (rlhf_repro/lm_head.py); `obvious` takes the model's logits at every position, log_softmax
    and gather, as the reference does (more memory and time; equal to float rounding)."""
    lora: LoraArgs = field(default_factory=LoraArgs)
    """LoRA adapters through peft on the policy and on the critic's backbone (its value head trains in full;
    rlhf_repro/lora.py); the reference policy is the policy with its adapters off, not a second copy (the
    paper's "PPO w/ LoRA" series)."""

    # --- reward shaping (details 23-25, R-07, R-08, R-13) -----------------------------------------
    non_eos_penalty: bool = True
    """The EOS trick (detail 23): responses without an EOS get the penalty instead of their RM score."""
    penalty_reward_value: float = -1.0
    """The penalty of the EOS trick."""
    penalty_mode: Literal["replace", "subtract"] = "replace"
    """replace the score by the penalty (the reference) or subtract |penalty| (TRL's missing_eos_penalty)."""
    score_position: Literal["eos_plus_one", "eos"] = "eos_plus_one"
    """Where the score enters the rewards (R-08): one step after the EOS (the reference) or on the EOS
    itself (the placement argued for in TRL #1893 / #3750)."""
    kl_estimator: Literal["k1", "k3"] = "k1"
    """Per-token KL estimator (R-07): k1 = log p - log q (the reference) or k3."""
    kl_after_eos: bool = False
    """Also penalize KL on the tokens after the EOS (the pre-release `ppo_left_padding` behaviour)."""
    whiten_scope: Literal["rank", "global"] = "rank"
    """Statistics of reward and advantage whitening: each process's batch (the reference, R-13) or all."""

    # --- evaluation and samples (R-04, R-05) ------------------------------------------------------
    local_eval_batch_size: int = 8
    """Queries per evaluation batch per process; one such validation batch is scored every update."""
    eval_temperature: float = 0.01
    """Sampling temperature of every evaluation (R-04)."""
    max_eval_samples: int | None = None
    """Evaluate only the first N rows of each split at the end (default: all)."""
    eval_splits: list[str] = field(default_factory=lambda: ["validation", "test"])
    """Splits sampled and scored at the end into query_responses_{split}.csv."""
    sample_every: int = 220
    """Write the validation batch's samples every N updates (the reference's print_sample_output_freq)."""


DETAIL_FLAGS = (
    "max_grad_norm",
    "batch_size",
    "nminibatches",
    "lr",
    "lr_schedule",
    "value_init",
    "response_length",
    "temperature",
    "non_eos_penalty",
    "penalty_reward_value",
    "penalty_mode",
    "score_position",
    "kl_estimator",
    "kl_after_eos",
    "whiten_scope",
    "dropout",
    "reward_source",
    "negate_reward",
    "ppo.noptepochs",
    "ppo.cliprange",
    "ppo.cliprange_value",
    "ppo.vf_coef",
    "ppo.gamma",
    "ppo.lam",
    "ppo.whiten_rewards",
    "ppo.kl_coef",
    "ppo.kl_ctl",
)
RESUME_IGNORED = (*STAGE_RESUME_IGNORED, "run_eval", "max_eval_samples", "sample_every", "eval_splits", "offload")


class PolicyAndValue(torch.nn.Module):
    """Policy and critic under one module, so one optimizer and one `accelerator.prepare` cover both (detail 22)."""

    def __init__(self, policy, critic, lm_head: str = "fused"):
        super().__init__()
        self.policy = policy
        self.critic = critic
        self.lm_head = lm_head

    def forward(self, query_responses, pad: int, context_length: int, temperature: float):
        """(new log-probs (B, R), entropy (B, R), values (B, T)); the policy's LM head runs on the response
        positions only and straight into the log-probs (`lm_head`)."""
        logprobs, entropy = next_token_logprobs(
            self.policy,
            query_responses,
            pad,
            start=context_length - 1,
            temperature=temperature,
            entropy=True,
            head=self.lm_head,
        )
        values = forward(self.critic, query_responses, pad, start=context_length - 1)  # positions C-1..T-1
        return logprobs, entropy, values


def query_rows(order_for_epoch, n: int, update: int, local_batch: int, rank: int, world: int) -> np.ndarray:
    """This rank's prompts for `update`: the next global batch of the prompt stream, which cycles over
    epochs with a fresh shared-seed shuffle each (detail 21); rank r takes the r-th local slice."""
    start = (update * world + rank) * local_batch
    positions = np.arange(start, start + local_batch)
    return np.array([order_for_epoch(int(p // n))[p % n] for p in positions])


def load_reward_source(args: Args, tokenizer, train, device, derived: dict):
    """The reward PPO optimizes, per --reward-source: (reward_model, None) for the RM (detail 12), (None,
    text_reward) for the gold labeler (simulated world, offset by the references' mean gold score unless
    --gold-reward-offset) or a hub classifier, (None, None) for the length reward."""
    from rlhf_repro.reward_model import load_reward_model

    if args.reward_source == "rm":
        return load_reward_model(args.reward_model_path).eval().requires_grad_(False), None
    if args.reward_source == "gold":
        from rlhf_repro.reward_sources import GoldReward

        offset = gold_offset(tokenizer, train) if args.gold_reward_offset is None else args.gold_reward_offset
        derived["gold_reward_offset"] = round(offset, 6)
        return None, GoldReward(args.gold_reward_scale, offset, device)
    if args.reward_source == "classifier":
        from rlhf_repro.reward_sources import ClassifierReward

        reward = ClassifierReward(
            args.reward_classifier, args.reward_label, args.reward_output, args.reward_text, device
        )
        return None, reward
    return None, None


def make_scorer(args: Args, reward_model, text_reward, tokenizer, device):
    """score(queries (B, Q) left-padded, responses (B, R) right-padded) -> (B,): the RM read at the
    response's EOS (detail 12), a text reward (classifier or gold) on the decoded texts, or the length
    reward; negated with --negate-reward (a negative control)."""
    from rlhf_repro.reward_sources import length_reward

    pad = tokenizer.pad_token_id
    sign = -1.0 if args.negate_reward else 1.0

    def score(queries: torch.Tensor, responses: torch.Tensor) -> torch.Tensor:
        if args.reward_source == "rm":
            query_responses = torch.cat((queries, responses), 1)
            scores = get_reward(reward_model, query_responses, pad, queries.size(1), start=queries.size(1) - 1)[1]
        elif args.reward_source == "length":
            scores = length_reward(responses, pad, args.target_length)
        else:
            texts = tokenizer.batch_decode(responses, skip_special_tokens=True)
            scores = text_reward(tokenizer.batch_decode(queries, skip_special_tokens=True), texts).to(device)
        return sign * scores

    return score


def gold_of(tokenizer, queries: torch.Tensor, responses: torch.Tensor, device) -> torch.Tensor:
    """The gold labeler's scores (B,) of decoded responses (simulated world only; --gold-metrics)."""
    from rlhf_repro.reward_sources import gold_scores

    texts = tokenizer.batch_decode(responses, skip_special_tokens=True)
    scores = gold_scores(tokenizer.batch_decode(queries, skip_special_tokens=True), texts)
    return torch.tensor(scores, dtype=torch.float32, device=device)


def gold_offset(tokenizer, train, n: int = 1000) -> float:
    """Mean gold score of the first `n` SFT-train references (the gold reward's offset, detail 15)."""
    from rlhf_repro.reward_sources import gold_scores

    queries, references = token_batch(train, range(min(n, len(train))), "query_token", "reference_response_token")
    texts = [tokenizer.batch_decode(t, skip_special_tokens=True) for t in (queries, references)]
    return float(np.mean(gold_scores(*texts)))


def sample_and_score(args: Args, policy, score, queries, pad: int, eos: int, temperature: float):
    """Sample, truncate and score a batch of queries (R-03, R-06); (postprocessed, scores)."""
    responses, _ = generate(policy, queries, pad, args.response_length, temperature, args.sampler)
    postprocessed = truncate_response(responses, eos, pad)
    return postprocessed, score(queries, postprocessed)


def evaluate(args: Args, accelerator, policy, score, tokenizer, dataset, split: str):
    """Final evaluation at T=0.01 on one split: RM scores of samples and references, gathered (-> metrics, table)."""
    import pandas as pd
    from tqdm.auto import tqdm

    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    rank, world = accelerator.process_index, accelerator.num_processes
    n = min(len(dataset), args.max_eval_samples or len(dataset))
    meta = dataset.select_columns([c for c in ("id", "query") if c in dataset.column_names])
    rows = []
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        seed = args.seed + args.seed_offset
        torch.manual_seed(derived_seed(local_seed(seed, rank), {"validation": 1, "test": 2}.get(split, 3)))
        # With --offload every RM forward is a ZeRO-3 collective: all ranks score the same number of batches.
        batches = (
            lockstep_eval_batches(n, args.local_eval_batch_size, world, rank)
            if args.offload
            else [(idx, False) for idx in eval_batches(n, args.local_eval_batch_size, world, rank)]
        )
        for idx, padding in tqdm(
            batches, desc=f"eval {split}", disable=not (args.progress and accelerator.is_main_process)
        ):
            queries, references = (
                t.to(accelerator.device) for t in token_batch(dataset, idx, "query_token", "reference_response_token")
            )
            queries = trim_left_padding(queries, pad)
            if padding:
                score(queries, references), score(queries, references)  # as many RM forwards as a real batch
                continue
            postprocessed, scores = sample_and_score(args, policy, score, queries, pad, eos, args.eval_temperature)
            ref_scores = score(queries, references)
            rows += sample_rows(
                tokenizer, meta, idx, postprocessed, references, score=scores, reference_score=ref_scores
            )
    columns = ["row", "id", "query", "response", "reference", "score", "reference_score", "response_token_len"]
    table = pd.DataFrame(
        sorted(gather_objects(accelerator, rows), key=lambda r: r["row"]), columns=[*columns, "eos_present"]
    )
    metrics = {
        f"{split}/ppo/score": float(table["score"].mean()),
        f"{split}/ppo/reference_score": float(table["reference_score"].mean()),
        f"{split}/ppo/rm_win_rate": float((table["score"] > table["reference_score"]).mean()),
        f"{split}/ppo/response_token_len": float(table["response_token_len"].mean()),
        f"{split}/ppo/eos_fraction": float(table["eos_present"].mean()),
    }
    return metrics, table.drop(columns=["row"])


def main(args: Args) -> dict:
    from tqdm.auto import tqdm

    from rlhf_repro.modeling import load_causal_lm
    from rlhf_repro.reward_model import ScalarModel, load_backbone, load_reward_model
    from rlhf_repro.tokenization import load_tokenizer
    from rlhf_repro.training import PhaseTimer, StageRun, make_optimizer, setup_stage

    if args.reward_source == "rm" and not args.reward_model_path:
        raise InputError("--reward-model-path is required (reward.py's RUN/model)")
    if args.reward_source == "classifier" and not args.reward_classifier:
        raise InputError("--reward-source classifier needs --reward-classifier")
    if args.value_init == "reward" and not args.reward_model_path:
        raise InputError("--value-init reward copies an RM: give --reward-model-path, or use --value-init sft")
    seed = args.seed + args.seed_offset
    accelerator, accumulation = setup_stage(args, minibatches=args.nminibatches, seed=seed)
    rank, world = accelerator.process_index, accelerator.num_processes
    model_name = args.model_name or model_name_of(args.sft_model_path)
    stage = StageRun(args, "ppo", model_name, accelerator, RESUME_IGNORED, extra_config={"ppo": vars(args.ppo)})
    if (finished := stage.finished()) is not None:
        return finished

    # --- data, sizes -------------------------------------------------------------------------------
    tokenizer = load_tokenizer(args.tokenizer or args.sft_model_path)
    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    data = load_processed(
        args.query_dataset,
        {
            s: ("query_token", "reference_response_token")
            for s in dict.fromkeys(("train", "validation", *args.eval_splits))
        },
    )
    train = data["train"]
    check_padding(train, "reference_response_token", pad, "right", args.query_dataset)
    local_batch = args.batch_size // world
    local_mini = local_batch // args.nminibatches
    if local_batch * world != args.batch_size or local_mini != accumulation * args.local_micro_batch_size:
        raise InputError(
            f"--batch-size {args.batch_size} must equal local micro-batch {args.local_micro_batch_size} x accumulation "
            f"{accumulation} x minibatches {args.nminibatches} x {world} processes"
        )
    num_updates = args.total_episodes // args.batch_size
    if num_updates == 0:
        raise InputError(f"--total-episodes {args.total_episodes} is less than one batch of {args.batch_size}")
    derived = {
        "world_size": world,
        "local_batch_size": local_batch,
        "local_mini_batch_size": local_mini,
        "gradient_accumulation_steps": accumulation,
        "num_updates": num_updates,
        "episodes": num_updates * args.batch_size,
        "prompt_epochs": round(num_updates * args.batch_size / len(train), 3),
    }
    orders: dict[int, np.ndarray] = {}

    def order_for_epoch(epoch: int) -> np.ndarray:
        if epoch not in orders:
            orders.clear()
            orders[epoch] = permutation(len(train), derived_seed(seed, epoch))
        return orders[epoch]

    # --- models (detail 22) ----------------------------------------------------------------------
    policy = load_causal_lm(args.sft_model_path)
    policy_peft = critic_peft = ref_policy = None
    if args.lora.enabled:  # the reference is the policy with its adapters off: no second copy
        policy, policy_peft = add_adapters(policy, args.lora)
    else:
        ref_policy = load_causal_lm(args.sft_model_path).eval().requires_grad_(False)
    reward_model, text_reward = load_reward_source(args, tokenizer, train, accelerator.device, derived)
    if args.value_init == "reward":
        critic = load_reward_model(args.reward_model_path)
    else:
        critic = ScalarModel.from_sft(load_backbone(args.sft_model_path), source_model=args.sft_model_path)
    if args.lora.enabled:  # adapters on the critic's backbone; the value head trains in full
        critic.lm_backbone, critic_peft = add_adapters(critic.lm_backbone, args.lora)
    if args.dropout:
        from rlhf_repro.modeling import set_dropout

        set_dropout(policy, args.dropout)
        set_dropout(critic, args.dropout)
    model = PolicyAndValue(policy, critic, args.lm_head)
    optimizer = make_optimizer(args.optimizer, trainable(model), args.lr, args.eps)
    state = stage.restore(model, optimizer)
    start = stage.start_step
    kl_ctl = rl.AdaptiveKLController(args.ppo.kl_coef, args.ppo.kl_target, args.ppo.kl_horizon)
    kl_ctl.value = stage.resumed("kl_coef", kl_ctl.value)
    model, optimizer = prepare_trained(
        accelerator, args.local_micro_batch_size, model, optimizer, max_grad_norm=args.max_grad_norm
    )
    # The frozen models: a DeepSpeed inference engine each under DeepSpeed (ZeRO-3 offload with
    # --offload), else moved to the device.
    if policy_peft is None:
        ref_policy = prepare_frozen(accelerator, ref_policy, args.local_micro_batch_size, args.offload)
    else:
        ref_policy = accelerator.unwrap_model(model).policy  # read with adapters_off(policy_peft)
    if reward_model is not None:
        reward_model = prepare_frozen(accelerator, reward_model, args.local_micro_batch_size, args.offload)
    score_fn = make_scorer(args, reward_model, text_reward, tokenizer, accelerator.device)
    stage.open(
        derived,
        inputs={
            "sft_model_path": args.sft_model_path,
            "reward_model_path": args.reward_model_path or None,
            "reward_classifier": args.reward_classifier,
            "query_dataset": args.query_dataset,
            "tokenizer": args.tokenizer,
        },
        detail_flags=DETAIL_FLAGS,
    )
    if accelerator.is_main_process:
        print(
            f"ppo {model_name}: {num_updates} updates x {args.batch_size} episodes ({derived['prompt_epochs']} "
            f"epochs of {len(train)} prompts); {args.ppo.noptepochs} PPO epochs x {args.nminibatches} minibatch(es) "
            f"of {local_mini} x {world} processes" + (f"; resuming from update {start}" if state else "")
        )
    all_reduce = (lambda t: accelerator.reduce(t, reduction="sum")) if args.whiten_scope == "global" else None
    temperature = args.temperature + TEMPERATURE_EPS  # of every log-prob
    validation_rows = eval_batches(len(data["validation"]), args.local_eval_batch_size, world, rank)[0]

    # --- training loop -----------------------------------------------------------------------------
    # Train mode throughout, sampling included, as the reference: with dropout disabled it changes nothing.
    model.train()
    t_train, episodes_done = time.time(), start * args.batch_size
    bar = tqdm(
        range(start, num_updates),
        initial=start,
        total=num_updates,
        desc="ppo",
        disable=not (args.progress and accelerator.is_main_process),
    )
    for update in bar:
        lr_now = args.lr * (1.0 - update / num_updates) if args.lr_schedule == "linear" else args.lr
        for group in optimizer.param_groups:
            group["lr"] = lr_now
        unwrapped = accelerator.unwrap_model(model)
        timer = PhaseTimer("time/ppo/")

        with torch.no_grad(), timer("rollout"):
            # one validation batch per process, sampled at T=0.01 and scored, every update.
            (val_queries,) = (
                t.to(accelerator.device) for t in token_batch(data["validation"], validation_rows, "query_token")
            )
            val_queries = trim_left_padding(val_queries, pad)

            # --- rollout ---------------------------------------------------------------------------
            rows = query_rows(order_for_epoch, len(train), update, local_batch, rank, world)
            (queries,) = (t.to(accelerator.device) for t in token_batch(train, rows, "query_token"))
            # Columns of PAD in every query go: rotary attention sees relative positions only, so the
            # log-probs, values and scores are the full width's up to float rounding (detail 14), at a
            # fraction of the cost when the batch's longest query is shorter than the budget.
            queries = trim_left_padding(queries, pad)
            context_length = queries.size(1)
            query_chunks = queries.split(args.local_rollout_forward_batch_size)
            with timer("generate"):
                # log-probs of the sampled tokens come from the sampling pass itself. The validation
                # batch rides in the first chunk's decode loop (`generate_many`, each row at its own T):
                # `rlhf-repro bench validation` measures what a second decode loop would cost.
                first, (val_response, _) = generate_many(
                    unwrapped.policy,
                    [(query_chunks[0], args.temperature), (val_queries, args.eval_temperature)],
                    pad,
                    args.response_length,
                    args.sampler,
                )
                sampled = [first] + [
                    generate(unwrapped.policy, query, pad, args.response_length, args.temperature, args.sampler)
                    for query in query_chunks[1:]
                ]
            with timer("score"):
                val_post = truncate_response(val_response, eos, pad)
                val_scores = score_fn(val_queries, val_post)
            chunks = {k: [] for k in ("responses", "logprobs", "ref_logprobs", "values", "scores", "postprocessed")}
            for query, (response, logprob) in zip(query_chunks, sampled):
                with timer("score"):
                    query_response = torch.cat((query, response), 1)
                    with adapters_off(policy_peft):  # LoRA: the reference is the base (no-op otherwise)
                        ref_logprob, _ = next_token_logprobs(
                            ref_policy,
                            query_response,
                            pad,
                            start=context_length - 1,
                            temperature=temperature,
                            head=args.lm_head,
                        )
                    # Response Processing 1. truncate the response after the first EOS
                    postprocessed = truncate_response(response, eos, pad)
                    # Critic values: position t reads the state before response token t (detail 22).
                    full_value, _, _ = get_reward(
                        unwrapped.critic, query_response, pad, context_length, start=context_length - 1
                    )
                    # Response Processing 2. score the truncated response (read at its EOS, detail 12)
                    score = score_fn(query, postprocessed)
                for key, value in (
                    ("responses", response),
                    ("logprobs", logprob),
                    ("ref_logprobs", ref_logprob),
                    ("values", full_value[:, :-1]),  # positions C-1..T-2
                    ("scores", score),
                    ("postprocessed", postprocessed),
                ):
                    chunks[key].append(value)
            responses, logprobs, ref_logprobs, values, scores, postprocessed = (
                torch.cat(chunks[k], 0)
                for k in ("responses", "logprobs", "ref_logprobs", "values", "scores", "postprocessed")
            )
            query_responses = torch.cat((queries, responses), 1)
            if args.gold_metrics:  # the truth beside the proxy (not used for training)
                gold = gold_of(tokenizer, queries, postprocessed, accelerator.device)
                val_gold = gold_of(tokenizer, val_queries, val_post, accelerator.device)

            # Response Processing 3. the EOS trick: penalize responses without an EOS (detail 23)
            contain_eos = torch.any(postprocessed == eos, dim=-1)
            raw_scores = scores
            if args.non_eos_penalty:
                scores = rl.apply_missing_eos_penalty(scores, contain_eos, args.penalty_reward_value, args.penalty_mode)
            sequence_lengths, padding_mask, padding_mask_p1 = rl.response_masks(postprocessed, pad)
            if not args.kl_after_eos:  # post-EOS log-probs are set equal, so their KL is exactly 0
                logprobs = torch.masked_fill(logprobs, padding_mask, rl.INVALID_LOGPROB)
                ref_logprobs = torch.masked_fill(ref_logprobs, padding_mask, rl.INVALID_LOGPROB)
            values = torch.masked_fill(values, padding_mask_p1, 0)

            # 4. compute rewards: the KL penalty at every step, the score at the score position
            kl = rl.kl_estimate(logprobs, ref_logprobs, args.kl_estimator)
            positions = rl.score_positions(sequence_lengths, args.response_length, args.score_position)
            kl_coef = kl_ctl.value
            rewards, non_score_reward = rl.per_token_rewards(scores, kl, kl_coef, positions)
            # 5. whiten rewards (detail 24)
            if args.ppo.whiten_rewards:
                rewards = rl.masked_whiten(rewards, ~padding_mask_p1, shift_mean=False, all_reduce=all_reduce)
                rewards = torch.masked_fill(rewards, padding_mask_p1, 0)
            # 6. compute advantages and returns, then whiten the advantages, masked (detail 25)
            advantages, returns = rl.gae(rewards, values, args.ppo.gamma, args.ppo.lam)
            advantages = rl.masked_whiten(advantages, ~padding_mask, all_reduce=all_reduce)
            advantages = torch.masked_fill(advantages, padding_mask, 0)
            # Stop before any PPO step learns from a NaN/inf (the last good checkpoint stays the newest).
            stage.check_finite_tensors(
                update + 1,
                reduce=(lambda t: accelerator.reduce(t, reduction="sum")) if world > 1 else None,
                scores=raw_scores,
                logprobs=logprobs,
                ref_logprobs=ref_logprobs,
                values=values,
                rewards=rewards,
                advantages=advantages,
                returns=returns,
            )

        # --- PPO epochs (R-10, R-11) ---------------------------------------------------------------
        timer.start("train")
        stats = {k: [] for k in ("approxkl", "pg_clipfrac", "pg_loss", "vf_loss", "vf_clipfrac", "entropy", "ratio")}
        for _ in range(args.ppo.noptepochs):
            b_inds = np.random.permutation(local_batch)  # a fresh shuffle per epoch (rank-local RNG)
            for mini_start in range(0, local_batch, local_mini):
                mini_inds = b_inds[mini_start : mini_start + local_mini]
                for micro_start in range(0, local_mini, args.local_micro_batch_size):
                    mb = torch.as_tensor(mini_inds[micro_start : micro_start + args.local_micro_batch_size])
                    with accelerator.accumulate(model):
                        # The LM head runs on the response positions straight into the new log-probs and the
                        # entropy statistic, with no (B, R, V) tensors allocated (lm_head.py).
                        new_logprobs, entropy, critic_scores = model(
                            query_responses[mb], pad, context_length, temperature
                        )
                        if not args.kl_after_eos:
                            new_logprobs = torch.masked_fill(new_logprobs, padding_mask[mb], rl.INVALID_LOGPROB)
                        vpred = torch.masked_fill(critic_scores[:, :-1], padding_mask_p1[mb], 0)
                        pg_loss, pg_stats = rl.policy_loss(
                            new_logprobs, logprobs[mb], advantages[mb], ~padding_mask[mb], args.ppo.cliprange
                        )
                        vf_loss, vf_stats = rl.value_loss(
                            vpred, values[mb], returns[mb], ~padding_mask_p1[mb], args.ppo.cliprange_value
                        )
                        loss = pg_loss + args.ppo.vf_coef * vf_loss
                        accelerator.backward(loss)
                        clip_gradients(accelerator, model, args.max_grad_norm)
                        optimizer.step()
                        optimizer.zero_grad()
                    with torch.no_grad():
                        for key, value in (
                            ("approxkl", pg_stats["approxkl"]),
                            ("pg_clipfrac", pg_stats["clipfrac"]),
                            ("pg_loss", pg_loss),
                            ("vf_loss", vf_loss),
                            ("vf_clipfrac", vf_stats["clipfrac"]),
                            ("entropy", entropy.mean()),
                            ("ratio", pg_stats["ratio"].mean()),
                        ):
                            stats[key].append(value.detach().float())
        timer.stop("train")

        # --- logging (the reference's names, §4.11) --------------------------------------------------
        done = update + 1
        episodes_done += args.batch_size
        with torch.no_grad():

            def mean(t):
                return accelerator.gather(t.detach().float().reshape(-1)).mean().item()

            ratios = accelerator.gather(torch.stack(stats["ratio"]))
            # Scores of the responses without an EOS, after and before the EOS trick (None when all have one).
            no_eos = accelerator.gather(
                torch.stack([(~contain_eos).sum(), (scores * ~contain_eos).sum(), (raw_scores * ~contain_eos).sum()])
                .float()
                .reshape(1, 3)
            ).sum(0)
            kl_sum = kl.sum(1).mean()
            row = {
                "objective/kl": mean(kl_sum),
                # The reference's entropy estimate: minus the summed sampled log-probs, with post-EOS
                # positions holding the fill value 1.0 (so they count -1 each).
                "objective/entropy": mean((-logprobs).sum(1).mean()),
                "objective/non_score_reward": mean(non_score_reward.sum(1).mean()),
                "objective/rlhf_reward": mean(non_score_reward.sum(1).mean() + scores.mean()),
                "objective/scores": mean(scores.mean()),
                "objective/raw_scores": mean(raw_scores.mean()),
                "objective/validation_score": mean(val_scores.mean()),
                "objective/no_eos_scores": (no_eos[1] / no_eos[0]).item() if no_eos[0] > 0 else None,
                "objective/no_eos_raw_scores": (no_eos[2] / no_eos[0]).item() if no_eos[0] > 0 else None,
                "ppo/policy/approxkl_avg": mean(torch.stack(stats["approxkl"])),
                "ppo/policy/clipfrac_avg": mean(torch.stack(stats["pg_clipfrac"])),
                "ppo/policy/entropy_avg": mean(torch.stack(stats["entropy"])),
                "ppo/loss/policy_avg": mean(torch.stack(stats["pg_loss"])),
                "ppo/loss/value_avg": mean(torch.stack(stats["vf_loss"])),
                "ppo/val/clipfrac_avg": mean(torch.stack(stats["vf_clipfrac"])),
                "ppo/val/ratio": ratios.mean().item(),
                "ppo/val/ratio_var": ratios.var().item() if ratios.numel() > 1 else 0.0,
                "ppo/val/num_eos_tokens": mean((responses == eos).sum().float()) * world,
                "ppo/val/no_eos_fraction": mean((~contain_eos).float().mean()),
                "ppo/val/response_length": mean((sequence_lengths + 1).float().mean()),
                **({"gold/scores": mean(gold), "gold/validation_score": mean(val_gold)} if args.gold_metrics else {}),
                "objective/kl_coef": kl_coef,
                "ppo/lr": lr_now,
                "ppo/episode": episodes_done,
                "ppo/eps": (episodes_done - start * args.batch_size) / max(1e-9, time.time() - t_train),
                **timer.seconds,
            }
        stage.check_finite(row["ppo/loss/policy_avg"] + row["ppo/loss/value_avg"], "the PPO loss", done)
        if args.ppo.kl_ctl == "adaptive":  # after logging the beta this update used
            kl_ctl.update(row["objective/kl"], args.batch_size)
        stage.log(row, step=done)
        bar.set_postfix(score=f"{row['objective/scores']:.2f}", kl=f"{row['objective/kl']:.2f}")
        if args.sample_every and update % args.sample_every == 0:
            import pandas as pd

            samples = pd.DataFrame(
                gather_objects(
                    accelerator,
                    [
                        {"query": q, "response": r, "score": s}
                        for q, r, s in zip(
                            tokenizer.batch_decode(val_queries, skip_special_tokens=True),
                            tokenizer.batch_decode(val_post, skip_special_tokens=True),
                            val_scores.tolist(),
                        )
                    ],
                )
            )
            stage.write_table(f"samples/validation_update_{done}.csv", samples)
        stage.end_update(done, num_updates, model, optimizer, kl_coef=kl_ctl.value)
    bar.close()
    summary: dict = {"model_name": model_name, **derived, "train_seconds": round(time.time() - t_train, 2)}

    # --- save the policy (and the critic) ---------------------------------------------------------
    unwrapped = accelerator.unwrap_model(model)
    stage.save_model(
        unwrapped.policy,
        tokenizer,
        also={"critic": unwrapped.critic},
        adapters={"adapter": policy_peft, "critic_adapter": critic_peft},
    )

    # --- evaluation (R-04, R-05) -------------------------------------------------------------------
    if args.run_eval:
        t_eval = time.time()
        unwrapped.eval()

        def describe(split, metrics, table):
            m = {k.split("/", 2)[-1]: v for k, v in metrics.items()}
            return (
                f"{split}: RM score {m['score']:.3f} vs references {m['reference_score']:.3f} (RM win rate "
                f"{m['rm_win_rate']:.1%}), {m['response_token_len']:.1f} tokens, EOS in {m['eos_fraction']:.0%}"
            )

        stage.evaluate_splits(
            args.eval_splits,
            num_updates,
            summary,
            lambda split: evaluate(args, accelerator, unwrapped.policy, score_fn, tokenizer, data[split], split),
            lambda split: f"query_responses_{split}.csv",
            describe,
        )
        summary["eval_seconds"] = round(time.time() - t_eval, 2)
    return stage.complete(summary)


# PPO-ptx (InstructGPT's next-token loss on SFT data beside the PPO loss) was here until issue 20: it is not
# one of the paper's details, and it threaded through Args, the model, the data and the statistics.
REMOVED_FLAGS = {
    "--ptx-coef": "PPO-ptx is not one of the paper's details and left ppo.py (docs/flags.md, 'Removed flags'; "
    "`git log -S ptx_coef` finds its last version)"
}


def cli(argv: list[str] | None = None) -> int:
    from rlhf_repro.cli import run_stage

    return run_stage(Args, main, argv, __doc__, removed=REMOVED_FLAGS)


if __name__ == "__main__":
    sys.exit(cli())
