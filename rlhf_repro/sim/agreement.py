"""Does the reward model rank a policy's own samples the way the gold labeler does?

PPO can only improve what its reward sees. For each of N validation posts this samples K responses
from the policy as a PPO rollout does (T = 0.7, a fixed number of tokens, truncated after the first
EOS), scores each with the RM (read at its EOS, detail 12) and with the gold labeler, and reports:

- `rm_gold_agreement_on_policy_samples`: over the pairs of samples of the same post whose gold scores
  differ (gold ties left out), how often the RM orders the pair as the gold labeler does (chance 0.5),
  and the same over the pairs whose samples both end with an EOS (the read-out the RM was trained on);
- the mean gold score of the samples, of the RM's best of K and of the gold-best of K (the ceiling a
  perfect reward could select);
- the RM's read-out of the samples that end with an EOS, of those that run past the response length
  (no EOS: the RM reads a token it was never trained on, detail 12; its outputs there sit below the
  references, detail 13) and of the posts' references (which
  the RM's normalization puts near 0, detail 15), with the share of samples without an EOS. The EOS
  trick's -1 (detail 23) penalizes only when it sits below what an ended sample scores, and a PPO run
  without the trick learns to end anyway when the RM reads the unended ones far below the ended ones.

With `also_at`, the same numbers for shorter response lengths (PPO's own, when it samples fewer tokens
than the paper's 53) come from the same samples cut to that length, under `at_length`.

`rlhf-repro sim rm-agreement` writes it as JSON (the quickstart puts it in the RM's run folder, and its
claims summary carries the agreement).
"""

from __future__ import annotations

import os
from pathlib import Path


def pair_agreement(gold, reward) -> tuple[int, int]:
    """(pairs the reward orders as gold does, pairs gold does not tie) over every pair of columns of the
    (posts, K) tensors, within each row. A reward tie on a gold-untied pair counts as a disagreement."""
    agree = total = 0
    k = gold.size(1)
    for a in range(k):
        for b in range(a + 1, k):
            untied = gold[:, a] != gold[:, b]
            agree += int(((reward[:, a] - reward[:, b]).sign() == (gold[:, a] - gold[:, b]).sign())[untied].sum())
            total += int(untied.sum())
    return agree, total


def _stats(g, r, e, k: int) -> dict:
    """Agreement and read-out statistics of (posts, K) gold scores, RM scores and EOS flags."""
    agree, total = pair_agreement(g, r)
    both_ended = e.unsqueeze(2) & e.unsqueeze(1)  # pair (a, b) of a post: both samples end with an EOS
    agree_e = total_e = 0
    for a in range(k):
        for b in range(a + 1, k):
            untied = (g[:, a] != g[:, b]) & both_ended[:, a, b]
            agree_e += int(((r[:, a] - r[:, b]).sign() == (g[:, a] - g[:, b]).sign())[untied].sum())
            total_e += int(untied.sum())

    def mean_of(x, mask):
        return round(float(x[mask].mean()), 4) if bool(mask.any()) else None

    return {
        "rm_gold_agreement_on_policy_samples": round(agree / max(1, total), 4),
        "untied_pairs": total,
        "rm_gold_agreement_on_ended_pairs": round(agree_e / total_e, 4) if total_e else None,
        "untied_ended_pairs": total_e,
        "gold_mean": round(float(g.mean()), 4),
        "gold_of_rm_best": round(float(g.gather(1, r.argmax(1, keepdim=True)).mean()), 4),
        "gold_of_gold_best": round(float(g.max(1).values.mean()), 4),
        "no_eos_share": round(float((~e).float().mean()), 4),
        "rm_score_mean": round(float(r.mean()), 4),
        "rm_score_ended": mean_of(r, e),
        "rm_score_no_eos": mean_of(r, ~e),
        "gold_ended": mean_of(g, e),
        "gold_no_eos": mean_of(g, ~e),
    }


def rm_policy_agreement(
    policy: str | os.PathLike,
    reward_model: str | os.PathLike,
    query_dataset: str | os.PathLike,
    world: str | os.PathLike,
    posts: int = 200,
    samples: int = 4,
    temperature: float = 0.7,
    response_length: int = 53,
    seed: int = 0,
    batch_posts: int = 16,
    also_at: tuple[int, ...] = (),
) -> dict:
    """The report at `response_length`; `also_at` shorter lengths are measured on the same samples cut to
    that many tokens (exactly the samples a run at that length draws) under `at_length`."""
    import torch

    from rlhf_repro.data import load_processed, token_batch
    from rlhf_repro.generation import generate
    from rlhf_repro.modeling import load_causal_lm
    from rlhf_repro.ops import truncate_response
    from rlhf_repro.reward_model import get_reward, load_reward_model
    from rlhf_repro.seeding import derived_seed
    from rlhf_repro.sim.evaluate import world_posts
    from rlhf_repro.sim.labeler import gold_score
    from rlhf_repro.tokenization import load_tokenizer

    lengths = [response_length] + sorted({int(x) for x in also_at if 0 < int(x) < response_length}, reverse=True)
    tokenizer = load_tokenizer(policy)
    pad, eos, k = tokenizer.pad_token_id, tokenizer.eos_token_id, samples
    model = load_causal_lm(policy).eval()
    rm = load_reward_model(reward_model).eval()
    columns = ("query_token", "reference_response_token")
    data = load_processed(Path(query_dataset), {"validation": columns})["validation"]
    texts_of = world_posts(world)
    n = min(posts, len(data))
    got = {length: ([], [], []) for length in lengths}  # gold, reward, ended
    ref_reward = []
    with torch.no_grad():
        for start in range(0, n, batch_posts):
            rows = list(range(start, min(start + batch_posts, n)))
            queries, references = token_batch(data, rows, "query_token", "reference_response_token")
            ref_reward.append(get_reward(rm, torch.cat((queries, references), 1), pad, queries.size(1))[1])
            queries = queries.repeat_interleave(k, 0)
            # Each batch of posts from its own seed: a sample's first L tokens are then exactly what a run at
            # `--response-length L` samples (the sampler draws once per row and step).
            generator = torch.Generator().manual_seed(derived_seed(seed, start))
            sampled, _ = generate(model, queries, pad, response_length, temperature, generator=generator)
            ids = data.select(rows)["id"]
            for length in lengths:
                # Truncating after the first EOS commutes with taking the first `length` tokens.
                responses = truncate_response(sampled[:, :length], eos, pad)
                gold, reward, ended = got[length]
                ended.append((responses == eos).any(1).view(-1, k))
                query_responses = torch.cat((queries, responses), 1)
                reward.append(get_reward(rm, query_responses, pad, queries.size(1))[1].view(-1, k))
                decoded = tokenizer.batch_decode(responses, skip_special_tokens=True)
                scores = [gold_score(texts_of[ids[j // k]], t.strip()) for j, t in enumerate(decoded)]
                gold.append(torch.tensor(scores).view(-1, k))
    stats = {length: _stats(torch.cat(g), torch.cat(r).float(), torch.cat(e), k) for length, (g, r, e) in got.items()}
    report = {
        **stats[response_length],
        "pairs": n * k * (k - 1) // 2,
        "posts": n,
        "samples_per_post": k,
        "temperature": temperature,
        "response_length": response_length,
        "rm_score_references": round(float(torch.cat(ref_reward).float().mean()), 4),
        "policy": str(policy),
        "reward_model": str(reward_model),
    }
    if len(lengths) > 1:
        report["at_length"] = {str(length): stats[length] for length in lengths[1:]}
    return report
