"""Does the reward model rank a policy's own samples the way the gold labeler does?

    python benchmarks/rm_policy_agreement.py --quickstart runs/quickstart \
        --policy runs/bench_sft_rm/tiny/sft/tiny-m/1/model --reward-model runs/bench_sft_rm/tiny/reward/tiny-m/1/model

PPO can only improve what its reward sees. For each of N validation posts this samples K responses
from the policy at the rollout temperature (0.7, 53 tokens, truncated after EOS), scores them with the
RM (`--reward-model`) and with the gold labeler, and
reports: the RM's agreement with gold on which of two samples of the same post is better (pairs with
a gold tie left out; 0.5 is chance), the mean gold score of the samples, of the RM's best-of-K and of
the gold-best-of-K (the ceiling a perfect reward could select). Writes OUT/rm_policy_agreement.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quickstart", default="runs/quickstart", help="quickstart output (world/, data/)")
    parser.add_argument("--policy", default="runs/bench_sft_rm/tiny/sft/tiny-m/1/model", help="policy model")
    parser.add_argument(
        "--reward-model", default="runs/bench_sft_rm/tiny/reward/tiny-m/1/model", help="reward model to check"
    )
    parser.add_argument("--posts", type=int, default=96, help="validation posts")
    parser.add_argument("--samples", type=int, default=4, help="samples per post (K)")
    parser.add_argument("--temperature", type=float, default=0.7, help="sampling temperature")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed")
    parser.add_argument("--out", default="runs/bench_rm_agreement", help="folder for the JSON report")
    parser.add_argument("--dry-run", action="store_true", help="check the arguments and print the plan")
    args = parser.parse_args()
    qs = Path(args.quickstart)
    if args.dry_run:
        print(f"{args.posts} posts x {args.samples} samples of {args.policy}, scored by {args.reward_model} and gold")
        return 0

    import torch

    from rlhf_repro.data import load_processed, token_batch
    from rlhf_repro.generation import generate
    from rlhf_repro.modeling import load_causal_lm
    from rlhf_repro.ops import truncate_response
    from rlhf_repro.reward_model import get_reward, load_reward_model
    from rlhf_repro.sim.evaluate import world_posts
    from rlhf_repro.sim.labeler import gold_score
    from rlhf_repro.tokenization import load_tokenizer

    torch.manual_seed(args.seed)
    tokenizer = load_tokenizer(args.policy)
    pad, eos, k = tokenizer.pad_token_id, tokenizer.eos_token_id, args.samples
    policy = load_causal_lm(args.policy).eval()
    rm = load_reward_model(args.reward_model).eval()
    data = load_processed(qs / "data" / "sft", {"validation": ("query_token",)})["validation"]
    posts = world_posts(qs / "world")
    gold, reward = [], []
    with torch.no_grad():
        for start in range(0, min(args.posts, len(data)), 16):
            rows = list(range(start, min(start + 16, args.posts, len(data))))
            (queries,) = token_batch(data, rows, "query_token")
            queries = queries.repeat_interleave(k, 0)
            responses, _ = generate(policy, queries, pad, 53, args.temperature)
            responses = truncate_response(responses, eos, pad)
            reward.append(get_reward(rm, torch.cat((queries, responses), 1), pad, queries.size(1))[1].view(-1, k))
            texts = tokenizer.batch_decode(responses, skip_special_tokens=True)
            ids = data.select(rows)["id"]
            gold.append(
                torch.tensor([gold_score(posts[ids[j // k]], t.strip()) for j, t in enumerate(texts)]).view(-1, k)
            )
    g, r = torch.cat(gold), torch.cat(reward)
    agree = total = 0
    for a in range(k):
        for b in range(a + 1, k):
            untied = g[:, a] != g[:, b]
            agree += int(((r[:, a] - r[:, b]).sign() == (g[:, a] - g[:, b]).sign())[untied].sum())
            total += int(untied.sum())
    report = {
        "posts": len(g),
        "samples_per_post": k,
        "untied_pairs": total,
        "rm_gold_agreement": agree / max(1, total),
        "gold_mean": float(g.mean()),
        "gold_of_rm_best": float(g.gather(1, r.argmax(1, keepdim=True)).mean()),
        "gold_of_gold_best": float(g.max(1).values.mean()),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "rm_policy_agreement.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
